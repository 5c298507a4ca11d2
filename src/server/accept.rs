//! Accepting connections on each listener (bounded by its budget): HTTPS
//! connections are handed to a worker ([`super::https`] serves them there);
//! the plain admin and redirect listeners are served here, on the main runtime.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::https::http1_builder;
use super::workers::Workers;
use super::Gateway;
use crate::connection::{drive, ConnState, Exchange, Tracked};
use crate::snapshot::Snapshot;

pub(super) enum Listener {
    Https(Workers),
    Plain(Plain),
}

/// A busy-lane admin connection's head must arrive within this.
const BUSY_ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// The decision API (forward auth) for a proxy in front.
    Decision,
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
                Plain::Decision => {
                    let answer =
                        move |req: Request<Incoming>, snap: Arc<Snapshot>| crate::decision::answer(req, snap, peer);
                    serve_plain(gateway, stream, shutdown, Lane::Regular, answer).await
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
