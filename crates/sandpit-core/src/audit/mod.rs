//! The tamper-evident audit log: every decision and state change, allowed or
//! denied, with who, what, on what, the outcome and why.
//!
//! Records form a hash chain. Each record's hash is
//! `SHA-256(0x00 || prev_hash || canonical(record))` (the leaf prefix of
//! RFC 6962), where `canonical` is a length-prefixed encoding of every field
//! in a fixed order, the sequence number and time included. Editing a record
//! breaks its own hash; deleting or reordering one breaks the links or the
//! sequence; truncating the tail is caught by the head kept beside the chain.
//! Anyone who can rewrite the whole file can rewrite the whole chain (and its
//! head), so the daemon also signs [`checkpoint`]s of the chain, kept off the
//! host: [`verify_against`] fails a chain that no longer holds a checkpoint's
//! head at its size, however consistent it is with itself.

pub mod checkpoint;

pub mod refusals;

use std::time::SystemTime;

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// Who acted, when nobody called: the daemon's own lifecycle actions.
pub const DAEMON: &str = "sandpitd";

/// Action names: gRPC methods by their full path, daemon actions by a word.
pub mod action {
    pub const CREATE_SANDBOX: &str = "sandpit.v1.SandboxService/CreateSandbox";
    pub const GET_SANDBOX: &str = "sandpit.v1.SandboxService/GetSandbox";
    pub const LIST_SANDBOXES: &str = "sandpit.v1.SandboxService/ListSandboxes";
    pub const EXTEND_SANDBOX: &str = "sandpit.v1.SandboxService/ExtendSandbox";
    pub const DELETE_SANDBOX: &str = "sandpit.v1.SandboxService/DeleteSandbox";
    pub const WATCH_SANDBOXES: &str = "sandpit.v1.SandboxService/WatchSandboxes";
    pub const EXEC: &str = "sandpit.v1.SandboxService/Exec";
    pub const EXEC_INTERACTIVE: &str = "sandpit.v1.SandboxService/ExecInteractive";
    pub const PULL_IMAGE: &str = "sandpit.v1.SandboxService/PullImage";
    pub const COPY_IN: &str = "sandpit.v1.SandboxService/CopyIn";
    pub const COPY_OUT: &str = "sandpit.v1.SandboxService/CopyOut";
    pub const PORT_FORWARD: &str = "sandpit.v1.SandboxService/PortForward";
    pub const REGISTER_EXPERIMENT: &str = "sandpit.v1.RegisterService/RegisterExperiment";
    pub const GET_EXPERIMENT: &str = "sandpit.v1.RegisterService/GetExperiment";
    pub const LIST_EXPERIMENTS: &str = "sandpit.v1.RegisterService/ListExperiments";
    pub const APPROVE_EXPERIMENT: &str = "sandpit.v1.RegisterService/ApproveExperiment";
    pub const REJECT_EXPERIMENT: &str = "sandpit.v1.RegisterService/RejectExperiment";
    pub const CLOSE_EXPERIMENT: &str = "sandpit.v1.RegisterService/CloseExperiment";
    pub const ADD_RISK: &str = "sandpit.v1.RegisterService/AddRisk";
    pub const UPDATE_RISK: &str = "sandpit.v1.RegisterService/UpdateRisk";
    pub const RECORD_ASSESSMENT: &str = "sandpit.v1.RegisterService/RecordAssessment";
    pub const UPDATE_TRANSPARENCY: &str = "sandpit.v1.RegisterService/UpdateTransparency";
    pub const QUERY_AUDIT_LOG: &str = "sandpit.v1.AuditService/QueryAuditLog";
    pub const WATCH_AUDIT_LOG: &str = "sandpit.v1.AuditService/WatchAuditLog";
    pub const VERIFY_AUDIT_LOG: &str = "sandpit.v1.AuditService/VerifyAuditLog";
    pub const GET_CHECKPOINT: &str = "sandpit.v1.AuditService/GetCheckpoint";
    pub const EXPORT: &str = "sandpit.v1.AuditService/Export";
    pub const LIST_ACTIVE_EXPERIMENTS: &str = "sandpit.v1.AuditService/ListActiveExperiments";
    pub const LIST_PROFILES: &str = "sandpit.v1.ProfileService/ListProfiles";
    pub const GET_PROFILE: &str = "sandpit.v1.ProfileService/GetProfile";
    pub const VALIDATE_PROFILE: &str = "sandpit.v1.ProfileService/ValidateProfile";
    pub const RELOAD_PROFILES: &str = "sandpit.v1.ProfileService/ReloadProfiles";
    pub const LIST_POOLS: &str = "sandpit.v1.ProfileService/ListPools";

