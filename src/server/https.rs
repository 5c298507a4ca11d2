//! Serving one HTTPS connection on its worker: the TLS handshake (within
//! `header_read_timeout`), then HTTP/1.1 or HTTP/2 as ALPN says, every
//! request handed to [`crate::proxy::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::Gateway;
use crate::config::Limits;
use crate::connection::{drive, ConnState, Connection, Exchange, Tracked};
use crate::proxy::{self, ConnInfo};

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
    // (A reload cannot remove the HTTPS listener, only warn; without a
    // certificate there is nothing to hand this client.)
    let Some(tls) = snap.tls.clone() else { return };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
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

/// Header fields an HTTP/1.1 request head may have.
const MAX_HEADER_FIELDS: usize = 100;

pub(super) fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    // hyper's own header_read_timeout (30 s by default once a timer is set)
    // also runs while a keep-alive connection waits for its next request,
    // which would cut a longer idle_timeout short, and costs a timer per
    // request; it is off, and the head deadline is enforced in `drive`
    // instead. The buffer is larger than the limit so that a head somewhat
    // over it still parses and gets the gateway's own JSON 431; far larger
    // heads are refused by hyper. So are heads of more than 100 fields
    // (HAProxy allows 101): up to 100, hyper parses into arrays on the
    // stack; above, it allocates two arrays of the limit's size (48 KiB at
    // 1,024 fields) for every request.
    b.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size((limits.max_header_bytes * 2).max(8192) + 4096)
        .max_headers(MAX_HEADER_FIELDS);
    b
}
