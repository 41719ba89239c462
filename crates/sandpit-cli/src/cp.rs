//! `sandpit cp`: files and directory trees into and out of a sandbox, with
//! `docker cp`'s habits. `ID:PATH` is a path in sandbox `ID`; anything else
//! is a local path. A destination that is a directory receives the copy;
//! one that does not exist is its new name.
//!
//! The archive is the tar format the sandbox's helper reads and writes
//! (sandpit-helper's own code, on both ends); the daemon audits it with its
//! size and SHA-256, which the CLI prints, with each single file's own.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sandpit_proto as proto;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{Client, Failure};

/// Bytes per CopyIn message.
const CHUNK: usize = 256 << 10;

/// One end of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    Local(PathBuf),
    Sandbox { id: String, path: String },
}

/// `ID:PATH` (an id has no `/` and PATH is absolute) or a local path.
pub(crate) fn parse_end(s: &str) -> End {
    match s.split_once(':') {
        Some((id, path)) if !id.is_empty() && !id.contains('/') && path.starts_with('/') => {
            End::Sandbox { id: id.to_string(), path: path.to_string() }
        }
        _ => End::Local(PathBuf::from(s)),
    }
}

/// Copies `src` to `dst`, one of them in a sandbox.
pub(crate) async fn cp(client: &mut Client, src: &str, dst: &str, json: bool) -> Result<(), Failure> {
    let transfer = match (parse_end(src), parse_end(dst)) {
        (End::Local(from), End::Sandbox { id, path }) => copy_in(client, &from, id, path, json).await?,
        (End::Sandbox { id, path }, End::Local(to)) => copy_out(client, id, path, &to, json).await?,
        (End::Local(_), End::Local(_)) => {
            return Err(Failure::Local("cp: one of SRC and DEST must be ID:PATH, a path in a sandbox".into()));
        }
        (End::Sandbox { .. }, End::Sandbox { .. }) => {
            return Err(Failure::Local("cp: copy between two sandboxes through a local directory".into()));
        }
    };
    if json {
        crate::json(&transfer)?;
    }
    Ok(())
}

/// A progress bar on stderr that shows itself only once a transfer has
/// taken more than a moment, and only on a terminal.
struct Progress {
    bar: ProgressBar,
    started: Instant,
    shown: bool,
    quiet: bool,
}

impl Progress {
    fn new(total: Option<u64>, quiet: bool) -> Progress {
        let bar = match total {
            Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::hidden()).with_style(
                ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()).with_style(
                ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        let quiet = quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr());
        Progress { bar, started: Instant::now(), shown: false, quiet }
    }

    fn add(&mut self, n: usize) {
        self.bar.inc(n as u64);
        if !self.shown && !self.quiet && self.started.elapsed() > Duration::from_millis(500) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
    }

    fn done(self) {
        self.bar.finish_and_clear();
    }
}

/// Sizes of the regular files under `path`.
fn total_size(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            std::fs::read_dir(path).map(|d| d.flatten().map(|e| total_size(&e.path())).sum()).unwrap_or(0)
        }
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

