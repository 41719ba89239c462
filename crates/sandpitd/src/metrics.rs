//! `GET /metrics` with axum, in the Prometheus text format 0.0.4, on its
//! own listener (`[metrics] listen`, loopback by default). What is served is
//! rendered by the core ([`sandpit_core::metrics`]) on each scrape.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// Produces the whole exposition on each scrape.
pub type Render = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Longest a scraper's connection is kept open: it asks once and is answered.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` (any query string) until `shutdown` resolves, then
/// stops accepting and lets the connections in hand finish. Other paths get
/// 404, other methods on `/metrics` 405.
pub async fn serve(listener: TcpListener, render: Render, shutdown: impl Future<Output = ()> + Send + 'static) {
    serve_with(listener, render, shutdown, CONNECTION_DEADLINE).await;
}

async fn serve_with(
    listener: TcpListener,
    render: Render,
    shutdown: impl Future<Output = ()> + Send + 'static,
    deadline: Duration,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "metrics are at /metrics\n") })
        .layer(axum::middleware::map_response(close_after))
        .with_state(render);
    if let Err(e) = axum::serve(Deadlined { listener, deadline }, app).with_graceful_shutdown(shutdown).await {
        tracing::warn!(error = %e, "metrics server stopped");
    }
}

async fn scrape(State(render): State<Render>) -> Response {
    match render().await {
        Ok(body) => ([(CONTENT_TYPE, sandpit_core::metrics::CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics scrape failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// One request per connection, as before: hyper closes a connection after a
/// response that says `Connection: close`, and clients that read the answer
/// to its end (the tests' scraper, `nc`) rely on that. A scraper asks every
/// few seconds at most, so keep-alive would save little.
async fn close_after(mut response: Response) -> Response {
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The metrics listener, whose connections fail `deadline`
/// ([`CONNECTION_DEADLINE`]) after they were accepted. hyper's own header-read timeout needs a timer that
/// `axum::serve` does not give it: without this a client that sends its
/// request slowly, or never reads the answer, would hold a connection and its
/// task (and the graceful stop) for as long as it liked.
struct Deadlined {
    listener: TcpListener,
    deadline: Duration,
}

impl axum::serve::Listener for Deadlined {
    type Io = Deadline;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Deadline, SocketAddr) {
        // axum's own accept, which logs and retries failed accepts.
        let (io, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        (Deadline { io, expiry: Box::pin(tokio::time::sleep(self.deadline)) }, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection that reads and writes until its deadline, then fails with `TimedOut`.
struct Deadline {
    io: TcpStream,
    expiry: Pin<Box<Sleep>>,
}

impl Deadline {
    /// The error to fail with once the deadline has passed. Polling the timer
    /// also has it wake the connection's task when it fires, so a connection
    /// waiting on a silent client ends then.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.expiry.as_mut().poll(cx).is_ready().then(|| io::ErrorKind::TimedOut.into())
    }
}

impl AsyncRead for Deadline {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.expired(cx) {
            Some(e) => Poll::Ready(Err(e)),
            None => Pin::new(&mut this.io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Deadline {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.expired(cx) {
            Some(e) => Poll::Ready(Err(e)),
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.expired(cx) {
            Some(e) => Poll::Ready(Err(e)),
            None => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.expired(cx) {
            Some(e) => Poll::Ready(Err(e)),
            None => Pin::new(&mut this.io).poll_flush(cx),
        }
    }

    /// Closing is allowed past the deadline: it is how the connection ends.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `request` on a new connection and reads the answer to its end.
    async fn ask(addr: SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn the_server_answers_once_per_connection_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let render: Render = Arc::new(|| Box::pin(async { Ok("m 1\n".into()) }));
        let server = tokio::spawn(serve_with(
            listener,
            render,
            async move {
                let _ = stopped.await;
            },
            Duration::from_millis(300),
        ));

        let ok = ask(addr, "GET /metrics?a=b HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nm 1\n"), "{ok}");
        assert!(ok.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{ok}");
        assert!(ok.contains("connection: close\r\n"), "{ok}");
        assert!(ask(addr, "GET /x HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404 "));
        assert!(ask(addr, "DELETE /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405 "));

        // A client that never finishes its request is cut off at the deadline...
        let started = std::time::Instant::now();
        let silent = ask(addr, "GET /metrics HTTP/1.1\r\n");
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), silent).await.expect("cut off"), "");
        assert!(started.elapsed() >= Duration::from_millis(300));

        // ...and cannot hold up the stop for longer than that.
        let _held = TcpStream::connect(addr).await.unwrap();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("stopped").unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "no longer listening");
    }
}
