//! Port forwarding: one TCP connection, carried through the daemon's API to
//! a port on a sandbox's own loopback, where its profile lists the port.
//! Nothing is published on the host and the sandbox's network mode does not
//! matter (`none` included): the runtime reaches the port from inside.
//!
//! A forwarded connection carries data out as a copy-out does, so a profile
//! may list ports only where it allows copy-out (profile validation), and
//! every connection is on record twice: when it opens (or is refused), and
//! when it ends, with the bytes each way and why it ended.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{audit_log, exec, transfer::Tally, Manager};
use crate::audit::action;
use crate::auth::Caller;
use crate::policy::Rule;
use crate::runtime::BoxStream;
use crate::sandbox::SandboxState;
use crate::{Error, Result};

/// One item of a forwarded connection's way back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    Data(Vec<u8>),
    /// From the daemon, not the connection (the sandbox expires soon).
    Notice(String),
}

impl Manager {
    /// Connects `input` to `port` on sandbox `id`'s loopback; what the
    /// sandbox sends back.
    pub async fn port_forward(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        port: u16,
        input: BoxStream<Result<Vec<u8>>>,
    ) -> Result<BoxStream<Result<Forwarded>>> {
        let opened = self.port_forward_inner(caller, id, port).await;
        let (sb, conn) = self.audit.failed(caller, action::PORT_FORWARD, id, opened).await?;
        let entry =
            audit_log::entry(Some(caller), action::PORT_FORWARD, &sb.experiment, id, Ok(format!("port {port} opened")));
        self.audit.published(Some(self.store.append_audit(entry).await?));
        let (tx, rx) = mpsc::channel::<Result<Forwarded>>(16);
        let mut warnings = self.events.subscribe();
        let late = exec::late_notice(&sb, self.settings.expiry_warning);
        let (this, caller) = (Arc::clone(self), caller.clone());
        let stop = self.shutdown_signal();
        let ended_sandbox = exec::sandbox_ended(self.events.subscribe(), sb.id.clone());
        let started = tokio::time::Instant::now();
        self.tasks.spawn(async move {
            let (mut sent, mut received) = (Tally::default(), Tally::default());
            if let Some(n) = late {
                let _ = tx.send(Ok(Forwarded::Notice(n))).await;
            }
            let (mut upstream, mut output, mut input) = (conn.input, conn.output, input);
            tokio::pin!(stop, ended_sandbox);
            // Both directions until the sandbox's side closes; the client's
            // end of input only half-closes (the answer may still come).
            let mut client_done = false;
            let ended: Result<()> = loop {
                tokio::select! {
                    chunk = input.next(), if !client_done => match chunk {
                        Some(Ok(data)) => {
                            sent.add(&data);
                            if let Err(e) = upstream.write_all(&data).await {
                                break Err(Error::Unavailable(format!("the sandbox's side of port {port}: {e}")));
                            }
                        }
                        Some(Err(e)) => break Err(e),
                        None => {
                            client_done = true;
                            let _ = upstream.shutdown().await;
                        }
                    },
                    chunk = output.next() => match chunk {
                        Some(Ok(data)) => {
                            received.add(&data);
                            if tx.send(Ok(Forwarded::Data(data))).await.is_err() {
                                break Err(Error::Cancelled("the client went away".into()));
                            }
                        }
                        Some(Err(e)) => break Err(e),
                        None => break Ok(()),
                    },
                    warning = exec::expiring_soon(&mut warnings, &sb.id) => {
                        if tx.send(Ok(Forwarded::Notice(warning))).await.is_err() {
                            break Err(Error::Cancelled("the client went away".into()));
                        }
                    }
                    () = tx.closed() => break Err(Error::Cancelled("the client went away".into())),
                    kind = &mut ended_sandbox => {
                        break Err(Error::FailedPrecondition(format!("the sandbox stopped ({kind:?})")));
                    }
                    () = &mut stop => break Err(Error::ShuttingDown),
                }
            };
            let took = crate::time::format_duration_ms(started.elapsed());
            let moved = format!("port {port}: in {}; out {}; after {took}", sent.describe(), received.describe());
            let result = match &ended {
                Ok(()) => Ok(moved.clone()),
                Err(e) => Err(e),
            };
            let mut entry = audit_log::entry(Some(&caller), action::PORT_FORWARD_END, &sb.experiment, &sb.id, result);
            if ended.is_err() {
                entry.outcome = crate::audit::Outcome::Failed;
                entry.reason = format!("{moved}: {}", entry.reason);
            }
            this.record(entry).await;
            if let Err(e) = ended {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
    }

    async fn port_forward_inner(
        &self,
        caller: &Caller,
        id: &str,
        port: u16,
    ) -> Result<(crate::sandbox::Sandbox, crate::runtime::Connection)> {
        if port == 0 {
            return Err(Error::invalid("port", "must be a port from 1 to 65535"));
        }
        let sb = self.visible(caller, id).await?;
        if !caller.may_use(&sb.team) {
            return Err(Error::PermissionDenied(
                "port forwarding needs the requester role in the sandbox's team".into(),
            ));
        }
        if !sb.profile.port_forward.ports.contains(&port) {
            let listed = &sb.profile.port_forward.ports;
            let allowed = if listed.is_empty() {
                "no port".to_string()
            } else {
                format!("only {}", listed.iter().map(u16::to_string).collect::<Vec<_>>().join(", "))
            };
            return Err(Error::denied(
                Rule::PortForward,
                format!(
                    "profile '{}' allows forwarding to {allowed}, not {port} (port_forward.ports)",
                    sb.profile.name
                ),
            ));
        }
        if sb.state != SandboxState::Running || sb.container_id.is_none() {
            return Err(Error::FailedPrecondition(format!("sandbox '{id}' is {}, not running", sb.state.as_str())));
        }
        self.experiment_in_force(&sb).await?;
        let conn = self.runtime.port_connect(&sb, port).await?;
        Ok((sb, conn))
    }
}
