//! The helper's subcommands: file trees in and out as tar, commands run and
//! killed with all they started, and a TCP connection to the loopback.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::tar::{self, Header, Kind};

fn context(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let path = path.display().to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {path}: {e}"))
}

// ---------------------------------------------------------------- pack

/// Writes `path` (a file, a symbolic link or a directory tree) as a tar
/// archive whose entries are named from `path`'s last component, as
/// `tar -C DIR NAME` names them. Other kinds of file are left out, each
/// said on stderr.
pub fn pack(path: &Path, out: &mut impl Write) -> io::Result<()> {
    let name = match path.file_name() {
        Some(n) => n.as_bytes().to_vec(),
        None => b".".to_vec(),
    };
    pack_entry(path, name, out)?;
    tar::write_end(out)
}

fn pack_entry(path: &Path, name: Vec<u8>, out: &mut impl Write) -> io::Result<()> {
    let meta = fs::symlink_metadata(path).map_err(context("reading", path))?;
    let mtime = meta.mtime().max(0) as u64;
    let mode = meta.mode() & 0o7777;
    let ft = meta.file_type();
    if ft.is_dir() {
        let mut dir_name = name.clone();
        dir_name.push(b'/');
        let h = Header { kind: Kind::Dir, path: dir_name, link: vec![], mode, size: 0, mtime };
        tar::write_header(out, &h)?;
        let mut children: Vec<OsString> = fs::read_dir(path)
            .map_err(context("listing", path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(context("listing", path))?;
        children.sort();
        for child in children {
            let child_name = [&name[..], b"/", child.as_bytes()].concat();
            pack_entry(&path.join(&child), child_name, out)?;
        }
    } else if ft.is_file() {
        let size = meta.len();
        let h = Header { kind: Kind::File, path: name, link: vec![], mode, size, mtime };
        tar::write_header(out, &h)?;
        let file = fs::File::open(path).map_err(context("opening", path))?;
        // Exactly `size` bytes, whatever the file does meanwhile: a file that
        // grew is cut at its size when listed, one that shrank is padded.
        let copied = io::copy(&mut file.take(size), out).map_err(context("reading", path))?;
        if copied < size {
            eprintln!("sandpit-helper: {} shrank while it was read; padded with zeros", path.display());
            io::copy(&mut io::repeat(0).take(size - copied), out)?;
        }
        out.write_all(&[0u8; 512][..tar::padding(size)])?;
    } else if ft.is_symlink() {
        let link = fs::read_link(path).map_err(context("reading", path))?;
        let h =
            Header { kind: Kind::Symlink, path: name, link: link.into_os_string().into_vec(), mode, size: 0, mtime };
        tar::write_header(out, &h)?;
    } else {
        eprintln!("sandpit-helper: left out {}: not a file, directory or symbolic link", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------- unpack

/// A name for a copy-in's staging directory, unique per transfer.
fn staging_name() -> OsString {
    let mut b = [0u8; 8];
    if fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        b = (t.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    OsString::from(format!(".sandpit-copy-in-{hex}"))
}

/// An archive path as a relative path with only normal components, or why not.
fn safe_relative(raw: &[u8]) -> io::Result<PathBuf> {
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("refused archive entry {:?}: absolute, or climbs out with '..'", p.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// Extracts a tar archive into `dest`, all or nothing: into a new staging
/// directory first, then moved into place entry by entry (directories that
/// exist are merged, files replaced). A failure at any point removes the
/// staging directory and leaves everything as it was.
///
/// As `docker cp` and `cp` do it: a `dest` that is a directory receives the
/// archive's entries; one that does not exist (and does not end in `/`) is
/// what the archive's one top entry is named, in `dest`'s parent directory.
pub fn unpack(dest: &Path, input: impl Read) -> io::Result<()> {
    let (dir, rename) = if dest.is_dir() {
        (dest.to_path_buf(), None)
    } else if dest.as_os_str().as_bytes().ends_with(b"/") || dest.file_name().is_none() {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("no such directory: {}", dest.display())));
    } else {
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no such directory: {}", parent.display())));
        }
        (parent.to_path_buf(), dest.file_name().map(OsStr::to_os_string))
    };
    let stage = dir.join(staging_name());
    fs::DirBuilder::new().mode(0o700).create(&stage).map_err(context("creating a staging directory in", &dir))?;
    let result = extract(&stage, input).and_then(|mut modes| {
        if let Some(name) = &rename {
            rename_top(&stage, name, dest, &mut modes)?;
        }
        merge(&stage, &dir)?;
        // Directory modes last, deepest first, so that a read-only directory
        // could be filled; on the merged paths.
        for (rel, mode) in modes.iter().rev() {
            let target = dir.join(rel);
            fs::set_permissions(&target, fs::Permissions::from_mode(*mode))
                .map_err(context("setting the mode of", &target))?;
        }
        Ok(())
    });
    let removed = remove_tree(&stage);
    result?;
    removed.map_err(context("removing", &stage))
}

/// Gives the one top entry extracted into `stage` the name `name`.
fn rename_top(stage: &Path, name: &OsStr, dest: &Path, modes: &mut [(PathBuf, u32)]) -> io::Result<()> {
    let top: Vec<OsString> = fs::read_dir(stage)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
    let [top] = top.as_slice() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} does not exist and the archive holds {} entries, not one: copy into a directory",
                dest.display(),
                top.len()
            ),
        ));
    };
    fs::rename(stage.join(top), stage.join(name))?;
    for (rel, _) in modes.iter_mut() {
        if let Ok(rest) = rel.strip_prefix(top) {
            *rel = Path::new(name).join(rest);
        }
    }
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;

/// Extracts into `stage`; returns directories' modes to apply once in place.
fn extract(stage: &Path, input: impl Read) -> io::Result<Vec<(PathBuf, u32)>> {
    let mut reader = tar::Reader::new(io::BufReader::with_capacity(256 << 10, input));
    let mut modes = Vec::new();
    // Made last, so that nothing is written through a link the archive made.
    let mut links = Vec::new();
    while let Some(h) = reader.next_header()? {
        let rel = safe_relative(&h.path)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = stage.join(&rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(context("creating", parent))?;
        }
        match h.kind {
            Kind::Dir => {
                if !target.is_dir() {
                    fs::create_dir(&target).map_err(context("creating", &target))?;
                }
                modes.push((rel, h.mode & 0o777));
            }
            Kind::File => {
                if target.symlink_metadata().is_ok() {
                    remove_tree(&target).map_err(context("replacing", &target))?;
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(context("creating", &target))?;
                io::copy(&mut reader.data(), &mut file).map_err(context("writing", &target))?;
                file.set_permissions(fs::Permissions::from_mode(h.mode & 0o777))
                    .map_err(context("setting the mode of", &target))?;
                let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(h.mtime));
            }
            Kind::Symlink => links.push((target, h.link)),
            Kind::Other(flag) => {
                eprintln!(
                    "sandpit-helper: left out {:?}: entry type {:?} is not a file, directory or symbolic link",
                    rel.display(),
                    flag as char
                );
            }
        }
    }
    // Some writers pad to a record size: read to the end so the writer is not cut off.
    io::copy(&mut reader.into_inner(), &mut io::sink())?;
    for (target, link) in links {
        if target.symlink_metadata().is_ok() {
            remove_tree(&target).map_err(context("replacing", &target))?;
        }
        std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target).map_err(context("creating", &target))?;
    }
    Ok(modes)
}

