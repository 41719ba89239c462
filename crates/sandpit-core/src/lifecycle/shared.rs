//! Several daemons on one store ([`Shared`]): the lease decides which one
//! runs the duties that must not run twice, and notices keep every daemon's
//! watchers and deadlines up to date with what the others do.
//!
//! - Every daemon serves every call, follows the engine's events (a second
//!   record of one exit finds the record ended and does nothing) and
//!   schedules every live sandbox's deadlines.
//! - Only the lease holder acts on them: a deadline that falls due on a
//!   daemon off duty is dropped. The daemon that takes the lease puts every
//!   live deadline back from the store at once (an expiry that fell due
//!   during the handover runs then), and reconciles.
//! - Each daemon sends its events to the others in order; a daemon that
//!   receives one reads the record, keeps (or cancels) its deadlines and
//!   passes the event to its own watchers. Warm sandboxes the holder makes
//!   are told too (to no watcher): every daemon's pool holds them, and a
//!   claim on any daemon is a compare-and-set that one claim wins.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{broadcast, mpsc};

use super::Manager;
use crate::sandbox::{SandboxEvent, SandboxState};
use crate::store::{ListFilter, Notice, Shared};

/// Sends this daemon's events to the others, one at a time, in order.
pub(super) async fn publish_notices(shared: Arc<dyn Shared>, mut rx: mpsc::UnboundedReceiver<Notice>) {
    while let Some(notice) = rx.recv().await {
        shared.publish(&notice).await;
    }
}

impl Manager {
    /// Takes up the duties when the lease is taken, drops them when it is lost.
    pub(super) async fn follow_lease(self: Arc<Self>) {
        let mut duty = self.duty.clone();
        loop {
            if duty.wait_for(|held| *held).await.is_err() {
                return;
            }
            tracing::info!("on duty: this daemon now runs expiry, reconcile, warm-pool refill and host-rule repair");
            crate::metrics::global().on_duty(true);
            self.take_over().await;
            if duty.wait_for(|held| !*held).await.is_err() {
                return;
            }
            tracing::warn!("off duty: the lease was lost; another daemon takes over expiry, reconcile and refill");
            crate::metrics::global().on_duty(false);
        }
    }

    /// Every live deadline from the store (a past one falls due at once),
    /// the warm pools as recorded, then a reconcile pass.
    async fn take_over(&self) {
        match self.store.list(&ListFilter::default()).await {
            Ok(live) => {
                for sb in live.iter().filter(|sb| sb.state != SandboxState::Provisioning) {
                    self.schedule(sb);
                    self.egress_learn(sb);
                }
                self.load_pools(&live);
            }
            Err(e) => tracing::error!(error = %e, "taking over: cannot read the live sandboxes; reconcile retries"),
        }
        self.pools.wake.notify_one();
        self.reconcile_logged("took the lease").await;
    }

    /// Events of the other daemons: deadlines kept, watchers told.
    pub(super) async fn follow_notices(self: Arc<Self>, shared: Arc<dyn Shared>) {
        let mut rx = shared.notices();
        loop {
            match rx.recv().await {
                Ok(notice) => self.take_notice(notice).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "fell behind the other daemons' events; watchers here missed some, deadlines come back at the next reconcile");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn take_notice(&self, notice: Notice) {
        let sb = match self.store.get(&notice.sandbox).await {
            Ok(Some(sb)) => sb,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(sandbox = %notice.sandbox, error = %e, "cannot read a sandbox another daemon changed");
                return;
            }
        };
        // Another daemon's warm sandbox is this one's to claim too; one no
        // longer warm (claimed, drained, ended) leaves the pool.
        self.pools.remove(&sb.profile.name, &sb.id);
        if sb.state == SandboxState::Warm {
            self.schedule(&sb);
            self.pools.push(sb);
            return;
        }
        if sb.state.is_ended() {
            self.scheduler.cancel(&sb.id);
            self.untrack(&sb.id);
            self.egress_forget(&sb);
            self.runtime.disown(&sb).await;
        } else if sb.state != SandboxState::Provisioning {
            self.schedule(&sb);
            self.egress_learn(&sb);
        }
        let _ = self.events.send(SandboxEvent {
            kind: notice.kind,
            time: SystemTime::now(),
            sandbox: sb,
            message: notice.message,
        });
    }
}
