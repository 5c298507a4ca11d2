//! Connections to one upstream target: HTTP/1.1 keep-alive connections reused
//! last-in first-out (a worker thread's own first, see [`H1Conn`]), or a few
//! shared HTTP/2 connections that multiplex, all under one per-target cap
//! (`upstreams[].max_connections`).
//!
//! Why our own pool rather than a generic client: the cap must hold for both
//! protocols (one client connection may carry a hundred HTTP/2 streams, and
//! each must not become its own upstream socket), a request must wait a bounded
//! time for a free connection and then get a 503, and the hot path should not
//! hop through a channel or spawn a task per request.
//!
//! Every open connection holds one permit of the target's semaphore for as long
//! as its I/O task runs, so the cap counts idle and busy connections alike.
//! An HTTP/1.1 connection goes back on the idle stack when its response body
//! has been read to the end ([`UpstreamBody`]); a body dropped half-way leaves
//! the connection in an unknown state, so it is closed instead.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::UpstreamProtocol;
use crate::proxy::body::ReplayableBody;

/// An idle HTTP/1.1 connection unused for this long is closed rather than
/// reused: the upstream may have dropped it already.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Streams in flight on one HTTP/2 connection before another is opened.
const STREAMS_PER_H2_CONNECTION: usize = 100;

type H1Sender = http1::SendRequest<ReplayableBody>;
type H2Sender = http2::SendRequest<ReplayableBody>;
/// A connection of its own for an upgrade request, which has no body.
pub(crate) type UpgradeSender = http1::SendRequest<http_body_util::Empty<Bytes>>;

/// Why no connection could be had.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The target refused, timed out, or failed the TLS handshake: nothing was sent.
    Refused(Refusal),
    /// Every connection the cap allows stayed busy for the whole wait.
    Busy,
    /// The target has `max_tunnels` WebSocket tunnels open.
    TunnelsFull,
}

/// Why a connection to a target could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[error("the target did not negotiate HTTP/2 (ALPN h2); use protocol: http1 for it")]
    NoHttp2,
    #[error("no TLS configuration")]
    NoTlsConfig,
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("the connection attempt was abandoned")]
    Abandoned,
}

/// A dedicated connection's places: one of the target's connections and one
/// of its tunnels, both given back when dropped.
#[derive(Debug)]
pub struct DedicatedPermit {
    _connection: OwnedSemaphorePermit,
    _tunnel: OwnedSemaphorePermit,
}

/// The connections of one target.
pub struct TargetPool {
    pub authority: Authority,
    https: bool,
    protocol: UpstreamProtocol,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    permits: Arc<Semaphore>,
    /// One per open WebSocket tunnel (`max_tunnels`), taken with a permit.
    tunnels: Arc<Semaphore>,
    /// HTTP/1.1: idle connections, most recently used last, in one stack
    /// per worker (by the worker that drives each connection), so that
    /// workers taking and returning their own do not share a lock.
    idle: Box<[IdleStack]>,
    /// HTTP/2: the open connections, each with its count of streams in flight.
    shared: Mutex<Vec<H2Conn>>,
    /// One HTTP/2 handshake at a time, so a burst shares the new connection.
    h2_connecting: tokio::sync::Mutex<()>,
    /// Woken when a connection goes idle or closes: a waiter may proceed.
    freed: Arc<Notify>,
}

/// One worker's idle connections, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct IdleStack(Mutex<Vec<(H1Conn, Instant)>>);

/// An HTTP/1.1 connection and the worker thread that drives its I/O.
pub struct H1Conn {
    sender: H1Sender,
    home: usize,
}

#[derive(Clone)]
struct H2Conn {
    sender: H2Sender,
    streams: Arc<AtomicUsize>,
}

impl std::fmt::Debug for TargetPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetPool")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// A connection checked out for one request.
pub enum Checkout {
    H1(H1Conn),
    H2(H2Sender, StreamGuard),
}