use std::os::unix::fs::OpenOptionsExt;

/// Moves everything in `from` into `to`: directories present in both are
/// merged, anything else replaces what `to` has of that name, except that a
/// directory is never replaced by something else.
fn merge(from: &Path, to: &Path) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(from).map_err(context("listing", from))?.collect::<io::Result<_>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for e in entries {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let src_dir = e.file_type()?.is_dir();
        let dst_dir = dst.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false);
        match (src_dir, dst_dir) {
            (true, true) => merge(&src, &dst)?,
            (false, true) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("cannot replace directory {} with a file", dst.display()),
                ));
            }
            _ => fs::rename(&src, &dst).map_err(context("moving into place", &dst))?,
        }
    }
    Ok(())
}

/// Removes a file or a tree, making directories writable on the way.
fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o700));
    for e in fs::read_dir(path)? {
        remove_tree(&e?.path())?;
    }
    fs::remove_dir(path)
}

// ---------------------------------------------------------------- run and kill

/// The libc calls std does not wrap.
mod sys {
    extern "C" {
        pub fn setsid() -> i32;
        pub fn getpid() -> i32;
        pub fn kill(pid: i32, sig: i32) -> i32;
        pub fn prctl(option: i32, ...) -> i32;
    }
}

const PR_SET_NO_NEW_PRIVS: i32 = 38;

