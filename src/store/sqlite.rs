//! SQLite store: one file in the data directory, WAL mode. Records are JSON
//! bodies with the columns queries filter on beside them; the audit log is a
//! table of its own, chained by hash, with its head kept in `meta`.
//!
//! Writes go through one connection (the chain is sequential by nature);
//! reads use a second one, so queries and verification never wait on writes.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use super::{AuditQuery, ExperimentFilter, ListFilter, Store, StoreStats};
use crate::audit::{self, AuditEntry, AuditRecord, Hash, Outcome, VerifyReport};
use crate::register::Experiment;
use crate::sandbox::Sandbox;
use crate::time::{from_millis, to_millis};
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
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    team TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    experiment TEXT NOT NULL,
    sandbox TEXT NOT NULL,
    outcome TEXT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time_ms);
CREATE INDEX IF NOT EXISTS audit_sandbox ON audit (sandbox);
CREATE INDEX IF NOT EXISTS audit_experiment ON audit (experiment);
";

struct Writer {
    conn: Connection,
    /// The chain's last (seq, hash), as committed.
    head: (u64, Hash),
}

pub struct SqliteStore {
    writer: Mutex<Writer>,
    reader: Mutex<Connection>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves the connection usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn decode<T: serde::de::DeserializeOwned>(body: String) -> Result<T> {
    serde_json::from_str(&body).map_err(|e| Error::Store(format!("corrupt record: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Store(e.to_string()))
}

fn read_head(conn: &Connection) -> Result<Option<(u64, Hash)>> {
    let seq: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'audit_head_seq'", [], |r| r.get(0)).optional()?;
    let hash: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'audit_head_hash'", [], |r| r.get(0)).optional()?;
    match (seq, hash) {
        (Some(s), Some(h)) => {
            let seq = s.parse().map_err(|_| Error::Store("corrupt audit head".into()))?;
            let mut hash = [0u8; 32];
            hex::decode_to_slice(h, &mut hash).map_err(|_| Error::Store("corrupt audit head".into()))?;
            Ok(Some((seq, hash)))
        }
        _ => Ok(None),
    }
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let blob = |i: usize| -> rusqlite::Result<Hash> {
        let v: Vec<u8> = r.get(i)?;
        v.try_into().map_err(|_| rusqlite::Error::InvalidColumnType(i, "hash".into(), rusqlite::types::Type::Blob))
    };
    let outcome: String = r.get(8)?;
    Ok(AuditRecord {
        seq: r.get::<_, i64>(0)? as u64,
        entry: AuditEntry {
            time: from_millis(r.get(1)?),
            actor: r.get(2)?,
            role: r.get(3)?,
            action: r.get(4)?,
            target: r.get(5)?,
            experiment: r.get(6)?,
            sandbox: r.get(7)?,
            // An unknown outcome cannot come from the daemon; keep verify able to flag it.
            outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Failed),
            code: r.get(9)?,
            reason: r.get(10)?,
            source: r.get(11)?,
        },
        prev_hash: blob(12)?,
        hash: blob(13)?,
    })
}

const AUDIT_COLUMNS: &str =
    "seq, time_ms, actor, role, action, target, experiment, sandbox, outcome, code, reason, source, prev_hash, hash";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path)?;
        // WAL with synchronous=NORMAL survives a crash of the daemon without
        // losing a committed record, and keeps commits cheap.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let head = read_head(&conn)?.unwrap_or((0, [0; 32]));
        let reader = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(SqliteStore { writer: Mutex::new(Writer { conn, head }), reader: Mutex::new(reader) })
    }

    /// Verifies the audit chain of a data directory's store without a
    /// running daemon, reading only.
    pub fn verify_file(path: &Path) -> Result<VerifyReport> {
        if !path.is_file() {
            return Err(Error::Store(format!("{}: no such store", path.display())));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        verify_conn(&conn)
    }

    /// The instance id of the store at `path`, reading only: `None` when
    /// there is no store there or it has no id yet.
    pub fn read_instance_id(path: &Path) -> Result<Option<String>> {
        if !path.is_file() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let has_meta: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
            [],
            |r| r.get(0),
        )?;
        if !has_meta {
            return Ok(None);
        }
        Ok(conn.query_row("SELECT value FROM meta WHERE key = 'instance_id'", [], |r| r.get(0)).optional()?)
    }

