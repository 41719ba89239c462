//! File transfer in and out of sandboxes as tar archives, allowed per
//! profile; how the archive reaches the sandbox is the runtime's.
//!
//! Every transfer is audited when it ends, however it ends: with the bytes
//! moved and their SHA-256, and why it stopped if it did not finish (the
//! client went away, the stream broke, the scratch space filled). Each runs
//! in a task of its own, so a client that hangs up cannot skip the record.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::{audit_log, Manager};
use crate::audit::action;
use crate::auth::Caller;
use crate::policy::Rule;
use crate::runtime::BoxStream;
use crate::sandbox::{Sandbox, SandboxState};
use crate::{Error, Result};

/// What a transfer moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub sandbox: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Bytes moved and their SHA-256, counted as they pass.
#[derive(Default, Clone)]
pub(super) struct Tally {
    pub(super) bytes: u64,
    hash: Sha256,
}

impl Tally {
    pub(super) fn add(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.hash.update(data);
    }

    pub(super) fn sha256(&self) -> String {
        hex::encode(self.hash.clone().finalize())
    }

    /// `N bytes sha256 HEX`, as audit records say it.
    pub(super) fn describe(&self) -> String {
        format!("{} bytes sha256 {}", self.bytes, self.sha256())
    }
}

fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') || path.split('/').any(|p| p == "..") || path.contains('\0') || path.len() > 4096 {
        return Err(Error::invalid(
            "path",
            format!("{} must be an absolute path without '..', at most 4096 bytes", crate::error::quoted(path)),
        ));
    }
    Ok(())
}

impl Manager {
    /// The running sandbox the caller may transfer files with, if the profile allows `copy_in`/`copy_out`.
    async fn transfer_target(&self, caller: &Caller, id: &str, path: &str, inbound: bool) -> Result<Sandbox> {
        check_path(path)?;
        let sb = self.visible(caller, id).await?;
        if !caller.may_use(&sb.team) {
            return Err(Error::PermissionDenied("file transfer needs the requester role in the sandbox's team".into()));
        }
        let (allowed, what) = if inbound {
            (sb.profile.file_transfer.copy_in, "copy-in")
        } else {
            (sb.profile.file_transfer.copy_out, "copy-out")
        };
        if !allowed {
            return Err(Error::denied(
                Rule::FileTransfer,
                format!("profile '{}' does not allow {what} (sandbox at {})", sb.profile.name, sb.classification),
            ));
        }
        if sb.state != SandboxState::Running || sb.container_id.is_none() {
            return Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str())));
        }
        self.experiment_in_force(&sb).await?;
        Ok(sb)
    }

    /// Records how a transfer ended: what it moved, and why it stopped if it failed.
    async fn record_transfer(
        &self,
        caller: &Caller,
        act: &str,
        sb: &Sandbox,
        result: &Result<Transfer>,
        moved: &Tally,
    ) {
        let entry = match result {
            Ok(t) => {
                let dir = if act == action::COPY_IN { "into" } else { "from" };
                audit_log::entry(
                    Some(caller),
                    act,
                    &sb.experiment,
                    &sb.id,
                    Ok(format!("{} {dir} {}", moved.describe(), t.path)),
                )
            }
            Err(e) => {
                let mut entry = audit_log::entry(Some(caller), act, &sb.experiment, &sb.id, Err(e));
                // Started and cut short: a failure, never a denial, whatever the code.
                entry.outcome = crate::audit::Outcome::Failed;
                entry.reason = format!("ended after {}: {}", moved.describe(), entry.reason);
                entry
            }
        };
        self.audit.record(entry).await;
    }

    /// Extracts the tar archive `data` into `path` inside the sandbox.
    pub async fn copy_in(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        path: &str,
        data: BoxStream<Result<Vec<u8>>>,
    ) -> Result<Transfer> {
        let target = self.transfer_target(caller, id, path, true).await;
        let sb = self.audit.failed(caller, action::COPY_IN, id, target).await?;
        let (this, caller, path) = (Arc::clone(self), caller.clone(), path.to_string());
        let task = async move {
            // Counted as the runtime takes them: what reached the sandbox, or would have.
            let moved = Arc::new(Mutex::new(Tally::default()));
            let counted = {
                let moved = Arc::clone(&moved);
                data.map(move |chunk| {
                    if let Ok(c) = &chunk {
                        moved.lock().unwrap_or_else(|p| p.into_inner()).add(c);
                    }
                    chunk
                })
                .boxed()
            };
            let done = this.runtime.copy_in(&sb, &path, counted).await;
            let moved = moved.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let result = done.map(|()| Transfer {
                sandbox: sb.id.clone(),
                path: path.clone(),
                size: moved.bytes,
                sha256: moved.sha256(),
            });
            this.record_transfer(&caller, action::COPY_IN, &sb, &result, &moved).await;
            result
        };
        self.tasks.spawn(task).await.map_err(|e| Error::Internal(format!("copy-in task: {e}")))?
    }

    /// Streams `path` out of the sandbox as a tar archive; the last item is
    /// the summary, recorded in the audit log before it is sent.
    pub async fn copy_out(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        path: &str,
    ) -> Result<BoxStream<Result<CopyOut>>> {
        let started = async {
            let sb = self.transfer_target(caller, id, path, false).await?;
            let archive = self.runtime.copy_out(&sb, path).await?;
            Ok((sb, archive))
        }
        .await;
        let (sb, mut archive) = self.audit.failed(caller, action::COPY_OUT, id, started).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (this, caller, path) = (Arc::clone(self), caller.clone(), path.to_string());
        self.tasks.spawn(async move {
            let mut moved = Tally::default();
            let streamed = async {
                while let Some(chunk) = archive.next().await {
                    let chunk = chunk?;
                    moved.add(&chunk);
                    if tx.send(Ok(CopyOut::Chunk(chunk))).await.is_err() {
                        return Err(Error::Cancelled("the client went away".into()));
                    }
                }
                Ok(())
            }
            .await;
            let result = streamed.map(|()| Transfer {
                sandbox: sb.id.clone(),
                path: path.clone(),
                size: moved.bytes,
                sha256: moved.sha256(),
            });
            // On record before the client hears the end of it.
            this.record_transfer(&caller, action::COPY_OUT, &sb, &result, &moved).await;
            let _ = tx.send(result.map(CopyOut::Done)).await;
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}

/// One item of a copy-out stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOut {
    Chunk(Vec<u8>),
    /// The last item: what was transferred.
    Done(Transfer),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_and_hashes_what_passed() {
        let mut t = Tally::default();
        assert_eq!(t.describe(), "0 bytes sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        t.add(b"ab");
        t.add(b"c");
        assert_eq!(t.describe(), "3 bytes sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