    /// The daemon provisioned a warm sandbox for a profile's pool.
    pub const POOL_FILL: &str = "pool-fill";
    /// The daemon removed a warm sandbox its pool no longer wants.
    pub const POOL_DRAIN: &str = "pool-drain";
    /// An exec ended (however it ended): its output's size and SHA-256.
    pub const EXEC_END: &str = "exec-end";
    /// A forwarded connection ended: its bytes each way.
    pub const PORT_FORWARD_END: &str = "port-forward-end";
    /// A closed experiment's workspace removed.
    pub const WORKSPACE_REMOVE: &str = "workspace-remove";
    /// The egress proxy let a sandbox's request through, or refused it.
    pub const EGRESS: &str = "egress";
    /// The daemon tore a sandbox down at its expiry.
    pub const EXPIRE: &str = "expire";
    /// The daemon tore down a sandbox whose create the client abandoned.
    pub const ABANDON: &str = "abandon";
    /// Closing an experiment tore down one of its sandboxes.
    pub const CLOSE_TEARDOWN: &str = "close-teardown";
    /// Rejecting an experiment tore down one of its sandboxes.
    pub const REJECT_TEARDOWN: &str = "reject-teardown";
    /// A sandbox's main process ended (exit code and OOM kill in the reason).
    pub const EXIT: &str = "exit";
    pub const OOM_KILL: &str = "oom-kill";
    /// Reconcile found a record whose container vanished.
    pub const LOST: &str = "reconcile-lost";
    /// Reconcile removed a labelled container with no record.
    pub const REMOVE_ORPHAN: &str = "reconcile-remove-orphan";
    /// Reconcile removed the container of an ended sandbox.
    pub const REMOVE_LEFTOVER: &str = "reconcile-remove-leftover";
    /// Reconcile failed a create that a crash of the daemon interrupted.
    pub const INTERRUPTED: &str = "reconcile-interrupted-create";
    /// Reconcile put back host firewall rules that someone else removed.
    pub const FIREWALL_RESTORED: &str = "reconcile-firewall-restored";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A request that changed state as asked.
    Succeeded,
    /// Refused by authentication, authorization or policy.
    Denied,
    /// Allowed, but it did not complete.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        [Outcome::Succeeded, Outcome::Denied, Outcome::Failed].into_iter().find(|o| o.as_str() == s)
    }
}

/// One event, as the code that caused it describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub time: SystemTime,
    pub actor: String,
    /// The role the actor acted in (empty for the daemon).
    pub role: String,
    /// The gRPC method (`sandpit.v1.SandboxService/CreateSandbox`) or daemon action (`expire`).
    pub action: String,
    /// The object acted on: a sandbox or experiment id.
    pub target: String,
    pub experiment: String,
    pub sandbox: String,
    pub outcome: Outcome,
    /// Canonical gRPC status code name: `OK`, `PERMISSION_DENIED`, ...
    pub code: String,
    pub reason: String,
    /// The caller's network address, or `daemon`.
    pub source: String,
}

/// Longest reason kept in a record; longer ones are cut, saying how long they were.
pub const REASON_MAX: usize = 4096;
/// Longest of any other field (names, ids, actions, codes, addresses).
pub const FIELD_MAX: usize = 256;

impl AuditEntry {
    /// The entry with every field within [`FIELD_MAX`] (the reason within
    /// [`REASON_MAX`]). Callers bound what they put in; this makes sure no
    /// record, whatever its source, holds unbounded input.
    pub fn bounded(mut self) -> AuditEntry {
        for f in [
            &mut self.actor,
            &mut self.role,
            &mut self.action,
            &mut self.target,
            &mut self.experiment,
            &mut self.sandbox,
            &mut self.code,
            &mut self.source,
        ] {
            cut(f, FIELD_MAX);
        }
        cut(&mut self.reason, REASON_MAX);
        self
    }

    /// Roughly how many bytes the entry takes, for bounding pages.
    pub fn approx_size(&self) -> usize {
        let fields = [
            &self.actor,
            &self.role,
            &self.action,
            &self.target,
            &self.experiment,
            &self.sandbox,
            &self.code,
            &self.reason,
            &self.source,
        ];
        // Hashes (hex), numbers, time and the field framing.
        200 + fields.iter().map(|f| f.len()).sum::<usize>()
    }
}

/// Cuts `s` to at most `max` bytes (on a character boundary), marking the cut.
fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let note = format!("… [cut: {} bytes]", s.len());
    let keep = max.saturating_sub(note.len());
    let at = (0..=keep).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    s.truncate(at);
    s.push_str(&note);
}

