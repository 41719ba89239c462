//! File transfer in and out of sandboxes as tar archives, streamed through a
//! `tar` process inside the sandbox (the archive API of older engines cannot
//! reach the tmpfs scratch space). Allowed per profile.
//!
//! Every transfer is audited when it ends, however it ends: with the bytes
//! moved and their SHA-256, and why it stopped if it did not finish (the
//! client went away, the stream broke, the scratch space filled). Each runs
//! in a task of its own, so a client that hangs up cannot skip the record.
//!
//! A copy-in extracts into a staging directory inside its target, and a
//! second exec moves the result into place only once the upload ended whole
//! and tar accepted all of it: a transfer that fails half-way (a full
//! scratch space, a broken upload) leaves nothing behind.

use std::sync::Arc;

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

/// Runs `command` with `tar`, `mkdir`, `mv` and `rm` from the image, or
/// from busybox where the image lacks them. Arguments follow as `$1`, `$2`...
fn script(body: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
    let prelude = "run() { if command -v \"$1\" >/dev/null 2>&1; then \"$@\"; else busybox \"$@\"; fi; }\n";
    ["sh".to_string(), "-c".to_string(), format!("{prelude}{body}"), "sh".to_string()].into_iter().chain(args).collect()
}

/// Extracts stdin into a new staging directory `$1/$2`; on failure removes it.
const EXTRACT: &str = r#"
stage="$1/$2"
run mkdir -m 700 "$stage" || exit 125
run tar -x -f - -C "$stage" || { s=$?; run rm -rf "$stage"; exit $s; }
"#;

/// Moves a complete extraction from `$1/$2` into `$1`, entry by entry,
/// merging directories that exist; then removes the staging directory.
const MERGE: &str = r#"
merge() {
  for e in "$1"/* "$1"/.[!.]* "$1"/..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    t="$2/${e##*/}"
    if [ -d "$e" ] && [ ! -L "$e" ] && [ -d "$t" ] && [ ! -L "$t" ]; then
      merge "$e" "$t" || return 1
    elif [ -d "$t" ] && [ ! -L "$t" ]; then
      echo "cannot replace directory $t with a file" >&2; return 1
    else
      run mv -f "$e" "$t" || return 1
    fi
  done
}
merge "$1/$2" "$1"; s=$?
run rm -rf "$1/$2"
exit $s
"#;

/// Removes the staging directory `$1/$2` of a copy-in that did not complete.
const DISCARD: &str = r#"run rm -rf "$1/$2""#;

/// Archives `$2` (relative to `$1`) to stdout.
const ARCHIVE: &str = r#"run tar -c -f - -C "$1" "$2""#;

fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') || path.split('/').any(|p| p == "..") || path.contains('\0') || path.len() > 4096 {
        return Err(Error::invalid(
            "path",
            format!("{} must be an absolute path without '..', at most 4096 bytes", crate::error::quoted(path)),
        ));
    }
    Ok(())
}

/// What tar's complaint says went wrong.
fn tar_failed(what: &str, path: &str, code: i64, stderr: &[u8], scratch: u64) -> Error {
    let err = String::from_utf8_lossy(stderr);
    if err.contains("No space left on device") || err.contains("Disk quota exceeded") {
        return Error::ResourceExhausted(format!(
            "{what} {path} outgrew the sandbox's scratch space ({}); nothing was kept",
            crate::policy::size::format_size(scratch)
        ));
    }
    Error::FailedPrecondition(format!("{what} {path} failed (tar exit {code}): {}", err.trim()))
}

/// A name for a copy-in's staging directory, unique per transfer.
fn staging_name() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source is available");
    format!(".sandpit-copy-in-{}", hex::encode(b))
}

