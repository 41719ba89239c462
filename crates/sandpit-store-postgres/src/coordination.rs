//! What several daemons on one database need of each other: the lease on
//! the duties one runs at a time, and notices of events.
//!
//! Each daemon keeps one connection of its own for both (not the pool's):
//! - it `LISTEN`s on [`CHANNEL`], and passes on every notice another daemon
//!   sent;
//! - it tries `pg_try_advisory_lock` every `lease_retry` until it gets the
//!   lease, and then checks the connection as often. The lock belongs to the
//!   connection's session: when the holder dies (`kill -9` included), the
//!   server ends the session and the lock is free at once, and the next
//!   daemon to try takes it within `lease_retry`. A holder that loses its
//!   connection gives up its duties at once, before another can take them.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_postgres_rustls::MakeRustlsConnect;

use sandpit_core::store::{Notice, Shared};

use crate::{db_error_text, CHANNEL, LOCK_LEASE, LOCK_SPACE};

/// Notices kept for slow receivers before they miss some.
const NOTICE_BUFFER: usize = 1024;
/// NOTIFY's payload limit is 8000 bytes; a notice's message is cut well below it.
const MESSAGE_MAX: usize = 2048;

/// A notice on the wire: who sent it, so a daemon skips its own.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    origin: String,
    #[serde(flatten)]
    notice: Notice,
}

pub struct Coordination {
    /// This process's token in the notices it sends.
    origin: String,
    lease: watch::Sender<bool>,
    notices: broadcast::Sender<Notice>,
    /// Sends notices (`pg_notify` on a pooled connection).
    pool: deadpool_postgres::Pool,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Coordination {
    pub(crate) fn start(
        config: tokio_postgres::Config,
        tls: MakeRustlsConnect,
        pool: deadpool_postgres::Pool,
        retry: Duration,
    ) -> Arc<Coordination> {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        let me = Arc::new(Coordination {
            origin: hex::encode(b),
            lease: watch::channel(false).0,
            notices: broadcast::channel(NOTICE_BUFFER).0,
            pool,
            task: std::sync::Mutex::new(None),
        });
        let task = tokio::spawn(run(config, tls, retry, me.origin.clone(), me.lease.clone(), me.notices.clone()));
        *me.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        me
    }

    /// Ends the connection: the lease (if held) is released, notices stop.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
        self.lease.send_replace(false);
    }
}

impl Drop for Coordination {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait::async_trait]
impl Shared for Coordination {
    fn lease(&self) -> watch::Receiver<bool> {
        self.lease.subscribe()
    }

    async fn publish(&self, notice: &Notice) {
        let mut notice = notice.clone();
        if notice.message.len() > MESSAGE_MAX {
            let mut cut = MESSAGE_MAX;
            while !notice.message.is_char_boundary(cut) {
                cut -= 1;
            }
            notice.message.truncate(cut);
        }
        let payload = match serde_json::to_string(&Wire { origin: self.origin.clone(), notice }) {
            Ok(p) => p,
            Err(e) => return tracing::warn!(error = %e, "cannot encode a notice"),
        };
        let sent = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload]).await.map_err(|e| db_error_text(&e))
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, "could not tell the other daemons of an event; their watchers miss it");
        }
    }

    fn notices(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }
}

/// Connects, listens and holds (or waits for) the lease; again after any failure.
async fn run(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    retry: Duration,
    origin: String,
    lease: watch::Sender<bool>,
    notices: broadcast::Sender<Notice>,
) {
    // Said once per outage, not at every retry.
    let mut said = false;
    loop {
        let mut connected = false;
        let Err(e) = hold(&config, tls.clone(), retry, &origin, &lease, &notices, &mut connected).await;
        if connected {
            said = false;
        }
        if !said {
            tracing::warn!(error = %e, "store coordination connection failed; retrying (no lease while it is down)");
            said = true;
        }
        if lease.send_replace(false) {
            tracing::warn!("gave up the lease on expiry, reconcile, pool refill and checkpoints (connection lost)");
        }
        tokio::time::sleep(retry).await;
    }
}

/// One connection's life: it only ever ends in why it failed. `connected`
/// says whether it got as far as listening.
async fn hold(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    retry: Duration,
    origin: &str,
    lease: &watch::Sender<bool>,
    notices: &broadcast::Sender<Notice>,
    connected: &mut bool,
) -> Result<std::convert::Infallible, String> {
    let (client, mut connection) = config.connect(tls).await.map_err(|e| db_error_text(&e))?;
    // The connection's messages: notifications are passed on; it ends when the connection does.
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<String>();
    let origin_owned = origin.to_string();
    let notices = notices.clone();
    let reader = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let why = loop {
            match messages.next().await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    match serde_json::from_str::<Wire>(n.payload()) {
                        Ok(w) if w.origin != origin_owned => {
                            let _ = notices.send(w.notice);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed notice"),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break db_error_text(&e),
                None => break "closed".to_string(),
            }
        };
        let _ = closed_tx.send(why);
    });
    let _reader = AbortOnDrop(reader);
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await.map_err(|e| db_error_text(&e))?;
    *connected = true;
    let try_lock = client.prepare("SELECT pg_try_advisory_lock($1, $2)").await.map_err(|e| db_error_text(&e))?;
    loop {
        if !*lease.borrow() {
            let row = client.query_one(&try_lock, &[&LOCK_SPACE, &LOCK_LEASE]).await.map_err(|e| db_error_text(&e))?;
            if row.get::<_, bool>(0) {
                tracing::info!("took the lease: this daemon runs expiry, reconcile, pool refill and checkpoints");
                lease.send_replace(true);
            }
        } else {
            // A holder that cannot reach the database within a retry gives the duties up.
            match tokio::time::timeout(retry.max(Duration::from_millis(500)), client.simple_query("")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(db_error_text(&e)),
                Err(_) => return Err("the database did not answer the lease check in time".into()),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            why = &mut closed => return Err(why.unwrap_or_else(|_| "closed".into())),
        }
    }
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
