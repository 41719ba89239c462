//! A fault-injecting proxy between a daemon and the Docker socket.
//!
//! It listens on a unix socket and forwards every connection to the real
//! one. Client-to-Docker bytes are read at HTTP/1.1 request boundaries
//! (request line and headers; body by Content-Length or chunked encoding), so
//! each request can be delayed, failed, cut off or have its answer lost;
//! Docker-to-client bytes are copied verbatim. After a request asking for an
//! `Upgrade` (exec and attach hijack the connection) the rest of that
//! connection is copied raw. Faults are changed at run time; `down()` refuses
//! new connections and cuts the open ones until `up()`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// The real Docker socket: DOCKER_HOST if it is a unix socket, else the default.
pub fn docker_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(h.trim_start_matches("unix://")),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// What happens to a request a fault matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wait this long, then go on (other faults may still apply).
    Delay(Duration),
    /// Docker never sees it; the client gets `500 {"message":"injected fault"}`
    /// and the connection is closed.
    Fail,
    /// Docker never sees it; the connection is closed without an answer.
    Drop,
    /// Docker gets it and acts on it; the connection is closed before its
    /// answer reaches the client (the daemon cannot tell whether it happened).
    Lose,
}

/// A fault: an action on requests whose method is `method` (empty: any) and
/// whose path contains `path`.
#[derive(Debug, Clone)]
pub struct Fault {
    method: String,
    path: String,
    action: Action,
    /// Matches it still acts on; `None`: every one.
    times: Option<u32>,
    /// Chance that a match is acted on (drawn from the proxy's seeded generator).
    probability: f64,
}

impl Fault {
    pub fn new(action: Action, method: &str, path: &str) -> Fault {
        Fault { method: method.into(), path: path.into(), action, times: None, probability: 1.0 }
    }

    pub fn fail(method: &str, path: &str) -> Fault {
        Fault::new(Action::Fail, method, path)
    }

    pub fn drop(method: &str, path: &str) -> Fault {
        Fault::new(Action::Drop, method, path)
    }

    pub fn lose(method: &str, path: &str) -> Fault {
        Fault::new(Action::Lose, method, path)
    }

    pub fn delay(method: &str, path: &str, by: Duration) -> Fault {
        Fault::new(Action::Delay(by), method, path)
    }

    /// Acts on the next `n` matches only.
    pub fn times(mut self, n: u32) -> Fault {
        self.times = Some(n);
        self
    }

    /// Acts on a match with probability `p`.
    pub fn probability(mut self, p: f64) -> Fault {
        self.probability = p;
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        (self.method.is_empty() || self.method.eq_ignore_ascii_case(method))
            && path.contains(&self.path)
            && self.times != Some(0)
    }
}

/// Index of an injected fault, to ask how often it fired.
#[derive(Debug, Clone, Copy)]
pub struct FaultId(usize);

struct State {
    faults: Vec<(Fault, u32)>,
    down: bool,
    /// xorshift64 state: probabilities are reproducible for a given request order.
    rng: u64,
}

impl State {
    fn roll(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The delay before a request, and the first other action that fires on it.
    fn decide(&mut self, method: &str, path: &str) -> (Duration, Option<Action>) {
        let mut delay = Duration::ZERO;
        for i in 0..self.faults.len() {
            if !self.faults[i].0.matches(method, path) {
                continue;
            }
            let p = self.faults[i].0.probability;
            if p < 1.0 && self.roll() >= p {
                continue;
            }
            let (fault, hits) = &mut self.faults[i];
            *hits += 1;
            if let Some(t) = &mut fault.times {
                *t -= 1;
            }
            match fault.action {
                Action::Delay(d) => delay += d,
                other => return (delay, Some(other)),
            }
        }
        (delay, None)
    }
}

/// The proxy; dropping it closes the socket and cuts every connection.
pub struct FaultProxy {
    path: PathBuf,
    state: Arc<Mutex<State>>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `path` (replacing any file there), forwarding to [`docker_socket`].
    pub fn start(path: &Path) -> FaultProxy {
        FaultProxy::start_seeded(path, 0x5EED_F00D_CAFE_F00D)
    }

