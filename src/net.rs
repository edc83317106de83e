//! Serving HTTP with bounds, for every listener of the crate (`hub serve`, the controller
//! API of `run`, the metrics and health port of `run --kube`), and the health routes the
//! controllers share.
//!
//! [`serve`] accepts at most [`Limits::max_connections`] connections at once (more wait in
//! the kernel's backlog until one ends), gives each client [`Limits::header_read_timeout`]
//! to send a request's head (from connect, and again after each answer on a kept-alive
//! connection, so an idle connection is closed after that long too), and closes a
//! connection that moves no byte either way for [`Limits::idle_timeout`] (a stalled TLS
//! handshake, body or reader). So a crowd of half-open connections ties up slots only for
//! seconds, and a real client gets its answer. See
//! https://owasp.org/www-community/attacks/Slowloris for the attack these bounds answer.
//!
//! A handler that runs longer than the idle timeout without the connection moving a byte
//! loses its connection: keep the idle timeout above the slowest handler.
//!
//! This module is a utility: it imports nothing from the rest of the crate.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};

/// The bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to finish a request's head: from connect (TLS handshake
    /// included), and from the end of the previous answer on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Time a connection may move no byte in either direction before it is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once; further clients wait in the backlog.
    pub max_connections: usize,
}

impl Limits {
    /// 15 s to send a request's head, 120 s without a byte, 512 connections.
    pub const DEFAULT: Limits = Limits {
        header_read_timeout: Duration::from_secs(15),
        idle_timeout: Duration::from_secs(120),
        max_connections: 512,
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// Serves `app` on `tcp` within `limits` until `shutdown` completes, then stops accepting,
/// lets every open connection finish its request, and returns.
pub async fn serve(
    tcp: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    serve_with(tcp, app, limits, shutdown, |io| async move { Ok(io) }).await
}

/// [`serve`] with a handshake (TLS, say) run on each accepted connection before HTTP; the
/// handshake must finish within the header-read timeout.
pub async fn serve_with<H, F, Io>(
    tcp: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
    handshake: H,
) -> io::Result<()>
where
    H: Fn(TimedStream) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = io::Result<Io>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = tcp.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let io = TimedStream::new(stream, limits.idle_timeout);
        let (app, handshake, mut stop) = (app.clone(), handshake.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _slot = permit;
            let io = match tokio::time::timeout(limits.header_read_timeout, handshake(io)).await {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("handshake timed out");
                    return;
                }
            };
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
                .with_upgrades();
            let mut conn = pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    drop(tcp);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it ends.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// A TCP stream that fails with `TimedOut` once it has moved no byte either way for its
/// idle timeout.
pub struct TimedStream {
    inner: TcpStream,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl TimedStream {
    fn new(inner: TcpStream, idle: Duration) -> TimedStream {
        let now = Instant::now();
        TimedStream {
            inner,
            idle,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// Ready with an error when the connection has been idle too long; the timer is
    /// moved lazily, only when it fires after some progress.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last + self.idle;
            if deadline <= Instant::now() {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection was idle too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Notes progress on a finished operation; on a pending one, fails it once the
    /// connection has been idle too long.
    fn after<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
        moved: impl FnOnce(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(Ok(v)) => {
                if moved(&v) {
                    self.last = Instant::now();
                }
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        this.after(cx, r, |_| moved)
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after(cx, r, |n| *n > 0)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after(cx, r, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.after(cx, r, |_| false)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ----- health routes -------------------------------------------------------------------

/// The probe and scrape routes every controller serves, over its state `S`:
/// `GET /healthz` (200 `ok` while the process serves), `GET /readyz` (200 with `ready`'s
/// message, 503 with its reason) and `GET /metrics` (`metrics`' OpenMetrics text).
pub fn health_routes<S>(
    ready: fn(&S) -> Result<String, String>,
    metrics: fn(&S) -> String,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move |State(s): State<S>| async move {
                match ready(&s) {
                    Ok(m) => (StatusCode::OK, format!("{}\n", m.trim_end())).into_response(),
                    Err(m) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{}\n", m.trim_end()),
                    )
                        .into_response(),
                }
            }),
        )
        .route(
            "/metrics",
            get(move |State(s): State<S>| async move { metrics_response(metrics(&s)) }),
        )
}

fn metrics_response(text: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a one-route app with `limits`; the address and the server task.
    async fn served(limits: Limits) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "hello" }));
        let task = tokio::spawn(async move {
            serve(tcp, app, limits, std::future::pending())
                .await
                .unwrap();
        });
        (addr, task)
    }

    /// Opens `n` connections that send nothing or half a request line.
    async fn half_open(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
        let mut conns = Vec::new();
        for i in 0..n {
            let mut c = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                c.write_all(b"GET / HT").await.unwrap();
            }
            conns.push(c);
        }
        conns
    }

    /// A real request on a new connection; its status line.
    async fn real_request(addr: std::net::SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out.lines().next().unwrap_or("").to_string()
    }

    const GENEROUS: Duration = Duration::from_secs(20);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_hundred_half_open_connections_starve_no_client() {
        let (addr, _task) = served(Limits::DEFAULT).await;
        let _crowd = half_open(addr, 300).await;
        let status = tokio::time::timeout(GENEROUS, real_request(addr))
            .await
            .expect("a real client is answered while 300 connections hang");
        assert_eq!(status, "HTTP/1.1 200 OK");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_house_frees_its_slots_at_the_header_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            max_connections: 20,
        };
        let (addr, _task) = served(limits).await;
        let _crowd = half_open(addr, 100).await;
        let status = tokio::time::timeout(GENEROUS, real_request(addr))
            .await
            .expect("the real client gets a slot once the half-open ones time out");
        assert_eq!(status, "HTTP/1.1 200 OK");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_and_half_open_connections_are_closed_after_the_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            max_connections: 512,
        };
        let (addr, _task) = served(limits).await;
        let mut conns = half_open(addr, 20).await;
        // A kept-alive connection that got one answer and then says nothing.
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        conns.push(kept);
        for (i, c) in conns.iter_mut().enumerate() {
            // The server closes (EOF, or a reset after its 408) within the bounded wait.
            let closed = tokio::time::timeout(GENEROUS, async {
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => continue,
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "connection {i} is still open");
        }
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_returns() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new().route("/", get(|| async { "hello" }));
        let task = tokio::spawn(serve(tcp, app, Limits::DEFAULT, async {
            let _ = rx.await;
        }));
        assert_eq!(real_request(addr).await, "HTTP/1.1 200 OK");
        tx.send(()).unwrap();
        tokio::time::timeout(GENEROUS, task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn health_routes_answer_from_the_state() {
        #[derive(Clone)]
        struct S(bool);
        let app = |ready| {
            health_routes::<S>(
                |s| {
                    if s.0 {
                        Ok("ready".into())
                    } else {
                        Err("not yet".into())
                    }
                },
                |_| "# EOF\n".into(),
            )
            .with_state(S(ready))
        };
        let call = |app: Router, path: &'static str| async move {
            let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}{path}", tcp.local_addr().unwrap());
            let task = tokio::spawn(serve(tcp, app, Limits::DEFAULT, std::future::pending()));
            let r = reqwest::get(url).await.unwrap();
            task.abort();
            let status = r.status().as_u16();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (status, ct, r.text().await.unwrap())
        };
        assert_eq!(call(app(true), "/healthz").await.2, "ok\n");
        let (st, _, body) = call(app(true), "/readyz").await;
        assert_eq!((st, body.as_str()), (200, "ready\n"));
        let (st, _, body) = call(app(false), "/readyz").await;
        assert_eq!((st, body.as_str()), (503, "not yet\n"));
        let (st, ct, body) = call(app(false), "/metrics").await;
        assert_eq!(st, 200);
        assert!(ct.unwrap().starts_with("application/openmetrics-text"));
        assert_eq!(body, "# EOF\n");
    }
}
