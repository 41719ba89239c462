//! Running a command in a sandbox: on record before it runs, its output
//! streamed within the profile's cap and the deadline, and how it ended on
//! record with what it sent out.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};

use super::{audit_log, transfer, Manager};
use crate::audit::action;
use crate::auth::Caller;
use crate::runtime::{BoxStream, ExecChunk, ExecSpec, Runtime, TerminalSize};
use crate::sandbox::{EventKind, SandboxEvent, SandboxState};
use crate::{Error, Result};

/// Longest command line kept in an exec's audit record.
const AUDIT_COMMAND_MAX: usize = 512;

/// One item of an interactive exec's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    Stdin(Vec<u8>),
    /// The end of standard input.
    CloseStdin,
    Resize(TerminalSize),
}

/// One item of an exec's output stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i64),
    /// From the daemon, not the command (the sandbox expires soon).
    Notice(String),
}

impl Manager {
    /// Runs a command in a running sandbox: its output, then its exit code.
    pub async fn exec(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        spec: ExecSpec,
        timeout: Option<Duration>,
    ) -> Result<BoxStream<Result<ExecOutput>>> {
        self.exec_interactive(caller, id, spec, timeout, None).await
    }

    /// [`Manager::exec`] with standard input (and, where `spec.tty` asks,
    /// a terminal) fed from `input`.
    pub async fn exec_interactive(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        mut spec: ExecSpec,
        timeout: Option<Duration>,
        input: Option<BoxStream<Result<ExecInput>>>,
    ) -> Result<BoxStream<Result<ExecOutput>>> {
        spec.stdin = input.is_some();
        let result = self.exec_inner(caller, id, spec, timeout, input).await;
        self.audit.failed(caller, action::EXEC, id, result).await
    }