impl TargetPool {
    pub fn new(
        authority: Authority,
        https: bool,
        protocol: UpstreamProtocol,
        tls: Option<&Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
        (max_connections, max_tunnels): (usize, usize),
    ) -> Result<Self, String> {
        let tls = match (https, tls) {
            (true, Some(config)) => {
                let host = authority.host().trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(host.to_string())
                    .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
                let mut config = rustls::ClientConfig::clone(config);
                config.alpn_protocols = vec![alpn(protocol).to_vec()];
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
            _ => None,
        };
        Ok(TargetPool {
            authority,
            https,
            protocol,
            tls,
            connect_timeout,
            permits: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            tunnels: Arc::new(Semaphore::new(max_tunnels.min(Semaphore::MAX_PERMITS))),
            idle: (0..crate::shard::shard_count()).map(|_| IdleStack::default()).collect(),
            shared: Mutex::new(Vec::new()),
            h2_connecting: tokio::sync::Mutex::new(()),
            freed: Arc::new(Notify::new()),
        })
    }

    pub(crate) fn is_https(&self) -> bool {
        self.https
    }

    /// A connection for one request: an idle or shared one when there is one,
    /// else a new one while the cap allows, else wait up to `connect_timeout`
    /// for one to free up.
    pub(crate) async fn checkout(self: &Arc<Self>) -> Result<Checkout, ConnectError> {
        let deadline = Instant::now() + self.connect_timeout;
        if self.protocol.is_http2() {
            return self.checkout_h2(deadline).await;
        }
        // The usual case, an idle connection at hand, registers no waiter.
        if let Some(conn) = self.pop_idle().await {
            return Ok(Checkout::H1(conn));
        }
        self.until_freed(deadline, || async {
            if let Some(conn) = self.pop_idle().await {
                return Some(Ok(Checkout::H1(conn)));
            }
            let permit = self.permits.clone().try_acquire_owned().ok()?;
            Some(self.connect_h1_detached(permit).await.map(Checkout::H1))
        })
        .await
    }

    /// Try `attempt` until it answers, waiting between tries for a connection
    /// to be freed, until `deadline` (then `Busy`). The waiter is registered
    /// before each try, so a connection freed while `attempt` looks still
    /// wakes it: no lost wake-up.
    async fn until_freed<T, F, Fut>(&self, deadline: Instant, mut attempt: F) -> Result<T, ConnectError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<Result<T, ConnectError>>>,
    {
        let mut waited = false;
        loop {
            let freed = self.freed.clone();
            let notified = freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(answer) = attempt().await {
                return answer;
            }
            if !waited {
                waited = true;
                crate::telemetry::event("waiting for an upstream connection");
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ConnectError::Busy);
            }
        }
    }

