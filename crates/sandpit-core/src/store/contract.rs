//! What every [`Store`] promises, as tests any backend runs:
//! [`crate::store_contract_tests!`] with an async function that gives a
//! fresh, empty store and whatever must live as long as it (a temporary
//! directory), or `None` to skip (no database server on this machine),
//! makes one `#[tokio::test]` of each. The in-memory, SQLite and PostgreSQL stores
//! all run them; what only one backend has (a file lock, tampering with its
//! tables) stays in that backend's own tests.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Admission, Admitted, AuditQuery, ExperimentFilter, ListFilter, Store, Versioned};
use crate::audit::{AuditEntry, Outcome};
use crate::policy::{admit, Classification, CreateSandbox, HostPolicy, Profile, ProfileSet};
use crate::register::{Experiment, NewExperiment, Status};
use crate::sandbox::{Sandbox, SandboxState};

/// Makes one test of each contract function for a backend:
/// `store_contract_tests!(open)`, `open() -> Option<(Arc<dyn Store>, Guard)>`.
#[macro_export]
macro_rules! store_contract_tests {
    ($open:path) => {
        $crate::store_contract_tests!(@each $open;
            records_are_versioned_filtered_and_ordered,
            a_claimed_warm_sandbox_counts_and_lists_as_its_teams,
            racing_admitted_writes_never_overrun_a_quota_or_pass_a_decision,
            experiments_round_trip_and_filter,
            experiment_updates_are_compare_and_set,
            audit_query_filters_and_pages,
            audit_pages_are_bounded_in_bytes,
            the_chain_verifies_from_checkpoints_and_hashes,
            racing_appends_make_one_chain,
            the_instance_id_is_stable);
    };
    (@each $open:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some((store, _guard)) = $open().await {
                    $crate::store::contract::$name(store).await;
                }
            }
        )*
    };
}

pub fn experiment(id: &str, team: &str) -> Experiment {
    let n = NewExperiment {
        title: "t".into(),
        purpose: "p".into(),
        ai_tools: vec![],
        models: vec![],
        classification: Classification::Official,
        datasets: vec![],
        risks: vec![],
        planned_end: None,
        senior_responsible_owner: String::new(),
        phase: String::new(),
        function: String::new(),
        region: String::new(),
    };
    Experiment::new(id.into(), "o", team, n, SystemTime::now()).expect("a valid experiment")
}

/// A provisioning record of experiment `exp-1`.
pub fn record(id: &str, team: &str) -> Sandbox {
    let p = Profile::parse(std::path::Path::new("p.toml"), "max_classification = \"OFFICIAL\"\nimages = [\"i\"]\n")
        .expect("a valid profile");
    let req = CreateSandbox {
        experiment: "exp-1".into(),
        profile: "p".into(),
        classification: Classification::Official,
        ttl: Some(Duration::from_secs(60)),
        image: None,
        datasets: vec![],
        resources: Default::default(),
    };
    let host = HostPolicy {
        max_classification: Classification::Official,
        datasets: vec![],
        min_ttl: Duration::ZERO,
        minimum_isolation: Default::default(),
        refuse_overdue_risk: None,
        dpia_required: None,
    };
    let plan = admit(
        &req,
        "o",
        team,
        Some(&experiment("exp-1", team)),
        &ProfileSet::from_profiles([p]),
        &host,
        SystemTime::now(),
    )
    .expect("admitted");
    Sandbox::provisioning(id.into(), "local".into(), plan)
}

pub fn entry(actor: &str) -> AuditEntry {
    AuditEntry {
        time: SystemTime::now(),
        actor: actor.into(),
        role: "requester".into(),
        action: "test".into(),
        target: "sb-1".into(),
        experiment: "exp-1".into(),
        sandbox: "sb-1".into(),
        outcome: Outcome::Succeeded,
        code: "OK".into(),
        reason: String::new(),
        source: "test".into(),
    }
}

fn ids(v: &[Sandbox]) -> Vec<&str> {
    v.iter().map(|s| s.id.as_str()).collect()
}

async fn live(s: &dyn Store, team: &str) -> usize {
    s.list(&ListFilter { team: Some(team.into()), ..Default::default() }).await.unwrap().len()
}

