//! Listeners and connections: accept (bounded by `max_connections`), hand
//! each HTTPS connection to a worker thread (one per core), TLS handshake,
//! HTTP/1.1 or HTTP/2 by ALPN, idle and header timeouts, and the graceful
//! drain on shutdown. Requests go to [`crate::proxy::handle`].
//!
//! The parts: this file starts, reloads and drains; [`workers`] are the
//! threads that serve HTTPS connections; [`accept`] takes connections on each
//! listener (and serves the plain ones); [`https`] serves an HTTPS connection
//! (TLS, then HTTP/1.1 or HTTP/2).

mod accept;
mod https;
mod workers;

use accept::{accept_loop, Listener, Plain};
use workers::Workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};

use crate::config::ConfigError;
use crate::snapshot::Snapshot;

/// Concurrent connections on the admin listener.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Admin connections served while the regular slots are all taken (slow
/// clients holding them until their deadline): one request each, a head
/// within `accept::BUSY_ADMIN_HEAD_TIMEOUT`, reads only, so health checks and
/// scrapes keep getting answers.
const ADMIN_BUSY_CONNECTIONS: usize = 64;

/// State shared by every connection: the current configuration snapshot.
#[derive(Debug)]
pub struct Gateway {
    pub snapshot: ArcSwap<Snapshot>,
    pub tunnels: crate::proxy::tunnel::Tunnels,
}

/// A started gateway: its bound addresses and what stops or reloads it.
pub struct Running {
    /// `None` for a decision-only gateway.
    pub https_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub decision_addr: Option<SocketAddr>,
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
    let https = match listen.https {
        Some(addr) => Some(bind("listen.https", addr).await?),
        None => None,
    };
    let http = match listen.http {
        Some(addr) => Some(bind("listen.http", addr).await?),
        None => None,
    };
    let decision = match listen.decision {
        Some(addr) => Some(bind("listen.decision", addr).await?),
        None => None,
    };
    let https_addr = https.as_ref().and_then(|l| l.local_addr().ok());
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let decision_addr = decision.as_ref().and_then(|l| l.local_addr().ok());
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
    let mut accept_loops = Vec::new();
    let mut stop_workers = Vec::new();
    if let (Some(https), Some(addr)) = (https, https_addr) {
        let (workers, stop) = Workers::start(&gateway, &shutdown).map_err(|source| BindError {
            field: "listen.https",
            addr,
            source,
        })?;
        stop_workers = stop;
        accept_loops.push(tokio::spawn(accept_loop(
            https,
            Listener::Https(workers),
            gateway.clone(),
            connections.clone(),
            shutdown.subscribe(),
        )));
    }
    if let Some(decision) = decision {
        // Its own budget: the proxy in front holds keep-alive connections here.
        let decision_connections = Arc::new(Semaphore::new(max as usize));
        accept_loops.push(tokio::spawn(accept_loop(
            decision,
            Listener::Plain(Plain::Decision),
            gateway.clone(),
            decision_connections,
            shutdown.subscribe(),
        )));
    }
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
    if let (Some(http), Some(https_addr)) = (http, https_addr) {
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
        https = https_addr.map(|a| a.to_string()),
        http = http_addr.map(|a| a.to_string()),
        admin = admin_addr.map(|a| a.to_string()),
        decision = decision_addr.map(|a| a.to_string()),
        workers = crate::shard::worker_count(),
        "listening"
    );
    Ok(Running {
        https_addr,
        http_addr,
        admin_addr,
        decision_addr,
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
    pub(crate) async fn stop_accepting(&mut self) {
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
        // The last requests' spans: queued, not yet exported.
        let snapshot = self.gateway.snapshot.load_full();
        if let Some(telemetry) = &snapshot.telemetry {
            telemetry.flush(Duration::from_secs(2)).await;
        }
    }
}
