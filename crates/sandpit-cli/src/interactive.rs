//! `sandpit exec -i`/`-t` and `sandpit shell`: standard input forwarded,
//! and a terminal (raw mode here, resized with this one) where asked.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use futures_util::StreamExt;
use sandpit_proto::{self as proto, exec_interactive_request::Input, exec_output::Output};
use tokio::sync::mpsc;
use tonic::Code;

use crate::{code_name, Client, Failure};

/// This terminal's size, if stdout is one.
fn terminal_size() -> Option<proto::TerminalSize> {
    let term = console::Term::stdout();
    term.is_term().then(|| {
        let (rows, cols) = term.size();
        proto::TerminalSize { rows: u32::from(rows.max(1)), cols: u32::from(cols.max(1)) }
    })
}

/// The terminal on stdin in raw mode (keys go to the sandbox as typed,
/// Ctrl-C included) until dropped, when its settings come back.
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> RawMode {
        if !std::io::stdin().is_terminal() {
            return RawMode(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0, a
        // terminal, and tcsetattr only changes that terminal's settings.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return RawMode(None);
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return RawMode(None);
            }
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `enter`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}

/// Runs `req` with stdin forwarded (`stdin`) and a terminal (`tty`); the
/// command's exit code, or 124 when it ran past its timeout.
pub(crate) async fn exec(
    client: &mut Client,
    mut req: proto::ExecRequest,
    stdin: bool,
    tty: bool,
) -> Result<ExitCode, Failure> {
    if tty {
        req.tty = Some(terminal_size().unwrap_or(proto::TerminalSize { rows: 24, cols: 80 }));
    }
    let (tx, rx) = mpsc::channel::<proto::ExecInteractiveRequest>(16);
    let send = |input| proto::ExecInteractiveRequest { input: Some(input) };
    let _ = tx.send(send(Input::Start(req))).await;
    let mut pumps = Vec::new();
    if stdin {
        // A thread of its own: a read of a terminal cannot be cancelled, and
        // the process's exit ends it.
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut input = std::io::stdin().lock();
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match std::io::Read::read(&mut input, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(send(Input::Stdin(buf[..n].to_vec()))).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.blocking_send(send(Input::CloseStdin(true)));
        });
    }
    if tty {
        if let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) {
            let tx = tx.clone();
            pumps.push(tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some(size) = terminal_size() {
                        if tx.send(send(Input::Resize(size))).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }
    }
    // Without stdin, the request stream stays open (its end would read as
    // the client leaving) until the command ends.
    let keep_open = tx;
    let raw = if tty && stdin { Some(RawMode::enter()) } else { None };
    let result = async {
        let mut stream = client.exec_interactive(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
        let mut code = None;
        while let Some(msg) = stream.next().await {
            let msg = match msg {
                Ok(msg) => msg,
                Err(s) if s.code() == Code::DeadlineExceeded => {
                    drop(raw);
                    complain!("sandpit: {}: {}", code_name(s.code()), s.message());
                    return Ok(ExitCode::from(124));
                }
                Err(s) => return Err(s.into()),
            };
            match msg.output {
                Some(Output::Stdout(b)) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&b);
                    let _ = out.flush();
                }
                Some(Output::Stderr(b)) => {
                    let _ = std::io::stderr().write_all(&b);
                }
                Some(Output::ExitCode(c)) => code = Some(c),
                // On its own line, even in a terminal in raw mode.
                Some(Output::Notice(n)) => {
                    let _ = write!(std::io::stderr(), "\r\n{}\r\n", crate::shown(&format!("sandpit: {n}")));
                }
                None => {}
            }
        }
        let code = code.ok_or_else(|| Failure::Local("the exec stream ended without an exit code".into()))?;
        Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
    }
    .await;
    drop(keep_open);
    for p in pumps {
        p.abort();
    }
    result
}