    pub(super) async fn exec_inner(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        mut spec: ExecSpec,
        timeout: Option<Duration>,
        input: Option<BoxStream<Result<ExecInput>>>,
    ) -> Result<BoxStream<Result<ExecOutput>>> {
        let sb = self.visible(caller, id).await?;
        if !caller.may_use(&sb.team) {
            return Err(Error::PermissionDenied("exec needs the requester role in the sandbox's team".into()));
        }
        let (Some(_), SandboxState::Running) = (&sb.container_id, sb.state) else {
            return Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str())));
        };
        self.experiment_in_force(&sb).await?;
        // On record before the command runs: what was run, by whom.
        let mut command = spec.command.join(" ");
        if command.len() > AUDIT_COMMAND_MAX {
            let cut = (0..=AUDIT_COMMAND_MAX).rev().find(|i| command.is_char_boundary(*i)).unwrap_or(0);
            command.truncate(cut);
            command.push('…');
        }
        // Names the command's processes, so that all it started can be
        // found and killed if it must be stopped; in its records.
        let tag = crate::sandbox::random_id::<8>("exec");
        spec.tag = Some(tag.clone());
        let entry = audit_log::entry(
            Some(caller),
            action::EXEC,
            &sb.experiment,
            id,
            Ok(format!("command: {command}; tag {tag}")),
        );
        self.audit.published(Some(self.store.append_audit(entry).await?));
        // The sandbox stopping ends the command too. Docker ends an exec's
        // stream when runc's container dies, but not when a gVisor sandbox
        // does (its exec would wait for ever).
        let ended_sandbox = sandbox_ended(self.events.subscribe(), sb.id.clone());
        let mut warnings = self.events.subscribe();
        let late = late_notice(&sb, self.settings.expiry_warning);
        let session = self.runtime.exec(&sb, spec).await?;
        let started = tokio::time::Instant::now();
        let started_at = std::time::Instant::now();
        let deadline = started + timeout.unwrap_or(self.settings.exec_timeout);
        let cap = sb.profile.file_transfer.max_exec_output;
        let (tx, rx) = mpsc::channel(16);
        let this = Arc::clone(self);
        let (caller, sb) = (caller.clone(), sb.clone());
        let stop = self.shutdown_signal();
        let mut output = session.output;
        let (mut stdin, exec_id) = (session.input, session.exec_id.clone());
        let mut input = input;
        // Stream output until it ends, the deadline passes, the output cap is
        // reached, the daemon stops or the caller leaves; then the exit code.
        // Whichever it was goes on record with what the command sent out.
        self.tasks.spawn(async move {
            tokio::pin!(stop);
            tokio::pin!(ended_sandbox);
            let (mut stdout, mut stderr) = (transfer::Tally::default(), transfer::Tally::default());
            let mut fed = transfer::Tally::default();
            let mut warned = late.is_some();
            if let Some(n) = late {
                let _ = tx.send(Ok(ExecOutput::Notice(n))).await;
            }
            let ended: Result<i64> = async {
                loop {
                    let item = tokio::select! {
                        item = output.next() => item,
                        warning = expiring_soon(&mut warnings, &sb.id) => {
                            if std::mem::replace(&mut warned, true) {
                                continue;
                            }
                            if tx.send(Ok(ExecOutput::Notice(warning))).await.is_err() {
                                return Err(Error::Cancelled("the client went away".into()));
                            }
                            continue;
                        }
                        fed_in = next_input(&mut input) => {
                            match fed_in {
                                Some(Ok(ExecInput::Stdin(data))) => {
                                    fed.add(&data);
                                    if let Some(w) = stdin.as_mut() {
                                        // A command that stopped reading is not an error of the exec.
                                        if w.write_all(&data).await.is_err() {
                                            stdin = None;
                                        }
                                    }
                                }
                                Some(Ok(ExecInput::Resize(size))) => {
                                    if let Err(e) = this.runtime.exec_resize(&exec_id, size).await {
                                        tracing::debug!(error = %e, "resizing an exec's terminal failed");
                                    }
                                }
                                Some(Ok(ExecInput::CloseStdin)) | None => {
                                    if let Some(mut w) = stdin.take() {
                                        let _ = w.shutdown().await;
                                    }
                                    input = None;
                                }
                                Some(Err(e)) => return Err(e),
                            }
                            continue;
                        }
                        () = tokio::time::sleep_until(deadline) => {
                            return Err(Error::DeadlineExceeded("exec ran past its timeout".into()));
                        }
                        () = &mut stop => return Err(Error::ShuttingDown),
                        kind = &mut ended_sandbox => {
                            return Err(Error::FailedPrecondition(format!(
                                "the sandbox stopped ({kind:?}) while the command ran"
                            )));
                        }
                        () = tx.closed() => return Err(Error::Cancelled("the client went away".into())),
                    };
                    let (mut bytes, is_stdout) = match item {
                        None => break,
                        Some(Ok(ExecChunk::Stdout(b))) => (b, true),
                        Some(Ok(ExecChunk::Stderr(b))) => (b, false),
                        Some(Err(e)) => return Err(e),
                    };
                    // Exec output leaves the sandbox like a copy-out does: within the profile's cap.
                    let over = cap.and_then(|cap| {
                        let left = cap.saturating_sub(stdout.bytes + stderr.bytes);
                        (bytes.len() as u64 > left).then_some((cap, left))
                    });
                    if let Some((_, left)) = over {
                        bytes.truncate(left as usize);
                    }
                    let tally = if is_stdout { &mut stdout } else { &mut stderr };
                    tally.add(&bytes);
                    let out = if is_stdout { ExecOutput::Stdout(bytes) } else { ExecOutput::Stderr(bytes) };
                    if tx.send(Ok(out)).await.is_err() {
                        return Err(Error::Cancelled("the client went away".into()));
                    }
                    if let Some((cap, _)) = over {
                        return Err(Error::ResourceExhausted(format!(
                            "exec output reached profile '{}' max_exec_output of {}; the rest was withheld",
                            sb.profile.name,
                            crate::policy::size::format_size(cap)
                        )));
                    }
                }
                let code = exit_code(this.runtime.as_ref(), &session.exec_id).await?;
                // Killed (137), or not started (126): by the command's own
                // doing, or because the whole sandbox stopped (expiry, a
                // delete, its memory limit), which is said as such.
                if code == 128 + 9 || code == 126 {
                    if let Some(why) = this.stopped_under(&sb).await {
                        return Err(Error::FailedPrecondition(format!(
                            "the sandbox {why} while the command ran, and the command ended with it (exit {code})"
                        )));
                    }
                }
                // SIGKILLed while the sandbox runs on: the OOM killer's
                // doing is said as such (its event can trail the exit).
                if code == 128 + 9 && this.oom_since(&sb.id, started_at).await {
                    let limit = crate::policy::size::format_size(sb.profile.resources.memory);
                    let notice = format!(
                        "the command was killed by the kernel's OOM killer: sandbox {} reached its memory limit of {limit}",
                        sb.id
                    );
                    let _ = tx.send(Ok(ExecOutput::Notice(notice))).await;
                }
                Ok(code)
            }
            .await;
            // A command stopped before its end (timeout, output cap, the
            // client gone, the daemon stopping) is killed with everything it
            // started; one whose sandbox stopped has nothing left to kill.
            let killed = match &ended {
                Err(e) if !matches!(e, Error::FailedPrecondition(_)) => {
                    // Bounded: the stream must end even if the engine does not answer.
                    let kill = tokio::time::timeout(Duration::from_secs(15), this.runtime.exec_kill(&sb, &tag)).await;
                    Some(match kill {
                        Ok(done) => done.map_err(|e| e.to_string()),
                        Err(_) => Err("the kill did not finish within 15s".to_string()),
                    })
                }
                _ => None,
            };
            let took = crate::time::format_duration_ms(started.elapsed());
            let mut sent = format!("stdout {}; stderr {}; tag {tag}", stdout.describe(), stderr.describe());
            if fed.bytes > 0 {
                sent = format!("stdin {}; {sent}", fed.describe());
            }
            match killed {
                Some(Ok(n)) => sent.push_str(&format!("; killed {n} processes")),
                Some(Err(e)) => {
                    tracing::warn!(sandbox = %sb.id, exec = %tag, error = %e, "could not kill a stopped exec's processes");
                    sent.push_str(&format!("; its processes could not be killed: {e}"));
                }
                None => {}
            }
            let result = match &ended {
                Ok(code) => Ok(format!("exit {code} after {took}; {sent}")),
                Err(e) => Err(e),
            };
            let mut entry = audit_log::entry(Some(&caller), action::EXEC_END, &sb.experiment, &sb.id, result);
            if ended.is_err() {
                entry.reason = format!("ended after {took}, {sent}: {}", entry.reason);
            }
            this.record(entry).await;
            let _ = tx.send(ended.map(ExecOutput::Exit)).await;
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }
}