    pub fn start_seeded(path: &Path, seed: u64) -> FaultProxy {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let state = Arc::new(Mutex::new(State { faults: Vec::new(), down: false, rng: seed | 1 }));
        let cut = watch::channel(0u64).0;
        let target = docker_socket();
        let (st, cut_rx) = (Arc::clone(&state), cut.subscribe());
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every connection.
            let mut conns = JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                if st.lock().unwrap().down {
                    continue; // refused: closed at once
                }
                let (target, st, mut cut) = (target.clone(), Arc::clone(&st), cut_rx.clone());
                cut.mark_unchanged();
                conns.spawn(async move {
                    tokio::select! {
                        () = serve(inbound, target, st) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        FaultProxy { path: path.to_path_buf(), state, cut, task }
    }

    /// `unix://` address of the proxy, for the daemon's `docker.host`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn inject(&self, fault: Fault) -> FaultId {
        let mut s = self.state.lock().unwrap();
        s.faults.push((fault, 0));
        FaultId(s.faults.len() - 1)
    }

    /// How many requests the fault has acted on.
    pub fn hits(&self, id: FaultId) -> u32 {
        self.state.lock().unwrap().faults[id.0].1
    }

    /// Stops every fault from acting (their hit counts stay readable).
    pub fn clear(&self) {
        for (f, _) in &mut self.state.lock().unwrap().faults {
            f.times = Some(0);
        }
    }

    /// Docker goes away: new connections are refused, open ones cut.
    pub fn down(&self) {
        self.state.lock().unwrap().down = true;
        self.cut.send_modify(|g| *g += 1);
    }

    pub fn up(&self) {
        self.state.lock().unwrap().down = false;
    }

    /// Docker is away for `len`.
    pub async fn outage(&self, len: Duration) {
        self.down();
        tokio::time::sleep(len).await;
        self.up();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One client connection: requests one by one towards Docker, answers back verbatim.
async fn serve(inbound: UnixStream, target: PathBuf, state: Arc<Mutex<State>>) {
    let Ok(outbound) = UnixStream::connect(&target).await else { return };
    let (client_rx, client_tx) = inbound.into_split();
    let (docker_rx, mut docker_tx) = outbound.into_split();
    let (stop, stopped) = oneshot::channel();
    let answers = tokio::spawn(relay_answers(docker_rx, client_tx, stopped));
    let _guard = AbortOnDrop(answers.abort_handle());
    let mut requests = BufReader::new(client_rx);
    loop {
        let Ok(Some(head)) = read_head(&mut requests).await else { break };
        let text = String::from_utf8_lossy(&head).to_string();
        let mut words = text.split_whitespace();
        let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let (delay, action) = state.lock().unwrap().decide(method, path);
        tokio::time::sleep(delay).await;
        match action {
            None | Some(Action::Delay(_)) => {
                if docker_tx.write_all(&head).await.is_err()
                    || copy_body(&mut requests, &mut docker_tx, &text).await.is_err()
                {
                    return;
                }
                if header(&text, "upgrade").is_some() {
                    // Hijacked (exec, attach): raw both ways from here on.
                    let _ = tokio::io::copy(&mut requests, &mut docker_tx).await;
                    break;
                }
            }
            Some(Action::Drop) => return,
            Some(Action::Fail) => {
                let _ = copy_body(&mut requests, &mut tokio::io::sink(), &text).await;
                let _ = stop.send(());
                let Ok((_, mut client_tx)) = answers.await else { return };
                let body = r#"{"message":"injected fault"}"#;
                let answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = client_tx.write_all(answer.as_bytes()).await;
                let _ = client_tx.shutdown().await;
                return;
            }
            Some(Action::Lose) => {
                let _ = stop.send(());
                let Ok((mut docker_rx, _client_tx)) = answers.await else { return };
                if docker_tx.write_all(&head).await.is_ok()
                    && copy_body(&mut requests, &mut docker_tx, &text).await.is_ok()
                {
                    // Docker has acted once it starts answering.
                    let mut first = [0u8; 1];
                    let _ = tokio::time::timeout(Duration::from_secs(60), docker_rx.read(&mut first)).await;
                }
                return;
            }
        }
    }
    let _ = docker_tx.shutdown().await;
    let _ = answers.await;
}

/// Copies Docker's answers to the client until Docker closes or `stop` fires;
/// gives the halves back. Clients do not pipeline, so nothing is in flight
/// when a new request arrives and `stop` fires.
async fn relay_answers(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    stop: oneshot::Receiver<()>,
) -> (OwnedReadHalf, OwnedWriteHalf) {
    tokio::select! {
        r = tokio::io::copy(&mut from, &mut to) => {
            if r.is_ok() {
                let _ = to.shutdown().await;
            }
        }
        _ = stop => {}
    }
    (from, to)
}

/// A request line and headers, through the blank line; `None` at a clean end of stream.
async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        if r.read_until(b'\n', &mut head).await? == 0 {
            return if head.is_empty() { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        let line = &head[start..];
        if line == b"\r\n" || line == b"\n" {
            return Ok(Some(head));
        }
        if head.len() > 1 << 20 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

/// The value of a header (name in lower case) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Copies the body of the request whose head is `head`.
async fn copy_body<R, W>(r: &mut R, w: &mut W, head: &str) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if header(head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).await?;
            w.write_all(&line).await?;
            let size = String::from_utf8_lossy(&line);
            let size = size.trim().split(';').next().unwrap_or_default();
            let size =
                u64::from_str_radix(size, 16).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
            if size == 0 {
                // Trailers, through the blank line.
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    w.write_all(&line).await?;
                    if line == b"\r\n" || line == b"\n" {
                        return w.flush().await;
                    }
                }
            }
            copy_exact(r, w, size + 2).await?;
        }
    }
    let len = header(head, "content-length").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    copy_exact(r, w, len).await?;
    w.flush().await
}

async fn copy_exact<R, W>(r: &mut R, w: &mut W, n: u64) -> std::io::Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if tokio::io::copy(&mut r.take(n), w).await? < n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
