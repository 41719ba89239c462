//! `sandpit-helper`: what the daemon needs inside a sandbox that the image
//! need not have. The Docker driver bind-mounts it read-only at
//! [`PATH_IN_SANDBOX`] in every sandbox (as Docker mounts its own init) and
//! runs it over exec, as the sandbox's user, under every rule of the
//! sandbox: it adds no privilege, only the commands an image without a
//! shell, `tar` or `kill` lacks.
//!
//! - `unpack DIR`: a tar archive on stdin into directory `DIR`, all of it
//!   or nothing (extracted into a staging directory inside `DIR`, moved into
//!   place only once all of it was written).
//! - `pack PATH`: `PATH` (a file or a directory tree) as a tar archive on stdout.
//! - `run TAG [--tty] -- COMMAND...`: runs `COMMAND` (it replaces the helper)
//!   marked with `TAG` in its environment, as the leader of a new session
//!   unless it has a terminal, so that `kill TAG` finds all it started.
//! - `kill TAG`: kills every process marked with `TAG` and every process of
//!   a session such a process leads, looking again until none is left: the
//!   whole tree of a command that timed out or whose client went away,
//!   double forks included.
//! - `connect PORT`: joins stdin and stdout to a TCP connection to
//!   `127.0.0.1:PORT` (port forwarding, in every network mode).
//! - `nnp -- COMMAND...`: runs `COMMAND` (it replaces the helper) with
//!   no_new_privs set, for engines that cannot set it on a container.
//! - `relay PORT PROXY FROM`: an allowlist sandbox's relay to the egress
//!   proxy on a swarm ([`relay`]): accepts on `PORT` from network `FROM`
//!   only, and passes each connection to `PROXY` after a handshake with the
//!   token in `SANDPIT_RELAY_TOKEN`. It runs in a service of its own, not
//!   in the sandbox.
//!
//! Standard library only, so that it builds with `rustc` alone into one
//! static binary (sandpit-docker's build script), without a registry or a
//! toolchain download.

pub mod relay;
pub mod tar;
pub mod tree;

use std::ffi::OsString;
use std::process::ExitCode;

/// Where the helper appears inside a sandbox.
pub const PATH_IN_SANDBOX: &str = "/.sandpit/helper";

/// The environment variable `run` marks a command's processes with.
pub const TAG_VAR: &str = "SANDPIT_EXEC";

const USAGE: &str =
    "usage: sandpit-helper unpack DIR | pack PATH | run TAG [--tty] -- COMMAND... | kill TAG | connect PORT | nnp -- COMMAND... | relay PORT PROXY FROM";

/// Runs one subcommand; its exit code.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(OsString::as_os_str).collect();
    let text = |a: &std::ffi::OsStr| a.to_str().map(str::to_string);
    let result = match args.as_slice() {
        [cmd, dir] if *cmd == "unpack" => tree::unpack(std::path::Path::new(dir), std::io::stdin().lock()),
        [cmd, path] if *cmd == "pack" => {
            let mut out = std::io::BufWriter::with_capacity(256 << 10, std::io::stdout().lock());
            tree::pack(std::path::Path::new(path), &mut out).and_then(|()| std::io::Write::flush(&mut out))
        }
        [cmd, tag, rest @ ..] if *cmd == "run" => {
            let (tty, rest) = match rest {
                [flag, rest @ ..] if *flag == "--tty" => (true, rest),
                _ => (false, rest),
            };
            match (text(tag), rest) {
                (Some(tag), [sep, command @ ..]) if *sep == "--" && !command.is_empty() => {
                    return tree::run(&tag, tty, command);
                }
                _ => Err(std::io::Error::other(USAGE)),
            }
        }
        [cmd, tag] if *cmd == "kill" => match text(tag) {
            Some(tag) => tree::kill(&tag).map(|n| println!("{n}")),
            None => Err(std::io::Error::other(USAGE)),
        },
        [cmd, sep, command @ ..] if *cmd == "nnp" && *sep == "--" && !command.is_empty() => {
            return tree::no_new_privs(command);
        }
        [cmd, port] if *cmd == "connect" => match text(port).and_then(|p| p.parse::<u16>().ok()) {
            Some(port) => tree::connect(port),
            None => Err(std::io::Error::other("connect: PORT must be a number from 1 to 65535")),
        },
        [cmd, port, proxy, from] if *cmd == "relay" => {
            match (
                text(port).and_then(|p| p.parse::<u16>().ok()),
                text(proxy),
                text(from).and_then(|f| relay::Net::parse(&f)),
            ) {
                (Some(port), Some(proxy), Some(from)) => relay::relay(port, &proxy, from),
                _ => Err(std::io::Error::other("relay: PORT PROXY(host:port) FROM(A.B.C.D/N)")),
            }
        }
        _ => Err(std::io::Error::other(USAGE)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandpit-helper: {e}");
            ExitCode::from(1)
        }
    }
}
