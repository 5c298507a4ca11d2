//! Listeners and connections: accept (bounded by `max_connections`), TLS
//! handshake, HTTP/1.1 or HTTP/2 by ALPN, idle and header timeouts, and the
//! graceful drain on shutdown. Requests go to [`crate::proxy::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::config::{Config, ConfigError, Limits};
use crate::proxy::{self, ConnInfo};
use crate::snapshot::Snapshot;

/// Concurrent connections on the admin listener.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// State shared by every connection: the current configuration snapshot.
#[derive(Debug)]
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
}

/// A started gateway: its bound addresses and what stops or reloads it.
pub struct Running {
    pub https_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    max_connections: u32,
    accept_loops: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {field} {addr}: {source}")]
pub struct BindError {
    field: &'static str,
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

async fn bind(field: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { field, addr, source })
}

/// Bind the listeners named by the snapshot's configuration and start serving.
pub async fn start(snapshot: Snapshot) -> Result<Running, BindError> {
    let listen = snapshot.config.listen.clone();
    let max = snapshot.config.limits.max_connections.min(Semaphore::MAX_PERMITS) as u32;
    let https = bind("listen.https", listen.https).await?;
    let http = match listen.http {
        Some(addr) => Some(bind("listen.http", addr).await?),
        None => None,
    };
    let https_addr = https.local_addr().map_err(|source| BindError {
        field: "listen.https",
        addr: listen.https,
        source,
    })?;
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let admin = match listen.admin {
        Some(addr) => Some(bind("listen.admin", addr).await?),
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    snapshot.start_background();

    let gateway = Arc::new(Gateway {
        snapshot: ArcSwap::from_pointee(snapshot),
    });
    let (shutdown, _) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(max as usize));
    let mut accept_loops = vec![tokio::spawn(accept_loop(
        https,
        Listener::Https,
        gateway.clone(),
        connections.clone(),
        shutdown.subscribe(),
    ))];
    if let Some(admin) = admin {
        // The admin listener has its own small budget, so a gateway saturated
        // with clients still answers its health checks and scrapes.
        let admin_connections = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
        accept_loops.push(tokio::spawn(accept_loop(
            admin,
            Listener::Admin,
            gateway.clone(),
            admin_connections,
            shutdown.subscribe(),
        )));
    }
    if let Some(http) = http {
        let redirect = Listener::Redirect {
            https_port: https_addr.port(),
        };
        // Its own budget too: redirect clients never take HTTPS clients' places.
        let redirect_connections = Arc::new(Semaphore::new(max as usize));
        accept_loops.push(tokio::spawn(accept_loop(
            http,
            redirect,
            gateway.clone(),
            redirect_connections,
            shutdown.subscribe(),
        )));
    }
    tracing::info!(
        https = %https_addr,
        http = http_addr.map(|a| a.to_string()),
        admin = admin_addr.map(|a| a.to_string()),
        "listening"
    );
    Ok(Running {
        https_addr,
        http_addr,
        admin_addr,
        gateway,
        shutdown,
        connections,
        max_connections: max,
        accept_loops,
    })
}

impl Running {
    /// Re-read the configuration file and swap it in whole, or keep the
    /// current one and return why not. Returns the new config's warnings.
    pub fn reload(&self, path: &std::path::Path) -> Result<Vec<String>, ConfigError> {
        let result = self.try_reload(path);
        crate::metrics::config_reload(result.is_ok());
        result
    }

    fn try_reload(&self, path: &std::path::Path) -> Result<Vec<String>, ConfigError> {
        let loaded = Config::load(path)?;
        crate::tls::ensure_self_signed(&loaded.config.tls).map_err(|message| ConfigError::at_field(path, message))?;
        let current = self.gateway.snapshot.load();
        let mut warnings = loaded.warnings;
        if loaded.config.listen != current.config.listen {
            warnings
                .push("listen: listener addresses cannot change on reload; restart the gateway to move them".into());
        }
        if loaded.config.limits.max_connections != current.config.limits.max_connections {
            warnings.push(format!(
                "limits.max_connections: stays {} until the gateway restarts (the connection budget is set at startup)",
                self.max_connections
            ));
        }
        let snapshot = Snapshot::build(loaded.config, Some(&current))?;
        snapshot.start_background();
        self.gateway.snapshot.store(Arc::new(snapshot));
        Ok(warnings)
    }