pub async fn records_are_versioned_filtered_and_ordered(s: Arc<dyn Store>) {
    let mut a = record("sb-1", "a");
    s.insert_sandbox(&a, None).await.unwrap();
    assert!(s.insert_sandbox(&a, None).await.is_err(), "an id is inserted once");
    let mut b = record("sb-2", "b");
    b.created_at = a.created_at + Duration::from_secs(1);
    s.insert_sandbox(&b, None).await.unwrap();
    assert_eq!(s.get("sb-1").await.unwrap().unwrap().version, 1);
    b.version = 1;
    b.end(SandboxState::Deleted, "test", SystemTime::now());
    assert!(matches!(s.update_sandbox(&b, Some(entry("x"))).await.unwrap(), Versioned::Written(Some(_))));
    // Written at version 1 once: the same write again is stale, and says what is there.
    match s.update_sandbox(&b, None).await.unwrap() {
        Versioned::Stale(Some(now)) => assert_eq!((now.version, now.state), (2, SandboxState::Deleted)),
        other => panic!("{other:?}"),
    }
    let ghost = Sandbox { id: "sb-none".into(), version: 1, ..b.clone() };
    assert!(matches!(s.update_sandbox(&ghost, None).await.unwrap(), Versioned::Stale(None)));
    assert_eq!(s.get("sb-2").await.unwrap().unwrap().state, SandboxState::Deleted);
    assert!(s.get("sb-3").await.unwrap().is_none());
    let many = s.get_many(&["sb-2".into(), "sb-3".into(), "sb-1".into()]).await.unwrap();
    assert_eq!(ids(&many), ["sb-2", "sb-1"], "those that exist, in the order asked");
    assert_eq!(ids(&s.list(&ListFilter::default()).await.unwrap()), ["sb-1"], "live only");
    let all = s.list(&ListFilter { include_ended: true, ..Default::default() }).await.unwrap();
    assert_eq!(ids(&all), ["sb-1", "sb-2"], "oldest first");
    let team_b = ListFilter { team: Some("b".into()), include_ended: true, ..Default::default() };
    assert_eq!(s.list(&team_b).await.unwrap()[0], s.get("sb-2").await.unwrap().unwrap());
    let other = s.list(&ListFilter { experiment: Some("exp-2".into()), ..Default::default() }).await.unwrap();
    assert!(other.is_empty());
    // A live record changes in place.
    a.version = 1;
    a.expires_at += Duration::from_secs(60);
    assert!(matches!(s.update_sandbox(&a, None).await.unwrap(), Versioned::Written(None)));
    let read = s.get("sb-1").await.unwrap().unwrap();
    assert_eq!(read, Sandbox { version: 2, ..a.clone() });
    assert_eq!(s.list(&ListFilter::default()).await.unwrap(), [read]);
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.ended, stats.audit_records), (vec![("deleted".to_string(), 1)], 1));
}

pub async fn a_claimed_warm_sandbox_counts_and_lists_as_its_teams(s: Arc<dyn Store>) {
    // Warm: nobody's. The claim gives it a team, an experiment and a creation time.
    let mut warm = record("sb-1", "");
    warm.experiment = String::new();
    s.insert_sandbox(&warm, None).await.unwrap();
    let claimed = Sandbox {
        version: 1,
        team: "a".into(),
        experiment: "exp-a".into(),
        created_at: warm.created_at + Duration::from_secs(60),
        ..warm.clone()
    };
    assert!(matches!(s.update_sandbox(&claimed, None).await.unwrap(), Versioned::Written(_)));
    assert_eq!((live(&*s, "a").await, live(&*s, "").await), (1, 0));
    let by_experiment = s.list(&ListFilter { experiment: Some("exp-a".into()), ..Default::default() }).await.unwrap();
    assert_eq!(by_experiment.len(), 1);
}

