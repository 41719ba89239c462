//! Stopping every process of a container through its cgroup: a few writes
//! to the kernel, where a kill through the engine is a call queued behind
//! every other (100 sandboxes expiring at one instant waited 0.4-1.2 s for
//! their kills that way).
//!
//! cgroup v2 with `cgroup.kill` (Linux 5.14): one write kills the whole
//! cgroup. Otherwise (cgroup v1, or an older v2): freeze it (one write; no
//! process runs or forks from then on), SIGKILL every process it holds,
//! thaw it (the kills are delivered as each wakes, before it runs again).
//! The engine then sees its container exit, as after any kill.
//!
//! The container's cgroup is found where the engine's cgroupfs and systemd
//! drivers put it. A daemon that cannot see or write it (it runs in a
//! container of its own, or the engine uses another parent) gets `false`
//! and kills through the engine instead.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
/// Longest wait for a freeze to take hold before killing anyway.
const FREEZE_WAIT: Duration = Duration::from_millis(100);

/// Where a container's cgroup would be under each driver and version, with
/// the way to stop it there.
fn candidates(root: &Path, container_id: &str) -> [(PathBuf, Version); 4] {
    let scope = format!("docker-{container_id}.scope");
    [
        (root.join("docker").join(container_id), Version::V2),
        (root.join("system.slice").join(&scope), Version::V2),
        (root.join("freezer/docker").join(container_id), Version::V1),
        (root.join("freezer/system.slice").join(&scope), Version::V1),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Kills every process of each container in `container_ids` through its
/// cgroup, all in one blocking task: one result per container, `Ok(false)`
/// where its cgroup is not to be found here (nothing was done).
///
/// Where freezing is the way (cgroup v1, older v2), every cgroup is frozen
/// before any is waited on, so all of them stop within the writes, not one
/// freeze wait after another.
pub async fn kill_all(container_ids: Vec<String>) -> Vec<io::Result<bool>> {
    let n = container_ids.len();
    tokio::task::spawn_blocking(move || kill_all_in(Path::new(ROOT), &container_ids))
        .await
        .unwrap_or_else(|e| (0..n).map(|_| Err(io::Error::other(e.to_string()))).collect())
}

/// How one container's cgroup is stopped.
enum Stop {
    /// Not found here.
    Absent,
    /// cgroup v2's `cgroup.kill`: one write.
    Kill(PathBuf),
    /// Freeze, SIGKILL what it holds, thaw.
    Freeze(PathBuf, Freezer),
}

/// A freezer's control file, its values, and where and how it reports frozen.
#[derive(Clone, Copy)]
struct Freezer {
    control: &'static str,
    freeze: &'static str,
    thaw: &'static str,
    state: &'static str,
    frozen: &'static str,
}

const V2_FREEZER: Freezer =
    Freezer { control: "cgroup.freeze", freeze: "1", thaw: "0", state: "cgroup.events", frozen: "frozen 1" };
const V1_FREEZER: Freezer =
    Freezer { control: "freezer.state", freeze: "FROZEN", thaw: "THAWED", state: "freezer.state", frozen: "FROZEN" };

fn find(root: &Path, container_id: &str) -> Stop {
    if container_id.len() != 64 || !container_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Stop::Absent;
    }
    for (dir, version) in candidates(root, container_id) {
        match version {
            Version::V2 if dir.join("cgroup.kill").exists() => return Stop::Kill(dir),
            Version::V2 if dir.join("cgroup.freeze").exists() => return Stop::Freeze(dir, V2_FREEZER),
            Version::V1 if dir.join("freezer.state").exists() => return Stop::Freeze(dir, V1_FREEZER),
            _ => {}
        }
    }
    Stop::Absent
}

fn kill_all_in(root: &Path, container_ids: &[String]) -> Vec<io::Result<bool>> {
    let stops: Vec<Stop> = container_ids.iter().map(|id| find(root, id)).collect();
    // First what stops them: a kill, or a freeze (nothing in it runs or
    // forks from then on).
    let mut results: Vec<io::Result<bool>> = stops
        .iter()
        .map(|stop| match stop {
            Stop::Absent => Ok(false),
            Stop::Kill(dir) => std::fs::write(dir.join("cgroup.kill"), "1").map(|()| true),
            Stop::Freeze(dir, f) => std::fs::write(dir.join(f.control), f.freeze).map(|()| true),
        })
        .collect();
    // Then each frozen one emptied and thawed, whatever happens in between:
    // a cgroup left frozen would hang the engine's own kill and removal.
    let started = Instant::now();
    for (stop, result) in stops.iter().zip(results.iter_mut()) {
        if let (Stop::Freeze(dir, f), Ok(true)) = (stop, &*result) {
            let killed = kill_frozen(dir, f, started);
            let thawed = std::fs::write(dir.join(f.control), f.thaw);
            *result = killed.and(thawed).map(|()| true);
        }
    }
    results
}

/// SIGKILLs every process of the cgroup at `dir` once it is frozen (or
/// [`FREEZE_WAIT`] after `started`, the batch's freezes, has passed).
fn kill_frozen(dir: &Path, f: &Freezer, started: Instant) -> io::Result<()> {
    while started.elapsed() < FREEZE_WAIT {
        let s = std::fs::read_to_string(dir.join(f.state))?;
        if s.lines().any(|l| l.trim() == f.frozen) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for pid in std::fs::read_to_string(dir.join("cgroup.procs"))?.lines() {
        if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
            // SAFETY: kill(2) with a pid read from the cgroup and a valid
            // signal has no memory effects; a pid that has gone is ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "376d5ba05b0477de53b5bd2a006d62e6ed707c740c2984a58758a41b34c71e5c";

    fn kill_in(root: &Path, id: &str) -> bool {
        let mut r = kill_all_in(root, &[id.to_string()]);
        r.pop().unwrap().unwrap()
    }

    #[test]
    fn a_v2_cgroup_is_killed_with_one_write() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("system.slice").join(format!("docker-{ID}.scope"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.kill"), "").unwrap();
        assert!(kill_in(root.path(), ID));
        assert_eq!(std::fs::read_to_string(dir.join("cgroup.kill")).unwrap(), "1");
    }

    #[test]
    fn a_v1_cgroup_is_frozen_emptied_and_thawed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("freezer/docker").join(ID);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("freezer.state"), "THAWED").unwrap();
        // No process: pid 0 would be this process group, so none is listed.
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        assert!(kill_in(root.path(), ID));
        assert_eq!(std::fs::read_to_string(dir.join("freezer.state")).unwrap(), "THAWED", "thawed after");
    }

    #[test]
    fn no_cgroup_here_is_no_kill() {
        let root = tempfile::tempdir().unwrap();
        assert!(!kill_in(root.path(), ID));
    }

    #[test]
    fn a_batch_answers_for_each_container_in_order() {
        let root = tempfile::tempdir().unwrap();
        let other = "a".repeat(64);
        let v2 = root.path().join("docker").join(ID);
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cgroup.kill"), "").unwrap();
        let v1 = root.path().join("freezer/system.slice").join(format!("docker-{other}.scope"));
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("freezer.state"), "THAWED").unwrap();
        std::fs::write(v1.join("cgroup.procs"), "").unwrap();
        let ids = [ID.to_string(), "b".repeat(64), other];
        let r: Vec<bool> = kill_all_in(root.path(), &ids).into_iter().map(Result::unwrap).collect();
        assert_eq!(r, [true, false, true]);
        assert_eq!(std::fs::read_to_string(v2.join("cgroup.kill")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(v1.join("freezer.state")).unwrap(), "THAWED");
    }

    #[tokio::test]
    async fn only_container_ids_make_paths() {
        let r = kill_all(vec!["../../etc".into(), "g".repeat(64)]).await;
        assert!(r.iter().all(|r| matches!(r, Ok(false))), "{r:?}");
    }
}