    /// Stop accepting, let open connections finish their requests for up to
    /// `grace`, then return (dropping whatever is left).
    pub async fn shutdown(mut self, grace: Duration) {
        self.stop_accepting().await;
        self.drain(grace).await;
    }

    /// Close the listeners (new clients are refused from here on) and ask every
    /// open connection to finish what it is doing and close.
    pub async fn stop_accepting(&mut self) {
        let _ = self.shutdown.send(true);
        for task in self.accept_loops.drain(..) {
            let _ = task.await;
        }
    }

    /// Wait up to `grace` for the open connections to close.
    pub async fn drain(self, grace: Duration) {
        let drained = tokio::time::timeout(grace, self.connections.acquire_many(self.max_connections)).await;
        if drained.is_err() {
            tracing::warn!(grace = ?grace, "shutdown grace period over; closing remaining connections");
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Listener {
    Https,
    Admin,
    Redirect { https_port: u16 },
}

async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    gateway: Arc<Gateway>,
    connections: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Waiting for a permit before accepting leaves excess clients in the
        // kernel's backlog instead of accepting and dropping them.
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p,
            _ = shutdown.changed() => return,
        };
        let Ok(permit) = permit else { return };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match kind {
                Listener::Https => serve_https(gateway, stream, peer, shutdown).await,
                Listener::Admin => serve_plain(gateway, stream, shutdown, crate::admin::answer).await,
                Listener::Redirect { https_port } => {
                    let answer = move |req: &Request<Incoming>, _: &Snapshot| crate::redirect::answer(req, https_port);
                    serve_plain(gateway, stream, shutdown, answer).await
                }
            }
            drop(permit);
        });
    }
}

async fn serve_https(gateway: Arc<Gateway>, stream: TcpStream, peer: SocketAddr, shutdown: watch::Receiver<bool>) {
    let _open = crate::metrics::OpenConnection::open();
    let snap = gateway.snapshot.load_full();
    let limits = snap.config.limits.clone();
    // New handshakes use the certificate of the snapshot current at accept time.
    let acceptor = tokio_rustls::TlsAcceptor::from(snap.tls.clone());
    drop(snap);
    let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(client = %peer, "TLS handshake timed out"),
    };
    let (conn, state) = https_connection(gateway, tls, peer, &limits);
    drive(conn, &limits, &state, shutdown).await;
}

/// A connection as [`drive`] runs it. Boxed, so that each connection's task
/// holds exactly its own protocol's state (an idle keep-alive connection costs
/// memory for as long as it is open).
type Connection = Pin<Box<dyn GracefulConnection<Error = hyper::Error, Output = Result<(), hyper::Error>> + Send>>;

/// The HTTP/1.1 or HTTP/2 connection over an established TLS stream.
fn https_connection(
    gateway: Arc<Gateway>,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    limits: &Limits,
) -> (Connection, Arc<ConnState>) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let state = Arc::new(ConnState::new(limits, !h2));
    let io = TokioIo::new(Tracked {
        inner: tls,
        state: state.clone(),
    });
    let conn = Arc::new(ConnInfo::new(peer));
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let gateway = gateway.clone();
        let conn = conn.clone();
        let guard = InFlight::enter(&service_state);
        async move {
            let resp = proxy::handle(gateway.snapshot.load_full(), &conn, req).await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    // hyper's automatic protocol detection reads the connection preface; we
    // pick the protocol from ALPN instead, so a client gets what it negotiated.
    let conn: Connection = if h2 {
        Box::pin(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
                .max_concurrent_streams(256)
                .serve_connection(io, service),
        )
    } else {
        Box::pin(http1_builder(limits).serve_connection(io, service))
    };
    (conn, state)
}

fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    // hyper's own header_read_timeout also runs while a keep-alive connection
    // waits for its next request, which would cut idle_timeout short; the
    // head deadline is enforced in `drive` instead. The buffer is larger than
    // the limit so that a head somewhat over it still parses and gets the
    // gateway's own JSON 431; far larger heads are refused by hyper.
    b.timer(TokioTimer::new())
        .max_buf_size((limits.max_header_bytes * 2).max(8192) + 4096)
        .max_headers((limits.max_header_bytes / 16).clamp(100, 4096));
    b
}

