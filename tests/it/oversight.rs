//! The AI Leadership Group's process in the register, against a real
//! daemon: sign-offs by function, risks whose reviews fall due and refuse
//! new sandboxes, impact assessments, and the ATRS and lessons exports.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use sandpit_proto::{self as proto, ExperimentStatus};
use tonic::Code;

use crate::support::*;

/// Approvers with functions: two for data protection (in one team), one
/// for security, one for both; the high-impact review cadence short enough
/// to fall due within a test.
const DORA: &str = "token-dora";
const DAN: &str = "token-dan";
const SAM: &str = "token-sam";
const PAT: &str = "token-pat";
const HIGH_REVIEW_SECS: u64 = 6;

fn governance() -> String {
    format!(
        r#"
[governance]
functions = ["ethics", "data-protection", "legal", "security"]
refuse_overdue_risk = "high"
dpia_required = "OFFICIAL-SENSITIVE"

[governance.sign_offs]
"OFFICIAL-SENSITIVE" = ["data-protection", "security"]

[governance.review]
low = "30d"
medium = "30d"
high = "{HIGH_REVIEW_SECS}s"

[governance.transparency]
organisation_name = "Statistics Body"
organisation_or_department = "Statistics Body"

[[identities]]
name = "dora"
team = "dp-office"
roles = ["approver"]
functions = ["data-protection"]
token_sha256 = "{dora}"

[[identities]]
name = "dan"
team = "dp-office"
roles = ["approver"]
functions = ["data-protection"]
token_sha256 = "{dan}"

[[identities]]
name = "sam"
team = "security"
roles = ["approver"]
functions = ["security"]
token_sha256 = "{sam}"

[[identities]]
name = "pat"
team = "alg"
roles = ["approver"]
functions = ["data-protection", "security"]
token_sha256 = "{pat}"
"#,
        dora = sha256(DORA),
        dan = sha256(DAN),
        sam = sha256(SAM),
        pat = sha256(PAT),
    )
}

async fn daemon() -> Daemon {
    Daemon::with(Options { governance: governance(), ..Default::default() }).await
}

fn sign(id: &str, function: &str) -> proto::DecideExperimentRequest {
    proto::DecideExperimentRequest { id: id.into(), function: function.into(), ..Default::default() }
}

async fn get(d: &Daemon, id: &str) -> proto::Experiment {
    d.register(AUDITOR).await.get_experiment(proto::GetExperimentRequest { id: id.into() }).await.unwrap().into_inner()
}

fn status(e: &proto::Experiment) -> ExperimentStatus {
    ExperimentStatus::try_from(e.status).unwrap()
}

/// The audit records of an experiment's register actions, as (action, outcome, reason).
async fn register_records(d: &Daemon, id: &str) -> Vec<(String, String, String)> {
    let q = proto::QueryAuditLogRequest { experiment: id.into(), page_size: 200, ..Default::default() };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    events
        .into_iter()
        .filter(|e| e.action.contains("RegisterService"))
        .map(|e| (e.action.rsplit('/').next().unwrap().to_string(), e.outcome, e.reason))
        .collect()
}

