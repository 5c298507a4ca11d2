//! Listeners and connections: accept (bounded by `max_connections`), hand
//! each HTTPS connection to a worker thread (one per core), TLS handshake,
//! HTTP/1.1 or HTTP/2 by ALPN, idle and header timeouts, and the graceful
//! drain on shutdown. Requests go to [`crate::proxy::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::{ConfigError, Limits};
use crate::connection::{drive, ConnState, Connection, Exchange, Tracked};
use crate::proxy::{self, ConnInfo};
use crate::snapshot::Snapshot;

/// Concurrent connections on the admin listener.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Admin connections served while the regular slots are all taken (slow
/// clients holding them until their deadline): one request each, a head
/// within [`BUSY_ADMIN_HEAD_TIMEOUT`], reads only, so health checks and
/// scrapes keep getting answers.
const ADMIN_BUSY_CONNECTIONS: usize = 64;
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

/// State shared by every connection: the current configuration snapshot.
#[derive(Debug)]
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub tunnels: crate::proxy::tunnel::Tunnels,
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
    /// Dropped with `Running`: the workers end, closing what is still open.
    _stop_workers: Vec<oneshot::Sender<()>>,
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
        tunnels: crate::proxy::tunnel::Tunnels::new(shutdown.subscribe()),
    });
    let connections = Arc::new(Semaphore::new(max as usize));
    let (workers, stop_workers) = Workers::start(&gateway, &shutdown).map_err(|source| BindError {
        field: "listen.https",
        addr: https_addr,
        source,
    })?;
    let mut accept_loops = vec![tokio::spawn(accept_loop(
        https,
        Listener::Https(workers),
        gateway.clone(),
        connections.clone(),
        shutdown.subscribe(),
    ))];
    if let Some(admin) = admin {
        // The admin listener has its own small budget, so a gateway saturated
        // with clients still answers its health checks and scrapes.
        let admin_connections = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
        let busy_lane = Arc::new(Semaphore::new(ADMIN_BUSY_CONNECTIONS));
        accept_loops.push(tokio::spawn(accept_loop(
            admin,
            Listener::Plain(Plain::Admin { busy_lane }),
            gateway.clone(),
            admin_connections,
            shutdown.subscribe(),
        )));
    }
    if let Some(http) = http {
        let redirect = Listener::Plain(Plain::Redirect {
            https_port: https_addr.port(),
        });
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
        _stop_workers: stop_workers,
    })
}

/// Dropping a started gateway stops it at once: listeners closed, workers
/// ended with whatever they still had open.
impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.accept_loops {
            task.abort();
        }
    }
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
            let _tunnels = tunnels.acquire_many(crate::proxy::tunnel::MAX_TUNNELS as u32).await;
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

enum Listener {
    Https(Workers),
    Plain(Plain),
}

/// The plain-HTTP listeners, served on the main runtime.
#[derive(Clone)]
enum Plain {
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

/// Threads that serve HTTPS connections, one per core, each on a
/// single-threaded runtime of its own. The accept loop hands each new
/// connection to the worker with the fewest open; from then on the
/// connection, its requests and their upstream exchanges stay on that thread.
/// (With one runtime shared by all threads, a task woken on one thread woke
/// another to steal it: a futex wake-up and a context switch every other
/// request.)
struct Workers {
    queues: Vec<WorkerQueue>,
    /// Where the search for the least busy worker starts, so ties rotate.
    next: AtomicUsize,
}

struct WorkerQueue {
    /// Unbounded: what may be in it is bounded by the connection budget.
    handed: mpsc::UnboundedSender<Handed>,
    open: Arc<AtomicUsize>,
}

/// A new connection on its way to a worker: its socket (unregistered, so the
/// worker's runtime can take it), its client's address and its place.
type Handed = (std::net::TcpStream, SocketAddr, Place);

/// A connection's place in the connection budget and in its worker's count,
/// given back however the connection ends.
struct Place {
    open: Arc<AtomicUsize>,
    /// Shared with the WebSocket tunnels opened on the connection, which keep
    /// it when the connection hands its socket over.
    permit: Arc<OwnedSemaphorePermit>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Workers {
    /// As many workers as the process may use cores; each ends when its stop
    /// sender is dropped.
    fn start(
        gateway: &Arc<Gateway>,
        shutdown: &watch::Sender<bool>,
    ) -> std::io::Result<(Workers, Vec<oneshot::Sender<()>>)> {
        let count = crate::shard::worker_count();
        let mut queues = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (handed, connections) = mpsc::unbounded_channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let open = Arc::new(AtomicUsize::new(0));
            let work = serve_handed(connections, gateway.clone(), shutdown.subscribe());
            std::thread::Builder::new()
                .name(format!("portcullis-{index}"))
                .spawn(move || {
                    crate::shard::become_worker(index);
                    runtime.block_on(async move {
                        tokio::select! {
                            () = work => {}
                            _ = stopped => {}
                        }
                    })
                })?;
            queues.push(WorkerQueue { handed, open });
            stops.push(stop);
        }
        let workers = Workers {
            queues,
            next: AtomicUsize::new(0),
        };
        Ok((workers, stops))
    }

    /// Give a new connection to the worker with the fewest open.
    fn hand(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = least_busy(self.queues.len(), start, |i| {
            self.queues[i].open.load(Ordering::Relaxed)
        });
        let Some(worker) = self.queues.get(chosen) else {
            return;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => return tracing::debug!(client = %peer, error = %e, "cannot hand the connection to a worker"),
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let place = Place {
            open: worker.open.clone(),
            permit: Arc::new(permit),
        };
        // A worker that has ended gives the place back as the message drops.
        let _ = worker.handed.send((stream, peer, place));
    }
}

/// The index below `count` with the fewest open connections; among equals,
/// the first from `start` on (wrapping), so that ties take turns.
fn least_busy(count: usize, start: usize, open: impl Fn(usize) -> usize) -> usize {
    let start = start % count.max(1);
    (start..count).chain(0..start).min_by_key(|&i| open(i)).unwrap_or(0)
}

/// A worker's life: serve each connection handed to it; once the accept loop
/// is gone, let the open ones finish (the worker is ended from outside).
async fn serve_handed(
    mut handed: mpsc::UnboundedReceiver<Handed>,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
) {
    while let Some((stream, peer, place)) = handed.recv().await {
        let (gateway, shutdown) = (gateway.clone(), shutdown.clone());
        tokio::spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve_https(gateway, stream, peer, shutdown, place.permit.clone()).await,
                Err(e) => tracing::debug!(client = %peer, error = %e, "worker cannot take the connection"),
            }
            drop(place);
        });
    }
    std::future::pending().await
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

async fn serve_https(
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

#[cfg(test)]
mod tests {
    use super::least_busy;

    #[test]
    fn a_new_connection_goes_to_the_worker_with_the_fewest_open() {
        let open = [5, 2, 7, 3];
        for start in 0..8 {
            assert_eq!(least_busy(open.len(), start, |i| open[i]), 1, "start {start}");
        }
    }

    #[test]
    fn workers_equally_busy_take_turns() {
        let open = [4, 4, 4];
        let chosen: Vec<usize> = (0..6).map(|start| least_busy(open.len(), start, |i| open[i])).collect();
        assert_eq!(chosen, [0, 1, 2, 0, 1, 2]);
        // Only the equals among the least busy take turns.
        let open = [1, 3, 1];
        let chosen: Vec<usize> = (0..3).map(|start| least_busy(open.len(), start, |i| open[i])).collect();
        assert_eq!(chosen, [0, 2, 2]);
    }
}