impl Manager {
    /// Whether the OOM killer struck in sandbox `id` since `since`, waiting
    /// a moment for an event that trails the killed command's exit.
    async fn oom_since(&self, id: &str, since: std::time::Instant) -> bool {
        for _ in 0..10 {
            let seen = self.oom_seen.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied();
            if seen.is_some_and(|t| t >= since) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Whether a running sandbox has stopped or is being stopped, and how;
    /// `None` while it runs on.
    async fn stopped_under(&self, sb: &crate::sandbox::Sandbox) -> Option<String> {
        // Expiry kills first and tears down after.
        if sb.expires_at <= std::time::SystemTime::now() {
            return Some("expired".into());
        }
        // A teardown holds the lock from its kill to its record: wait it out
        // (bounded: a teardown waiting on an unreachable engine can be long).
        let guard = tokio::time::timeout(Duration::from_secs(5), self.locks.lock(&sb.id)).await;
        if let Ok(Some(now)) = self.store.get(&sb.id).await {
            if now.state.is_ended() {
                return Some(format!("ended ({})", now.state.as_str()));
            }
        }
        drop(guard);
        match self.runtime.status(sb).await {
            Ok(Some(s)) if s.running => None,
            Ok(_) => Some("stopped".into()),
            Err(_) => None,
        }
    }
}

/// Resolves when sandbox `id` stops running (exits, expires, is deleted,
/// fails or is lost), with how; pending for ever otherwise.
pub(super) async fn sandbox_ended(mut events: broadcast::Receiver<SandboxEvent>, id: String) -> EventKind {
    loop {
        match events.recv().await {
            Ok(e) if e.sandbox.id == id && e.kind.is_end() => return e.kind,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// The next expiring-soon warning for sandbox `id`, as one line a person
/// can act on: when, and the command that extends it. Pending for ever
/// once the daemon's events end.
pub(super) async fn expiring_soon(events: &mut broadcast::Receiver<SandboxEvent>, id: &str) -> String {
    loop {
        match events.recv().await {
            Ok(e) if e.sandbox.id == id && e.kind == EventKind::ExpiringSoon => return expiry_notice(&e.sandbox),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// When sandbox `sb` expires and how to keep it, as one line a person can act on.
pub(super) fn expiry_notice(sb: &crate::sandbox::Sandbox) -> String {
    let left = sb.expires_at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    let at = crate::time::rfc3339(sb.expires_at);
    let ttl = crate::time::format_duration(sb.profile.lifetime.default_ttl);
    let id = &sb.id;
    format!(
        "sandbox {id} expires in {} (at {at}); keep it with: sandpit extend {id} --ttl {ttl}",
        crate::time::format_duration(left)
    )
}

/// The notice for a stream that opens when its sandbox's expiry warning
/// has already been given: it would otherwise never hear it.
pub(super) fn late_notice(sb: &crate::sandbox::Sandbox, warning: Duration) -> Option<String> {
    let left = sb.expires_at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    // A second of slack: the warning's timer can fire a moment before the
    // window opens by the wall clock, and a stream opened just then would
    // hear neither (the caller skips the event after a late notice).
    (left <= warning + Duration::from_secs(1)).then(|| expiry_notice(sb))
}

/// The next item of an interactive exec's input; pending for ever once
/// there is none (or never was).
async fn next_input(input: &mut Option<BoxStream<Result<ExecInput>>>) -> Option<Result<ExecInput>> {
    match input {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// An exec's exit code. Its output can end a moment before Docker marks it finished.
pub(super) async fn exit_code(runtime: &dyn Runtime, exec_id: &str) -> Result<i64> {
    for _ in 0..100 {
        if let Some(code) = runtime.exec_exit_code(exec_id).await? {
            return Ok(code);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::Internal("exec output ended but the command did not finish".into()))
}