/// An entry as stored: numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub entry: AuditEntry,
    pub prev_hash: Hash,
    pub hash: Hash,
}

fn put(buf: &mut Vec<u8>, field: &[u8]) {
    buf.extend_from_slice(&(field.len() as u64).to_be_bytes());
    buf.extend_from_slice(field);
}

/// The canonical encoding of a record's content.
pub fn canonical(seq: u64, e: &AuditEntry) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&crate::time::to_millis(e.time).to_be_bytes());
    for f in [
        &e.actor,
        &e.role,
        &e.action,
        &e.target,
        &e.experiment,
        &e.sandbox,
        e.outcome.as_str(),
        &e.code,
        &e.reason,
        &e.source,
    ] {
        put(&mut b, f.as_bytes());
    }
    b
}

/// The hash of record `seq` chained after `prev`.
pub fn chain_hash(prev: &Hash, seq: u64, e: &AuditEntry) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(prev);
    h.update(canonical(seq, e));
    h.finalize().into()
}

/// Chains `entry` after the record with `prev_seq` and `prev_hash`.
pub fn seal(prev_seq: u64, prev_hash: Hash, entry: AuditEntry) -> AuditRecord {
    let seq = prev_seq + 1;
    let hash = chain_hash(&prev_hash, seq, &entry);
    AuditRecord { seq, entry, prev_hash, hash }
}

/// The result of recomputing the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub ok: bool,
    pub records: u64,
    /// The first record that does not verify (0 when ok, or when the tail is missing).
    pub first_bad_seq: u64,
    pub reason: String,
    pub head_hash: Hash,
}

/// Recomputes the chain over records in storage order. `head` is the
/// (length, hash) the store recorded for the chain's end, if it keeps one.
pub fn verify<E>(
    records: impl IntoIterator<Item = Result<AuditRecord, E>>,
    head: Option<(u64, Hash)>,
) -> Result<VerifyReport, E> {
    Ok(scan((0, [0; 32]), records, head, None)?.0)
}

/// As [`verify`], and the chain must also hold a checkpoint's head: record
/// `size` (of a chain at least that long) must hash to `checkpoint_head`.
/// A chain that is consistent with itself but was truncated, emptied or
/// rewritten (and re-chained) since the checkpoint fails here.
pub fn verify_against<E>(
    records: impl IntoIterator<Item = Result<AuditRecord, E>>,
    head: Option<(u64, Hash)>,
    (size, checkpoint_head): (u64, Hash),
) -> Result<VerifyReport, E> {
    let (report, at) = scan((0, [0; 32]), records, head, Some(size))?;
    if !report.ok {
        // The chain's own break is the more precise finding.
        return Ok(report);
    }
    let bad = |first_bad_seq: u64, reason: String| VerifyReport { ok: false, first_bad_seq, reason, ..report.clone() };
    Ok(match at {
        None => bad(
            0,
            format!(
                "the log has {} records but the checkpoint covers {size}: records {} to {size} are missing \
                 (the log was truncated, or its records deleted)",
                report.records,
                report.records + 1
            ),
        ),
        Some(h) if h != checkpoint_head => bad(
            size,
            format!(
                "record {size} does not hash to the checkpoint's head: the log up to record {size} was \
                 rewritten (or forked) after the checkpoint was signed"
            ),
        ),
        Some(_) => report,
    })
}

/// As [`verify`], for the records after `start` (`(seq, hash)` of a record
/// already verified): they must follow on from it. `records` are those with
/// a sequence number above `start.0`, in storage order.
pub fn verify_from<E>(
    start: (u64, Hash),
    records: impl IntoIterator<Item = Result<AuditRecord, E>>,
    head: Option<(u64, Hash)>,
) -> Result<VerifyReport, E> {
    Ok(scan(start, records, head, None)?.0)
}