/// The SHA-256 of a regular file; `None` for anything else.
fn file_sha256(path: &Path) -> Option<String> {
    if !std::fs::symlink_metadata(path).ok()?.is_file() {
        return None;
    }
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Some(hex::encode(h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// Writes into a channel in [`CHUNK`]s, from a blocking thread.
struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

/// Reads what a channel brings, in a blocking thread; an error item ends it.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => (self.cur, self.pos) = (chunk, 0),
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn io_failure(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Failure {
    let path = path.display().to_string();
    move |e| Failure::Local(format!("cp: {what} {path}: {e}"))
}

async fn copy_in(
    client: &mut Client,
    from: &Path,
    id: String,
    path: String,
    quiet: bool,
) -> Result<proto::FileTransfer, Failure> {
    std::fs::symlink_metadata(from).map_err(io_failure("reading", from))?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8);
    let source = from.to_path_buf();
    let packer = tokio::task::spawn_blocking(move || {
        let mut w = ChunkWriter { tx, buf: Vec::with_capacity(CHUNK) };
        sandpit_helper::tree::pack(&source, &mut w).and_then(|()| w.flush())
    });
    let mut progress = Progress::new(Some(total_size(from)), quiet);
    let (msgs_tx, msgs_rx) = mpsc::channel::<proto::CopyInRequest>(4);
    let header = proto::copy_in_request::Part::Header(proto::CopyInHeader { id: id.clone(), path: path.clone() });
    let _ = msgs_tx.send(proto::CopyInRequest { part: Some(header) }).await;
    let pump = async move {
        while let Some(chunk) = rx.recv().await {
            progress.add(chunk.len());
            let part = proto::copy_in_request::Part::Chunk(chunk);
            if msgs_tx.send(proto::CopyInRequest { part: Some(part) }).await.is_err() {
                break;
            }
        }
        progress.done();
        // Dropping the sender ends the upload.
    };
    let call = client.copy_in(tokio_stream::wrappers::ReceiverStream::new(msgs_rx));
    let (answer, ()) = tokio::join!(call, pump);
    // A local failure (a file unreadable half-way) is the one to report:
    // the daemon saw a broken archive because of it.
    packer
        .await
        .map_err(|e| Failure::Local(format!("cp: {e}")))?
        .map_err(|e| Failure::Local(format!("cp: {}: {e}", from.display())))?;
    let transfer = answer?.into_inner();
    if !quiet {
        let name = from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(sha) = file_sha256(from) {
            say!("{sha}  {name}");
        }
        say!(
            "copied {} into {id}:{path} (archive {} bytes, sha256 {}, as audited)",
            from.display(),
            transfer.size_bytes,
            transfer.sha256
        );
    }
    Ok(transfer)
}

async fn copy_out(
    client: &mut Client,
    id: String,
    path: String,
    to: &Path,
    quiet: bool,
) -> Result<proto::FileTransfer, Failure> {
    let mut stream = client.copy_out(proto::CopyOutRequest { id: id.clone(), path: path.clone() }).await?.into_inner();
    let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(8);
    let dest = to.to_path_buf();
    let unpacker = tokio::task::spawn_blocking(move || {
        sandpit_helper::tree::unpack(&dest, ChunkReader { rx, cur: Vec::new(), pos: 0 })
    });
    let mut progress = Progress::new(None, quiet);
    let mut summary = None;
    let mut failed = None;
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(msg) => {
                if !msg.chunk.is_empty() {
                    progress.add(msg.chunk.len());
                    if tx.send(Ok(msg.chunk)).await.is_err() {
                        break;
                    }
                }
                if msg.summary.is_some() {
                    summary = msg.summary;
                }
            }
            Err(status) => {
                // Tell the unpacker, so that it keeps nothing.
                let _ = tx.send(Err(io::Error::other(status.message().to_string()))).await;
                failed = Some(status);
                break;
            }
        }
    }
    if summary.is_none() && failed.is_none() {
        let _ = tx.send(Err(io::Error::other("the copy ended without its summary"))).await;
    }
    drop(tx);
    progress.done();
    let unpacked = unpacker.await.map_err(|e| Failure::Local(format!("cp: {e}")))?;
    if let Some(status) = failed {
        return Err(status.into());
    }
    unpacked.map_err(|e| Failure::Local(format!("cp: into {}: {e}", to.display())))?;
    let transfer = summary.ok_or_else(|| Failure::Local("cp: the copy ended without its summary".into()))?;
    if !quiet {
        // Where a single file landed: `to` itself, or inside it.
        let name = Path::new(path.trim_end_matches('/')).file_name().map(PathBuf::from).unwrap_or_default();
        let landed = if to.join(&name).is_file() && !to.is_file() { to.join(&name) } else { to.to_path_buf() };
        if let Some(sha) = file_sha256(&landed) {
            say!("{sha}  {}", landed.display());
        }
        say!(
            "copied {id}:{path} to {} (archive {} bytes, sha256 {}, as audited)",
            to.display(),
            transfer.size_bytes,
            transfer.sha256
        );
    }
    Ok(transfer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_are_told_apart_as_docker_cp_does() {
        assert_eq!(parse_end("sb-0123:/tmp/work/"), End::Sandbox { id: "sb-0123".into(), path: "/tmp/work/".into() });
        assert_eq!(parse_end("./data.csv"), End::Local("./data.csv".into()));
        assert_eq!(parse_end("/abs/a:b"), End::Local("/abs/a:b".into()));
        assert_eq!(parse_end("C:relative"), End::Local("C:relative".into()), "a sandbox path is absolute");
        assert_eq!(parse_end("dir/sb:/x"), End::Local("dir/sb:/x".into()));
    }
}