pub async fn racing_admitted_writes_never_overrun_a_quota_or_pass_a_decision(s: Arc<dyn Store>) {
    s.insert_experiment(&experiment("exp-1", "a"), None).await.unwrap();
    let admission = Admission { max_live: 3, experiment_version: 1 };
    let mut racing = tokio::task::JoinSet::new();
    for i in 0..8 {
        let s = Arc::clone(&s);
        racing.spawn(async move { s.write_admitted(&record(&format!("sb-{i}"), "a"), None, admission).await.unwrap() });
    }
    let (mut written, mut over) = (0, 0);
    while let Some(done) = racing.join_next().await {
        match done.unwrap() {
            Admitted::Written(Versioned::Written(_)) => written += 1,
            Admitted::OverQuota(live) => {
                assert_eq!(live, 3);
                over += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((written, over, live(&*s, "a").await), (3, 5, 3));
    // A claim into the full team is refused and changes nothing; into another it is written.
    let mut warm = record("sb-warm", "");
    s.insert_sandbox(&warm, None).await.unwrap();
    warm.version = 1;
    let into = |team: &str| Sandbox { team: team.into(), ..warm.clone() };
    assert!(matches!(s.write_admitted(&into("a"), None, admission).await.unwrap(), Admitted::OverQuota(3)));
    assert_eq!(s.get("sb-warm").await.unwrap().unwrap().team, "");
    let roomy = Admission { max_live: 1, ..admission };
    assert!(matches!(
        s.write_admitted(&into("b"), None, roomy).await.unwrap(),
        Admitted::Written(Versioned::Written(_))
    ));
    // A record's own row does not count against it.
    let mut own = s.get("sb-warm").await.unwrap().unwrap();
    own.state = SandboxState::Running;
    assert!(matches!(s.write_admitted(&own, None, roomy).await.unwrap(), Admitted::Written(Versioned::Written(_))));
    // A stale admitted write is stale, and writes nothing.
    assert!(matches!(s.write_admitted(&own, None, roomy).await.unwrap(), Admitted::Written(Versioned::Stale(Some(_)))));
    // A decision on the experiment since admission: nothing is written.
    let mut decided = s.get_experiment("exp-1").await.unwrap().unwrap();
    decided.status = Status::Rejected;
    assert!(matches!(s.update_experiment(&decided, entry("rejecter")).await.unwrap(), Versioned::Written(_)));
    let late = Admission { max_live: 100, experiment_version: 1 };
    assert!(matches!(
        s.write_admitted(&record("sb-late", "a"), None, late).await.unwrap(),
        Admitted::ExperimentChanged
    ));
    assert!(s.get("sb-late").await.unwrap().is_none());
    let unknown = Sandbox { experiment: "exp-none".into(), ..record("sb-x", "a") };
    assert!(matches!(s.write_admitted(&unknown, None, late).await.unwrap(), Admitted::ExperimentChanged));
}

pub async fn experiments_round_trip_and_filter(s: Arc<dyn Store>) {
    let e = experiment("exp-1", "a");
    s.insert_experiment(&e, Some(entry("a"))).await.unwrap();
    assert_eq!(s.get_experiment("exp-1").await.unwrap().unwrap(), Experiment { version: 1, ..e.clone() });
    assert!(s.insert_experiment(&e, None).await.is_err(), "an id is registered once");
    assert!(s.get_experiment("exp-2").await.unwrap().is_none());
    let mut second = experiment("exp-2", "b");
    second.created_at = e.created_at + Duration::from_secs(1);
    s.insert_experiment(&second, None).await.unwrap();
    let all = s.list_experiments(&ExperimentFilter::default()).await.unwrap();
    assert_eq!(all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["exp-1", "exp-2"]);
    let a = s.list_experiments(&ExperimentFilter { team: Some("a".into()), status: None }).await.unwrap();
    assert_eq!(a.len(), 1);
    let status = s.list_experiments(&ExperimentFilter { team: None, status: Some(e.status) }).await.unwrap();
    assert_eq!(status.len(), 2);
    let none = s.list_experiments(&ExperimentFilter { team: None, status: Some(Status::Closed) }).await.unwrap();
    assert!(none.is_empty());
}

pub async fn experiment_updates_are_compare_and_set(s: Arc<dyn Store>) {
    s.insert_experiment(&experiment("exp-1", "a"), None).await.unwrap();
    // Two decisions read the same version; only the first write lands.
    let read = s.get_experiment("exp-1").await.unwrap().unwrap();
    let approve = Experiment { status: Status::Approved, ..read.clone() };
    let close = Experiment { status: Status::Closed, ..read.clone() };
    assert!(matches!(s.update_experiment(&close, entry("closer")).await.unwrap(), Versioned::Written(Some(_))));
    match s.update_experiment(&approve, entry("approver")).await.unwrap() {
        Versioned::Stale(Some(now)) => assert_eq!((now.status, now.version), (Status::Closed, 2)),
        other => panic!("a stale write must not land: {other:?}"),
    }
    assert_eq!(s.get_experiment("exp-1").await.unwrap().unwrap().status, Status::Closed);
    // The loser's audit record was not written either.
    let page = s.query_audit(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(page.records.iter().map(|r| r.entry.actor.as_str()).collect::<Vec<_>>(), ["closer"]);
    let ghost = Experiment { id: "exp-none".into(), ..read };
    assert!(matches!(s.update_experiment(&ghost, entry("x")).await.unwrap(), Versioned::Stale(None)));
}

pub async fn audit_query_filters_and_pages(s: Arc<dyn Store>) {
    for i in 0..10 {
        s.append_audit(entry(if i % 2 == 0 { "even" } else { "odd" })).await.unwrap();
    }
    let q = AuditQuery { actor: Some("even".into()), limit: 3, ..Default::default() };
    let page = s.query_audit(&q).await.unwrap();
    assert_eq!(page.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3, 5]);
    assert!(page.more);
    let next = s.query_audit(&AuditQuery { after_seq: 5, ..q.clone() }).await.unwrap();
    assert_eq!(next.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 9]);
    assert!(!next.more);
    let future = SystemTime::now() + Duration::from_secs(3600);
    let none = s.query_audit(&AuditQuery { since: Some(future), ..q.clone() }).await.unwrap();
    assert!(none.records.is_empty() && !none.more);
    let before = s.query_audit(&AuditQuery { until: Some(future), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(before.records.len(), 10);
    let action = AuditQuery { action: Some("other".into()), limit: 100, ..Default::default() };
    assert!(s.query_audit(&action).await.unwrap().records.is_empty());
}

pub async fn audit_pages_are_bounded_in_bytes(s: Arc<dyn Store>) {
    for _ in 0..20 {
        let mut e = entry("a");
        e.reason = "r".repeat(500);
        s.append_audit(e).await.unwrap();
    }
    let q = AuditQuery { limit: 1000, max_bytes: 2000, ..Default::default() };
    let page = s.query_audit(&q).await.unwrap();
    assert!(page.more && !page.records.is_empty() && page.records.len() < 20, "{}", page.records.len());
    let bytes: usize = page.records.iter().map(|r| r.entry.approx_size()).sum();
    assert!(bytes <= 2000, "{bytes}");
    // Paging on reaches every record.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.query_audit(&AuditQuery { after_seq: after, ..q.clone() }).await.unwrap();
        seen.extend(page.records.iter().map(|r| r.seq));
        after = page.records.last().unwrap().seq;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    // A page holds at least one record, however small the bound.
    let one = s.query_audit(&AuditQuery { max_bytes: 1, ..q }).await.unwrap();
    assert_eq!((one.records.len(), one.more), (1, true));
}

pub async fn the_chain_verifies_from_checkpoints_and_hashes(s: Arc<dyn Store>) {
    let empty = s.verify_audit().await.unwrap();
    assert!(empty.ok && empty.records == 0, "{empty:?}");
    for i in 0..10 {
        s.append_audit(entry(&format!("actor-{i}"))).await.unwrap();
    }
    assert_eq!(s.audit_hash_at(0).await.unwrap(), Some([0; 32]));
    let h8 = s.audit_hash_at(8).await.unwrap().unwrap();
    let page = s.query_audit(&AuditQuery { after_seq: 7, limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(page.records[0].hash, h8);
    assert_eq!(s.audit_hash_at(11).await.unwrap(), None);
    assert_eq!(s.audit_hash_at(u64::MAX).await.unwrap(), None);
    let whole = s.verify_audit().await.unwrap();
    assert!(whole.ok && whole.records == 10, "{whole:?}");
    assert!(s.verify_audit_against((8, h8)).await.unwrap().ok);
    let wrong = s.verify_audit_against((8, [7; 32])).await.unwrap();
    assert!(!wrong.ok, "{wrong:?}");
    let from = s.verify_audit_from((8, h8)).await.unwrap();
    assert!(from.ok && from.records == 10 && from.head_hash == whole.head_hash, "{from:?}");
    s.append_audit(entry("more")).await.unwrap();
    let on = s.verify_audit_from((10, whole.head_hash)).await.unwrap();
    assert!(on.ok && on.records == 11, "{on:?}");
    assert!(!s.verify_audit_from((8, [1; 32])).await.unwrap().ok, "not the hash it had");
    assert!(!s.verify_audit_from((40, [1; 32])).await.unwrap().ok, "a record that is not there");
}

/// Appends from many tasks at once (in several daemons: many connections)
/// make one chain, with no sequence number twice and none skipped.
pub async fn racing_appends_make_one_chain(s: Arc<dyn Store>) {
    s.insert_experiment(&experiment("exp-1", "a"), None).await.unwrap();
    let mut racing = tokio::task::JoinSet::new();
    for i in 0..16 {
        let s = Arc::clone(&s);
        racing.spawn(async move {
            for j in 0..5 {
                s.append_audit(entry(&format!("{i}-{j}"))).await.unwrap();
            }
            s.insert_sandbox(&record(&format!("sb-{i}"), "a"), Some(entry("create"))).await.unwrap();
        });
    }
    while let Some(done) = racing.join_next().await {
        done.unwrap();
    }
    let report = s.verify_audit().await.unwrap();
    assert!(report.ok && report.records == 16 * 6, "{report:?}");
    let page = s.query_audit(&AuditQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(page.records.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=96).collect::<Vec<_>>());
}

pub async fn the_instance_id_is_stable(s: Arc<dyn Store>) {
    let id = s.instance_id().await.unwrap();
    assert!(!id.is_empty());
    assert_eq!(s.instance_id().await.unwrap(), id);
}