/// Recomputes the chain from `start` on; also returns the hash of record
/// `at`, if the chain reaches it unbroken.
fn scan<E>(
    start: (u64, Hash),
    records: impl IntoIterator<Item = Result<AuditRecord, E>>,
    head: Option<(u64, Hash)>,
    at: Option<u64>,
) -> Result<(VerifyReport, Option<Hash>), E> {
    let (mut count, mut prev_hash) = start;
    let mut hash_at = (at == Some(count)).then_some(prev_hash);
    let bad = |seq: u64, reason: String, count: u64, head_hash: Hash| VerifyReport {
        ok: false,
        records: count,
        first_bad_seq: seq,
        reason,
        head_hash,
    };
    for r in records {
        let r = r?;
        count += 1;
        // Sequence numbers are 1, 2, 3, ... in storage order.
        if r.seq != count {
            return Ok((
                bad(
                    r.seq,
                    format!("record {} found where {count} was expected (deleted or reordered records)", r.seq),
                    count,
                    prev_hash,
                ),
                hash_at,
            ));
        }
        if r.prev_hash != prev_hash {
            let reason = format!("record {} does not link to its predecessor", r.seq);
            return Ok((bad(r.seq, reason, count, prev_hash), hash_at));
        }
        if chain_hash(&prev_hash, r.seq, &r.entry) != r.hash {
            let reason = format!("record {} does not match its hash (edited)", r.seq);
            return Ok((bad(r.seq, reason, count, prev_hash), hash_at));
        }
        prev_hash = r.hash;
        if at == Some(count) {
            hash_at = Some(prev_hash);
        }
    }
    if let Some((len, hash)) = head {
        if len != count || hash != prev_hash {
            return Ok((
                bad(
                    0,
                    format!("the chain has {count} records but its head says {len} (records removed from the end)"),
                    count,
                    prev_hash,
                ),
                hash_at,
            ));
        }
    }
    let report =
        VerifyReport { ok: true, records: count, first_bad_seq: 0, reason: String::new(), head_hash: prev_hash };
    Ok((report, hash_at))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use super::*;

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i),
            actor: "alice".into(),
            role: "requester".into(),
            action: "sandpit.v1.SandboxService/CreateSandbox".into(),
            target: format!("sb-{i}"),
            experiment: "exp-1".into(),
            sandbox: format!("sb-{i}"),
            outcome: Outcome::Succeeded,
            code: "OK".into(),
            reason: String::new(),
            source: "127.0.0.1:5000".into(),
        }
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 0..n {
            let (seq, prev) = out.last().map(|r| (r.seq, r.hash)).unwrap_or((0, [0; 32]));
            out.push(seal(seq, prev, entry(i)));
        }
        out
    }

    fn check(records: &[AuditRecord], head: Option<(u64, Hash)>) -> VerifyReport {
        verify(records.iter().cloned().map(Ok::<_, Infallible>), head).unwrap()
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let c = chain(50);
        let r = check(&c, Some((50, c[49].hash)));
        assert!(r.ok, "{r:?}");
        assert_eq!((r.records, r.head_hash), (50, c[49].hash));
        assert!(check(&[], Some((0, [0; 32]))).ok);
    }

    #[test]
    fn edits_deletions_reorders_and_truncation_are_caught() {
        let c = chain(10);
        let head = Some((10, c[9].hash));
        let mut edited = c.clone();
        edited[4].entry.reason = "nothing to see".into();
        assert_eq!(check(&edited, head).first_bad_seq, 5);
        let mut deleted = c.clone();
        deleted.remove(6);
        assert_eq!(check(&deleted, head).first_bad_seq, 8);
        let mut swapped = c.clone();
        swapped.swap(2, 3);
        assert_eq!(check(&swapped, head).first_bad_seq, 4);
        let r = check(&c[..9], head);
        assert!(!r.ok && r.reason.contains("removed from the end"), "{r:?}");
        // Renumbering after a deletion still breaks the links.
        let mut renumbered = deleted.clone();
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        assert_eq!(check(&renumbered, head).first_bad_seq, 7);
    }

    /// `c` with record `seq`'s reason changed and every record from it on re-chained.
    fn rewritten(c: &[AuditRecord], seq: u64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = c[..seq as usize - 1].to_vec();
        for r in &c[seq as usize - 1..] {
            let mut e = r.entry.clone();
            if r.seq == seq {
                e.reason = "nothing to see".into();
            }
            let (prev_seq, prev) = out.last().map(|r| (r.seq, r.hash)).unwrap_or((0, [0; 32]));
            out.push(seal(prev_seq, prev, e));
        }
        out
    }

    fn against(records: &[AuditRecord], checkpoint: (u64, Hash)) -> VerifyReport {
        let head = records.last().map(|r| (r.seq, r.hash)).unwrap_or((0, [0; 32]));
        verify_against(records.iter().cloned().map(Ok::<_, Infallible>), Some(head), checkpoint).unwrap()
    }

    #[test]
    fn a_checkpoint_catches_what_the_chain_alone_cannot() {
        let c = chain(10);
        let cp = (8, c[7].hash);
        for ok in [against(&c, cp), against(&c[..8], cp), against(&c, (0, [0; 32])), against(&[], (0, [0; 32]))] {
            assert!(ok.ok, "{ok:?}");
        }
        assert_eq!(against(&c, cp).head_hash, c[9].hash, "the report is about the whole chain");

        // Truncated (the head rewritten to match) and emptied: each verifies
        // on its own, neither holds the checkpoint.
        for (kept, name) in [(&c[..5], "truncated"), (&c[..0], "emptied")] {
            let head = kept.last().map(|r| (r.seq, r.hash)).unwrap_or((0, [0; 32]));
            assert!(check(kept, Some(head)).ok, "{name} verifies alone");
            let r = against(kept, cp);
            assert!(!r.ok && r.first_bad_seq == 0, "{name}: {r:?}");
            let missing = format!("records {} to 8 are missing", kept.len() + 1);
            assert!(r.reason.contains(&missing) && r.reason.contains("truncated"), "{name}: {}", r.reason);
        }

        // Rewritten before the checkpoint's size and re-chained: consistent, not the same.
        let rw = rewritten(&c, 3);
        assert!(check(&rw, Some((10, rw[9].hash))).ok);
        let r = against(&rw, cp);
        assert!(!r.ok && r.first_bad_seq == 8 && r.reason.contains("rewritten"), "{r:?}");
        // Rewritten after it: the checkpoint still holds (a later one would not).
        assert!(against(&rewritten(&c, 9), cp).ok);
        assert!(!against(&rewritten(&c, 9), (10, c[9].hash)).ok);

        // A broken chain is reported as broken, at its first bad record.
        let mut edited = c.clone();
        edited[4].entry.reason = "edited".into();
        let r = against(&edited, cp);
        assert_eq!((r.ok, r.first_bad_seq), (false, 5), "{r:?}");
        assert!(r.reason.contains("edited"), "{r:?}");
    }

    #[test]
    fn verifying_from_a_verified_record_checks_only_what_follows() {
        let c = chain(10);
        let from = |start: (u64, Hash), rest: &[AuditRecord], head: (u64, Hash)| {
            verify_from(start, rest.iter().cloned().map(Ok::<_, Infallible>), Some(head)).unwrap()
        };
        let r = from((6, c[5].hash), &c[6..], (10, c[9].hash));
        assert!(r.ok && r.records == 10 && r.head_hash == c[9].hash, "{r:?}");
        assert!(from((10, c[9].hash), &[], (10, c[9].hash)).ok, "nothing new");
        // Records that do not follow on from the verified one: re-chained from an earlier rewrite.
        let rw = rewritten(&c, 3);
        let r = from((6, c[5].hash), &rw[6..], (10, rw[9].hash));
        assert_eq!((r.ok, r.first_bad_seq), (false, 7), "{r:?}");
        let mut gap = c[6..].to_vec();
        gap.remove(1);
        assert_eq!(from((6, c[5].hash), &gap, (10, c[9].hash)).first_bad_seq, 9);
        assert!(!from((6, c[5].hash), &c[6..9], (10, c[9].hash)).ok, "the head says more");
    }

    #[test]
    fn bounded_entries_hold_no_unbounded_input() {
        let mut e = entry(1);
        e.target = "é".repeat(1_000_000);
        e.reason = "r".repeat(5_000_000);
        let b = e.bounded();
        assert!(b.target.len() <= FIELD_MAX && b.target.ends_with("[cut: 2000000 bytes]"), "{}", b.target.len());
        assert!(b.reason.len() <= REASON_MAX && b.reason.ends_with("[cut: 5000000 bytes]"));
        let small = entry(2);
        assert_eq!(small.clone().bounded(), small, "short entries are untouched");
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let base = entry(1);
        let h = chain_hash(&[0; 32], 1, &base);
        let variants: [fn(&mut AuditEntry); 11] = [
            |e| e.actor.push('x'),
            |e| e.role.push('x'),
            |e| e.action.push('x'),
            |e| e.target.push('x'),
            |e| e.experiment.push('x'),
            |e| e.sandbox.push('x'),
            |e| e.outcome = Outcome::Denied,
            |e| e.code.push('x'),
            |e| e.reason.push('x'),
            |e| e.source.push('x'),
            |e| e.time += Duration::from_millis(1),
        ];
        for v in variants {
            let mut e = base.clone();
            v(&mut e);
            assert_ne!(chain_hash(&[0; 32], 1, &e), h);
        }
        // Field boundaries are unambiguous.
        let mut a = base.clone();
        a.actor = "ab".into();
        a.role = "c".into();
        let mut b = base.clone();
        b.actor = "a".into();
        b.role = "bc".into();
        assert_ne!(chain_hash(&[0; 32], 1, &a), chain_hash(&[0; 32], 1, &b));
    }
}
