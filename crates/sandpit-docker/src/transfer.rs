//! Files in and out of a sandbox's container as tar archives, through a
//! program run inside it (the archive API of older engines cannot reach the
//! tmpfs scratch space): the helper every sandbox gets ([`crate::helper`]),
//! or, in a container made before the helper existed, the image's own
//! `tar`, `mkdir`, `mv` and `rm` (busybox's where the image lacks them).
//!
//! A copy-in extracts into a staging directory inside its target and moves
//! the result into place only once the upload ended whole and all of it was
//! written: one that fails half-way (a full scratch space, a broken upload)
//! leaves nothing behind. The helper does both in one exec; the shell
//! fallback takes a second.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::{helper, DockerRuntime};
use sandpit_core::runtime::{BoxStream, Connection, ExecChunk, ExecSpec};
use sandpit_core::{Error, Result};

/// Longest stderr kept from a failed `tar`.
const STDERR_MAX: usize = 2048;

/// Runs `body` with `tar`, `mkdir`, `mv` and `rm` from the image, or from
/// busybox where the image lacks them. Arguments follow as `$1`, `$2`...
fn script(body: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
    let prelude = "run() { if command -v \"$1\" >/dev/null 2>&1; then \"$@\"; else busybox \"$@\"; fi; }\n";
    ["sh".to_string(), "-c".to_string(), format!("{prelude}{body}"), "sh".to_string()].into_iter().chain(args).collect()
}

/// Extracts stdin into a new staging directory `$1/$2`; on failure removes it.
const EXTRACT: &str = r#"
stage="$1/$2"
run mkdir -m 700 "$stage" || exit 125
run tar -x -f - -C "$stage" || { s=$?; run rm -rf "$stage"; exit $s; }
"#;

/// Moves a complete extraction from `$1/$2` into `$1`, entry by entry,
/// merging directories that exist; then removes the staging directory.
const MERGE: &str = r#"
merge() {
  for e in "$1"/* "$1"/.[!.]* "$1"/..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    t="$2/${e##*/}"
    if [ -d "$e" ] && [ ! -L "$e" ] && [ -d "$t" ] && [ ! -L "$t" ]; then
      merge "$e" "$t" || return 1
    elif [ -d "$t" ] && [ ! -L "$t" ]; then
      echo "cannot replace directory $t with a file" >&2; return 1
    else
      run mv -f "$e" "$t" || return 1
    fi
  done
}
merge "$1/$2" "$1"; s=$?
run rm -rf "$1/$2"
exit $s
"#;

/// Removes the staging directory `$1/$2` of a copy-in that did not complete.
const DISCARD: &str = r#"run rm -rf "$1/$2""#;

/// Archives `$2` (relative to `$1`) to stdout.
const ARCHIVE: &str = r#"run tar -c -f - -C "$1" "$2""#;

/// What the extracting or archiving program's complaint says went wrong.
/// `scratch`: the size of the scratch space.
fn tar_failed(what: &str, path: &str, code: i64, stderr: &[u8], scratch: u64) -> Error {
    let err = String::from_utf8_lossy(stderr);
    if err.contains("No space left on device") || err.contains("Disk quota exceeded") {
        return Error::ResourceExhausted(format!(
            "{what} {path} outgrew the sandbox's scratch space ({}); nothing was kept",
            sandpit_core::policy::size::format_size(scratch)
        ));
    }
    Error::FailedPrecondition(format!("{what} {path} failed (exit {code}): {}", err.trim()))
}

/// A name for a copy-in's staging directory, unique per transfer.
fn staging_name() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source is available");
    format!(".sandpit-copy-in-{}", hex::encode(b))
}

