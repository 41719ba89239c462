//! Doing a proof of concept inside a sandbox: files in and out with
//! `sandpit cp` whatever the image holds (the helper every sandbox gets),
//! and commands that are stopped early killed with everything they started.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use sandpit_proto::{self as proto, exec_output::Output};
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::cli::sandpit;
use crate::lifecycle::exec;
use crate::support::*;
use crate::transfer::records;

/// A profile with room for a 50 MB file in its scratch space (tmpfs pages
/// count against the memory limit, so memory is above it).
fn roomy(image: &str, command: &str) -> String {
    format!(
        "max_classification = \"OFFICIAL\"\nimages = [\"{image}\"]\ncommand = {command}\n\
         [resources]\ncpus = 1.0\nmemory = \"384MiB\"\ntmpfs = \"200MiB\"\npids = 64\n[network]\nmode = \"none\"\n"
    )
}

/// Pseudo-random bytes (xorshift): nothing compresses or repeats.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A directory tree's files (path -> SHA-256) and links (path -> target).
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.insert(rel, format!("-> {}", std::fs::read_link(e.path()).unwrap().display()));
            } else if ft.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                walk(root, &e.path(), out);
            } else {
                out.insert(rel, sha256_hex(&std::fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn run_cli(d: &Daemon, args: &[&str]) -> std::process::Output {
    let out = sandpit(d, TEAM_A, args);
    assert!(
        out.status.success(),
        "sandpit {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `sandpit cp` both ways, a 50 MB file and a directory tree, on the base
/// image and on one with no shell, libc or tar at all; checksums equal and
/// each transfer on record with the SHA-256 the CLI printed.
#[tokio::test(flavor = "multi_thread")]
async fn cp_moves_a_large_file_and_a_tree_both_ways_in_any_image() {
    let static_image = static_image().to_string();
    let d = Daemon::with(Options {
        profiles: vec![
            ("test-roomy".into(), roomy("{image}", r#"["sleep", "infinity"]"#)),
            ("test-static".into(), roomy(&static_image, "[]")),
        ],
        ..Default::default()
    })
    .await;
    let local = tempfile::tempdir().unwrap();
    let big = noise(50 * 1000 * 1000, 7);
    std::fs::write(local.path().join("data.bin"), &big).unwrap();
    let work = local.path().join("work");
    std::fs::create_dir_all(work.join("inputs/raw")).unwrap();
    std::fs::write(work.join("inputs/raw/survey.csv"), b"area,population\nE06000001,93000\n").unwrap();
    std::fs::write(work.join("inputs/empty"), b"").unwrap();
    std::fs::write(work.join(format!("notes-{}.md", "n".repeat(120))), noise(70_000, 3)).unwrap();
    std::os::unix::fs::symlink("inputs/raw/survey.csv", work.join("latest.csv")).unwrap();
    let want_tree = tree(&work);

    let mut c = d.client(TEAM_A).await;
    for profile in ["test-roomy", "test-static"] {
        let mut req = create_req(&d.exp_a, 300);
        req.profile = profile.into();
        let sb = c.create_sandbox(req).await.unwrap().into_inner();
        let out_dir = local.path().join(format!("out-{profile}"));
        std::fs::create_dir(&out_dir).unwrap();

        // A file into a directory, and back out under a new name.
        let into = format!("{}:/tmp/", sb.id);
        let out = run_cli(&d, &["cp", local.path().join("data.bin").to_str().unwrap(), &into]);
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(said.contains(&format!("{}  data.bin", sha256_hex(&big))), "{profile}: the file's SHA-256: {said}");
        let back = out_dir.join("data-back.bin");
        run_cli(&d, &["cp", &format!("{}:/tmp/data.bin", sb.id), back.to_str().unwrap()]);
        assert_eq!(sha256_hex(&std::fs::read(&back).unwrap()), sha256_hex(&big), "{profile}: the file came back whole");

        // A tree to a new name, and back out into a directory.
        let out = run_cli(&d, &["--json", "cp", work.to_str().unwrap(), &format!("{}:/tmp/work", sb.id)]);
        let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let out = run_cli(&d, &["--json", "cp", &format!("{}:/tmp/work", sb.id), out_dir.to_str().unwrap()]);
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(tree(&out_dir.join("work")), want_tree, "{profile}: the tree came back the same");

        // Each transfer on record with the archive's size and SHA-256.
        let ins = records(&d, &sb.id, proto_action("CopyIn"), 2).await;
        let outs = records(&d, &sb.id, proto_action("CopyOut"), 2).await;
        for (events, t) in [(&ins, &sent), (&outs, &got)] {
            let sha = t["sha256"].as_str().unwrap();
            let size = t["sizeBytes"].as_str().map(str::to_string).unwrap_or_else(|| t["sizeBytes"].to_string());
            assert!(
                events.iter().any(|e| e.outcome == "succeeded" && e.reason.contains(sha) && e.reason.contains(&size)),
                "{profile}: no record of {t}: {events:?}"
            );
        }
    }

    // A path that is neither a sandbox's nor there: a clear error.
    let out = sandpit(&d, TEAM_A, &["cp", "/nonexistent/file", "/tmp/x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ID:PATH"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn proto_action(rpc: &str) -> &'static str {
    match rpc {
        "CopyIn" => "sandpit.v1.SandboxService/CopyIn",
        "CopyOut" => "sandpit.v1.SandboxService/CopyOut",
        _ => unreachable!(),
    }
}

/// The `sleep 60x` processes in the sandbox, as its process list shows them.
async fn sleepers(c: &mut Client, id: &str) -> Vec<String> {
    let (out, _, code) = exec(c, id, &["ps", "-eo", "args"]).await;
    assert_eq!(code, 0);
    out.lines().filter(|l| l.starts_with("sleep 60")).map(str::to_string).collect()
}

/// How many processes the exec-end records say were killed.
fn killed(events: &[proto::AuditEvent]) -> Vec<u64> {
    events.iter().filter_map(|e| e.reason.split("killed ").nth(1)?.split(' ').next()?.parse().ok()).collect()
}

/// A command that times out, or whose client goes away, is killed with
/// everything it started (children, and a double fork that left the
/// session's process group), on record; the CLI exits 124 on timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_stopped_early_is_killed_with_all_it_started() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 300).await;

    // A timeout, through the CLI: 124, as timeout(1).
    let script = "sleep 600 & sleep 601 & (sleep 602 &) ; wait";
    let out = sandpit(&d, TEAM_A, &["exec", &sb.id, "--timeout", "2s", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(124), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEADLINE_EXCEEDED"));
    let left = sleepers(&mut c, &sb.id).await;
    assert!(left.is_empty(), "a timed-out command's processes are gone: {left:?}");
    let ended = records(&d, &sb.id, "exec-end", 2).await;
    let counts = killed(&ended);
    assert!(counts.iter().any(|n| *n >= 4), "the shell and its three sleeps killed, on record: {ended:?}");

    // The client goes away once the command has started.
    let req = proto::ExecRequest {
        id: sb.id.clone(),
        command: vec!["sh".into(), "-c".into(), format!("echo started; {script}")],
        ..Default::default()
    };
    let mut stream = c.exec(req).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.output, Some(Output::Stdout(b"started\n".to_vec())));
    drop(stream);
    let mut probe = c.clone();
    let id = sb.id.clone();
    eventually(Duration::from_secs(20), "the abandoned command's processes gone", || {
        let (mut probe, id) = (probe.clone(), id.clone());
        async move { sleepers(&mut probe, &id).await.is_empty().then_some(()) }
    })
    .await;
    let ended = records(&d, &sb.id, "exec-end", 4).await;
    assert!(
        ended
            .iter()
            .any(|e| e.outcome != "succeeded" && e.reason.contains("went away") && e.reason.contains("killed ")),
        "{ended:?}"
    );
    let _ = &mut probe;

    // A command that ends by itself kills nothing.
    let (out, _, code) = exec(&mut c, &sb.id, &["echo", "done"]).await;
    assert_eq!((out.as_str(), code), ("done\n", 0));
}

/// An exec racing its sandbox's removal gets FAILED_PRECONDITION, never
/// INTERNAL or the engine's complaint as the command's output.
#[tokio::test(flavor = "multi_thread")]
async fn an_exec_on_a_sandbox_being_removed_is_failed_precondition() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 300).await;
    let mut runner = c.clone();
    let id = sb.id.clone();
    let execs = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..200 {
            let req = proto::ExecRequest { id: id.clone(), command: vec!["true".into()], ..Default::default() };
            let result = match runner.exec(req).await {
                Err(e) => Err(e),
                Ok(s) => {
                    let mut s = s.into_inner();
                    let mut end = Ok(None);
                    while let Some(m) = s.next().await {
                        match m {
                            Ok(m) => {
                                if let Some(Output::ExitCode(code)) = m.output {
                                    end = Ok(Some(code));
                                } else if let Some(Output::Stdout(b) | Output::Stderr(b)) = m.output {
                                    end = Err(tonic::Status::internal(String::from_utf8_lossy(&b).to_string()));
                                }
                            }
                            Err(e) => end = Err(e),
                        }
                    }
                    end
                }
            };
            let stop = matches!(&result, Err(e) if e.message().contains("not running"));
            seen.push(result);
            if stop && seen.len() > 5 {
                break;
            }
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.delete_sandbox(proto::DeleteSandboxRequest { id: sb.id.clone() }).await.unwrap();
    let seen = execs.await.unwrap();
    assert!(seen.iter().any(|r| matches!(r, Ok(Some(0)))), "some execs ran before the delete");
    for r in &seen {
        match r {
            Ok(Some(0)) => {}
            Err(e) if e.code() == Code::FailedPrecondition => {}
            other => panic!("an exec racing removal answered {other:?}"),
        }
    }
    assert!(seen.iter().any(|r| r.is_err()), "the loop reached the removal");
    let log = d.log();
    assert!(!log.lines().any(|l| l.contains("ERROR") && l.contains("exec")), "no exec logged as an error: {log}");
}

/// `sandpit port-forward` carries a browser's connection to a web server
/// on the loopback of a sandbox with no network at all; the profile must
/// list the port, and each connection is on record with its bytes.
#[tokio::test(flavor = "multi_thread")]
async fn port_forward_reaches_a_server_in_a_sandbox_with_no_network() {
    let web = "max_classification = \"OFFICIAL\"\nimages = [\"{image}\"]\n\
               command = [\"busybox\", \"httpd\", \"-f\", \"-p\", \"127.0.0.1:8080\", \"-h\", \"/tmp\"]\n\
               [port_forward]\nports = [8080, 8081]\n[network]\nmode = \"none\"\n";
    let d = Daemon::with(Options { profiles: vec![("test-web".into(), web.into())], ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let mut req = create_req(&d.exp_a, 300);
    req.profile = "test-web".into();
    let sb = c.create_sandbox(req).await.unwrap().into_inner();
    let (_, _, code) = exec(&mut c, &sb.id, &["sh", "-c", "echo hello from the sandbox > /tmp/index.html"]).await;
    assert_eq!(code, 0);

    let (cli, line) = port_forward_cli(&d, &sb.id, 8080);
    let local = line.split_whitespace().nth(2).unwrap_or_else(|| panic!("the CLI said {line:?}")).to_string();
    assert!(line.starts_with("Forwarding from 127.0.0.1:") && line.contains(&format!("-> {}:8080", sb.id)), "{line}");

    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(&local).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /index.html HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(20), tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer))
            .await
            .expect("the answer in time")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("hello from the sandbox"), "{answer}");
    }
    let ends = records(&d, &sb.id, "port-forward-end", 2).await;
    for e in &ends {
        assert_eq!(e.outcome, "succeeded", "{e:?}");
        assert!(e.reason.starts_with("port 8080: in 28 bytes sha256 "), "{}", e.reason);
    }
    drop(cli);

    // Refused by rule where the profile does not list the port, or allows none.
    let forward = |port: u32, id: String| {
        let header = proto::PortForwardHeader { id, port };
        let first = proto::PortForwardRequest { part: Some(proto::port_forward_request::Part::Header(header)) };
        futures_util::stream::iter([first])
    };
    let e = c.port_forward(forward(9090, sb.id.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("port-forward") && e.message().contains("8080, 8081"), "{}", e.message());
    let plain = create(&mut c, &d.exp_a, 300).await;
    let e = c.port_forward(forward(8080, plain.id.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("no port"), "{}", e.message());

    // A listed port nothing listens on: the stream says so.
    let mut answers = c.port_forward(forward(8081, sb.id.clone())).await.unwrap().into_inner();
    let end = loop {
        match answers.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without saying nothing listens"),
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(end.message().contains("port 8081"), "{}", end.message());
}

/// A `sandpit port-forward ID 0:PORT` running until dropped, and the line
/// it printed first (`Forwarding from 127.0.0.1:N -> ID:PORT`).
fn port_forward_cli(d: &Daemon, id: &str, port: u16) -> (KillOnDrop, String) {
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_sandpit"))
        .args(["port-forward", id, &format!("0:{port}")])
        .env("SANDPIT_ADDR", &d.addr)
        .env("SANDPIT_TOKEN", TEAM_A)
        .env_remove("SANDPIT_DATA_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(cli.stdout.take().unwrap());
    let cli = KillOnDrop(cli);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    (cli, line)
}

/// A child process killed (and reaped) when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sandpit exec -i` forwards standard input (1 MB of it, whole) and the
/// record says how much went in.
#[tokio::test(flavor = "multi_thread")]
async fn exec_i_forwards_standard_input() {
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 300).await;
    let data = noise(1 << 20, 11);
    let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_sandpit"))
        .args(["exec", "-i", &sb.id, "--", "sha256sum"])
        .env("SANDPIT_ADDR", &d.addr)
        .env("SANDPIT_TOKEN", TEAM_A)
        .env_remove("SANDPIT_DATA_DIR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = cli.stdin.take().unwrap();
    let feed = {
        let data = data.clone();
        std::thread::spawn(move || std::io::Write::write_all(&mut input, &data))
    };
    let out = tokio::task::spawn_blocking(move || cli.wait_with_output()).await.unwrap().unwrap();
    feed.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&sha256_hex(&data)), "{:?}", out);
    let ended = records(&d, &sb.id, "exec-end", 1).await;
    assert!(ended[0].reason.contains(&format!("stdin 1048576 bytes sha256 {}", sha256_hex(&data))), "{ended:?}");
}

/// A terminal session driven as a person would: a shell with a TTY of the
/// asked size, resized while it runs, ending with the shell's exit code.
#[tokio::test(flavor = "multi_thread")]
async fn a_tty_session_is_a_terminal_that_follows_resizes() {
    use proto::exec_interactive_request::Input;
    let d = Daemon::start().await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 300).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let send = |input| proto::ExecInteractiveRequest { input: Some(input) };
    let start = proto::ExecRequest {
        id: sb.id.clone(),
        command: vec!["sh".into()],
        tty: Some(proto::TerminalSize { rows: 24, cols: 80 }),
        ..Default::default()
    };
    tx.send(send(Input::Start(start))).await.unwrap();
    let mut out = c.exec_interactive(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let mut seen = String::new();
    tx.send(send(Input::Stdin(b"busybox tty; busybox stty size\n".to_vec()))).await.unwrap();
    read_until(&mut out, &mut seen, "24 80").await;
    tx.send(send(Input::Resize(proto::TerminalSize { rows: 40, cols: 100 }))).await.unwrap();
    tx.send(send(Input::Stdin(b"busybox stty size\n".to_vec()))).await.unwrap();
    read_until(&mut out, &mut seen, "40 100").await;
    tx.send(send(Input::Stdin(b"exit 3\n".to_vec()))).await.unwrap();
    read_until(&mut out, &mut seen, "[exit 3]").await;
    assert!(seen.contains("/dev/pts/"), "a terminal: {seen}");

    // A terminal is ExecInteractive's alone.
    let req = proto::ExecRequest {
        id: sb.id.clone(),
        command: vec!["sh".into()],
        tty: Some(proto::TerminalSize { rows: 24, cols: 80 }),
        ..Default::default()
    };
    let e = c.exec(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("tty"), "{}", e.message());
}

/// Reads a terminal session's output into `seen` until it holds `want`.
async fn read_until(out: &mut tonic::Streaming<proto::ExecOutput>, seen: &mut String, want: &str) {
    let read = async {
        while !seen.contains(want) {
            match out.next().await {
                Some(Ok(proto::ExecOutput { output: Some(Output::Stdout(b)) })) => {
                    seen.push_str(&String::from_utf8_lossy(&b))
                }
                Some(Ok(proto::ExecOutput { output: Some(Output::ExitCode(code)) })) => {
                    seen.push_str(&format!("[exit {code}]"))
                }
                other => panic!("{other:?} before {want:?} in {seen:?}"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), read).await.is_err() {
        panic!("no {want:?} in {seen:?}");
    }
}

/// Expiry never surprises: an open exec hears the expiring-soon warning
/// (one line on stderr with the time and the extend command), and a
/// command ended by expiry says so rather than exiting 137.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_exec_hears_the_expiry_warning_and_why_it_ended() {
    let d = Daemon::with(Options { expiry_warning: "2s", ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let sb = create(&mut c, &d.exp_a, 4).await;
    let out = tokio::task::spawn_blocking({
        let (addr, id) = (d.addr.clone(), sb.id.clone());
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sandpit"))
                .args(["exec", &id, "--", "sleep", "60"])
                .env("SANDPIT_ADDR", addr)
                .env("SANDPIT_TOKEN", TEAM_A)
                .env_remove("SANDPIT_DATA_DIR")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let warning = format!("sandpit: sandbox {} expires in", sb.id);
    assert!(err.contains(&warning), "the warning line: {err}");
    assert!(err.contains(&format!("keep it with: sandpit extend {} --ttl 5m", sb.id)), "{err}");
    assert!(err.contains("FAILED_PRECONDITION") && err.contains("expired"), "why it ended: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    let got = eventually(Duration::from_secs(20), "the sandbox recorded expired", || {
        let mut c = c.clone();
        let id = sb.id.clone();
        async move {
            let got = c.get_sandbox(proto::GetSandboxRequest { id }).await.ok()?.into_inner();
            (state(&got) == proto::SandboxState::Expired).then_some(got)
        }
    })
    .await;
    assert!(!got.state_reason.is_empty(), "get says why it ended");
}

/// `sandpit create --cpus --memory` asks for less than the profile gives
/// (its values are the defaults and the ceilings), refused by rule above
/// them; and a create is admitted before anything is pulled, the pull on
/// record with its experiment.
#[tokio::test(flavor = "multi_thread")]
async fn create_asks_for_resources_within_the_profile_and_is_admitted_before_any_pull() {
    let d = Daemon::start().await;
    let base = ["create", "--experiment", &d.exp_a, "--profile", PROFILE, "--classification", "OFFICIAL"];
    let out = run_cli(&d, &[&base[..], &["--cpus", "0.25", "--memory", "32MiB", "--json"]].concat());
    let sb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let container = sb["containerId"].as_str().unwrap();
    let hc = docker().await.inspect_container(container, None).await.unwrap().host_config.unwrap();
    assert_eq!((hc.memory, hc.nano_cpus), (Some(32 << 20), Some(250_000_000)));
    assert_eq!(sb["resources"]["memoryBytes"], serde_json::json!((32i64 << 20).to_string()));

    let out = sandpit(&d, TEAM_A, &[&base[..], &["--memory", "1GiB"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("PERMISSION_DENIED") && err.contains("resources"), "{err}");
    assert!(err.contains("memory 1GiB is above profile 'test-none' ceiling of 64MiB"), "{err}");

    // Refused for its classification: nothing pulled, the refusal on record
    // under the pull with the create's experiment and rule.
    let secret = ["create", "--experiment", &d.exp_a, "--profile", PROFILE, "--classification", "SECRET"];
    let out = sandpit(&d, TEAM_A, &secret);
    assert!(!out.status.success());
    let q = proto::QueryAuditLogRequest {
        experiment: d.exp_a.clone(),
        action: "sandpit.v1.SandboxService/PullImage".into(),
        page_size: 100,
        ..Default::default()
    };
    let pulls = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    assert!(pulls.iter().any(|e| e.outcome == "denied" && e.reason.contains("host-ceiling")), "{pulls:?}");
    assert_eq!(
        pulls.iter().filter(|e| e.outcome == "succeeded").count(),
        1,
        "a pull for the admitted create only: {pulls:?}"
    );
}

/// The first create needs no preparation: a missing image the daemon knows
/// how to build is built by the daemon itself (progress in its log), once;
/// a build that fails refuses the create naming the command, leaving nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_the_daemon_knows_how_to_build_is_built_at_the_first_create() {
    let tag = format!("sandpit-test/built-{}:latest", unique("img"));
    let extra = format!(
        "[[images.build]]\nimage = \"{tag}\"\ncommand = [\"scripts/build-image.sh\", \"{tag}\", \"sandpit.test-image=true\"]\n\
         [[images.build]]\nimage = \"sandpit-test/unbuildable:latest\"\ncommand = [\"sh\", \"-c\", \"echo no compiler here >&2; exit 3\"]\n"
    );
    let built = format!(
        "max_classification = \"OFFICIAL\"\nimages = [\"{tag}\"]\ncommand = [\"sleep\", \"infinity\"]\n[network]\nmode = \"none\"\n"
    );
    let broken = "max_classification = \"OFFICIAL\"\nimages = [\"sandpit-test/unbuildable:latest\"]\n\
                  command = [\"sleep\", \"infinity\"]\n[network]\nmode = \"none\"\n";
    let d = Daemon::with(Options {
        extra_config: extra,
        profiles: vec![("test-built".into(), built), ("test-broken".into(), broken.into())],
        ..Default::default()
    })
    .await;
    struct RemoveImage(String);
    impl Drop for RemoveImage {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker").args(["rmi", "-f", &self.0]).output();
        }
    }
    let _image = RemoveImage(tag.clone());
    let mut c = d.client(TEAM_A).await;
    let mut req = create_req(&d.exp_a, 300);
    req.profile = "test-built".into();
    let sb = c.create_sandbox(req.clone()).await.unwrap().into_inner();
    assert_eq!(state(&sb), proto::SandboxState::Running);
    let log = d.log();
    assert!(log.contains("image missing locally; building it") && log.contains("image built"), "{log}");
    c.create_sandbox(req).await.unwrap();
    assert_eq!(d.log().matches("image built").count(), 1, "built once");

    let mut req = create_req(&d.exp_a, 300);
    req.profile = "test-broken".into();
    let e = c.create_sandbox(req).await.unwrap_err();
    assert!(e.message().contains("exit status: 3") && e.message().contains("no compiler here"), "{}", e.message());
    let live: Vec<_> = d
        .containers()
        .await
        .into_iter()
        .filter(|c| c.image.as_deref() == Some("sandpit-test/unbuildable:latest"))
        .collect();
    assert!(live.is_empty(), "nothing made: {live:?}");
}

/// Work survives the sandbox: a profile with a workspace mounts the
/// experiment's volume (labelled with it) at /workspace in each of its
/// sandboxes; what one wrote the next reads; closing the experiment removes
/// the volume, on record.
#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_outlives_its_sandboxes_and_goes_with_its_experiment() {
    let ws = "max_classification = \"OFFICIAL\"\nimages = [\"{image}\"]\ncommand = [\"sleep\", \"infinity\"]\n\
              workspace = true\n[network]\nmode = \"none\"\n";
    let d = Daemon::with(Options { profiles: vec![("test-ws".into(), ws.into())], ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let mut req = create_req(&d.exp_a, 300);
    req.profile = "test-ws".into();
    let first = c.create_sandbox(req.clone()).await.unwrap().into_inner();
    let (out, err, code) =
        exec(&mut c, &first.id, &["sh", "-c", "echo kept > /workspace/notes.txt && cat /workspace/notes.txt"]).await;
    assert_eq!((out.as_str(), code), ("kept\n", 0), "{err}");
    let local = tempfile::tempdir().unwrap();
    std::fs::write(local.path().join("data.csv"), "a,b\n1,2\n").unwrap();
    run_cli(&d, &["cp", local.path().join("data.csv").to_str().unwrap(), &format!("{}:/workspace/", first.id)]);
    c.delete_sandbox(proto::DeleteSandboxRequest { id: first.id.clone() }).await.unwrap();

    let second = c.create_sandbox(req).await.unwrap().into_inner();
    let (out, _, code) = exec(&mut c, &second.id, &["cat", "/workspace/notes.txt", "/workspace/data.csv"]).await;
    assert_eq!((out.as_str(), code), ("kept\na,b\n1,2\n", 0));
    let (out, _, _) = exec(&mut c, &second.id, &["sh", "-c", "touch /etc/x 2>&1; echo $?"]).await;
    assert!(out.trim().ends_with('1'), "the root stays read-only: {out}");

    let docker = docker().await;
    let volumes = docker
        .list_volumes(Some(
            bollard::query_parameters::ListVolumesOptionsBuilder::default()
                .filters(&HashMap::from([("label", vec![format!("sandpit.experiment={}", d.exp_a)])]))
                .build(),
        ))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default();
    assert_eq!(volumes.len(), 1, "one workspace for the experiment: {volumes:?}");
    assert_eq!(volumes[0].labels.get("sandpit.classification").map(String::as_str), Some("OFFICIAL"));
    let name = volumes[0].name.clone();

    let close = proto::CloseExperimentRequest {
        id: d.exp_a.clone(),
        outcome: proto::ExperimentOutcome::Succeeded as i32,
        lessons_learnt: "kept in the workspace".into(),
        ..Default::default()
    };
    d.register(APPROVER).await.close_experiment(close).await.unwrap();
    assert!(docker.inspect_volume(&name).await.is_err(), "the workspace went with its experiment");
    let q = proto::QueryAuditLogRequest {
        experiment: d.exp_a.clone(),
        action: "workspace-remove".into(),
        page_size: 10,
        ..Default::default()
    };
    let removed = d.audit(AUDITOR).await.query_audit_log(q).await.unwrap().into_inner().events;
    assert!(removed.iter().any(|e| e.outcome == "succeeded" && e.role == "approver"), "{removed:?}");
}

/// The README's walk-through, for real: a notebook sandbox on the
/// python-data image (built by the daemon if missing: a few minutes), a CSV
/// copied in, a pandas script run on it, the notebook reached through a
/// forwarded port, and the result copied out.
#[tokio::test(flavor = "multi_thread")]
async fn a_pandas_proof_of_concept_in_the_python_data_image() {
    let notebook = "max_classification = \"OFFICIAL\"\nimages = [\"sandpit/python-data:local\"]\n\
                    command = [\"jupyter-notebook\", \"--ip=127.0.0.1\", \"--port=8888\", \"--port-retries=0\", \
                    \"--no-browser\", \"--notebook-dir=/workspace\", \"--NotebookApp.token=\", \"--NotebookApp.password=\"]\n\
                    workspace = true\n[resources]\ncpus = 1.0\nmemory = \"1GiB\"\npids = 128\ntmpfs = \"256MiB\"\n\
                    [port_forward]\nports = [8888]\n[network]\nmode = \"none\"\n";
    let d =
        Daemon::with(Options { profiles: vec![("test-notebook".into(), notebook.into())], ..Default::default() }).await;
    let mut c = d.client(TEAM_A).await;
    let mut req = create_req(&d.exp_a, 600);
    req.profile = "test-notebook".into();
    let sb = c.create_sandbox(req).await.unwrap().into_inner();

    let local = tempfile::tempdir().unwrap();
    let csv = local.path().join("population.csv");
    std::fs::write(&csv, "area,population\nE06000001,93000\nE06000002,143000\nE06000003,136000\n").unwrap();
    run_cli(&d, &["cp", csv.to_str().unwrap(), &format!("{}:/workspace/", sb.id)]);
    let script = "import pandas as pd\n\
                  df = pd.read_csv('/workspace/population.csv')\n\
                  print(int(df.population.sum()))\n\
                  df.assign(share=df.population / df.population.sum()).to_csv('/workspace/shares.csv', index=False)\n";
    let (out, err, code) = exec(&mut c, &sb.id, &["python3", "-c", script]).await;
    assert_eq!((out.trim(), code), ("372000", 0), "{err}");

    let (_cli, line) = port_forward_cli(&d, &sb.id, 8888);
    let local_addr = line.split_whitespace().nth(2).unwrap_or_else(|| panic!("the CLI said {line:?}")).to_string();
    let api = eventually(Duration::from_secs(90), "the notebook answering through the forwarded port", || {
        let addr = local_addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
            tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /api HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
            let mut answer = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer).await.ok()?;
            answer.contains("200 OK").then_some(answer)
        }
    })
    .await;
    assert!(api.contains("\"version\""), "{api}");

    let out_dir = local.path().join("results");
    run_cli(&d, &["cp", &format!("{}:/workspace/shares.csv", sb.id), out_dir.to_str().unwrap()]);
    let shares = std::fs::read_to_string(&out_dir).unwrap();
    assert!(shares.starts_with("area,population,share\nE06000001,93000,0.25"), "{shares}");
}
