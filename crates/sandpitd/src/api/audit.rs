//! `sandpit.v1.AuditService`: the audit log and the oversight views for the
//! AI Leadership Group.

use sandpit_proto::status::to_status;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::auth::{Gate, Method};
use crate::checkpoints::Checkpointer;
use crate::proto;
use crate::proto::audit_service_server::AuditService;
use sandpit_core::audit::checkpoint::{Checkpoint, VerifierKey};
use sandpit_core::lifecycle::Manager;
use sandpit_core::store::AuditQuery;
use sandpit_core::Error;

type StatusStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Exports are streamed in chunks of this size.
const EXPORT_CHUNK: usize = 64 * 1024;

pub struct AuditApi {
    manager: Arc<Manager>,
    gate: Gate,
    checkpoints: Arc<Checkpointer>,
}

impl AuditApi {
    pub fn new(manager: Arc<Manager>, gate: Gate, checkpoints: Arc<Checkpointer>) -> Self {
        AuditApi { manager, gate, checkpoints }
    }

    /// The chain against a signed checkpoint: its signature (with `key`),
    /// its origin, then whether the chain holds its head at its size.
    async fn verify_against(&self, note: &str, key: VerifierKey) -> Result<proto::VerifyAuditLogResponse, Error> {
        let refused = |reason: String| proto::VerifyAuditLogResponse {
            ok: false,
            reason,
            verifier_key: key.to_string(),
            ..Default::default()
        };
        let checkpoint = match Checkpoint::open(note, &key) {
            Ok(c) => c,
            Err(e) => return Ok(refused(format!("the checkpoint does not verify against key {key}: {e}"))),
        };
        if checkpoint.origin != self.checkpoints.origin() {
            return Ok(refused(format!(
                "the checkpoint is of the log '{}', not this one ('{}')",
                checkpoint.origin,
                self.checkpoints.origin()
            )));
        }
        // The store scans the chain on a thread of its own.
        let report = self.manager.verify_audit_against((checkpoint.size, checkpoint.head)).await?;
        // Only the daemon's own signature makes it the daemon's business.
        if !report.ok && key == *self.checkpoints.verifier() {
            self.checkpoints.chain_broken(&report).await;
        }
        Ok(proto::VerifyAuditLogResponse {
            checkpoint_size: checkpoint.size,
            checkpoint_origin: checkpoint.origin,
            verifier_key: key.to_string(),
            ..report.into()
        })
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn query_audit_log(
        &self,
        req: Request<proto::QueryAuditLogRequest>,
    ) -> Result<Response<proto::QueryAuditLogResponse>, Status> {
        let _call = self.gate.authorize(&req, Method::QueryAuditLog).await.map_err(to_status)?;
        let q = AuditQuery::try_from(req.into_inner()).map_err(to_status)?;
        // Bounded by count and by size: a page never outgrows what a client accepts.
        let page = self.manager.query_audit(&q).await.map_err(to_status)?;
        let next_page_token = match page.records.last() {
            Some(last) if page.more => last.seq.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(proto::QueryAuditLogResponse {
            events: page.records.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    type WatchAuditLogStream = StatusStream<proto::AuditEvent>;

    async fn watch_audit_log(
        &self,
        req: Request<proto::WatchAuditLogRequest>,
    ) -> Result<Response<Self::WatchAuditLogStream>, Status> {
        let call = self.gate.authorize(&req, Method::WatchAuditLog).await.map_err(to_status)?;
        Ok(Response::new(call.hold(self.manager.watch_audit().map(|r| Ok(r.into()))).boxed()))
    }

    async fn verify_audit_log(
        &self,
        req: Request<proto::VerifyAuditLogRequest>,
    ) -> Result<Response<proto::VerifyAuditLogResponse>, Status> {
        let _call = self.gate.authorize(&req, Method::VerifyAuditLog).await.map_err(to_status)?;
        let r = req.into_inner();
        if !r.checkpoint.is_empty() {
            let key = if r.verifier_key.is_empty() {
                self.checkpoints.verifier().clone()
            } else {
                VerifierKey::parse(&r.verifier_key)
                    .map_err(|e| Error::invalid("verifier_key", e.to_string()))
                    .map_err(to_status)?
            };
            return Ok(Response::new(self.verify_against(&r.checkpoint, key).await.map_err(to_status)?));
        }
        if !r.verifier_key.is_empty() {
            return Err(to_status(Error::invalid("verifier_key", "is used only with a checkpoint")));
        }
        let report = self.manager.verify_audit().await.map_err(to_status)?;
        if !report.ok {
            self.checkpoints.chain_broken(&report).await;
        }
        Ok(Response::new(report.into()))
    }

    async fn get_checkpoint(
        &self,
        req: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::Checkpoint>, Status> {
        let _call = self.gate.authorize(&req, Method::GetCheckpoint).await.map_err(to_status)?;
        let signed = self.checkpoints.current().await.map_err(to_status)?;
        Ok(Response::new(proto::Checkpoint {
            note: signed.note,
            origin: signed.checkpoint.origin,
            size: signed.checkpoint.size,
            head_hash: hex::encode(signed.checkpoint.head),
            verifier_key: self.checkpoints.verifier().to_string(),
        }))
    }

    type ExportStream = StatusStream<proto::ExportChunk>;

    async fn export(&self, req: Request<proto::ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let call = self.gate.authorize(&req, Method::Export).await.map_err(to_status)?;
        let r = req.into_inner();
        let format = proto::ExportFormat::try_from(r.format).unwrap_or(proto::ExportFormat::Unspecified);
        let csv = match format {
            proto::ExportFormat::Json => false,
            proto::ExportFormat::Csv => true,
            proto::ExportFormat::Unspecified => return Err(to_status(Error::invalid("format", "must be json or csv"))),
        };
        let data = match proto::ExportKind::try_from(r.kind).unwrap_or(proto::ExportKind::Unspecified) {
            proto::ExportKind::Register => {
                let list: Vec<proto::Experiment> =
                    self.manager.all_experiments().await.map_err(to_status)?.into_iter().map(Into::into).collect();
                if csv {
                    register_csv(&list).map_err(to_status)?
                } else {
                    json(&list).map_err(to_status)?
                }
            }
            proto::ExportKind::ActiveSandboxes => {
                let list: Vec<proto::Sandbox> =
                    self.manager.active_sandboxes().await.map_err(to_status)?.into_iter().map(Into::into).collect();
                if csv {
                    sandboxes_csv(&list).map_err(to_status)?
                } else {
                    json(&list).map_err(to_status)?
                }
            }
            proto::ExportKind::Unspecified => {
                return Err(to_status(Error::invalid("kind", "must be register or active_sandboxes")))
            }
        };
        let chunks: Vec<Result<proto::ExportChunk, Status>> =
            data.chunks(EXPORT_CHUNK).map(|c| Ok(proto::ExportChunk { data: c.to_vec() })).collect();
        Ok(Response::new(call.hold(futures_util::stream::iter(chunks)).boxed()))
    }

    async fn list_active_experiments(
        &self,
        req: Request<proto::ListActiveExperimentsRequest>,
    ) -> Result<Response<proto::ListActiveExperimentsResponse>, Status> {
        let _call = self.gate.authorize(&req, Method::ListActiveExperiments).await.map_err(to_status)?;
        let list = self.manager.active_experiments().await.map_err(to_status)?;
        Ok(Response::new(proto::ListActiveExperimentsResponse {
            experiments: list.into_iter().map(Into::into).collect(),
        }))
    }
}

/// The proto3 JSON mapping of a list, one document.
fn json<T: serde::Serialize>(list: &[T]) -> Result<Vec<u8>, Error> {
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
fn csv(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> Result<Vec<u8>, Error> {
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

fn time(t: Option<&pbjson_types::Timestamp>) -> String {
    t.map(|t| {
        sandpit_core::time::rfc3339(sandpit_core::time::from_millis(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000))
    })
    .unwrap_or_default()
}

fn register_csv(list: &[proto::Experiment]) -> Result<Vec<u8>, Error> {
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
    ];
    let rows = list.iter().map(|e| {
        let status = proto::shown::<proto::ExperimentStatus>(e.status);
        let outcome = proto::shown::<proto::ExperimentOutcome>(e.outcome);
        let risks: Vec<String> = e
            .risks
            .iter()
            .map(|r| {
                format!(
                    "{} (likelihood {}, impact {}; mitigation: {}; owner: {})",
                    r.description, r.likelihood, r.impact, r.mitigation, r.owner
                )
            })
            .collect();
        let approvals: Vec<String> = e
            .approvals
            .iter()
            .map(|a| {
                format!(
                    "{} by {} ({}) at {}: {}",
                    a.decision,
                    a.approver,
                    a.approver_team,
                    time(a.time.as_ref()),
                    a.conditions
                )
            })
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
        ]
    });
    csv(&header, rows)
}

fn sandboxes_csv(list: &[proto::Sandbox]) -> Result<Vec<u8>, Error> {
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