/// Sets no_new_privs on the helper, then replaces it with `command`: the
/// command and everything it starts can never gain privileges through
/// execve (set-user-ID files, file capabilities), as Docker's
/// `no-new-privileges` gives a container's processes. For engines that
/// cannot ask for it (a Swarm service on API 1.41), every process of the
/// sandbox starts through this.
pub fn no_new_privs(command: &[&OsStr]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) only sets a flag of
    // this process; it touches no memory of ours.
    if unsafe { sys::prctl(PR_SET_NO_NEW_PRIVS, 1u64, 0u64, 0u64, 0u64) } != 0 {
        eprintln!("sandpit-helper: cannot set no_new_privs: {}", io::Error::last_os_error());
        return ExitCode::from(126);
    }
    let err = std::process::Command::new(command[0]).args(&command[1..]).exec();
    eprintln!("sandpit-helper: cannot run {:?}: {err}", command[0]);
    ExitCode::from(if err.kind() == io::ErrorKind::NotFound { 127 } else { 126 })
}

const SIGKILL: i32 = 9;

/// Replaces the helper with `command`, marked with `tag` in its
/// environment and, without a terminal, leading a new session.
pub fn run(tag: &str, tty: bool, command: &[&OsStr]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    // With a terminal, Docker made the exec a session leader with the
    // terminal as its own; a new session would lose it.
    if !tty {
        // SAFETY: setsid has no memory effects; it fails harmlessly (EPERM)
        // if the helper already leads a process group, and the tag still marks it.
        unsafe { sys::setsid() };
    }
    let err = std::process::Command::new(command[0]).args(&command[1..]).env(crate::TAG_VAR, tag).exec();
    eprintln!("sandpit-helper: cannot run {:?}: {err}", command[0]);
    // As shells say it: 127 not found, 126 found but not runnable.
    ExitCode::from(if err.kind() == io::ErrorKind::NotFound { 127 } else { 126 })
}

/// A process as /proc shows it: whether it carries the tag, and its session.
fn scan(tag: &[u8]) -> Vec<(i32, bool, i32)> {
    // SAFETY: getpid cannot fail and touches no memory.
    let me = unsafe { sys::getpid() };
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let tagged = fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|b| *b == 0).any(|v| v == tag))
            .unwrap_or(false);
        // stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses.
        let session = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(3)?.parse().ok()))
            .unwrap_or(0);
        out.push((pid, tagged, session));
    }
    out
}

