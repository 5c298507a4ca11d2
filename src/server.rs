//! Listeners and connections: accept (bounded by `max_connections`), TLS
//! handshake, HTTP/1.1 or HTTP/2 by ALPN, idle and header timeouts, and the
//! graceful drain on shutdown. Requests go to [`crate::proxy::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::{ConfigError, Limits};
use crate::connection::{drive, ConnState, Connection, Exchange, Tracked};
use crate::proxy::{self, ConnInfo};
use crate::snapshot::Snapshot;

/// Concurrent connections on the admin listener.
const ADMIN_MAX_CONNECTIONS: usize = 64;

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

/// State shared by every connection: the current configuration snapshot.
#[derive(Debug)]
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub tunnels: crate::tunnel::Tunnels,
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
#[error("cannot listen on {field} {addr}")]
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

    let (shutdown, _) = watch::channel(false);
    let gateway = Arc::new(Gateway {
        snapshot: ArcSwap::from_pointee(snapshot),
        tunnels: crate::tunnel::Tunnels::new(shutdown.subscribe()),
    });
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
        let current = self.gateway.snapshot.load();
        let (snapshot, mut warnings) = crate::load::load(path, Some(&current), crate::load::Purpose::Serve)?;
        if snapshot.config.listen != current.config.listen {
            warnings
                .push("listen: listener addresses cannot change on reload; restart the gateway to move them".into());
        }
        if snapshot.config.limits.max_connections != current.config.limits.max_connections {
            warnings.push(format!(
                "limits.max_connections: stays {} until the gateway restarts (the connection budget is set at startup)",
                self.max_connections
            ));
        }
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

    /// Wait up to `grace` for the open connections and WebSocket tunnels to
    /// close (tunnels close themselves when the grace period ends).
    pub async fn drain(self, grace: Duration) {
        let tunnels = self.gateway.tunnels.open.clone();
        let everything = async {
            let _connections = self.connections.acquire_many(self.max_connections).await;
            let _tunnels = tunnels.acquire_many(crate::tunnel::MAX_TUNNELS as u32).await;
        };
        // A little past the grace, so tunnels closing at its end are counted.
        if tokio::time::timeout(grace + Duration::from_millis(200), everything)
            .await
            .is_err()
        {
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
                    let answer = move |req: Request<Incoming>, _: Arc<Snapshot>| {
                        std::future::ready(crate::redirect::answer(&req, https_port))
                    };
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
        https_connection(gateway, tls, peer, &limits)
    };
    drive(conn, &limits, &state, shutdown).await;
}

/// The HTTP/1.1 or HTTP/2 connection over an established TLS stream.
fn https_connection(
    gateway: Arc<Gateway>,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    limits: &Limits,
) -> (Connection, Arc<ConnState>) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let state = Arc::new(ConnState::new(limits, !h2));
    let io = TokioIo::new(Tracked::new(tls, state.clone()));
    let conn = Arc::new(ConnInfo::new(peer, gateway.tunnels.clone()));
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let gateway = gateway.clone();
        let conn = conn.clone();
        let exchange = Exchange::begin(&service_state);
        // Boxed: hyper moves an HTTP/2 stream's future into a task of its own,
        // and copying the whole pipeline's state there costs more than one
        // allocation (bench/callgrind.sh, h2 public route: 182k -> 96k
        // instructions per request).
        Box::pin(async move {
            let resp = proxy::handle(gateway.snapshot.load_full(), &conn, req).await;
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

/// The plain-HTTP/1.1 listeners (redirect, admin): small answers computed from
/// the request and the current snapshot.
async fn serve_plain<F, Fut>(gateway: Arc<Gateway>, stream: TcpStream, shutdown: watch::Receiver<bool>, answer: F)
where
    F: Fn(Request<Incoming>, Arc<Snapshot>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let limits = gateway.snapshot.load().config.limits.clone();
    let state = Arc::new(ConnState::new(&limits, true));
    let io = TokioIo::new(Tracked::new(stream, state.clone()));
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let exchange = Exchange::begin(&service_state);
        let resp = answer(req, gateway.snapshot.load_full());
        async move { Ok::<_, Infallible>(resp.await.map(|body| exchange.respond(body))) }
    });
    let conn = Box::pin(http1_builder(&limits).serve_connection(io, service).with_upgrades());
    drive(conn, &limits, &state, shutdown).await;
}
