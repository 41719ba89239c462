//! `sandpit.v1.AuditService`: the audit log and the oversight views for the
//! AI Leadership Group.

use sandpit_proto::status::to_status;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::auth::{Gate, Method};
use crate::checkpoints::Checkpointer;
use crate::export;
use crate::proto;
use crate::proto::audit_service_server::AuditService;
use sandpit_core::audit::checkpoint::{Checkpoint, VerifierKey};
use sandpit_core::lifecycle::Manager;
use sandpit_core::store::AuditQuery;
use sandpit_core::Error;
use std::collections::BTreeMap;

type StatusStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Exports are streamed in chunks of this size.
const EXPORT_CHUNK: usize = 64 * 1024;

pub struct AuditApi {
    manager: Arc<Manager>,
    gate: Gate,
    checkpoints: Arc<Checkpointer>,
    /// The host's ATRS field defaults (`[governance.transparency]`).
    transparency: BTreeMap<String, String>,
}

impl AuditApi {
    pub fn new(
        manager: Arc<Manager>,
        gate: Gate,
        checkpoints: Arc<Checkpointer>,
        transparency: BTreeMap<String, String>,
    ) -> Self {
        AuditApi { manager, gate, checkpoints, transparency }
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
        let caller = call.caller.clone();
        let r = req.into_inner();
        let data = export::produce(&self.manager, &self.transparency, &caller, r).await.map_err(to_status)?;
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
