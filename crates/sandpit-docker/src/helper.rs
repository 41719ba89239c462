//! The helper every sandbox gets (crates/sandpit-helper): a static binary
//! bind-mounted read-only at [`PATH_IN_SANDBOX`], as Docker mounts its own
//! init. File transfer, killing a command's whole tree and port forwarding
//! run it over exec as the sandbox's user, so they work in any image, even
//! one holding nothing but the team's own static binary, and give the
//! sandbox no privilege it did not have: it is a program like any other,
//! under the same seccomp filter, capabilities (none) and limits.
//!
//! Why a mounted binary and not the image's tools or a daemon inside: the
//! image's `tar` and shell may be missing or different (busybox, GNU); an
//! agent that listens inside (E2B's envd) would be something more to reach
//! and to secure; and the archive API of this engine cannot write to a
//! sandbox's tmpfs or read-only root. Exec is how every other interaction
//! already reaches a sandbox.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use sandpit_helper::PATH_IN_SANDBOX;

/// The helper, built by this crate's build script.
pub const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sandpit_helper_static"));

/// A hash of [`BINARY`] (FNV-1a, from the build script), in its file name.
const HASH: &str = env!("SANDPIT_HELPER_HASH");

/// Writes the helper into `dir` (made if missing) as a read-only
/// executable named after its hash, unless that file is there already, and
/// removes other builds' helpers; its path. A running sandbox keeps the
/// binary it was given (its bind mount holds the file).
///
/// The embedded bytes are only read when the file is written: a daemon
/// that finds it in place never pages them in.
pub fn install(dir: &Path) -> std::io::Result<PathBuf> {
    let name = format!("sandpit-helper-{HASH}");
    let path = dir.join(&name);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == BINARY.len() as u64) {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let tmp = dir.join(format!(".sandpit-helper.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(BINARY)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o555))?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    release_pages();
    for old in std::fs::read_dir(dir)?.flatten() {
        let old_name = old.file_name();
        if old_name.to_string_lossy().starts_with("sandpit-helper-") && old_name != name.as_str() {
            let _ = std::fs::remove_file(old.path());
        }
    }
    Ok(path)
}

/// Gives back the pages of [`BINARY`] that writing it brought in: they
/// belong to the executable's read-only data, so the kernel reads them
/// from the file again if they are ever touched, and a long-running daemon
/// does not carry 1.4 MiB it used once.
fn release_pages() {
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
    let (start, end) = (BINARY.as_ptr() as usize, BINARY.as_ptr() as usize + BINARY.len());
    // Whole pages inside the slice only, so nothing beside it is touched.
    let (first, last) = (start.div_ceil(page) * page, end / page * page);
    if last > first {
        // SAFETY: the range lies inside a read-only mapping of the
        // executable that is never written; MADV_DONTNEED on such a
        // private file mapping only drops the process's copies, which are
        // read back from the file, unchanged, on the next access.
        unsafe {
            libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_DONTNEED);
        }
    }
}

/// The command line that runs `args` of the helper.
pub fn command<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> Vec<String> {
    std::iter::once(PATH_IN_SANDBOX.to_string()).chain(args.into_iter().map(Into::into)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_is_a_static_executable_installed_read_only_once() {
        assert_eq!(&BINARY[..4], b"\x7fELF");
        // A static binary has no interpreter (PT_INTERP) to find in the image.
        let u16_at = |o: usize| u16::from_le_bytes([BINARY[o], BINARY[o + 1]]) as usize;
        let phoff = u64::from_le_bytes(BINARY[0x20..0x28].try_into().unwrap()) as usize;
        let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
        assert!(phnum > 0);
        const PT_INTERP: u32 = 3;
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            let p_type = u32::from_le_bytes(BINARY[at..at + 4].try_into().unwrap());
            assert_ne!(p_type, PT_INTERP, "the helper must not need a loader from the image");
        }
        let dir = std::env::temp_dir().join(format!("sandpit-helper-install-{}", std::process::id()));
        let path = install(&dir).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), BINARY);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o555);
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        std::fs::write(dir.join("sandpit-helper-0123456789abcdef"), b"an older build").unwrap();
        assert_eq!(install(&dir).unwrap(), path);
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()), inode, "not rewritten");
        std::fs::remove_file(&path).unwrap();
        install(&dir).unwrap();
        assert!(!dir.join("sandpit-helper-0123456789abcdef").exists(), "another build's helper is removed");
        let out = std::process::Command::new(&path).arg("nonsense").output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
        // nnp: the command runs with no_new_privs set, as Docker's no-new-privileges gives.
        let status = |args: &[&str]| {
            let out = std::process::Command::new(&path).args(args).output().unwrap();
            String::from_utf8_lossy(&out.stdout).lines().find(|l| l.starts_with("NoNewPrivs:")).map(str::to_string)
        };
        assert_eq!(status(&["nnp", "--", "cat", "/proc/self/status"]).as_deref(), Some("NoNewPrivs:\t1"));
        assert_eq!(status(&["run", "t", "--", "cat", "/proc/self/status"]).as_deref(), Some("NoNewPrivs:\t0"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