    /// Appends `entry` in `tx`, returning the record and the new head.
    fn append_in(tx: &Transaction<'_>, head: (u64, Hash), entry: AuditEntry) -> Result<AuditRecord> {
        let rec = audit::seal(head.0, head.1, entry);
        let e = &rec.entry;
        tx.prepare_cached(
            "INSERT INTO audit (seq, time_ms, actor, role, action, target, experiment, sandbox, outcome, code, reason, source, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?
        .execute(params![
            rec.seq as i64,
            to_millis(e.time),
            e.actor,
            e.role,
            e.action,
            e.target,
            e.experiment,
            e.sandbox,
            e.outcome.as_str(),
            e.code,
            e.reason,
            e.source,
            &rec.prev_hash[..],
            &rec.hash[..],
        ])?;
        tx.prepare_cached("INSERT INTO meta (key, value) VALUES ('audit_head_seq', ?1), ('audit_head_hash', ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
            .execute(params![rec.seq.to_string(), hex::encode(rec.hash)])?;
        Ok(rec)
    }

    /// Runs `change` and appends `audit` in one transaction.
    fn write(
        &self,
        audit: Option<AuditEntry>,
        change: impl FnOnce(&Transaction<'_>) -> Result<()>,
    ) -> Result<Option<AuditRecord>> {
        let mut w = lock(&self.writer);
        let head = w.head;
        let tx = w.conn.transaction()?;
        change(&tx)?;
        let rec = audit.map(|e| Self::append_in(&tx, head, e)).transpose()?;
        tx.commit()?;
        if let Some(r) = &rec {
            w.head = (r.seq, r.hash);
        }
        Ok(rec)
    }
}

fn verify_conn(conn: &Connection) -> Result<VerifyReport> {
    // One read transaction: the rows and the head are one snapshot.
    conn.execute_batch("BEGIN")?;
    let result = (|| {
        let head = read_head(conn)?.unwrap_or((0, [0; 32]));
        let mut stmt = conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY rowid"))?;
        let rows = stmt.query_map([], row_to_record)?;
        let report = audit::verify(rows, Some(head))?;
        Ok(report)
    })();
    conn.execute_batch("COMMIT")?;
    result
}

impl Store for SqliteStore {
    fn put(&self, sb: &Sandbox, audit: Option<AuditEntry>) -> Result<Option<AuditRecord>> {
        let body = encode(sb)?;
        self.write(audit, |tx| {
            tx.prepare_cached(
                "INSERT INTO sandboxes (id, team, experiment, state, ended, created_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(id) DO UPDATE SET state = ?4, ended = ?5, body = ?7",
            )?
            .execute(params![
                sb.id,
                sb.team,
                sb.experiment,
                sb.state.as_str(),
                sb.state.is_ended(),
                to_millis(sb.created_at),
                body
            ])?;
            Ok(())
        })
    }

    fn count_live(&self, team: &str) -> Result<u64> {
        let n: i64 = lock(&self.reader).query_row(
            "SELECT COUNT(*) FROM sandboxes WHERE ended = 0 AND team = ?1",
            [team],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn stats(&self) -> Result<StoreStats> {
        let conn = lock(&self.reader);
        let mut stmt =
            conn.prepare_cached("SELECT state, COUNT(*) FROM sandboxes WHERE ended = 1 GROUP BY state ORDER BY state")?;
        let ended = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let audit_records = read_head(&conn)?.map_or(0, |(seq, _)| seq);
        Ok(StoreStats { ended, audit_records })
    }

    fn get(&self, id: &str) -> Result<Option<Sandbox>> {
        let body: Option<String> =
            lock(&self.reader).query_row("SELECT body FROM sandboxes WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        body.map(decode).transpose()
    }

    fn list(&self, f: &ListFilter) -> Result<Vec<Sandbox>> {
        let bodies = {
            let conn = lock(&self.reader);
            let mut stmt = conn.prepare_cached(
                "SELECT body FROM sandboxes
                 WHERE (?1 OR ended = 0) AND (?2 IS NULL OR team = ?2) AND (?3 IS NULL OR experiment = ?3)
                 ORDER BY created_ms, id",
            )?;
            let rows = stmt.query_map(params![f.include_ended, f.team, f.experiment], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        bodies.into_iter().map(decode).collect()
    }

    fn instance_id(&self) -> Result<String> {
        let w = lock(&self.writer);
        let existing: Option<String> =
            w.conn.query_row("SELECT value FROM meta WHERE key = 'instance_id'", [], |r| r.get(0)).optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| Error::Internal(e.to_string()))?;
        let id = hex::encode(b);
        w.conn.execute("INSERT INTO meta (key, value) VALUES ('instance_id', ?1)", [&id])?;
        Ok(id)
    }

    fn put_experiment(&self, e: &Experiment, audit: Option<AuditEntry>) -> Result<Option<AuditRecord>> {
        let body = encode(e)?;
        self.write(audit, |tx| {
            tx.prepare_cached(
                "INSERT INTO experiments (id, team, status, created_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(id) DO UPDATE SET status = ?3, body = ?5",
            )?
            .execute(params![e.id, e.team, e.status.as_str(), to_millis(e.created_at), body])?;
            Ok(())
        })
    }

    fn get_experiment(&self, id: &str) -> Result<Option<Experiment>> {
        let body: Option<String> = lock(&self.reader)
            .query_row("SELECT body FROM experiments WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        body.map(decode).transpose()
    }

    fn list_experiments(&self, f: &ExperimentFilter) -> Result<Vec<Experiment>> {
        let bodies = {
            let conn = lock(&self.reader);
            let mut stmt = conn.prepare_cached(
                "SELECT body FROM experiments WHERE (?1 IS NULL OR team = ?1) AND (?2 IS NULL OR status = ?2)
                 ORDER BY created_ms, id",
            )?;
            let rows = stmt.query_map(params![f.team, f.status.map(|s| s.as_str())], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        bodies.into_iter().map(decode).collect()
    }

    fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        self.write(Some(entry), |_| Ok(()))?.ok_or_else(|| Error::Internal("audit append returned nothing".into()))
    }

    fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let conn = lock(&self.reader);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {AUDIT_COLUMNS} FROM audit
             WHERE seq > ?1 AND (?2 IS NULL OR time_ms >= ?2) AND (?3 IS NULL OR time_ms < ?3)
               AND (?4 IS NULL OR actor = ?4) AND (?5 IS NULL OR experiment = ?5)
               AND (?6 IS NULL OR sandbox = ?6) AND (?7 IS NULL OR action = ?7)
             ORDER BY seq LIMIT ?8"
        ))?;
        let rows = stmt.query_map(
            params![
                q.after_seq as i64,
                q.since.map(to_millis),
                q.until.map(to_millis),
                q.actor,
                q.experiment,
                q.sandbox,
                q.action,
                q.limit as i64
            ],
            row_to_record,
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn verify_audit(&self) -> Result<VerifyReport> {
        verify_conn(&lock(&self.reader))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::policy::{admit, Classification, CreateSandbox, HostPolicy, Profile, ProfileSet};
    use crate::register::NewExperiment;
    use crate::sandbox::SandboxState;

    fn experiment(team: &str) -> Experiment {
        let n = NewExperiment {
            title: "t".into(),
            purpose: "p".into(),
            ai_tools: vec![],
            models: vec![],
            classification: Classification::Official,
            datasets: vec![],
            risks: vec![],
            planned_end: None,
        };
        Experiment::new("exp-1".into(), "o", team, n, SystemTime::now()).unwrap()
    }

    fn record(id: &str, team: &str) -> Sandbox {
        let p = Profile::parse(Path::new("p.toml"), "max_classification = \"OFFICIAL\"\nimages = [\"i\"]\n").unwrap();
        let req = CreateSandbox {
            experiment: "exp-1".into(),
            profile: "p".into(),
            classification: Classification::Official,
            ttl: Some(Duration::from_secs(60)),
            image: None,
            datasets: vec![],
        };
        let plan = admit(
            &req,
            "o",
            team,
            Some(&experiment(team)),
            &ProfileSet::from_profiles([p]),
            &HostPolicy { max_classification: Classification::Official, datasets: vec![] },
            SystemTime::now(),
        )
        .unwrap();
        Sandbox::provisioning(id.into(), "local".into(), plan)
    }

    pub fn entry(actor: &str) -> AuditEntry {
        AuditEntry {
            time: SystemTime::now(),
            actor: actor.into(),
            role: "requester".into(),
            action: "test".into(),
            target: "sb-1".into(),
            experiment: "exp-1".into(),
            sandbox: "sb-1".into(),
            outcome: Outcome::Succeeded,
            code: "OK".into(),
            reason: String::new(),
            source: "test".into(),
        }
    }

    #[test]
    fn records_survive_reopen_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let id;
        {
            let s = SqliteStore::open(&path).unwrap();
            id = s.instance_id().unwrap();
            s.put(&record("sb-1", "a"), None).unwrap();
            let mut b = record("sb-2", "b");
            s.put(&b, None).unwrap();
            b.end(SandboxState::Deleted, "test", SystemTime::now());
            s.put(&b, Some(entry("x"))).unwrap();
        }
        assert_eq!(SqliteStore::read_instance_id(&path).unwrap(), Some(id.clone()));
        assert_eq!(SqliteStore::read_instance_id(&path.with_extension("absent")).unwrap(), None);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.instance_id().unwrap(), id);
        assert_eq!(s.get("sb-2").unwrap().unwrap().state, SandboxState::Deleted);
        assert!(s.get("sb-3").unwrap().is_none());
        let active = s.list(&ListFilter::default()).unwrap();
        assert_eq!(active.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["sb-1"]);
        let all = s.list(&ListFilter { include_ended: true, ..Default::default() }).unwrap();
        assert_eq!(all.len(), 2);
        let b = s.list(&ListFilter { team: Some("b".into()), include_ended: true, ..Default::default() }).unwrap();
        assert_eq!(b[0], s.get("sb-2").unwrap().unwrap());
        // The chain continues across a reopen.
        s.append_audit(entry("y")).unwrap();
        let report = s.verify_audit().unwrap();
        assert!(report.ok && report.records == 2, "{report:?}");
    }

    #[test]
    fn experiments_round_trip_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let e = experiment("a");
        s.put_experiment(&e, Some(entry("a"))).unwrap();
        assert_eq!(s.get_experiment("exp-1").unwrap().unwrap(), e);
        assert_eq!(s.list_experiments(&ExperimentFilter { team: Some("a".into()), status: None }).unwrap().len(), 1);
        assert!(s.list_experiments(&ExperimentFilter { team: Some("b".into()), status: None }).unwrap().is_empty());
    }

    #[test]
    fn audit_query_filters_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        for i in 0..10 {
            s.append_audit(entry(if i % 2 == 0 { "even" } else { "odd" })).unwrap();
        }
        let q = AuditQuery { actor: Some("even".into()), limit: 3, ..Default::default() };
        let page = s.query_audit(&q).unwrap();
        assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3, 5]);
        let next = s.query_audit(&AuditQuery { after_seq: 5, ..q }).unwrap();
        assert_eq!(next.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 9]);
    }

    #[test]
    fn tampering_with_the_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let s = SqliteStore::open(&path).unwrap();
        for _ in 0..5 {
            s.append_audit(entry("a")).unwrap();
        }
        drop(s);
        assert!(SqliteStore::verify_file(&path).unwrap().ok);
        let raw = Connection::open(&path).unwrap();
        raw.execute("UPDATE audit SET reason = 'edited' WHERE seq = 3", []).unwrap();
        let r = SqliteStore::verify_file(&path).unwrap();
        assert_eq!((r.ok, r.first_bad_seq), (false, 3));
    }
}
