//! Signed checkpoints of the audit chain, as the daemon keeps them: the
//! signing key file, the checkpoint directory, the start check and when to
//! sign. The format is [`sandpit_core::audit::checkpoint`].
//!
//! At start the chain is verified in full, and against the newest checkpoint
//! in the directory if there is one. If it does not hold, that is logged as
//! an ERROR, `sandpit_audit_chain_ok` is 0 and this process signs nothing
//! more: a checkpoint over a broken chain would vouch for the tampering.
//! Otherwise a checkpoint is signed every `checkpoint_every` records, every
//! `checkpoint_interval` when records were appended, on request
//! (`GetCheckpoint`) and at shutdown; each new one is first checked to
//! follow on from what was verified before it.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::StreamExt;
use tokio::sync::watch;

use sandpit_core::audit::checkpoint::{Checkpoint, SigningKey, VerifierKey, KEY_BYTES};
use sandpit_core::audit::{AuditRecord, Hash, VerifyReport};
use sandpit_core::runtime::BoxStream;
use sandpit_core::store::Store;
use sandpit_core::{Error, Result};

/// The file in the checkpoint directory that always holds the newest checkpoint.
pub const LATEST: &str = "latest";
const FILE_PREFIX: &str = "checkpoint-";

/// What the checkpointer needs from configuration (`[audit]`), defaults resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub signing_key: PathBuf,
    pub checkpoint_dir: PathBuf,
    pub every: u64,
    pub interval: Duration,
    pub origin: String,
    pub key_name: String,
}

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file is there but unusable: the operator must fix it.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
}

/// `<signing_key>.pub`: the verifier key, for auditors.
pub fn public_key_path(signing_key: &Path) -> PathBuf {
    let mut p = signing_key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Reads the Ed25519 seed in `path` (one line, base64 of 32 bytes), or
/// creates it (mode 0600; its directory 0700 when it has to be made). An
/// existing file is never overwritten. Whether it was created, too.
pub fn load_or_create_key(path: &Path, name: &str) -> std::result::Result<(SigningKey, bool), KeyError> {
    let shown = path.display();
    let io = |what: &str, e: std::io::Error| KeyError::Io(format!("audit.signing_key {shown}: {what}: {e}"));
    let invalid = |why: String| KeyError::Invalid(format!("audit.signing_key {shown}: {why}"));
    let (seed, created) = match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.is_file() {
                return Err(invalid("is not a regular file".into()));
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(invalid(format!(
                    "is readable or writable by others (mode {mode:04o}); it holds a private key: chmod 600 it"
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|e| io("cannot read", e))?;
            let seed: [u8; KEY_BYTES] = B64
                .decode(text.trim())
                .ok()
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| invalid("is not one line holding the base64 of a 32-byte Ed25519 seed".into()))?;
            (seed, false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io(&format!("cannot create its directory {}", dir.display()), e))?;
            }
            let mut seed = [0u8; KEY_BYTES];
            getrandom::fill(&mut seed).map_err(|e| KeyError::Io(format!("audit.signing_key: no randomness: {e}")))?;
            // create_new: never replaces a key, even one written meanwhile.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io("cannot create", e))?;
            f.write_all(format!("{}\n", B64.encode(seed)).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| io("cannot write", e))?;
            (seed, true)
        }
        Err(e) => return Err(io("cannot read", e)),
    };
    let key = SigningKey::from_seed(name, &seed).map_err(|e| invalid(e.to_string()))?;
    Ok((key, created))
}

/// Writes `<signing_key>.pub` with the verifier key, unless it already says so.
pub fn write_public_key(signing_key: &Path, verifier: &VerifierKey) -> std::io::Result<PathBuf> {
    let path = public_key_path(signing_key);
    let content = format!("{verifier}\n");
    if std::fs::read_to_string(&path).is_ok_and(|c| c == content) {
        return Ok(path);
    }
    write_atomically(&path, content.as_bytes(), 0o644)?;
    Ok(path)
}

/// Writes a file whole under a temporary name, then renames it into place.
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
    f.write_all(content)?;
    // Explicitly: the umask (0077 under the systemd unit) would narrow it.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The file name of the checkpoint of `size` records: names sort by size.
