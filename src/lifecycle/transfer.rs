//! File transfer in and out of sandboxes as tar archives, streamed through a
//! `tar` process inside the sandbox (the archive API of older engines cannot
//! reach the tmpfs scratch space). Allowed per profile; every transfer is
//! audited with its size and SHA-256.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{exit_code, Manager};
use crate::audit::action;
use crate::auth::Caller;
use crate::policy::Rule;
use crate::runtime::{BoxStream, ExecChunk, ExecSpec, Runtime};
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

/// Longest stderr kept from a failed `tar`.
const STDERR_MAX: usize = 2048;

/// `tar` from the image, or busybox's when the image has no `tar`.
fn tar(args: &str) -> Vec<String> {
    let script = format!("if command -v tar >/dev/null 2>&1; then exec tar {args}; else exec busybox tar {args}; fi");
    vec!["sh".into(), "-c".into(), script, "sh".into()]
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

impl<R: Runtime> Manager<R> {
    /// The running sandbox the caller may transfer files with, if the profile allows `copy_in`/`copy_out`.
    fn transfer_target(&self, caller: &Caller, id: &str, path: &str, inbound: bool) -> Result<(Sandbox, String)> {
        check_path(path)?;
        let sb = self.visible(caller, id)?;
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
        match (&sb.container_id, sb.state) {
            (Some(cid), SandboxState::Running) => {
                self.experiment_in_force(&sb)?;
                let cid = cid.clone();
                Ok((sb, cid))
            }
            _ => Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str()))),
        }
    }

    /// Extracts the tar archive `data` into `path` inside the sandbox.
    pub async fn copy_in(
        &self,
        caller: &Caller,
        id: &str,
        path: &str,
        mut data: BoxStream<Result<Vec<u8>>>,
    ) -> Result<Transfer> {
        let result = async {
            let (sb, cid) = self.transfer_target(caller, id, path, true)?;
            let spec = ExecSpec {
                command: tar("-x -f - -C \"$1\"").into_iter().chain([path.to_string()]).collect(),
                ..Default::default()
            };
            let (session, mut stdin) = self.runtime.exec_with_stdin(&cid, spec).await?;
            let mut hash = Sha256::new();
            let mut size = 0u64;
            // Feed the archive while collecting tar's complaints.
            let mut output = session.output;
            let feed = async {
                let fed = async {
                    while let Some(chunk) = data.next().await {
                        let chunk = chunk?;
                        hash.update(&chunk);
                        size += chunk.len() as u64;
                        stdin.write_all(&chunk).await.map_err(|e| Error::Internal(format!("copy-in: {e}")))?;
                    }
                    Ok::<_, Error>(())
                }
                .await;
                // Closed whatever happened: on a broken upload tar must see
                // the end of its input and exit, not wait for more.
                let closed = stdin.shutdown().await.map_err(|e| Error::Internal(format!("copy-in: {e}")));
                fed.and(closed)
            };
            let drain = async {
                let mut err = Vec::new();
                while let Some(c) = output.next().await {
                    if let Ok(ExecChunk::Stderr(b)) = c {
                        err.extend(b.into_iter().take(STDERR_MAX.saturating_sub(err.len())));
                    }
                }
                err
            };
            let (fed, err) = tokio::join!(feed, drain);
            fed?;
            let code = exit_code(&self.runtime, &session.exec_id).await?;
            if code != 0 {
                return Err(Error::FailedPrecondition(format!(
                    "extracting into {path} failed (tar exit {code}): {}",
                    String::from_utf8_lossy(&err).trim()
                )));
            }
            let t =
                Transfer { sandbox: sb.id.clone(), path: path.to_string(), size, sha256: hex::encode(hash.finalize()) };
            let reason = format!("{} bytes into {} sha256 {}", t.size, t.path, t.sha256);
            self.published(Some(self.store.append_audit(self.entry(
                Some(caller),
                action::COPY_IN,
                &sb.experiment,
                id,
                Ok(reason),
            ))?));
            Ok(t)
        }
        .await;
        if let Err(e) = &result {
            let experiment = self.experiment_of(id);
            self.record_error(caller, action::COPY_IN, &experiment, id, e);
        }
        result
    }

    /// Streams `path` out of the sandbox as a tar archive; the last item is
    /// the summary, recorded in the audit log before it is sent.
    pub async fn copy_out(
        self: &std::sync::Arc<Self>,
        caller: &Caller,
        id: &str,
        path: &str,
    ) -> Result<BoxStream<Result<CopyOut>>> {
        let target = self.transfer_target(caller, id, path, false);
        let (sb, cid) = match target {
            Ok(t) => t,
            Err(e) => {
                let experiment = self.experiment_of(id);
                self.record_error(caller, action::COPY_OUT, &experiment, id, &e);
                return Err(e);
            }
        };
        let (dir, name) = match path.trim_end_matches('/').rsplit_once('/') {
            Some(("", name)) => ("/".to_string(), name.to_string()),
            Some((dir, name)) => (dir.to_string(), name.to_string()),
            None => ("/".to_string(), ".".to_string()),
        };
        let spec = ExecSpec {
            command: tar("-c -f - -C \"$1\" \"$2\"").into_iter().chain([dir, name]).collect(),
            ..Default::default()
        };
        let session = self.runtime.exec(&cid, spec).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let this = std::sync::Arc::clone(self);
        let caller = caller.clone();
        let path = path.to_string();
        tokio::spawn(async move {
            let mut hash = Sha256::new();
            let mut size = 0u64;
            let mut err = Vec::new();
            let mut output = session.output;
            while let Some(c) = output.next().await {
                match c {
                    Ok(ExecChunk::Stdout(b)) => {
                        hash.update(&b);
                        size += b.len() as u64;
                        if tx.send(Ok(CopyOut::Chunk(b))).await.is_err() {
                            return;
                        }
                    }
                    Ok(ExecChunk::Stderr(b)) => err.extend(b.into_iter().take(STDERR_MAX.saturating_sub(err.len()))),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            let result = match exit_code(&this.runtime, &session.exec_id).await {
                Ok(0) => Ok(Transfer {
                    sandbox: sb.id.clone(),
                    path: path.clone(),
                    size,
                    sha256: hex::encode(hash.finalize()),
                }),
                Ok(code) => Err(Error::FailedPrecondition(format!(
                    "archiving {path} failed (tar exit {code}): {}",
                    String::from_utf8_lossy(&err).trim()
                ))),
                Err(e) => Err(e),
            };
            let entry = match &result {
                Ok(t) => this.entry(
                    Some(&caller),
                    action::COPY_OUT,
                    &sb.experiment,
                    &sb.id,
                    Ok(format!("{} bytes from {} sha256 {}", t.size, t.path, t.sha256)),
                ),
                Err(e) => this.entry(Some(&caller), action::COPY_OUT, &sb.experiment, &sb.id, Err(e)),
            };
            let recorded = this.store.append_audit(entry);
            let last = match (result, recorded) {
                (Ok(t), Ok(rec)) => {
                    this.published(Some(rec));
                    Ok(CopyOut::Done(t))
                }
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            };
            let _ = tx.send(last).await;
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