impl<R: Runtime> Manager<R> {
    /// The running sandbox the caller may transfer files with, if the profile allows `copy_in`/`copy_out`.
    async fn transfer_target(&self, caller: &Caller, id: &str, path: &str, inbound: bool) -> Result<(Sandbox, String)> {
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
        match (&sb.container_id, sb.state) {
            (Some(cid), SandboxState::Running) => {
                self.experiment_in_force(&sb).await?;
                let cid = cid.clone();
                Ok((sb, cid))
            }
            _ => Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str()))),
        }
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
                self.entry(
                    Some(caller),
                    act,
                    &sb.experiment,
                    &sb.id,
                    Ok(format!("{} {dir} {}", moved.describe(), t.path)),
                )
            }
            Err(e) => {
                let mut entry = self.entry(Some(caller), act, &sb.experiment, &sb.id, Err(e));
                // Started and cut short: a failure, never a denial, whatever the code.
                entry.outcome = crate::audit::Outcome::Failed;
                entry.reason = format!("ended after {}: {}", moved.describe(), entry.reason);
                entry
            }
        };
        self.record(entry).await;
    }

    /// Extracts the tar archive `data` into `path` inside the sandbox.
    pub async fn copy_in(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        path: &str,
        data: BoxStream<Result<Vec<u8>>>,
    ) -> Result<Transfer> {
        let (sb, cid) = match self.transfer_target(caller, id, path, true).await {
            Ok(t) => t,
            Err(e) => {
                self.record_error(caller, action::COPY_IN, &self.experiment_of(id).await, id, &e).await;
                return Err(e);
            }
        };
        let (this, caller, path) = (Arc::clone(self), caller.clone(), path.to_string());
        let task = tokio::spawn(async move {
            let mut moved = Tally::default();
            let result = this.extract(&sb, &cid, &path, data, &mut moved).await;
            this.record_transfer(&caller, action::COPY_IN, &sb, &result, &moved).await;
            result
        });
        task.await.map_err(|e| Error::Internal(format!("copy-in task: {e}")))?
    }

    async fn extract(
        &self,
        sb: &Sandbox,
        cid: &str,
        path: &str,
        mut data: BoxStream<Result<Vec<u8>>>,
        moved: &mut Tally,
    ) -> Result<Transfer> {
        let stage = staging_name();
        let args = || [path.to_string(), stage.clone()];
        let spec = ExecSpec { command: script(EXTRACT, args()), ..Default::default() };
        let (session, mut stdin) = self.runtime.exec_with_stdin(cid, spec).await?;
        // Feed the archive while collecting tar's complaints.
        let mut output = session.output;
        let feed = async {
            let fed = async {
                while let Some(chunk) = data.next().await {
                    let chunk = chunk.inspect_err(|e| tracing::debug!(error = %e, "copy-in upload failed"))?;
                    moved.add(&chunk);
                    stdin.write_all(&chunk).await.map_err(|e| Error::Internal(format!("copy-in: {e}")))?;
                }
                tracing::debug!(bytes = moved.bytes, "copy-in upload ended");
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
        let (fed, err, whole) = {
            tokio::pin!(feed, drain);
            tokio::select! {
                fed = &mut feed => (fed, drain.await, true),
                // tar ended before the upload did (it failed: a full scratch
                // space, a bad archive): stop feeding it, and say why it ended.
                err = &mut drain => (Ok(()), err, false),
            }
        };
        let extracted = match (fed, exit_code(&self.runtime, &session.exec_id).await) {
            // A broken upload is the failure to report, whatever tar made of its truncated input.
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(0)) if whole => Ok(()),
            (Ok(()), Ok(0)) => Err(Error::FailedPrecondition(format!(
                "extracting into {path}: tar ended before the upload did; nothing was kept"
            ))),
            (Ok(()), Ok(code)) => Err(tar_failed("extracting into", path, code, &err, sb.profile.resources.tmpfs)),
        };
        // Only a whole upload that tar accepted is moved into place; anything else is removed.
        let finish = if extracted.is_ok() { MERGE } else { DISCARD };
        let session = self.runtime.exec(cid, ExecSpec { command: script(finish, args()), ..Default::default() }).await;
        let finished = match session {
            Ok(session) => {
                let mut err = Vec::new();
                let mut output = session.output;
                while let Some(c) = output.next().await {
                    if let Ok(ExecChunk::Stderr(b)) = c {
                        err.extend(b.into_iter().take(STDERR_MAX.saturating_sub(err.len())));
                    }
                }
                match exit_code(&self.runtime, &session.exec_id).await? {
                    0 => Ok(()),
                    code => Err(Error::FailedPrecondition(format!(
                        "moving the extracted files into {path} failed (exit {code}): {}",
                        String::from_utf8_lossy(&err).trim()
                    ))),
                }
            }
            Err(e) => Err(e),
        };
        extracted?;
        finished?;
        Ok(Transfer { sandbox: sb.id.clone(), path: path.to_string(), size: moved.bytes, sha256: moved.sha256() })
    }

    /// Streams `path` out of the sandbox as a tar archive; the last item is
    /// the summary, recorded in the audit log before it is sent.
    pub async fn copy_out(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        path: &str,
    ) -> Result<BoxStream<Result<CopyOut>>> {
        let (sb, cid) = match self.transfer_target(caller, id, path, false).await {
            Ok(t) => t,
            Err(e) => {
                self.record_error(caller, action::COPY_OUT, &self.experiment_of(id).await, id, &e).await;
                return Err(e);
            }
        };
        let (dir, name) = match path.trim_end_matches('/').rsplit_once('/') {
            Some(("", name)) => ("/".to_string(), name.to_string()),
            Some((dir, name)) => (dir.to_string(), name.to_string()),
            None => ("/".to_string(), ".".to_string()),
        };
        let spec = ExecSpec { command: script(ARCHIVE, [dir, name]), ..Default::default() };
        let session = match self.runtime.exec(&cid, spec).await {
            Ok(s) => s,
            Err(e) => {
                self.record_error(caller, action::COPY_OUT, &sb.experiment, id, &e).await;
                return Err(e);
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let this = Arc::clone(self);
        let caller = caller.clone();
        let path = path.to_string();
        tokio::spawn(async move {
            let mut moved = Tally::default();
            let mut err = Vec::new();
            let mut output = session.output;
            let streamed = async {
                while let Some(c) = output.next().await {
                    match c? {
                        ExecChunk::Stdout(b) => {
                            moved.add(&b);
                            if tx.send(Ok(CopyOut::Chunk(b))).await.is_err() {
                                return Err(Error::Cancelled("the client went away".into()));
                            }
                        }
                        ExecChunk::Stderr(b) => err.extend(b.into_iter().take(STDERR_MAX.saturating_sub(err.len()))),
                    }
                }
                Ok(())
            }
            .await;
            let result = match streamed {
                Err(e) => Err(e),
                Ok(()) => match exit_code(&this.runtime, &session.exec_id).await {
                    Ok(0) => Ok(Transfer {
                        sandbox: sb.id.clone(),
                        path: path.clone(),
                        size: moved.bytes,
                        sha256: moved.sha256(),
                    }),
                    Ok(code) => Err(tar_failed("archiving", &path, code, &err, sb.profile.resources.tmpfs)),
                    Err(e) => Err(e),
                },
            };
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

    #[test]
    fn a_full_scratch_space_is_resource_exhausted() {
        let e = tar_failed("extracting into", "/tmp", 2, b"tar: x: Cannot write: No space left on device", 16 << 20);
        assert!(matches!(e, Error::ResourceExhausted(ref m) if m.contains("16MiB")), "{e:?}");
        let e = tar_failed("extracting into", "/tmp", 2, b"tar: bad header", 16 << 20);
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    }
}