/// The plain-HTTP/1.1 listeners (redirect, admin): small answers computed from
/// the request and the current snapshot.
async fn serve_plain<F>(gateway: Arc<Gateway>, stream: TcpStream, shutdown: watch::Receiver<bool>, answer: F)
where
    F: Fn(&Request<Incoming>, &Snapshot) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let limits = gateway.snapshot.load().config.limits.clone();
    let state = Arc::new(ConnState::new(&limits, true));
    let io = TokioIo::new(Tracked {
        inner: stream,
        state: state.clone(),
    });
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let _guard = InFlight::enter(&service_state);
        let resp = answer(&req, &gateway.snapshot.load());
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = Box::pin(http1_builder(&limits).serve_connection(io, service));
    drive(conn, &limits, &state, shutdown).await;
}

/// Run a connection to completion. It is closed gracefully when the gateway
/// shuts down or after `idle_timeout` without bytes or requests, and dropped
/// when a request head takes longer than `header_read_timeout` (slowloris).
async fn drive(mut conn: Connection, limits: &Limits, state: &ConnState, mut shutdown: watch::Receiver<bool>) {
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        let idle_deadline = state.last_activity() + limits.idle_timeout;
        let head_deadline = state.head_deadline();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(idle_deadline), if !closing => {
                let idle = state.in_flight.load(Ordering::Acquire) == 0
                    && state.last_activity() + limits.idle_timeout <= Instant::now();
                if idle {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep_until(head_deadline.unwrap_or_else(Instant::now)), if head_deadline.is_some() => {
                if state.head_deadline().is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("request head not received within header_read_timeout; closing");
                    return;
                }
            }
        }
    }
}

/// Milliseconds since a process-wide epoch, for lock-free timestamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that 0 can mean "unset".
    Instant::now().saturating_duration_since(epoch()).as_millis() as u64 + 1
}

fn at_ms(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms.saturating_sub(1))
}

/// Per-connection timing shared by the I/O wrapper, the service and `drive`.
struct ConnState {
    last_activity: AtomicU64,
    /// When the request head now being read must be complete (0: none pending).
    head_deadline: AtomicU64,
    in_flight: AtomicUsize,
    /// HTTP/1 only: HTTP/2 multiplexes, so "a head is pending" has no meaning there.
    track_heads: bool,
    header_read_timeout_ms: u64,
}

impl ConnState {
    fn new(limits: &Limits, track_heads: bool) -> Self {
        let now = now_ms();
        let header_read_timeout_ms = limits.header_read_timeout.as_millis() as u64;
        ConnState {
            last_activity: AtomicU64::new(now),
            // The first request's head must arrive within the timeout of the accept.
            head_deadline: AtomicU64::new(if track_heads { now + header_read_timeout_ms } else { 0 }),
            in_flight: AtomicUsize::new(0),
            track_heads,
            header_read_timeout_ms,
        }
    }

    fn on_read(&self) {
        let now = now_ms();
        self.last_activity.store(now, Ordering::Relaxed);
        // Bytes with no request in flight start the next request's head.
        if self.track_heads
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_deadline.load(Ordering::Acquire) == 0
        {
            self.head_deadline
                .store(now + self.header_read_timeout_ms, Ordering::Release);
        }
    }

    fn on_write(&self) {
        self.last_activity.store(now_ms(), Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        at_ms(self.last_activity.load(Ordering::Relaxed))
    }

    fn head_deadline(&self) -> Option<Instant> {
        match self.head_deadline.load(Ordering::Acquire) {
            0 => None,
            ms => Some(at_ms(ms)),
        }
    }
}

/// Counts a request as in flight until dropped; its head has fully arrived.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn enter(state: &Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.head_deadline.store(0, Ordering::Release);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.last_activity.store(now_ms(), Ordering::Relaxed);
    }
}

/// An I/O stream that reports reads and writes that move data to [`ConnState`].
struct Tracked<T> {
    inner: T,
    state: Arc<ConnState>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.on_read();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
