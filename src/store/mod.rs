//! Durable sandbox records behind a small trait, so the lifecycle manager does
//! not care whether they live in a local SQLite file (today) or a shared
//! database (a fleet of daemons, later).

mod sqlite;

pub use sqlite::SqliteStore;

use crate::sandbox::Sandbox;
use crate::Result;

/// Which records [`Store::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this team's.
    pub team: Option<String>,
    pub experiment: Option<String>,
    /// Also ended sandboxes (expired, deleted, failed, lost).
    pub include_ended: bool,
}

pub trait Store: Send + Sync + 'static {
    /// Inserts or replaces a record.
    fn put(&self, sandbox: &Sandbox) -> Result<()>;
    fn get(&self, id: &str) -> Result<Option<Sandbox>>;
    /// Records matching `filter`, oldest first.
    fn list(&self, filter: &ListFilter) -> Result<Vec<Sandbox>>;
    /// A stable id for this daemon's data, put in the labels of everything it
    /// creates so that two daemons on one engine never touch each other's objects.
    fn instance_id(&self) -> Result<String>;
}
