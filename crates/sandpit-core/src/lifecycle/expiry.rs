//! The expiry scheduler: one task holding every deadline, sleeping until the
//! earliest one or until a command arrives. No polling: a sandbox due at T is
//! handed to the manager at T. Scheduling an id again replaces its deadlines
//! (an extension); cancelling removes them (a delete).

use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use tokio::sync::mpsc;

/// What fell due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// The sandbox expires soon: warn watchers.
    Warn(String),
    /// The sandbox has expired: tear it down.
    Expire(String),
}

#[derive(Debug)]
enum Command {
    Schedule { id: String, expires_at: SystemTime, warn_at: Option<SystemTime> },
    Cancel(String),
}

/// Handle to the scheduler task. Dropping every handle stops the task.
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<Command>,
}

impl Scheduler {
    /// Starts the scheduler; due items are sent to `due`.
    pub fn spawn(due: mpsc::UnboundedSender<Due>) -> Scheduler {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, due));
        Scheduler { tx }
    }

    /// Sets (or replaces) a sandbox's deadlines. A warning time that has
    /// passed is dropped; an expiry that has passed falls due at once.
    pub fn schedule(&self, id: &str, expires_at: SystemTime, warn_at: Option<SystemTime>) {
        let _ = self.tx.send(Command::Schedule { id: id.to_string(), expires_at, warn_at });
    }

    pub fn cancel(&self, id: &str) {
        let _ = self.tx.send(Command::Cancel(id.to_string()));
    }
}

/// Kind sorts warnings before expiries at the same instant.
const WARN: u8 = 0;
const EXPIRE: u8 = 1;

#[derive(Default)]
struct Queue {
    order: BTreeSet<(SystemTime, u8, String)>,
    by_id: HashMap<String, Vec<(SystemTime, u8)>>,
}

impl Queue {
    fn cancel(&mut self, id: &str) {
        for (t, k) in self.by_id.remove(id).unwrap_or_default() {
            self.order.remove(&(t, k, id.to_string()));
        }
    }

    fn schedule(&mut self, id: String, expires_at: SystemTime, warn_at: Option<SystemTime>, now: SystemTime) {
        // The same deadlines again (reconcile puts back those of every
        // running sandbox) change nothing: in particular a warning that fell
        // due but has not been handed out yet is not dropped as past.
        if let Some(old) = self.by_id.get(&id) {
            let same_warning = warn_at.is_none_or(|w| old.contains(&(w, WARN)) || w <= now);
            if old.contains(&(expires_at, EXPIRE)) && same_warning {
                return;
            }
        }
        self.cancel(&id);
        let mut entries = vec![(expires_at, EXPIRE)];
        if let Some(w) = warn_at.filter(|w| *w > now && *w < expires_at) {
            entries.push((w, WARN));
        }
        for &(t, k) in &entries {
            self.order.insert((t, k, id.clone()));
        }
        self.by_id.insert(id, entries);
    }

    fn next(&self) -> Option<SystemTime> {
        self.order.first().map(|(t, _, _)| *t)
    }

    /// Removes and returns everything due at or before `now`.
    fn pop_due(&mut self, now: SystemTime) -> Vec<Due> {
        let mut due = Vec::new();
        while let Some((t, k, id)) = self.order.first().cloned() {
            if t > now {
                break;
            }
            self.order.remove(&(t, k, id.clone()));
            if let Some(v) = self.by_id.get_mut(&id) {
                v.retain(|e| *e != (t, k));
                if v.is_empty() {
                    self.by_id.remove(&id);
                }
            }
            due.push(if k == WARN { Due::Warn(id) } else { Due::Expire(id) });
        }
        due
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Command>, due: mpsc::UnboundedSender<Due>) {
    let mut q = Queue::default();
    loop {
        let sleep = async {
            match q.next() {
                Some(t) => tokio::time::sleep_until(crate::time::instant_at(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => return,
                Some(Command::Schedule { id, expires_at, warn_at }) => q.schedule(id, expires_at, warn_at, SystemTime::now()),
                Some(Command::Cancel(id)) => q.cancel(&id),
            },
            () = sleep => {
                for d in q.pop_due(SystemTime::now()) {
                    if due.send(d).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn queue_orders_replaces_and_cancels() {
        let t0 = SystemTime::now();
        let s = Duration::from_secs;
        let mut q = Queue::default();
        q.schedule("a".into(), t0 + s(10), Some(t0 + s(5)), t0);
        q.schedule("b".into(), t0 + s(3), None, t0);
        q.schedule("c".into(), t0 + s(4), None, t0);
        q.cancel("c");
        assert_eq!(q.pop_due(t0 + s(6)), [Due::Expire("b".into()), Due::Warn("a".into())]);
        // An extension replaces the old expiry.
        q.schedule("a".into(), t0 + s(20), Some(t0 + s(5)), t0 + s(6));
        assert!(q.pop_due(t0 + s(19)).is_empty());
        assert_eq!(q.pop_due(t0 + s(20)), [Due::Expire("a".into())]);
        assert!(q.next().is_none() && q.by_id.is_empty());
    }

    /// Reconcile putting a sandbox's deadlines back just after its warning
    /// fell due, before the warning was handed out, does not lose it (seen
    /// under load: an open exec never heard the warning).
    #[test]
    fn the_same_deadlines_again_keep_a_due_warning() {
        let t0 = SystemTime::now();
        let s = Duration::from_secs;
        let mut q = Queue::default();
        q.schedule("a".into(), t0 + s(10), Some(t0 + s(5)), t0);
        q.schedule("a".into(), t0 + s(10), Some(t0 + s(5)), t0 + s(6));
        assert_eq!(q.pop_due(t0 + s(6)), [Due::Warn("a".into())]);
        // Again after it was handed out: nothing more, the expiry stays.
        q.schedule("a".into(), t0 + s(10), Some(t0 + s(5)), t0 + s(7));
        assert!(q.pop_due(t0 + s(9)).is_empty());
        assert_eq!(q.pop_due(t0 + s(10)), [Due::Expire("a".into())]);
    }

    #[tokio::test]
    async fn fires_at_the_deadline_without_polling() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sched = Scheduler::spawn(tx);
        let start = SystemTime::now();
        sched.schedule("late", start + Duration::from_millis(300), None);
        sched.schedule("soon", start + Duration::from_millis(100), Some(start));
        sched.schedule("gone", start + Duration::from_millis(50), None);
        sched.cancel("gone");
        assert_eq!(rx.recv().await, Some(Due::Expire("soon".into())));
        let at = SystemTime::now().duration_since(start).unwrap();
        assert!(at >= Duration::from_millis(100) && at < Duration::from_millis(250), "{at:?}");
        assert_eq!(rx.recv().await, Some(Due::Expire("late".into())));
    }
}