    /// A connection of its own for one request that may switch protocols (a
    /// WebSocket upgrade): never pooled, and its permits go with it, to be
    /// held for as long as the tunnel lives. Over `max_tunnels` it is refused
    /// at once rather than waiting: tunnels free their places only when a
    /// user leaves.
    pub(crate) async fn connect_dedicated(self: &Arc<Self>) -> Result<(UpgradeSender, DedicatedPermit), ConnectError> {
        let tunnel = self
            .tunnels
            .clone()
            .try_acquire_owned()
            .map_err(|_| ConnectError::TunnelsFull)?;
        let deadline = Instant::now() + self.connect_timeout;
        let permit = self
            .until_freed(deadline, || async {
                if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                    return Some(Ok(permit));
                }
                // An idle connection can be given up for it: closing it
                // frees its permit, and that wakes this wait.
                drop(self.idle.iter().find_map(|stack| stack.0.lock().ok()?.pop()));
                None
            })
            .await?;
        let io = TokioIo::new(self.stream().await?);
        let (sender, conn) = http1::handshake(io).await.map_err(refused)?;
        let task = conn.with_upgrades();
        let authority = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::debug!(target_addr = %authority, error = %e, "upstream connection ended with an error");
            }
        });
        Ok((
            sender,
            DedicatedPermit {
                _connection: permit,
                _tunnel: tunnel,
            },
        ))
    }

    /// The most recently used idle connection that is still usable: one this
    /// worker thread drives if there is one (no wake-up of another thread),
    /// else another worker's.
    async fn pop_idle(&self) -> Option<H1Conn> {
        let own = crate::shard::current_shard() % self.idle.len();
        let others = (0..self.idle.len()).filter(|&i| i != own);
        loop {
            let (mut conn, since) = std::iter::once(own)
                .chain(others.clone())
                .find_map(|i| self.idle[i].0.lock().ok()?.pop())?;
            if conn.sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Ready at once unless its last response is still being wound up.
            if conn.sender.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    /// Put a connection whose last response was read to the end back on the stack.
    fn put_idle(&self, conn: H1Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let home = crate::shard::shard_of(conn.home) % self.idle.len();
        if let Ok(mut idle) = self.idle[home].0.lock() {
            // The oldest entries sit at the bottom; drop the expired ones.
            let expired = idle.iter().take_while(|(_, t)| t.elapsed() > IDLE_TIMEOUT).count();
            idle.drain(..expired);
            idle.push((conn, Instant::now()));
        }
        self.freed.notify_one();
    }

    /// Connect in a task of its own: a request cancelled meanwhile (its client
    /// went away) leaves the new connection on the idle stack, not thrown away.
    async fn connect_h1_detached(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Result<H1Conn, ConnectError> {
        crate::telemetry::event("connecting to the upstream");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pool = self.clone();
        tokio::spawn(async move {
            let result = pool.connect_h1(permit).await;
            if let Err(Ok(conn)) = tx.send(result) {
                pool.put_idle(conn);
            }
        });
        rx.await
            .unwrap_or_else(|_| Err(ConnectError::Refused(Refusal::Abandoned)))
    }

    async fn connect_h1(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Result<H1Conn, ConnectError> {
        let io = TokioIo::new(self.stream().await?);
        let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(refused)?;
        self.run(Box::pin(conn), permit);
        Ok(H1Conn {
            sender,
            home: crate::shard::worker_index(),
        })
    }

    async fn checkout_h2(self: &Arc<Self>, deadline: Instant) -> Result<Checkout, ConnectError> {
        self.until_freed(deadline, || async {
            if let Some(conn) = self.least_loaded_h2(true) {
                return Some(Ok(conn.checkout()));
            }
            // All connections are busy (or there are none): open one, one
            // handshake at a time; whoever waited re-checks first.
            let Ok(_connecting) = tokio::time::timeout_at(deadline, self.h2_connecting.lock()).await else {
                return Some(Err(ConnectError::Busy));
            };
            if let Some(conn) = self.least_loaded_h2(true) {
                return Some(Ok(conn.checkout()));
            }
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Some(self.connect_h2(permit).await.map(|conn| {
                    if let Ok(mut shared) = self.shared.lock() {
                        shared.push(conn.clone());
                    }
                    conn.checkout()
                })),
                // At the cap: share the least loaded connection (HTTP/2 queues
                // the stream) or, with none open, wait for a permit.
                Err(_) => self.least_loaded_h2(false).map(|conn| Ok(conn.checkout())),
            }
        })
        .await
    }

    /// The open HTTP/2 connection with the fewest streams; with `below_limit`,
    /// only one that has room for another stream.
    fn least_loaded_h2(&self, below_limit: bool) -> Option<H2Conn> {
        let mut shared = self.shared.lock().ok()?;
        shared.retain(|c| !c.sender.is_closed());
        shared
            .iter()
            .filter(|c| !below_limit || c.streams.load(Ordering::Relaxed) < STREAMS_PER_H2_CONNECTION)
            .min_by_key(|c| c.streams.load(Ordering::Relaxed))
            .cloned()
    }

    async fn connect_h2(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Result<H2Conn, ConnectError> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        // Pings find a dead connection before a request does.
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let io = TokioIo::new(self.stream().await?);
        let (sender, conn) = builder.handshake(io).await.map_err(refused)?;
        let task: ConnTask = Box::pin(conn);
        self.run(task, permit);
        Ok(H2Conn {
            sender,
            streams: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Drive a connection's I/O until it ends, holding its permit meanwhile.
    fn run(&self, task: ConnTask, permit: OwnedSemaphorePermit) {
        let freed = self.freed.clone();
        let authority = self.authority.clone();
        tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::debug!(target_addr = %authority, error = %e, "upstream connection ended with an error");
            }
            drop(permit);
            freed.notify_one();
        });
    }

    /// A connected stream to the target: plain TCP, or TLS with the
    /// protocol's ALPN.
    async fn stream(&self) -> Result<Box<dyn Io>, ConnectError> {
        Ok(match &self.tls {
            None => Box::new(self.tcp().await?),
            Some(_) => Box::new(self.tls().await?),
        })
    }

    async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let host = self.authority.host().trim_start_matches('[').trim_end_matches(']');
        let port = self.authority.port_u16().unwrap_or(if self.https { 443 } else { 80 });
        let connect = TcpStream::connect((host, port));
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                Ok(tcp)
            }
            Ok(Err(e)) => Err(ConnectError::Refused(Refusal::Connect(e))),
            Err(_) => Err(ConnectError::Refused(Refusal::ConnectTimeout)),
        }
    }

    async fn tls(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let Some((connector, name)) = &self.tls else {
            return Err(ConnectError::Refused(Refusal::NoTlsConfig));
        };
        let tcp = self.tcp().await?;
        let handshake = connector.connect(name.clone(), tcp);
        let tls = match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(ConnectError::Refused(Refusal::Tls(e))),
            Err(_) => return Err(ConnectError::Refused(Refusal::TlsTimeout)),
        };
        // A server that ignores ALPN speaks HTTP/1.1; only h2 needs the answer.
        if self.protocol.is_http2() && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ConnectError::Refused(Refusal::NoHttp2));
        }
        Ok(tls)
    }
}

/// The ALPN protocol id offered to a TLS target.
fn alpn(protocol: UpstreamProtocol) -> &'static [u8] {
    if protocol.is_http2() {
        b"h2"
    } else {
        b"http/1.1"
    }
}

/// A byte stream to a target (plain or TLS).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

fn refused(e: hyper::Error) -> ConnectError {
    ConnectError::Refused(Refusal::Handshake(e))
}