fn sensitive_create(experiment: &str) -> proto::CreateSandboxRequest {
    proto::CreateSandboxRequest {
        profile: "test-sensitive".into(),
        classification: "OFFICIAL-SENSITIVE".into(),
        ..create_req(experiment, 60)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_official_sensitive_experiment_is_approved_only_once_every_required_function_signs() {
    let d = daemon().await;
    let id = d.experiment(TEAM_A, "OFFICIAL-SENSITIVE").await;
    let e = get(&d, &id).await;
    assert_eq!(e.required_functions, ["data-protection", "security"]);
    assert_eq!(e.pending_functions, ["data-protection", "security"]);

    // One function signs: still proposed, awaiting the other.
    let e = d.register(DORA).await.approve_experiment(sign(&id, "")).await.unwrap().into_inner();
    assert_eq!((status(&e), e.pending_functions.clone()), (ExperimentStatus::Proposed, vec!["security".to_string()]));
    assert_eq!(e.approvals[0].function, "data-protection");
    let refused = d.client(TEAM_A).await.create_sandbox(sensitive_create(&id)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "a refusal that a later change can lift");
    assert!(refused.message().contains("experiment-approval"), "{}", refused.message());

    // The same function again, by another of its approvers, changes nothing.
    let again = d.register(DAN).await.approve_experiment(sign(&id, "data-protection")).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("already signed off"), "{}", again.message());
    let now = get(&d, &id).await;
    assert_eq!((status(&now), now.approvals.len()), (ExperimentStatus::Proposed, 1));

    // A function the approver does not hold, or one the classification does not need.
    let not_held = d.register(DORA).await.approve_experiment(sign(&id, "security")).await.unwrap_err();
    assert_eq!(not_held.code(), Code::PermissionDenied);
    assert!(not_held.message().contains("sign-off-function"), "{}", not_held.message());
    let unknown = d.register(APPROVER).await.approve_experiment(sign(&id, "")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::PermissionDenied, "an approver of no function cannot sign: {unknown:?}");

    // The second function signs: approved.
    let e = d.register(SAM).await.approve_experiment(sign(&id, "security")).await.unwrap().into_inner();
    assert_eq!(status(&e), ExperimentStatus::Approved);
    assert!(e.pending_functions.is_empty());
    let signed: Vec<(&str, &str)> = e.approvals.iter().map(|a| (a.function.as_str(), a.approver.as_str())).collect();
    assert_eq!(signed, [("data-protection", "dora"), ("security", "sam")]);

    // Each sign-off, and each refusal, is on record.
    let records = register_records(&d, &id).await;
    let succeeded: Vec<&str> =
        records.iter().filter(|(a, o, _)| a == "ApproveExperiment" && o == "succeeded").map(|r| r.2.as_str()).collect();
    assert_eq!(
        succeeded,
        [
            "approved for data-protection; awaiting security",
            "approved for security; approved by every required function"
        ]
    );
    let refused = records.iter().filter(|(a, o, _)| a == "ApproveExperiment" && o != "succeeded").count();
    assert_eq!(refused, 3, "{records:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_sign_offs_stay_consistent_and_a_rejection_wins() {
    let d = daemon().await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(d.experiment(TEAM_A, "OFFICIAL-SENSITIVE").await);
    }
    let (dora, dan, sam) = (d.register(DORA).await, d.register(DAN).await, d.register(SAM).await);

    // Two functions at once: both sign-offs land, one after the other; approved.
    let races = ids[..4].iter().map(|id| {
        let (mut a, mut b) = (dora.clone(), sam.clone());
        async move {
            let (x, y) = tokio::join!(a.approve_experiment(sign(id, "")), b.approve_experiment(sign(id, "")));
            (x.is_ok(), y.is_ok())
        }
    });
    assert!(futures_util::future::join_all(races).await.into_iter().all(|(x, y)| x && y), "both sign-offs land");
    for id in &ids[..4] {
        let e = get(&d, id).await;
        assert_eq!((status(&e), e.approvals.len()), (ExperimentStatus::Approved, 2), "{id}");
    }

    // The same function twice at once: exactly one lands.
    let races = ids[4..8].iter().map(|id| {
        let (mut a, mut b) = (dora.clone(), dan.clone());
        async move {
            let (x, y) = tokio::join!(a.approve_experiment(sign(id, "")), b.approve_experiment(sign(id, "")));
            (id.clone(), x, y)
        }
    });
    for (id, x, y) in futures_util::future::join_all(races).await {
        let lost = match (&x, &y) {
            (Ok(_), Err(e)) | (Err(e), Ok(_)) => e,
            _ => panic!("{id}: exactly one data-protection sign-off lands: {x:?} / {y:?}"),
        };
        assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
        let e = get(&d, &id).await;
        assert_eq!((status(&e), e.approvals.len()), (ExperimentStatus::Proposed, 1), "{id}");
    }

    // An approval racing a rejection by the other function: the rejection
    // wins whichever lands first, and nothing approves it afterwards.
    let races = ids[8..].iter().map(|id| {
        let (mut a, mut b) = (dora.clone(), sam.clone());
        async move {
            let (x, y) = tokio::join!(a.approve_experiment(sign(id, "")), b.reject_experiment(sign(id, "")));
            (id.clone(), x, y)
        }
    });
    for (id, approve, reject) in futures_util::future::join_all(races).await {
        assert!(reject.is_ok(), "{id}: the rejection lands: {reject:?}");
        if let Err(e) = &approve {
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        }
        let e = get(&d, &id).await;
        assert_eq!(status(&e), ExperimentStatus::Rejected, "{id}");
        let late = d.register(DAN).await.approve_experiment(sign(&id, "")).await.unwrap_err();
        assert_eq!(late.code(), Code::FailedPrecondition);
    }

    // Every sign-off that stood is on record, and the chain verifies.
    for id in &ids {
        let e = get(&d, id).await;
        let records = register_records(&d, id).await;
        let stood = records
            .iter()
            .filter(|(a, o, _)| a.ends_with("Experiment") && a != "RegisterExperiment" && o == "succeeded");
        assert_eq!(stood.count(), e.approvals.len(), "{id}: {records:?}");
    }
    let v = d.audit(AUDITOR).await.verify_audit_log(proto::VerifyAuditLogRequest::default()).await.unwrap();
    assert!(v.into_inner().ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overdue_high_impact_risk_refuses_new_sandboxes_until_it_is_reviewed() {
    let d = daemon().await;
    let req = proto::RegisterExperimentRequest {
        title: "Risky".into(),
        purpose: "Overdue reviews".into(),
        classification: "OFFICIAL".into(),
        risks: vec![proto::Risk {
            description: "re-identification".into(),
            likelihood: "low".into(),
            impact: "high".into(),
            owner: "alice".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = d.register(TEAM_A).await.register_experiment(req).await.unwrap().into_inner();
    let risk = &e.risks[0];
    assert_eq!((risk.id.as_str(), risk.status.as_str(), risk.overdue), ("r1", "open", false));
    let due = to_system(risk.review_by.as_ref().unwrap());
    let created = to_system(e.created_at.as_ref().unwrap());
    assert_eq!(due.duration_since(created).unwrap(), Duration::from_secs(HIGH_REVIEW_SECS));

    // Another team's requester may not touch its risks.
    let other = proto::UpdateRiskRequest {
        experiment: e.id.clone(),
        risk_id: "r1".into(),
        reason: "x".into(),
        ..Default::default()
    };
    let refused = d.register(TEAM_B).await.update_risk(other).await.unwrap_err();
    assert!(matches!(refused.code(), Code::PermissionDenied | Code::NotFound), "{refused:?}");

    // Once its review date passes, creates are refused by rule, and the
    // oversight views and metrics show it.
    let left = due.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(200)).await;
    let refused = d.client(TEAM_A).await.create_sandbox(create_req(&e.id, 60)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "a refusal that a review lifts");
    assert!(
        refused.message().contains("risk-review-overdue") && refused.message().contains("r1"),
        "{}",
        refused.message()
    );
    let active = d.audit(AUDITOR).await.list_active_experiments(proto::ListActiveExperimentsRequest {}).await.unwrap();
    let shown =
        active.into_inner().experiments.into_iter().find_map(|a| a.experiment.filter(|x| x.id == e.id)).unwrap();
    assert!(shown.risks[0].overdue, "audit active shows the overdue review");
    assert!(d.scrape().await.get("sandpit_risk_reviews_overdue", &[("impact", "high")]) >= 1.0);
    let base = crate::dashboard::base(&d);
    let (auditor, _) = crate::dashboard::sign_in(&base, AUDITOR).await;
    let (_, _, page) = crate::dashboard::http(&base, "GET", "/active", Some(&auditor), None).await;
    assert!(page.contains("overdue for review") && page.contains("review overdue since"), "{page}");

    // A review (changing nothing) lifts it; it is on the risk's history and in the log.
    let review = proto::UpdateRiskRequest {
        experiment: e.id.clone(),
        risk_id: "r1".into(),
        reason: "controls checked; unchanged".into(),
        ..Default::default()
    };
    let reviewed = d.register(TEAM_A).await.update_risk(review).await.unwrap().into_inner();
    let created = d.client(TEAM_A).await.create_sandbox(create_req(&e.id, 60)).await;
    let r = &reviewed.risks[0];
    assert!(!r.overdue);
    assert_eq!(r.history.last().map(|h| (h.by.as_str(), h.changes.as_str())), Some(("alice", "reviewed")));
    let sb = created.expect("a review lifts the refusal").into_inner();
    d.client(TEAM_A).await.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id }).await.unwrap();

    // Closing it (a change with a status) leaves no review due at all.
    let close = proto::UpdateRiskRequest {
        experiment: e.id.clone(),
        risk_id: "r1".into(),
        reason: "data deleted".into(),
        status: "closed".into(),
        ..Default::default()
    };
    let closed = d.register(APPROVER).await.update_risk(close).await.unwrap().into_inner();
    assert_eq!((closed.risks[0].status.as_str(), closed.risks[0].review_by.is_none()), ("closed", true));
    let records = register_records(&d, &e.id).await;
    let updates: Vec<&str> =
        records.iter().filter(|(a, o, _)| a == "UpdateRisk" && o == "succeeded").map(|r| r.2.as_str()).collect();
    assert_eq!(
        updates,
        ["risk r1: reviewed: controls checked; unchanged", "risk r1: status open -> closed: data deleted"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completed_dpia_is_needed_for_official_sensitive_sandboxes() {
    let d = daemon().await;
    let id = d.experiment(TEAM_A, "OFFICIAL-SENSITIVE").await;
    let pat = d.register(PAT).await;
    pat.clone().approve_experiment(sign(&id, "data-protection")).await.unwrap();
    let e = pat.clone().approve_experiment(sign(&id, "")).await.unwrap().into_inner();
    assert_eq!(status(&e), ExperimentStatus::Approved, "one approver may sign for two functions");

    let refused = d.client(TEAM_A).await.create_sandbox(sensitive_create(&id)).await.unwrap_err();
    assert!(refused.message().contains("dpia-required"), "{}", refused.message());
    let assess = |status: &str, reference: &str| proto::RecordAssessmentRequest {
        experiment: id.clone(),
        kind: "dpia".into(),
        status: status.into(),
        reference: reference.into(),
        date: None,
    };
    let bad = d.register(TEAM_A).await.record_assessment(assess("completed", "")).await.unwrap_err();
    assert_eq!((bad.code(), bad.message().contains("reference")), (Code::InvalidArgument, true), "{bad:?}");
    d.register(TEAM_A).await.record_assessment(assess("in-progress", "")).await.unwrap();
    let still = d.client(TEAM_A).await.create_sandbox(sensitive_create(&id)).await.unwrap_err();
    assert!(still.message().contains("dpia-required"));
    let e =
        d.register(TEAM_A).await.record_assessment(assess("completed", "DPIA-2026-041")).await.unwrap().into_inner();
    assert_eq!(e.assessments.len(), 1, "one record per kind");
    let sb = d.client(TEAM_A).await.create_sandbox(sensitive_create(&id)).await.expect("created").into_inner();
    d.client(TEAM_A).await.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id }).await.unwrap();
}

/// The field list the export must follow, read here from the file itself.
fn standard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/atrs/atrs-v3-fields.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks an exported ATRS record against the field list: every section of
/// the standard, under its key, holding exactly the standard's fields, a
/// list where the field has many values and text where it has one.
fn validate(record: &serde_json::Value, standard: &serde_json::Value) {
    let sections = standard["sections"].as_array().unwrap();
    let mut keys = vec!["sandpit_experiment".to_string(), "standard".into(), "missing_required".into()];
    for s in sections {
        let (tier, title) = (s["tier"].as_str().unwrap(), s["section"].as_str().unwrap());
        let words = if tier == "Metadata" { title.to_string() } else { format!("{tier} {title}") };
        let key = words
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>()
            .join("_");
        let got = record[&key].as_object().unwrap_or_else(|| panic!("section {key} missing"));
        let fields = s["fields"].as_array().unwrap();
        let names: Vec<&str> = fields.iter().map(|f| f["name"].as_str().unwrap()).collect();
        let mut got_names: Vec<&str> = got.keys().map(String::as_str).collect();
        let mut want = names.clone();
        got_names.sort();
        want.sort();
        assert_eq!(got_names, want, "{key}: exactly the standard's fields");
        for f in fields {
            let v = &got[f["name"].as_str().unwrap()];
            if f["multi"].as_bool().unwrap() {
                assert!(v.is_array(), "{key}.{}: a list", f["name"]);
            } else {
                assert!(v.is_string(), "{key}.{}: text", f["name"]);
            }
        }
        keys.push(key);
    }
    let mut all: Vec<&String> = record.as_object().unwrap().keys().collect();
    all.sort();
    keys.sort();
    assert_eq!(all, keys.iter().collect::<Vec<_>>(), "nothing outside the standard's sections");
}

async fn export(d: &Daemon, req: proto::ExportRequest) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = d.audit(AUDITOR).await.export(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend(chunk?.data);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_atrs_export_of_a_full_experiment_validates_against_the_standards_field_list() {
    let d = daemon().await;
    let req = proto::RegisterExperimentRequest {
        title: "Occupation coding".into(),
        purpose: "Suggest SOC codes for free-text census answers".into(),
        classification: "OFFICIAL".into(),
        ai_tools: vec!["scikit-learn".into()],
        models: vec!["tf-idf + logistic regression".into()],
        datasets: vec!["census-sample".into()],
        risks: vec![proto::Risk {
            description: "misclassification".into(),
            likelihood: "medium".into(),
            impact: "medium".into(),
            mitigation: "human review of low-confidence codes".into(),
            owner: "alice".into(),
            ..Default::default()
        }],
        senior_responsible_owner: "Director of Methods".into(),
        phase: "Pre-deployment".into(),
        function: "Economic affairs".into(),
        region: "UK".into(),
        ..Default::default()
    };
    let e = d.register(TEAM_A).await.register_experiment(req).await.unwrap().into_inner();
    let atrs = |format: proto::ExportFormat| proto::ExportRequest {
        kind: proto::ExportKind::Atrs as i32,
        format: format as i32,
        experiment: e.id.clone(),
        ..Default::default()
    };
    let standard = standard();

    // As registered: valid, and saying which required fields are still empty.
    let first: Vec<serde_json::Value> =
        serde_json::from_slice(&export(&d, atrs(proto::ExportFormat::Json)).await.unwrap()).unwrap();
    assert_eq!(first.len(), 1);
    validate(&first[0], &standard);
    let r = &first[0];
    assert_eq!(r["tier_2_owner_and_responsibility"]["senior_responsible_owner"], "Director of Methods");
    assert_eq!(r["metadata_and_title_information"]["organisation_name"], "Statistics Body", "the host's default");
    assert_eq!(r["tier_2_technical_specification_and_data"]["models"][0], "tf-idf + logistic regression");
    let missing: Vec<String> =
        r["missing_required"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect();
    assert!(missing.contains(&"1.4 contact_email".to_string()), "{missing:?}");
    assert!(!missing.iter().any(|m| m.ends_with(" senior_responsible_owner") || m.ends_with(" title")), "{missing:?}");

    // A field the register fills, or one the standard lacks, cannot be set by name.
    for name in ["title", "no_such_field"] {
        let t = proto::UpdateTransparencyRequest {
            experiment: e.id.clone(),
            transparency: HashMap::from([(name.to_string(), "x".to_string())]),
            ..Default::default()
        };
        let refused = d.register(TEAM_A).await.update_transparency(t).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{name}: {refused:?}");
    }

    // Fill every required field it named (impact assessments by recording
    // them), record the assessments, close it.
    assert!(missing.contains(&"2.5.1 impact_assessment".to_string()), "{missing:?}");
    let fields: HashMap<String, String> = missing
        .iter()
        .map(|m| m.split_once(' ').unwrap().1)
        .filter(|name| *name != "impact_assessment")
        .map(|name| (name.to_string(), format!("text for {name}")))
        .collect();
    let t = proto::UpdateTransparencyRequest { experiment: e.id.clone(), transparency: fields, ..Default::default() };
    d.register(TEAM_A).await.update_transparency(t).await.unwrap();
    for kind in ["dpia", "equality-impact"] {
        let a = proto::RecordAssessmentRequest {
            experiment: e.id.clone(),
            kind: kind.into(),
            status: "completed".into(),
            reference: format!("{kind}-ref"),
            date: None,
        };
        d.register(TEAM_A).await.record_assessment(a).await.unwrap();
    }
    let close = proto::CloseExperimentRequest {
        id: e.id.clone(),
        outcome: proto::ExperimentOutcome::Succeeded as i32,
        lessons_learnt: "Works on clean text".into(),
        ..Default::default()
    };
    d.register(APPROVER).await.close_experiment(close).await.unwrap();

    let full: Vec<serde_json::Value> =
        serde_json::from_slice(&export(&d, atrs(proto::ExportFormat::Json)).await.unwrap()).unwrap();
    validate(&full[0], &standard);
    assert_eq!(full[0]["missing_required"], serde_json::json!([]), "a full experiment lacks nothing");
    let risks = &full[0]["tier_2_risks_mitigations_and_impact_assessments"];
    assert!(risks["impact_assessment"].as_str().unwrap().contains("Data Protection Impact Assessment: completed"));
    assert!(risks["risks_and_mitigations"].as_str().unwrap().contains("mitigation: human review"));
    assert!(!full[0]["metadata_and_title_information"]["date_archived"].as_str().unwrap().is_empty());

    // CSV: one row under the standard's field names.
    let csv = String::from_utf8(export(&d, atrs(proto::ExportFormat::Csv)).await.unwrap()).unwrap();
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let names = standard["sections"].as_array().unwrap().iter().flat_map(|s| s["fields"].as_array().unwrap().clone());
    for f in names {
        let name = f["name"].as_str().unwrap();
        assert!(header.iter().any(|h| h == name || h.starts_with(&format!("{name}_"))), "{name} in {header:?}");
    }
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][header.iter().position(|h| h == "senior_responsible_owner").unwrap()], "Director of Methods");

    let wrong = export(
        &d,
        proto::ExportRequest { format: proto::ExportFormat::Html as i32, ..atrs(proto::ExportFormat::Json) },
    );
    assert_eq!(wrong.await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn lessons_export_leaves_out_everything_above_official_unless_asked() {
    let d = daemon().await;
    let official = d.experiment(TEAM_A, "OFFICIAL").await;
    let sensitive = d.experiment(TEAM_A, "OFFICIAL-SENSITIVE").await;
    for (id, lessons) in [(&official, "Char n-grams beat rules"), (&sensitive, "Linkage keys leak")] {
        let close = proto::CloseExperimentRequest {
            id: id.clone(),
            outcome: proto::ExperimentOutcome::Succeeded as i32,
            lessons_learnt: lessons.into(),
            what_worked: "pairing with methodologists".into(),
            what_did_not: "<b>regexes</b>".into(),
            artefacts: vec!["https://git.example/coding-notebooks".into()],
        };
        d.register(APPROVER).await.close_experiment(close).await.unwrap();
    }
    let lessons = |format: proto::ExportFormat, include: bool| proto::ExportRequest {
        kind: proto::ExportKind::Lessons as i32,
        format: format as i32,
        include_above_official: include,
        ..Default::default()
    };
    let md = String::from_utf8(export(&d, lessons(proto::ExportFormat::Markdown, false)).await.unwrap()).unwrap();
    assert!(md.contains("Char n\\-grams beat rules") || md.contains("Char n-grams beat rules"), "{md}");
    assert!(!md.contains("Linkage keys leak"), "nothing above OFFICIAL: {md}");
    assert!(md.contains("1 above OFFICIAL left out"), "{md}");
    assert!(md.contains("### What did not work") && md.contains("\\<b\\>regexes\\</b\\>"), "{md}");
    let only = proto::ExportRequest { experiment: sensitive.clone(), ..lessons(proto::ExportFormat::Markdown, false) };
    let md = String::from_utf8(export(&d, only).await.unwrap()).unwrap();
    assert!(!md.contains("Linkage keys leak") && md.contains("1 above OFFICIAL left out"), "{md}");

    let html = String::from_utf8(export(&d, lessons(proto::ExportFormat::Html, true)).await.unwrap()).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("Linkage keys leak") && html.contains("Char n-grams"));
    assert!(html.contains("&lt;b&gt;regexes&lt;/b&gt;") && !html.contains("<b>regexes"), "{html}");
    // Lessons above OFFICIAL leaving the register are on record.
    let q = proto::QueryAuditLogRequest {
        action: "sandpit.v1.AuditService/Export".into(),
        page_size: 10,
        ..Default::default()
    };
    let events = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    assert!(events.iter().any(|e| e.reason.contains(&sensitive) && e.actor == "ada"), "{events:?}");

    let open = d.experiment(TEAM_A, "OFFICIAL").await;
    let not_closed = proto::ExportRequest { experiment: open, ..lessons(proto::ExportFormat::Markdown, false) };
    assert_eq!(export(&d, not_closed).await.unwrap_err().code(), Code::FailedPrecondition);
    let wrong = lessons(proto::ExportFormat::Json, false);
    assert_eq!(export(&d, wrong).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_sign_offs_risks_assessments_and_transparency_and_serves_the_exports() {
    use crate::dashboard::{base, http, sign_in};
    let d = daemon().await;
    let req = proto::RegisterExperimentRequest {
        title: "Linkage <b>pilot</b>".into(),
        purpose: "Link survey returns".into(),
        classification: "OFFICIAL-SENSITIVE".into(),
        risks: vec![proto::Risk {
            description: "re-identification".into(),
            likelihood: "low".into(),
            impact: "medium".into(),
            owner: "alice".into(),
            ..Default::default()
        }],
        senior_responsible_owner: "Director of Methods".into(),
        ..Default::default()
    };
    let e = d.register(TEAM_A).await.register_experiment(req).await.unwrap().into_inner();
    d.register(DORA).await.approve_experiment(sign(&e.id, "")).await.unwrap();
    let review = proto::UpdateRiskRequest {
        experiment: e.id.clone(),
        risk_id: "r1".into(),
        reason: "k-anonymity <checked>".into(),
        status: "mitigated".into(),
        ..Default::default()
    };
    d.register(TEAM_A).await.update_risk(review).await.unwrap();
    let dpia = proto::RecordAssessmentRequest {
        experiment: e.id.clone(),
        kind: "dpia".into(),
        status: "in-progress".into(),
        reference: "DPIA-7".into(),
        date: None,
    };
    d.register(TEAM_A).await.record_assessment(dpia).await.unwrap();

    let base = base(&d);
    let (auditor, _) = sign_in(&base, AUDITOR).await;
    let (_, _, page) = http(&base, "GET", "/approvals", Some(&auditor), None).await;
    assert!(
        page.contains("awaiting sign-off by security") && page.contains("Approved for data-protection by dora"),
        "{page}"
    );
    let (status, _, page) = http(&base, "GET", &format!("/experiments/{}", e.id), Some(&auditor), None).await;
    assert_eq!(status, 200);
    for want in [
        "Sign-off needed from: data-protection, security.",
        "<code>r1</code> re-identification",
        "mitigated</span>",
        "status open -&gt; mitigated by alice (team-a): k-anonymity &lt;checked&gt;",
        "Data Protection Impact Assessment",
        "DPIA-7",
        "Director of Methods",
        "/exports/atrs.json?experiment=",
    ] {
        assert!(page.contains(want), "{want} on the experiment page: {page}");
    }
    let (status, head, body) =
        http(&base, "GET", &format!("/exports/atrs.json?experiment={}", e.id), Some(&auditor), None).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains("content-disposition: attachment"), "{head}");
    let records: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    validate(&records[0], &standard());
    let (status, _, _) = http(&base, "GET", "/exports/secrets.txt", Some(&auditor), None).await;
    assert_eq!(status, 404);
    // Exports are the auditors': an approver is turned away.
    let (approver, _) = sign_in(&base, DORA).await;
    let (status, _, _) = http(&base, "GET", "/exports/atrs.json", Some(&approver), None).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_carries_sign_offs_risks_assessments_transparency_and_the_exports() {
    use crate::cli::sandpit;
    let d = daemon().await;
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let registered = ok(sandpit(
        &d,
        TEAM_A,
        &[
            "register",
            "--title",
            "Coding assistant",
            "--purpose",
            "Suggest codes",
            "--classification",
            "OFFICIAL-SENSITIVE",
            "--risk",
            "misclassification;medium;high;human review;alice",
            "--sro",
            "Director of Methods",
            "--json",
        ],
    ));
    let e: serde_json::Value = serde_json::from_str(&registered).unwrap();
    let id = e["id"].as_str().unwrap().to_string();
    assert_eq!(e["risks"][0]["id"], "r1");
    assert_eq!(e["pendingFunctions"], serde_json::json!(["data-protection", "security"]));

    // Sign-offs: the first awaits the second; the same function again is refused.
    let shown = ok(sandpit(&d, DORA, &["approve", &id, "--conditions", "aggregates only"]));
    assert!(shown.contains("still to sign: security"), "{shown}");
    assert!(shown.contains("approved for data-protection by dora"), "{shown}");
    let again = sandpit(&d, DAN, &["approve", &id, "--function", "data-protection"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("FAILED_PRECONDITION"), "{again:?}");
    let shown = ok(sandpit(&d, SAM, &["approve", &id]));
    assert!(shown.contains("status          approved") || shown.contains("approved"), "{shown}");

    // Risks, an assessment, transparency fields.
    let shown = ok(sandpit(
        &d,
        TEAM_A,
        &[
            "risk",
            "add",
            &id,
            "--description",
            "drift",
            "--likelihood",
            "low",
            "--impact",
            "medium",
            "--reason",
            "found",
        ],
    ));
    assert!(shown.contains("r2 drift"), "{shown}");
    let shown =
        ok(sandpit(&d, TEAM_A, &["risk", "update", &id, "r1", "--status", "mitigated", "--reason", "review queue"]));
    assert!(shown.contains("last: status open -> mitigated by alice"), "{shown}");
    let shown = ok(sandpit(&d, TEAM_A, &["risk", "review", &id, "r2", "--reason", "no change"]));
    assert!(shown.contains("last: reviewed by alice"), "{shown}");
    let shown = ok(sandpit(&d, TEAM_A, &["assess", &id, "dpia", "completed", "--reference", "DPIA-9"]));
    assert!(shown.contains("dpia completed DPIA-9"), "{shown}");
    let shown =
        ok(sandpit(&d, TEAM_A, &["transparency", &id, "--phase", "Pre-deployment", "--set", "benefit=Faster coding"]));
    assert!(shown.contains("phase           Pre-deployment") && shown.contains("benefit: Faster coding"), "{shown}");
    let bad = sandpit(&d, TEAM_A, &["transparency", &id, "--set", "nonsense"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--set nonsense: use NAME=VALUE"), "{bad:?}");

    // The ATRS export names what is still empty on stderr.
    let out = sandpit(&d, AUDITOR, &["audit", "export", "--kind", "atrs", "--experiment", &id]);
    let records: Vec<serde_json::Value> = serde_json::from_str(&ok(out.clone())).unwrap();
    assert_eq!(records[0]["tier_2_description_and_rationale"]["benefit"], "Faster coding");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{id}: ")) && stderr.contains("1.4 contact_email"), "{stderr}");

    // Close with lessons; the lessons export (nothing above OFFICIAL unless asked).
    ok(sandpit(
        &d,
        APPROVER,
        &[
            "close",
            &id,
            "--outcome",
            "succeeded",
            "--lessons",
            "Useful with review",
            "--what-worked",
            "Short labels",
            "--artefact",
            "https://git.example/coding",
        ],
    ));
    let md = ok(sandpit(&d, AUDITOR, &["audit", "export", "--kind", "lessons", "--experiment", &id]));
    assert!(md.contains("1 above OFFICIAL left out") && !md.contains("Short labels"), "{md}");
    let md = ok(sandpit(
        &d,
        AUDITOR,
        &["audit", "export", "--kind", "lessons", "--experiment", &id, "--include-above-official"],
    ));
    assert!(md.contains("### What worked\n\nShort labels") && md.contains("https://git.example/coding"), "{md}");
}