/// An exec's exit code. Its output can end a moment before Docker marks it finished.
async fn exit_code(rt: &DockerRuntime, exec_id: &str) -> Result<i64> {
    for _ in 0..100 {
        if let Some(code) = rt.exec_code(exec_id).await? {
            return Ok(code);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::Internal("exec output ended but the command did not finish".into()))
}

/// Runs a script to its end: its exit code and (the start of) its stderr.
async fn run(rt: &DockerRuntime, container: &str, body: &str, args: [String; 2]) -> Result<(i64, Vec<u8>)> {
    let session = rt.exec_in(container, ExecSpec { command: script(body, args), ..Default::default() }).await?;
    let mut err = Vec::new();
    let mut output = session.output;
    while let Some(c) = output.next().await {
        if let Ok(ExecChunk::Stderr(b)) = c {
            err.extend(b.into_iter().take(STDERR_MAX.saturating_sub(err.len())));
        }
    }
    Ok((exit_code(rt, &session.exec_id).await?, err))
}

/// Extracts the tar archive `data` into directory `dir` of `container`, all or nothing.
/// With the helper, a `dir` that is not a directory is the name the
/// archive's one top entry is given (`docker cp` does the same).
pub(super) async fn copy_in(
    rt: &DockerRuntime,
    container: &str,
    helper: bool,
    dir: &str,
    mut data: BoxStream<Result<Vec<u8>>>,
    scratch: u64,
) -> Result<()> {
    let stage = staging_name();
    let args = || [dir.to_string(), stage.clone()];
    let command = if helper { helper::command(["unpack", dir]) } else { script(EXTRACT, args()) };
    let spec = ExecSpec { command, ..Default::default() };
    let (session, mut stdin) = rt.exec_in_with_stdin(container, spec).await?;
    // Feed the archive while collecting tar's complaints.
    let mut output = session.output;
    let feed = async {
        let fed = async {
            while let Some(chunk) = data.next().await {
                let chunk = chunk.inspect_err(|e| tracing::debug!(error = %e, "copy-in upload failed"))?;
                stdin.write_all(&chunk).await.map_err(|e| Error::Internal(format!("copy-in: {e}")))?;
            }
            Ok::<_, Error>(())
        }
        .await;
        // Closed whatever happened: on a broken upload tar must see the end
        // of its input and exit, not wait for more.
        let closed = stdin.shutdown().await.map_err(|e| Error::Internal(format!("copy-in: {e}")));
        fed.and(closed)
    };
    let drain = async {
        let mut err = Vec::new();
        while let Some(c) = output.next().await {
            if let Ok(ExecChunk::Stderr(b)) = c {
                err.extend(b.into_iter().take(STDERR_MAX.saturating_sub(err.len())));
            }
        }
        err
    };
    let (fed, err, whole) = {
        tokio::pin!(feed, drain);
        tokio::select! {
            fed = &mut feed => (fed, drain.await, true),
            // tar ended before the upload did (it failed: a full scratch
            // space, a bad archive): stop feeding it, and say why it ended.
            err = &mut drain => (Ok(()), err, false),
        }
    };
    let extracted = match (fed, exit_code(rt, &session.exec_id).await) {
        // A broken upload is the failure to report, whatever tar made of its truncated input.
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(0)) if whole => Ok(()),
        (Ok(()), Ok(0)) => Err(Error::FailedPrecondition(format!(
            "extracting into {dir}: tar ended before the upload did; nothing was kept"
        ))),
        (Ok(()), Ok(code)) => Err(tar_failed("extracting into", dir, code, &err, scratch)),
    };
    if helper {
        // It moved a whole extraction into place, or removed it.
        return extracted;
    }
    // Only a whole upload that tar accepted is moved into place; anything else is removed.
    let finish = if extracted.is_ok() { MERGE } else { DISCARD };
    let finished = match run(rt, container, finish, args()).await {
        Ok((0, _)) => Ok(()),
        Ok((code, err)) => Err(Error::FailedPrecondition(format!(
            "moving the extracted files into {dir} failed (exit {code}): {}",
            String::from_utf8_lossy(&err).trim()
        ))),
        Err(e) => Err(e),
    };
    extracted?;
    finished
}