type ConnTask = Pin<Box<dyn std::future::Future<Output = Result<(), hyper::Error>> + Send>>;

impl H2Conn {
    fn checkout(self) -> Checkout {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Checkout::H2(self.sender, StreamGuard(self.streams))
    }
}

/// Counts one stream as in flight on an HTTP/2 connection until dropped.
pub struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What an upstream response body keeps of its connection.
pub enum Lease {
    /// An HTTP/1.1 connection, returned to its pool when the body has ended.
    H1(Arc<TargetPool>, H1Conn),
    H2(StreamGuard),
    /// A connection of its own (an upgrade the upstream declined): closed
    /// with the body, its place in the cap freed.
    Dedicated(DedicatedPermit),
}

/// What every HTTPS response body is: the upstream's stream, or our own JSON.
pub type ResponseBody = http_body_util::Either<UpstreamBody, http_body_util::Full<Bytes>>;

/// An upstream response body: the stream as it arrives, which gives its
/// connection back when it has been read to the end.
pub struct UpstreamBody {
    inner: Incoming,
    lease: Option<Lease>,
    ended: bool,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, lease: Lease) -> Self {
        UpstreamBody {
            inner,
            lease: Some(lease),
            ended: false,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(Lease::H1(pool, conn)) = self.lease.take() {
            if self.ended || self.inner.is_end_stream() {
                pool.put_idle(conn);
            }
            // Otherwise dropping the sender closes the connection.
        }
    }
}

/// Send a request on a checked-out connection. A request that the connection
/// could not take (it closed as we picked it) comes back for another try.
pub async fn send(
    pool: &Arc<TargetPool>,
    checkout: Checkout,
    req: Request<ReplayableBody>,
) -> Result<http::Response<UpstreamBody>, SendError> {
    match checkout {
        Checkout::H1(mut conn) => match conn.sender.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(|b| UpstreamBody::new(b, Lease::H1(pool.clone(), conn)))),
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::NotSent(Box::new(req))),
                None => Err(SendError::Failed(e.into_error())),
            },
        },
        Checkout::H2(mut sender, guard) => match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp.map(|b| UpstreamBody::new(b, Lease::H2(guard)))),
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::NotSent(Box::new(req))),
                None => Err(SendError::Failed(e.into_error())),
            },
        },
    }
}

pub enum SendError {
    /// The connection closed before the request went out: safe to resend.
    NotSent(Box<Request<ReplayableBody>>),
    Failed(hyper::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle HTTP/1.1 connection over an in-memory pipe, driven by a task
    /// of this thread's runtime and said to be driven by worker `home`.
    async fn connection(home: usize, pipes: &mut Vec<tokio::io::DuplexStream>) -> H1Conn {
        let (client, server) = tokio::io::duplex(1024);
        pipes.push(server);
        let (sender, conn) = http1::handshake(TokioIo::new(client)).await.expect("handshake");
        tokio::spawn(conn);
        H1Conn { sender, home }
    }

    /// A pool for a plain-HTTP/1.1 target that is never connected to.
    fn plain_pool() -> TargetPool {
        let authority = Authority::from_static("127.0.0.1:9");
        TargetPool::new(
            authority,
            false,
            UpstreamProtocol::Http1,
            None,
            Duration::from_secs(1),
            (8, 4),
        )
        .expect("pool")
    }

    #[tokio::test]
    async fn a_worker_takes_back_the_connections_it_drives_first() {
        let pool = plain_pool();
        let mut pipes = Vec::new();
        // Worker 0 and a thread that is no worker: two shards on any machine.
        let other = usize::MAX;
        for home in [0, other, 0, other] {
            pool.put_idle(connection(home, &mut pipes).await);
        }
        crate::shard::become_worker(0);
        assert_eq!(
            pool.pop_idle().await.map(|c| c.home),
            Some(0),
            "its own, though another's went back after it"
        );
        assert_eq!(pool.pop_idle().await.map(|c| c.home), Some(0));
        // None of its own left: another's.
        assert_eq!(pool.pop_idle().await.map(|c| c.home), Some(other));
        assert_eq!(pool.pop_idle().await.map(|c| c.home), Some(other));
        assert!(pool.pop_idle().await.is_none());
        crate::shard::become_worker(other);
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_never_handed_out() {
        let pool = plain_pool();
        let mut pipes = Vec::new();
        pool.put_idle(connection(1, &mut pipes).await);
        pool.put_idle(connection(1, &mut pipes).await);
        // The upstream closes the most recent one.
        drop(pipes.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        crate::shard::become_worker(1);
        assert!(pool.pop_idle().await.is_some(), "the older, still open one");
        assert!(pool.pop_idle().await.is_none());
    }
}
