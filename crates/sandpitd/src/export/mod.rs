//! Exports for the AI Leadership Group and for publication: the register
//! and live sandboxes (JSON, CSV), each experiment as an ATRS record
//! ([`atrs`]), and lessons learnt as a publishable document ([`lessons`]).

pub mod atrs;
pub mod lessons;

use std::collections::BTreeMap;
use std::time::SystemTime;

use sandpit_core::audit::action;
use sandpit_core::auth::Caller;
use sandpit_core::lifecycle::Manager;
use sandpit_core::policy::Classification;
use sandpit_core::Error;

use crate::proto;

/// One export, whole: its kind in its format, for `caller` (an auditor);
/// `transparency` are the host's ATRS defaults. Served by the gRPC API and
/// the dashboard alike.
pub async fn produce(
    manager: &Manager,
    transparency: &BTreeMap<String, String>,
    caller: &Caller,
    r: proto::ExportRequest,
) -> Result<Vec<u8>, Error> {
    use proto::{ExportFormat as F, ExportKind as K};
    let kind = K::try_from(r.kind).unwrap_or(K::Unspecified);
    let format = F::try_from(r.format).unwrap_or(F::Unspecified);
    let tabular = |format: F| match format {
        F::Json => Ok(false),
        F::Csv => Ok(true),
        _ => Err(Error::invalid("format", "must be json or csv for this kind")),
    };
    if !r.experiment.is_empty() {
        sandpit_core::policy::admission::validate_name("experiment", &r.experiment)?;
    }
    match kind {
        K::Register => {
            let csv = tabular(format)?;
            let list: Vec<proto::Experiment> = manager.all_experiments().await?.into_iter().map(Into::into).collect();
            if csv {
                register_csv(&list)
            } else {
                json(&list)
            }
        }
        K::ActiveSandboxes => {
            let csv = tabular(format)?;
            let list: Vec<proto::Sandbox> = manager.active_sandboxes().await?.into_iter().map(Into::into).collect();
            if csv {
                sandboxes_csv(&list)
            } else {
                json(&list)
            }
        }
        K::Atrs => {
            let csv = tabular(format)?;
            let mut all = manager.all_experiments().await?;
            if !r.experiment.is_empty() {
                all.retain(|e| e.id == r.experiment);
                if all.is_empty() {
                    return Err(Error::not_found("experiment", r.experiment));
                }
            }
            let records: Vec<_> = all.iter().map(|e| atrs::record(e, transparency)).collect();
            if csv {
                atrs::csv(&records)
            } else {
                atrs::json(&records)
            }
        }
        K::Lessons => {
            let format = match format {
                F::Markdown => lessons::Format::Markdown,
                F::Html => lessons::Format::Html,
                _ => return Err(Error::invalid("format", "must be markdown or html for lessons")),
            };
            let time = |field, t: Option<pbjson_types::Timestamp>| {
                t.map(|t| sandpit_proto::convert::system_time(field, &t)).transpose()
            };
            let selection = lessons::Selection {
                experiment: (!r.experiment.is_empty()).then_some(r.experiment),
                since: time("since", r.since)?,
                until: time("until", r.until)?,
                include_above_official: r.include_above_official,
            };
            let all = manager.all_experiments().await?;
            let chosen = lessons::choose(&all, &selection)?;
            let above = chosen.experiments.iter().filter(|e| e.classification > Classification::Official).count();
            if above > 0 {
                // Lessons above OFFICIAL leaving the register are on record.
                let reason = format!(
                    "lessons export including {above} experiment(s) above OFFICIAL: {}",
                    chosen
                        .experiments
                        .iter()
                        .filter(|e| e.classification > Classification::Official)
                        .map(|e| e.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let entry = sandpit_core::lifecycle::audit_entry(Some(caller), action::EXPORT, "", "", Ok(reason));
                manager.record(entry).await;
            }
            Ok(lessons::document(&chosen, &selection, format, SystemTime::now()))
        }
        K::Unspecified => Err(Error::invalid("kind", "must be register, active_sandboxes, atrs or lessons")),
    }
}

/// The proto3 JSON mapping of a list, one document.
pub fn json<T: serde::Serialize>(list: &[T]) -> Result<Vec<u8>, Error> {
    let mut out = serde_json::to_vec_pretty(list).map_err(|e| Error::Internal(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// A cell a spreadsheet would take for a formula (leading `=`, `+`, `-`,
/// `@`, tab or carriage return: titles and reasons are written by callers),
/// neutralised as OWASP recommends: prefixed with `'`, so it shows as text.
fn neutralised(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

/// A CSV document (RFC 4180: CRLF, a field quoted only when it must be),
/// every cell [`neutralised`].
pub fn csv(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> Result<Vec<u8>, Error> {
    let mut out = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        // OWASP also has a neutralised cell quoted. Naming `'` as the
        // comment byte makes the writer quote every field holding one (all
        // neutralised cells, and any other with an apostrophe: the same
        // value to any reader); the export has no comments.
        .comment(Some(b'\''))
        .from_writer(Vec::new());
    let failed = |e: csv::Error| Error::Internal(format!("csv export: {e}"));
    out.write_record(header).map_err(failed)?;
    for row in rows {
        out.write_record(row.iter().map(|c| neutralised(c).into_owned())).map_err(failed)?;
    }
    out.into_inner().map_err(|e| Error::Internal(format!("csv export: {}", e.error())))
}

/// A day as `YYYY-MM-DD` (UTC), as published records give dates.
pub fn day(t: SystemTime) -> String {
    sandpit_core::time::rfc3339(t).chars().take(10).collect()
}

pub fn time(t: Option<&pbjson_types::Timestamp>) -> String {
    t.map(|t| {
        sandpit_core::time::rfc3339(sandpit_core::time::from_millis(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000))
    })
    .unwrap_or_default()
}

pub fn register_csv(list: &[proto::Experiment]) -> Result<Vec<u8>, Error> {
    let header = [
        "id",
        "title",
        "team",
        "owner",
        "purpose",
        "classification",
        "status",
        "ai_tools",
        "models",
        "datasets",
        "risks",
        "approvals",
        "outcome",
        "lessons_learnt",
        "created_at",
        "planned_end",
        "closed_at",
        "closed_by",
        "closed_by_team",
        "required_functions",
        "pending_functions",
        "assessments",
        "senior_responsible_owner",
        "phase",
        "function",
        "region",
        "what_worked",
        "what_did_not",
        "artefacts",
    ];
    let rows = list.iter().map(|e| {
        let status = proto::shown::<proto::ExperimentStatus>(e.status);
        let outcome = proto::shown::<proto::ExperimentOutcome>(e.outcome);
        let risks: Vec<String> = e
            .risks
            .iter()
            .map(|r| {
                let review = match (&r.review_by, r.overdue) {
                    (None, _) => String::new(),
                    (Some(t), false) => format!("; review by {}", time(Some(t))),
                    (Some(t), true) => format!("; review OVERDUE since {}", time(Some(t))),
                };
                format!(
                    "{} (likelihood {}, impact {}; mitigation: {}; owner: {}; {} {}{review})",
                    r.description, r.likelihood, r.impact, r.mitigation, r.owner, r.id, r.status
                )
            })
            .collect();
        let approvals: Vec<String> = e
            .approvals
            .iter()
            .map(|a| {
                let function = if a.function.is_empty() { String::new() } else { format!(" for {}", a.function) };
                format!(
                    "{}{function} by {} ({}) at {}: {}",
                    a.decision,
                    a.approver,
                    a.approver_team,
                    time(a.time.as_ref()),
                    a.conditions
                )
            })
            .collect();
        let assessments: Vec<String> = e
            .assessments
            .iter()
            .map(|a| format!("{} {} ({}) {}", a.kind, a.status, a.reference, time(a.date.as_ref())))
            .collect();
        vec![
            e.id.clone(),
            e.title.clone(),
            e.team.clone(),
            e.owner.clone(),
            e.purpose.clone(),
            e.classification.clone(),
            status,
            e.ai_tools.join("; "),
            e.models.join("; "),
            e.datasets.join("; "),
            risks.join(" | "),
            approvals.join(" | "),
            outcome,
            e.lessons_learnt.clone(),
            time(e.created_at.as_ref()),
            time(e.planned_end.as_ref()),
            time(e.closed_at.as_ref()),
            e.closed_by.clone(),
            e.closed_by_team.clone(),
            e.required_functions.join("; "),
            e.pending_functions.join("; "),
            assessments.join(" | "),
            e.senior_responsible_owner.clone(),
            e.phase.clone(),
            e.function.clone(),
            e.region.clone(),
            e.what_worked.clone(),
            e.what_did_not.clone(),
            e.artefacts.join("; "),
        ]
    });
    csv(&header, rows)
}

pub fn sandboxes_csv(list: &[proto::Sandbox]) -> Result<Vec<u8>, Error> {
    let header = [
        "id",
        "experiment",
        "owner",
        "team",
        "profile",
        "classification",
        "image",
        "state",
        "created_at",
        "expires_at",
        "container_id",
        "node",
    ];
    let rows = list.iter().map(|s| {
        let state = proto::shown::<proto::SandboxState>(s.state);
        vec![
            s.id.clone(),
            s.experiment.clone(),
            s.owner.clone(),
            s.team.clone(),
            s.profile.clone(),
            s.classification.clone(),
            s.image.clone(),
            state,
            time(s.created_at.as_ref()),
            time(s.expires_at.as_ref()),
            s.container_id.clone(),
            s.node.clone(),
        ]
    });
    csv(&header, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The export of one row under a two-column header, and that row as a reader parses it.
    fn one_row(a: &str, b: &str) -> (String, Vec<String>) {
        let out = csv(&["a", "b"], [vec![a.to_string(), b.to_string()]].into_iter()).unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        let parsed = reader.records().next().unwrap().unwrap().iter().map(String::from).collect();
        (String::from_utf8(out).unwrap(), parsed)
    }

    #[test]
    fn csv_quotes_what_it_must() {
        assert_eq!(one_row("plain", "").0, "a,b\r\nplain,\r\n");
        assert_eq!(one_row("a,b", "say \"hi\"").0, "a,b\r\n\"a,b\",\"say \"\"hi\"\"\"\r\n");
        assert_eq!(one_row("1", "x\ny").0, "a,b\r\n1,\"x\ny\"\r\n");
        assert_eq!(one_row("a,b", "x\r\ny").1, ["a,b", "x\r\ny"], "a reader gets the values back");
    }

    #[test]
    fn csv_cells_a_spreadsheet_would_run_are_neutralised() {
        let (out, parsed) = one_row("=HYPERLINK(\"http://x\",\"y\")", "ok");
        assert_eq!(out, "a,b\r\n\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",ok\r\n");
        assert_eq!(parsed[0], "'=HYPERLINK(\"http://x\",\"y\")");
        for lead in ["=", "+", "-", "@", "\t", "\r"] {
            let cell = format!("{lead}cmd|' /C calc'!A0");
            let (out, parsed) = one_row("x", &cell);
            assert!(out.ends_with(&format!(",\"'{lead}cmd|' /C calc'!A0\"\r\n")), "{lead:?}: {out}");
            assert_eq!(parsed[1], format!("'{cell}"), "{lead:?}");
            let (out, _) = one_row("x", &format!("{lead}2"));
            assert!(out.ends_with(&format!(",\"'{lead}2\"\r\n")), "quoted though nothing else needs it: {out}");
        }
        assert_eq!(one_row("Bob's", "x").0, "a,b\r\n\"Bob's\",x\r\n", "an apostrophe is quoted too");
        assert_eq!(one_row("a=b", "x").0, "a,b\r\na=b,x\r\n", "only a leading character is a formula");
        assert_eq!(one_row("", "x").0, "a,b\r\n,x\r\n");
    }
}