pub fn file_name(size: u64) -> String {
    format!("{FILE_PREFIX}{size:020}")
}

/// The newest checkpoint in `dir` (the largest of the highest-numbered file
/// and `latest`), verified with `key`. None when there is none; an error
/// naming the file when one does not verify.
pub fn newest(dir: &Path, key: &VerifierKey) -> std::result::Result<Option<(PathBuf, Checkpoint, String)>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut highest: Option<String> = None;
    for entry in entries {
        let name = entry.map_err(|e| format!("{}: {e}", dir.display()))?.file_name().to_string_lossy().to_string();
        let numbered =
            name.strip_prefix(FILE_PREFIX).is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered && highest.as_ref().is_none_or(|h| name > *h) {
            highest = Some(name);
        }
    }
    let mut best: Option<(PathBuf, Checkpoint, String)> = None;
    for path in highest.map(|h| dir.join(h)).into_iter().chain([dir.join(LATEST)]) {
        let note = match std::fs::read_to_string(&path) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let cp = Checkpoint::open(&note, key).map_err(|e| format!("checkpoint {}: {e}", path.display()))?;
        if best.as_ref().is_none_or(|(_, b, _)| cp.size > b.size) {
            best = Some((path, cp, note));
        }
    }
    Ok(best)
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub checkpoint: Checkpoint,
    /// The signed note, as written to the directory.
    pub note: String,
}

/// The chain as the checkpointer last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStatus {
    /// The check at start has not finished.
    Starting,
    /// Verified through record `verified`; `latest` is the newest signed checkpoint.
    Healthy { verified: u64, latest: Option<Signed> },
    /// Verification failed: nothing more is signed.
    Broken(String),
}

#[derive(Debug)]
enum State {
    /// The start check has not finished.
    Starting,
    /// Verified up to `verified` (records, head); `latest` is the newest checkpoint.
    Healthy { verified: (u64, Hash), latest: Option<Signed> },
    /// The chain failed verification: nothing more is signed.
    Broken(String),
}

/// Signs checkpoints of one store's audit chain.
pub struct Checkpointer {
    store: Arc<dyn Store>,
    key: SigningKey,
    settings: Settings,
    /// Held while a checkpoint is checked and signed, so one is signed at a time.
    state: tokio::sync::Mutex<State>,
    ready: watch::Sender<bool>,
    /// Mirrors of the state for the schedule, which must not wait on a signing in progress.
    signed_size: AtomicU64,
    broken: AtomicBool,
    /// With several daemons on one store: whether this one holds the lease.
    /// Only the holder signs; the others answer with the newest checkpoint
    /// in the (shared) checkpoint directory.
    duty: std::sync::OnceLock<watch::Receiver<bool>>,
}

