//! SQLite store: one file in the data directory, WAL mode. Each record is a
//! JSON body with the columns queries filter on beside it.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::{ListFilter, Store};
use crate::sandbox::Sandbox;
use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    experiment TEXT NOT NULL,
    state TEXT NOT NULL,
    ended INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_active ON sandboxes (ended, created_ms);
";

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        // WAL with synchronous=NORMAL survives a crash of the daemon without
        // losing a committed record, and keeps commits cheap.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode(body: String) -> Result<Sandbox> {
    serde_json::from_str(&body).map_err(|e| Error::Store(format!("corrupt sandbox record: {e}")))
}

impl Store for SqliteStore {
    fn put(&self, sb: &Sandbox) -> Result<()> {
        let body = serde_json::to_string(sb).map_err(|e| Error::Store(e.to_string()))?;
        self.conn().execute(
            "INSERT INTO sandboxes (id, team, experiment, state, ended, created_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET state = ?4, ended = ?5, body = ?7",
            params![
                sb.id,
                sb.team,
                sb.experiment,
                sb.state.as_str(),
                sb.state.is_ended(),
                crate::time::to_millis(sb.created_at),
                body
            ],
        )?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Sandbox>> {
        let body: Option<String> = self
            .conn()
            .query_row("SELECT body FROM sandboxes WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        body.map(decode).transpose()
    }

    fn list(&self, f: &ListFilter) -> Result<Vec<Sandbox>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT body FROM sandboxes
             WHERE (?1 OR ended = 0) AND (?2 IS NULL OR team = ?2) AND (?3 IS NULL OR experiment = ?3)
             ORDER BY created_ms, id",
        )?;
        let bodies = stmt
            .query_map(params![f.include_ended, f.team, f.experiment], |r| {
                r.get::<_, String>(0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        drop(stmt);
        drop(conn);
        bodies.into_iter().map(decode).collect()
    }

    fn instance_id(&self) -> Result<String> {
        let conn = self.conn();
        let existing: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'instance_id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| Error::Internal(e.to_string()))?;
        let id = hex::encode(b);
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('instance_id', ?1)",
            [&id],
        )?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::policy::{admit, Classification, CreateSandbox, HostPolicy, Profile, ProfileSet};
    use crate::sandbox::SandboxState;

    fn record(id: &str, team: &str) -> Sandbox {
        let p = Profile::parse(
            Path::new("p.toml"),
            "max_classification = \"OFFICIAL\"\nimages = [\"i\"]\n",
        )
        .unwrap();
        let req = CreateSandbox {
            experiment: "e".into(),
            profile: "p".into(),
            classification: Classification::Official,
            ttl: Some(Duration::from_secs(60)),
            image: None,
        };
        let plan = admit(
            &req,
            "o",
            team,
            &ProfileSet::from_profiles([p]),
            HostPolicy {
                max_classification: Classification::Official,
            },
            SystemTime::now(),
        )
        .unwrap();
        Sandbox::provisioning(id.into(), "local".into(), plan)
    }

    #[test]
    fn records_survive_reopen_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let id;
        {
            let s = SqliteStore::open(&path).unwrap();
            id = s.instance_id().unwrap();
            s.put(&record("sb-1", "a")).unwrap();
            let mut b = record("sb-2", "b");
            s.put(&b).unwrap();
            b.end(SandboxState::Deleted, "test", SystemTime::now());
            s.put(&b).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.instance_id().unwrap(), id);
        assert_eq!(s.get("sb-2").unwrap().unwrap().state, SandboxState::Deleted);
        assert!(s.get("sb-3").unwrap().is_none());
        let active = s.list(&ListFilter::default()).unwrap();
        assert_eq!(
            active.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["sb-1"]
        );
        let all = s
            .list(&ListFilter {
                include_ended: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 2);
        let b = s
            .list(&ListFilter {
                team: Some("b".into()),
                include_ended: true,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(b[0].id, "sb-2");
        assert_eq!(b[0], s.get("sb-2").unwrap().unwrap());
    }
}