/// Kills every process marked with `tag` and every process in a session
/// one of them leads; returns how many. Scans again until none is left, so
/// that what forked between two looks goes too (the sessions of leaders
/// already killed are remembered: their members keep the leader's id).
/// SIGKILL only: a process never stays stopped if this is cut short.
pub fn kill(tag: &str) -> io::Result<usize> {
    let tag = format!("{}={tag}", crate::TAG_VAR).into_bytes();
    let mut killed = std::collections::BTreeSet::new();
    let mut sessions = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let procs = scan(&tag);
        sessions.extend(procs.iter().filter(|(pid, tagged, sid)| *tagged && pid == sid).map(|p| p.0));
        let targets: Vec<i32> =
            procs.iter().filter(|(_, tagged, sid)| *tagged || sessions.contains(sid)).map(|p| p.0).collect();
        if targets.is_empty() {
            break;
        }
        for pid in targets {
            // SAFETY: kill(2) on a pid; no memory is touched.
            unsafe { sys::kill(pid, SIGKILL) };
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(killed.len())
}

// ---------------------------------------------------------------- connect

/// Joins stdin and stdout to a TCP connection to 127.0.0.1:`port` until
/// the connection ends.
pub fn connect(port: u16) -> io::Result<()> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| io::Error::new(e.kind(), format!("connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut upstream = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let _ = io::copy(&mut stdin, &mut upstream);
        let _ = upstream.shutdown(std::net::Shutdown::Write);
    });
    let mut down = stream;
    let mut stdout = io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match down.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sandpit-helper-{name}-{}", std::process::id()));
        let _ = remove_tree(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_tree_packed_and_unpacked_is_the_same_tree() {
        let src = tmp("src");
        let tree = src.join("work");
        fs::create_dir_all(tree.join("sub/deeper")).unwrap();
        fs::write(tree.join("a.csv"), b"x,y\n").unwrap();
        fs::write(tree.join("sub/deeper/big.bin"), vec![5u8; 100_000]).unwrap();
        fs::write(tree.join(format!("sub/{}", "l".repeat(120))), b"long name").unwrap();
        std::os::unix::fs::symlink("a.csv", tree.join("link")).unwrap();
        fs::set_permissions(tree.join("a.csv"), fs::Permissions::from_mode(0o750)).unwrap();
        let mut archive = Vec::new();
        pack(&tree, &mut archive).unwrap();

        let dst = tmp("dst");
        fs::create_dir_all(dst.join("work/sub")).unwrap();
        fs::write(dst.join("work/sub/kept"), b"kept").unwrap();
        unpack(&dst, &archive[..]).unwrap();
        assert_eq!(fs::read(dst.join("work/a.csv")).unwrap(), b"x,y\n");
        assert_eq!(fs::metadata(dst.join("work/a.csv")).unwrap().mode() & 0o777, 0o750);
        assert_eq!(fs::read(dst.join("work/sub/deeper/big.bin")).unwrap(), vec![5u8; 100_000]);
        assert_eq!(fs::read(dst.join(format!("work/sub/{}", "l".repeat(120)))).unwrap(), b"long name");
        assert_eq!(fs::read_link(dst.join("work/link")).unwrap(), Path::new("a.csv"));
        assert_eq!(fs::read(dst.join("work/sub/kept")).unwrap(), b"kept", "existing directories are merged");
        let left: Vec<_> = fs::read_dir(&dst).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![OsString::from("work")], "no staging directory is left");
        remove_tree(&src).unwrap();
        remove_tree(&dst).unwrap();
    }

    #[test]
    fn a_destination_that_does_not_exist_names_the_copy() {
        let src = tmp("rename-src");
        fs::create_dir_all(src.join("out/sub")).unwrap();
        fs::write(src.join("out/sub/r.txt"), b"result").unwrap();
        let mut archive = Vec::new();
        pack(&src.join("out"), &mut archive).unwrap();
        let dst = tmp("rename-dst");
        unpack(&dst.join("results"), &archive[..]).unwrap();
        assert_eq!(fs::read(dst.join("results/sub/r.txt")).unwrap(), b"result");
        let err = unpack(&dst.join("nowhere/"), &archive[..]).unwrap_err();
        assert!(err.to_string().contains("no such directory"), "{err}");
        let err = unpack(&dst.join("missing/x"), &archive[..]).unwrap_err();
        assert!(err.to_string().contains("no such directory"), "{err}");
        remove_tree(&src).unwrap();
        remove_tree(&dst).unwrap();
    }

    #[test]
    fn a_broken_archive_leaves_nothing_behind() {
        let src = tmp("broken-src");
        fs::write(src.join("f"), vec![1u8; 5000]).unwrap();
        let mut archive = Vec::new();
        pack(&src.join("f"), &mut archive).unwrap();
        let dst = tmp("broken-dst");
        let err = unpack(&dst, &archive[..3000]).unwrap_err();
        assert!(err.to_string().contains("ended"), "{err}");
        assert_eq!(fs::read_dir(&dst).unwrap().count(), 0);
        remove_tree(&src).unwrap();
        remove_tree(&dst).unwrap();
    }

    #[test]
    fn entries_that_climb_out_are_refused_and_nothing_is_kept() {
        for bad in ["../escape", "/etc/passwd", "a/../../b"] {
            let mut archive = Vec::new();
            let h = Header {
                kind: Kind::File,
                path: bad.as_bytes().to_vec(),
                link: vec![],
                mode: 0o644,
                size: 1,
                mtime: 0,
            };
            tar::write_header(&mut archive, &h).unwrap();
            archive.extend_from_slice(&[b'x'; 512]);
            tar::write_end(&mut archive).unwrap();
            let dst = tmp("climb");
            let err = unpack(&dst, &archive[..]).unwrap_err();
            assert!(err.to_string().contains("refused archive entry"), "{bad}: {err}");
            assert_eq!(fs::read_dir(&dst).unwrap().count(), 0);
            remove_tree(&dst).unwrap();
        }
    }

    #[test]
    fn a_file_never_replaces_a_directory() {
        let src = tmp("nodir-src");
        fs::write(src.join("d"), b"file").unwrap();
        let mut archive = Vec::new();
        pack(&src.join("d"), &mut archive).unwrap();
        let dst = tmp("nodir-dst");
        fs::create_dir(dst.join("d")).unwrap();
        let err = unpack(&dst, &archive[..]).unwrap_err();
        assert!(err.to_string().contains("cannot replace directory"), "{err}");
        assert!(dst.join("d").is_dir());
        remove_tree(&src).unwrap();
        remove_tree(&dst).unwrap();
    }

    #[test]
    fn kill_finds_a_tagged_tree_and_nothing_else() {
        let tag = format!("test-{}", std::process::id());
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 600 & sleep 600 & wait"])
            .env(crate::TAG_VAR, &tag)
            .spawn()
            .unwrap();
        let mut other = std::process::Command::new("sleep").arg("600").spawn().unwrap();
        // Wait for the shell's children to exist.
        for _ in 0..100 {
            if scan(format!("{}={tag}", crate::TAG_VAR).as_bytes()).iter().filter(|p| p.1).count() >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(kill(&tag).unwrap(), 3);
        assert!(!child.wait().unwrap().success());
        assert!(other.try_wait().unwrap().is_none(), "an untagged process is left alone");
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