impl Checkpointer {
    /// Loads or creates the key (and its `.pub`, warning when that cannot be
    /// written) and makes the checkpoint directory.
    pub fn new(store: Arc<dyn Store>, settings: Settings) -> std::result::Result<Arc<Checkpointer>, KeyError> {
        let (key, created) = load_or_create_key(&settings.signing_key, &settings.key_name)?;
        if created {
            tracing::info!(path = %settings.signing_key.display(), "created the audit signing key");
        }
        match write_public_key(&settings.signing_key, key.verifier()) {
            Ok(p) => tracing::debug!(path = %p.display(), "verifier key written"),
            Err(e) => tracing::warn!(
                path = %public_key_path(&settings.signing_key).display(),
                error = %e,
                verifier_key = %key.verifier(),
                "could not write the audit verifier key beside the signing key"
            ),
        }
        let dir = &settings.checkpoint_dir;
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| KeyError::Io(format!("audit.checkpoint_dir {}: cannot create: {e}", dir.display())))?;
        }
        Ok(Arc::new(Checkpointer {
            store,
            key,
            settings,
            state: tokio::sync::Mutex::new(State::Starting),
            ready: watch::channel(false).0,
            signed_size: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            duty: std::sync::OnceLock::new(),
        }))
    }

    /// Signs only while `duty` says so (several daemons on one store: one
    /// signer at a time, the lease holder).
    pub fn sign_only_on_duty(&self, duty: watch::Receiver<bool>) {
        let _ = self.duty.set(duty);
    }

    fn on_duty(&self) -> bool {
        self.duty.get().is_none_or(|d| *d.borrow())
    }

    /// Off duty: the newest checkpoint the signer wrote to the directory.
    fn newest_signed(&self) -> Result<Option<Signed>> {
        let found = newest(&self.settings.checkpoint_dir, self.verifier()).map_err(Error::Internal)?;
        match found {
            Some((_, checkpoint, note)) => Ok(Some(Signed { checkpoint, note })),
            None => Err(Error::Unavailable(format!(
                "checkpoints are signed by the daemon that holds the lease, and none is in {} yet: try again shortly",
                self.settings.checkpoint_dir.display()
            ))),
        }
    }

    pub fn verifier(&self) -> &VerifierKey {
        self.key.verifier()
    }

    pub fn origin(&self) -> &str {
        &self.settings.origin
    }

    /// Where the chain stands, as this process last checked it: for the
    /// dashboard. Waits for a signing in progress.
    pub async fn status(&self) -> ChainStatus {
        match &*self.state().await {
            State::Starting => ChainStatus::Starting,
            State::Healthy { verified, latest } => {
                ChainStatus::Healthy { verified: verified.0, latest: latest.clone() }
            }
            State::Broken(reason) => ChainStatus::Broken(reason.clone()),
        }
    }

    async fn state(&self) -> tokio::sync::MutexGuard<'_, State> {
        self.state.lock().await
    }

    /// Verifies the chain, against the newest checkpoint in the directory if
    /// any, and decides whether this process may sign.
    pub async fn check_at_start(&self) {
        let result = self.start_report().await;
        let mut state = self.state().await;
        match result {
            Ok((report, newest)) if report.ok => {
                sandpit_core::metrics::global().audit_chain(true);
                let held = newest.as_ref().map(|(path, s)| (path.display().to_string(), s.checkpoint.size));
                tracing::info!(
                    records = report.records,
                    head = %hex::encode(report.head_hash),
                    checkpoint = %held.as_ref().map(|(p, size)| format!("{size} records ({p})")).unwrap_or_else(|| "none yet".into()),
                    "audit chain verified at start"
                );
                let latest = newest.map(|(_, s)| s);
                self.signed_size.store(latest.as_ref().map_or(0, |s| s.checkpoint.size), Ordering::Relaxed);
                *state = State::Healthy { verified: (report.records, report.head_hash), latest };
            }
            Ok((report, newest)) => {
                let against =
                    newest.map(|(p, s)| format!(" against checkpoint {} ({})", s.checkpoint.size, p.display()));
                let why = format!(
                    "{}{}: {}",
                    if report.first_bad_seq > 0 {
                        format!("record {}", report.first_bad_seq)
                    } else {
                        "the log".into()
                    },
                    against.unwrap_or_default(),
                    report.reason
                );
                *state = self.broken(why, "at start");
            }
            Err(why) => *state = self.broken(why, "at start"),
        }
        drop(state);
        self.ready.send_replace(true);
    }

    async fn start_report(&self) -> std::result::Result<(VerifyReport, Option<(PathBuf, Signed)>), String> {
        let newest = newest(&self.settings.checkpoint_dir, self.verifier())?;
        let Some((path, checkpoint, note)) = newest else {
            return self.store.verify_audit().await.map(|r| (r, None)).map_err(|e| e.to_string());
        };
        if checkpoint.origin != self.settings.origin {
            return Err(format!(
                "checkpoint {} is of the log '{}', not this one ('{}')",
                path.display(),
                checkpoint.origin,
                self.settings.origin
            ));
        }
        let report =
            self.store.verify_audit_against((checkpoint.size, checkpoint.head)).await.map_err(|e| e.to_string())?;
        Ok((report, Some((path, Signed { checkpoint, note }))))
    }

    /// Logs why the chain cannot be trusted; the state that signs nothing.
    fn broken(&self, why: String, when: &str) -> State {
        self.broken.store(true, Ordering::Relaxed);
        sandpit_core::metrics::global().audit_chain(false);
        tracing::error!("audit chain BROKEN ({when}): {why}; this process will sign no checkpoint over it");
        State::Broken(why)
    }

    /// A verification elsewhere (an auditor's) found the chain broken.
    pub async fn chain_broken(&self, report: &VerifyReport) {
        let mut state = self.state().await;
        if !matches!(*state, State::Broken(_)) {
            let why = if report.first_bad_seq > 0 {
                format!("record {}: {}", report.first_bad_seq, report.reason)
            } else {
                report.reason.clone()
            };
            *state = self.broken(why, "on verification");
        }
    }

    /// Signs a checkpoint of the chain as it is now, if records were
    /// appended since the newest one, after checking they follow on from
    /// what was verified. The newest checkpoint; None while the log is empty.
    pub async fn checkpoint(&self, why: &str) -> Result<Option<Signed>> {
        if !self.on_duty() {
            return self.newest_signed();
        }
        let mut state = self.state().await;
        let (verified, latest) = match &mut *state {
            State::Starting => return Err(Error::Unavailable("the audit chain is still being verified".into())),
            State::Broken(reason) => {
                return Err(Error::FailedPrecondition(format!(
                    "the audit chain failed verification ({reason}): no checkpoint is signed over it"
                )))
            }
            State::Healthy { verified, latest } => (verified, latest),
        };
        let report = match self.store.verify_audit_from(*verified).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "could not read the audit chain to checkpoint it");
                return Err(e);
            }
        };
        if !report.ok {
            let reason = format!("after record {}: {}", verified.0, report.reason);
            *state = self.broken(reason.clone(), why);
            return Err(Error::FailedPrecondition(format!(
                "the audit chain failed verification ({reason}): no checkpoint is signed over it"
            )));
        }
        *verified = (report.records, report.head_hash);
        if report.records == 0 || latest.as_ref().is_some_and(|l| l.checkpoint.size == report.records) {
            return Ok(latest.clone());
        }
        let checkpoint =
            Checkpoint { origin: self.settings.origin.clone(), size: report.records, head: report.head_hash };
        let note = checkpoint.sign(&self.key).map_err(|e| Error::Internal(format!("signing a checkpoint: {e}")))?;
        let dir = &self.settings.checkpoint_dir;
        let file = dir.join(file_name(checkpoint.size));
        let written = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .and_then(|()| write_atomically(&file, note.as_bytes(), 0o644))
            .and_then(|()| write_atomically(&dir.join(LATEST), note.as_bytes(), 0o644));
        tracing::info!(
            size = checkpoint.size,
            head = %hex::encode(checkpoint.head),
            file = %file.display(),
            why,
            note = ?note,
            "audit checkpoint signed"
        );
        if let Err(e) = written {
            tracing::error!(file = %file.display(), error = %e, "could not write the audit checkpoint to audit.checkpoint_dir");
            return Err(Error::Internal(format!("writing {}: {e}", file.display())));
        }
        sandpit_core::metrics::global().checkpoint_signed();
        self.signed_size.store(checkpoint.size, Ordering::Relaxed);
        let signed = Signed { checkpoint, note };
        *latest = Some(signed.clone());
        Ok(Some(signed))
    }

    /// Waits for the start check.
    async fn started(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    async fn checkpoint_async(self: &Arc<Self>, why: &'static str) -> Result<Option<Signed>> {
        self.started().await;
        self.checkpoint(why).await
    }

    /// A checkpoint of the chain as it is now (signed now if records were
    /// appended since the newest), for `GetCheckpoint`.
    pub async fn current(self: &Arc<Self>) -> Result<Signed> {
        self.checkpoint_async("request")
            .await?
            .ok_or_else(|| Error::FailedPrecondition("the audit log is empty: there is nothing to checkpoint".into()))
    }

    /// Runs the start check, then signs every `every` records (as `records`
    /// reports them) and every `interval` when records were appended, until
    /// `records` ends (at shutdown).
    pub async fn run(self: Arc<Self>, mut records: BoxStream<AuditRecord>) {
        self.check_at_start().await;
        let interval = self.settings.interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                r = records.next() => match r {
                    Some(r) if r.seq >= self.signed_size.load(Ordering::Relaxed).saturating_add(self.settings.every) => "records",
                    Some(_) => continue,
                    None => return,
                },
                _ = tick.tick() => "interval",
            };
            if self.broken.load(Ordering::Relaxed) {
                continue;
            }
            // Failures are logged where they happen.
            let _ = self.checkpoint_async(why).await;
        }
    }

    /// The final checkpoint, at shutdown (after in-flight calls ended).
    pub async fn finish(self: &Arc<Self>) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(Some(s)) = self.checkpoint_async("shutdown").await {
            tracing::info!(size = s.checkpoint.size, "the newest audit checkpoint covers the chain at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use sandpit_core::audit::{AuditEntry, Outcome};
    use sandpit_store_sqlite::SqliteStore;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            time: SystemTime::now(),
            actor: format!("actor-{i}"),
            role: "auditor".into(),
            action: "test".into(),
            target: String::new(),
            experiment: String::new(),
            sandbox: String::new(),
            outcome: Outcome::Succeeded,
            code: "OK".into(),
            reason: String::new(),
            source: "test".into(),
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        store: Arc<SqliteStore>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
            Fixture { dir, store }
        }

        fn settings(&self) -> Settings {
            Settings {
                signing_key: self.dir.path().join("keys/audit.key"),
                checkpoint_dir: self.dir.path().join("cp"),
                every: 3,
                interval: Duration::from_secs(3600),
                origin: "sandpit/test".into(),
                key_name: "sandpit-test".into(),
            }
        }

        async fn checkpointer(&self) -> Arc<Checkpointer> {
            let c = Checkpointer::new(Arc::clone(&self.store) as Arc<dyn Store>, self.settings()).unwrap();
            c.check_at_start().await;
            c
        }

        async fn append(&self, n: u64) {
            for i in 0..n {
                self.store.append_audit(entry(i)).await.unwrap();
            }
        }

        fn files(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(self.dir.path().join("cp"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .collect();
            v.sort();
            v
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_key_is_created_private_once_and_never_overwritten() {
        let f = Fixture::new();
        let path = f.settings().signing_key;
        let (key, created) = load_or_create_key(&path, "sandpit-test").unwrap();
        assert!(created);
        assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));
        let (again, created) = load_or_create_key(&path, "sandpit-test").unwrap();
        assert!(!created);
        assert_eq!(again.verifier(), key.verifier(), "the same key, read back");
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(B64.decode(content.trim()).unwrap().len(), 32);

        let pub_path = write_public_key(&path, key.verifier()).unwrap();
        assert_eq!(pub_path, f.dir.path().join("keys/audit.key.pub"));
        assert_eq!(VerifierKey::parse(&std::fs::read_to_string(&pub_path).unwrap()).unwrap(), *key.verifier());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_or_create_key(&path, "sandpit-test").unwrap_err().to_string();
        assert!(e.contains("audit.signing_key") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not a key\n").unwrap();
        let e = load_or_create_key(&path, "sandpit-test").unwrap_err();
        assert!(matches!(e, KeyError::Invalid(_)) && e.to_string().contains("base64 of a 32-byte"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n", "a bad key is not replaced");
        let e = load_or_create_key(f.dir.path(), "sandpit-test").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[tokio::test]
    async fn checkpoints_are_signed_written_and_sorted_by_size() {
        let f = Fixture::new();
        let c = f.checkpointer().await;
        assert_eq!(c.checkpoint("test").await.unwrap(), None, "nothing to sign in an empty log");
        f.append(5).await;
        let one = c.checkpoint("test").await.unwrap().unwrap();
        assert_eq!(one.checkpoint.size, 5);
        assert_eq!(Some(one.checkpoint.head), f.store.audit_hash_at(5).await.unwrap());
        assert_eq!(Checkpoint::open(&one.note, c.verifier()).unwrap(), one.checkpoint);
        assert_eq!(c.checkpoint("test").await.unwrap().unwrap(), one, "nothing new: the same checkpoint");
        f.append(7).await;
        let two = c.checkpoint("test").await.unwrap().unwrap();
        assert_eq!(two.checkpoint.size, 12);
        assert_eq!(f.files(), [file_name(5), file_name(12), LATEST.to_string()]);
        assert_eq!(file_name(12), "checkpoint-00000000000000000012");
        let cp = f.dir.path().join("cp");
        assert_eq!(std::fs::read_to_string(cp.join(LATEST)).unwrap(), two.note);
        assert_eq!(std::fs::read_to_string(cp.join(file_name(5))).unwrap(), one.note);
        assert_eq!(mode(&cp.join(LATEST)), 0o644);
        let (path, newest_cp, _) = newest(&cp, c.verifier()).unwrap().unwrap();
        assert_eq!((path, newest_cp), (cp.join(file_name(12)), two.checkpoint.clone()));

        // A checkpoint directory removed meanwhile is made again.
        std::fs::remove_dir_all(&cp).unwrap();
        f.append(1).await;
        assert_eq!(c.checkpoint("test").await.unwrap().unwrap().checkpoint.size, 13);
        assert_eq!(f.files(), [file_name(13), LATEST.to_string()]);
        let two = c.checkpoint("test").await.unwrap().unwrap();

        // A restart picks up where it was: the newest checkpoint holds.
        drop(c);
        let c = f.checkpointer().await;
        assert_eq!(c.checkpoint("test").await.unwrap().unwrap(), two);
    }

    #[tokio::test]
    async fn a_broken_or_rewritten_chain_is_never_signed() {
        let f = Fixture::new();
        let c = f.checkpointer().await;
        f.append(6).await;
        c.checkpoint("test").await.unwrap().unwrap();
        // Truncated, its head rewritten: the chain verifies alone; not against the checkpoint.
        let raw = rusqlite::Connection::open(f.dir.path().join("s.db")).unwrap();
        let h4 = hex::encode(f.store.audit_hash_at(4).await.unwrap().unwrap());
        raw.execute_batch(&format!(
            "DELETE FROM audit WHERE seq > 4; UPDATE meta SET value = '4' WHERE key = 'audit_head_seq';
             UPDATE meta SET value = '{h4}' WHERE key = 'audit_head_hash';"
        ))
        .unwrap();
        assert!(f.store.verify_audit().await.unwrap().ok);
        let before = f.files();
        let c = f.checkpointer().await;
        let e = c.checkpoint("test").await.unwrap_err();
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
        assert_eq!(f.files(), before, "no new checkpoint");

        // Tampering while running: caught before the next one is signed.
        let f = Fixture::new();
        let c = f.checkpointer().await;
        f.append(4).await;
        c.checkpoint("test").await.unwrap().unwrap();
        f.append(2).await;
        let raw = rusqlite::Connection::open(f.dir.path().join("s.db")).unwrap();
        raw.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 5", []).unwrap();
        let e = c.checkpoint("test").await.unwrap_err().to_string();
        assert!(e.contains("record 5 does not match its hash"), "{e}");
        f.append(1).await;
        assert!(c.checkpoint("test").await.is_err(), "and stays refused");
        assert_eq!(f.files(), [file_name(4), LATEST.to_string()]);
    }

    #[tokio::test]
    async fn a_checkpoint_of_another_log_or_key_stops_signing() {
        let f = Fixture::new();
        let c = f.checkpointer().await;
        f.append(3).await;
        c.checkpoint("test").await.unwrap().unwrap();
        drop(c);
        // Another origin under the same key.
        let other = Settings { origin: "sandpit/other".into(), ..f.settings() };
        let c = Checkpointer::new(Arc::clone(&f.store) as Arc<dyn Store>, other).unwrap();
        c.check_at_start().await;
        let e = c.checkpoint("test").await.unwrap_err().to_string();
        assert!(e.contains("not this one"), "{e}");
        // Another key name: the checkpoints in the directory do not verify.
        let renamed = Settings { key_name: "sandpit-renamed".into(), ..f.settings() };
        let c = Checkpointer::new(Arc::clone(&f.store) as Arc<dyn Store>, renamed).unwrap();
        c.check_at_start().await;
        let e = c.checkpoint("test").await.unwrap_err().to_string();
        assert!(e.contains("no signature by key sandpit-renamed+"), "{e}");
    }
}