/// `path` of `container` as a tar archive; ends with an error if tar fails part-way.
pub(super) async fn copy_out(
    rt: &DockerRuntime,
    container: &str,
    helper: bool,
    path: &str,
) -> Result<BoxStream<Result<Vec<u8>>>> {
    let (dir, name) = match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", name)) => ("/".to_string(), name.to_string()),
        Some((dir, name)) => (dir.to_string(), name.to_string()),
        None => ("/".to_string(), ".".to_string()),
    };
    let command = if helper { helper::command(["pack", path]) } else { script(ARCHIVE, [dir, name]) };
    let session = rt.exec_in(container, ExecSpec { command, ..Default::default() }).await?;
    let path = path.to_string();
    Ok(stdout_then_exit(rt, session, move |code, err| tar_failed("archiving", &path, code, err, 0)))
}

/// An exec's stdout as a stream that ends when the command does: with an
/// error made by `failed` from its exit code and (the start of) its stderr
/// when that is not 0.
fn stdout_then_exit(
    rt: &DockerRuntime,
    session: sandpit_core::runtime::ExecSession,
    failed: impl Fn(i64, &[u8]) -> Error + Send + Sync + 'static,
) -> BoxStream<Result<Vec<u8>>> {
    struct State<F> {
        output: BoxStream<Result<ExecChunk>>,
        exec_id: String,
        rt: DockerRuntime,
        failed: F,
        err: Vec<u8>,
        done: bool,
    }
    let state = State {
        output: session.output,
        exec_id: session.exec_id,
        rt: rt.clone(),
        failed,
        err: Vec::new(),
        done: false,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.output.next().await {
                Some(Ok(ExecChunk::Stdout(b))) => return Some((Ok(b), st)),
                Some(Ok(ExecChunk::Stderr(b))) => {
                    st.err.extend(b.into_iter().take(STDERR_MAX.saturating_sub(st.err.len())))
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    return match exit_code(&st.rt, &st.exec_id).await {
                        Ok(0) => None,
                        Ok(code) => {
                            let e = (st.failed)(code, &st.err);
                            Some((Err(e), st))
                        }
                        Err(e) => Some((Err(e), st)),
                    };
                }
            }
        }
    })
    .boxed()
}

/// A TCP connection to `port` on the container's loopback: the helper's
/// `connect` over exec, its stdin and stdout the two directions. The
/// stream ends with an error if the helper could not connect or broke off.
pub(super) async fn connect(rt: &DockerRuntime, container: &str, port: u16) -> Result<Connection> {
    let spec = ExecSpec { command: helper::command(["connect".to_string(), port.to_string()]), ..Default::default() };
    let (session, input) = rt.exec_in_with_stdin(container, spec).await?;
    let output = stdout_then_exit(rt, session, move |code, err| {
        Error::Unavailable(format!("port {port} in the sandbox (exit {code}): {}", String::from_utf8_lossy(err).trim()))
    });
    Ok(Connection { input, output })
}

/// Kills the processes of the exec tagged `tag` with the helper; how many.
pub(super) async fn kill_tagged(rt: &DockerRuntime, container: &str, tag: &str) -> Result<u64> {
    let session =
        rt.exec_in(container, ExecSpec { command: helper::command(["kill", tag]), ..Default::default() }).await?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut output = session.output;
    while let Some(c) = output.next().await {
        match c? {
            ExecChunk::Stdout(b) => out.extend(b.into_iter().take(64usize.saturating_sub(out.len()))),
            ExecChunk::Stderr(b) => err.extend(b.into_iter().take(STDERR_MAX.saturating_sub(err.len()))),
        }
    }
    match exit_code(rt, &session.exec_id).await? {
        0 => String::from_utf8_lossy(&out)
            .trim()
            .parse()
            .map_err(|_| Error::Internal(format!("the helper's kill said {:?}", String::from_utf8_lossy(&out)))),
        code => Err(Error::Internal(format!(
            "the helper's kill failed (exit {code}): {}",
            String::from_utf8_lossy(&err).trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_scratch_space_is_resource_exhausted() {
        let e = tar_failed("extracting into", "/tmp", 2, b"tar: x: Cannot write: No space left on device", 16 << 20);
        assert!(matches!(e, Error::ResourceExhausted(ref m) if m.contains("16MiB")), "{e:?}");
        let e = tar_failed("extracting into", "/tmp", 2, b"tar: bad header", 16 << 20);
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    }
}
