//! Accepting connections on each listener (bounded by its budget) and
//! serving them: HTTPS handed to a worker, TLS handshake, HTTP/1.1 or HTTP/2
//! by ALPN; the plain admin and redirect listeners on the main runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::workers::Workers;
use super::Gateway;
use crate::config::Limits;
use crate::connection::{drive, ConnState, Connection, Exchange, Tracked};
use crate::proxy::{self, ConnInfo};
use crate::snapshot::Snapshot;

pub(super) enum Listener {
    Https(Workers),
    Plain(Plain),
}

/// A busy-lane admin connection's head must arrive within this.
const BUSY_ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 keep-alive: a PING this often, and the connection is dropped when
/// its answer takes longer than the timeout.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2 receive windows: large enough that an upload streams at loopback
/// speed without waiting on WINDOW_UPDATE round trips (h2's defaults are
/// 64 KiB), small enough that a client cannot make one connection buffer much:
/// the body is forwarded as it arrives, so the window is what may be in
/// flight, not what is kept.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// The plain-HTTP listeners, served on the main runtime.
#[derive(Clone)]
pub(super) enum Plain {
    /// `busy_lane`: the places for connections beyond the regular budget.
    Admin {
        busy_lane: Arc<Semaphore>,
    },
    Redirect {
        https_port: u16,
    },
}

/// A place in `lane`, or never when there is no such lane.
async fn busy_place(lane: Option<&Arc<Semaphore>>) -> Result<OwnedSemaphorePermit, tokio::sync::AcquireError> {
    match lane {
        Some(lane) => lane.clone().acquire_owned().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    gateway: Arc<Gateway>,
    connections: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Waiting for a permit before accepting leaves excess clients in the
        // kernel's backlog instead of accepting and dropping them. The admin
        // listener has a second, short-lived lane for when its budget is full.
        let busy_lane = match &kind {
            Listener::Plain(Plain::Admin { busy_lane }) => Some(busy_lane),
            _ => None,
        };
        let (permit, busy) = tokio::select! {
            biased;
            p = connections.clone().acquire_owned() => (p, false),
            p = busy_place(busy_lane) => (p, true),
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
        let plain = match &kind {
            Listener::Https(workers) => {
                workers.hand(stream, peer, permit);
                continue;
            }
            Listener::Plain(plain) => plain.clone(),
        };
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match plain {
                Plain::Admin { .. } if busy => {
                    let lane = Lane::Busy(BUSY_ADMIN_HEAD_TIMEOUT);
                    serve_plain(gateway, stream, shutdown, lane, crate::admin::answer_when_busy).await
                }
                Plain::Admin { .. } => {
                    serve_plain(gateway, stream, shutdown, Lane::Regular, crate::admin::answer).await
                }
                Plain::Redirect { https_port } => {
                    let answer = move |req: Request<Incoming>, _: Arc<Snapshot>| {
                        std::future::ready(crate::redirect::answer(&req, https_port))
                    };
                    serve_plain(gateway, stream, shutdown, Lane::Regular, answer).await
                }
            }
            drop(permit);
        });
    }
}

pub(super) async fn serve_https(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    place: Arc<OwnedSemaphorePermit>,
) {
    let _open = crate::metrics::OpenConnection::open();
    let snap = gateway.snapshot.load_full();
    let limits = snap.config.limits.clone();
    // New handshakes use the certificate of the snapshot current at accept time.
    let acceptor = tokio_rustls::TlsAcceptor::from(snap.tls.clone());
    drop(snap);
    // Scoped and boxed: the handshake's state (a whole rustls connection)
    // would otherwise stay part of the connection's task for its whole life,
    // some 1.5 KB more for every idle keep-alive connection.
    let (conn, state) = {
        let handshake = Box::pin(acceptor.accept(stream));
        let tls = match tokio::time::timeout(limits.header_read_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
            Err(_) => return tracing::debug!(client = %peer, "TLS handshake timed out"),
        };
        https_connection(gateway, tls, peer, &limits, place)
    };
    drive(conn, &limits, &state, shutdown).await;
}

/// The HTTP/1.1 or HTTP/2 connection over an established TLS stream.
fn https_connection(
    gateway: Arc<Gateway>,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    limits: &Limits,
    place: Arc<OwnedSemaphorePermit>,
) -> (Connection, Arc<ConnState>) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let state = Arc::new(ConnState::new(limits, !h2));
    let io = TokioIo::new(Tracked::new(tls, state.clone()));
    let conn = Arc::new(ConnInfo::new(peer, gateway.tunnels.clone(), Some(place)));
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let snap = gateway.snapshot.load_full();
        let conn = conn.clone();
        let exchange = Exchange::begin(&service_state);
        // Boxed: hyper moves an HTTP/2 stream's future into a task of its own,
        // and copying the whole pipeline's state there costs more than one
        // allocation (bench/callgrind.sh, h2 public route: 182k -> 96k
        // instructions per request).
        Box::pin(async move {
            let resp = proxy::handle(snap, &conn, req).await;
            Ok::<_, Infallible>(resp.map(|body| exchange.respond(body)))
        })
    });
    // hyper's automatic protocol detection reads the connection preface; we
    // pick the protocol from ALPN instead, so a client gets what it negotiated.
    let conn: Connection = if h2 {
        Box::pin(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
                .max_concurrent_streams(limits.max_concurrent_streams)
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                // Pings find a vanished client; one that does not answer is dropped.
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .serve_connection(io, service),
        )
    } else {
        // Upgrades are only ever performed on WebSocket routes (see `tunnel`).
        Box::pin(http1_builder(limits).serve_connection(io, service).with_upgrades())
    };
    (conn, state)
}

fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    // hyper's own header_read_timeout (30 s by default once a timer is set)
    // also runs while a keep-alive connection waits for its next request,
    // which would cut a longer idle_timeout short, and costs a timer per
    // request; it is off, and the head deadline is enforced in `drive`
    // instead. The buffer is larger than the limit so that a head somewhat
    // over it still parses and gets the gateway's own JSON 431; far larger
    // heads are refused by hyper.
    b.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size((limits.max_header_bytes * 2).max(8192) + 4096)
        .max_headers((limits.max_header_bytes / 16).clamp(100, 4096));
    b
}

/// How a plain connection is served.
#[derive(Clone, Copy)]
enum Lane {
    Regular,
    /// Beyond the listener's budget: one request, its head within this.
    Busy(Duration),
}

/// The plain-HTTP/1.1 listeners (redirect, admin): small answers computed from
/// the request and the current snapshot.
async fn serve_plain<F, Fut>(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    shutdown: watch::Receiver<bool>,
    lane: Lane,
    answer: F,
) where
    F: Fn(Request<Incoming>, Arc<Snapshot>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut limits = gateway.snapshot.load().config.limits.clone();
    let mut builder = http1_builder(&limits);
    if let Lane::Busy(head_timeout) = lane {
        limits.header_read_timeout = limits.header_read_timeout.min(head_timeout);
        builder.keep_alive(false);
    }
    let state = Arc::new(ConnState::new(&limits, true));
    let io = TokioIo::new(Tracked::new(stream, state.clone()));
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let exchange = Exchange::begin(&service_state);
        let resp = answer(req, gateway.snapshot.load_full());
        async move { Ok::<_, Infallible>(resp.await.map(|body| exchange.respond(body))) }
    });
    let conn = Box::pin(builder.serve_connection(io, service).with_upgrades());
    drive(conn, &limits, &state, shutdown).await;
}
