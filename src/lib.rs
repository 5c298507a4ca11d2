//! Portcullis: a TLS-terminating API gateway. `run` is the whole life of the
//! process: load the configuration, bind, serve, and react to signals.

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod metrics;
pub mod mint;
pub mod proxy;
pub mod redirect;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod tls;

use std::path::Path;

use config::Config;
use snapshot::Snapshot;

/// Why the gateway could not start. Printed as one line by `main`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Bind(#[from] server::BindError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Load, validate and compile a configuration file, as `check` and startup do.
pub fn load(path: &Path) -> Result<(Snapshot, Vec<String>), config::ConfigError> {
    let loaded = Config::load(path)?;
    let snapshot = Snapshot::build(loaded.config, None)?;
    Ok((snapshot, loaded.warnings))
}

/// Run the gateway until SIGTERM or SIGINT. SIGHUP reloads the configuration.
/// `on_ready` runs once every listener is bound.
pub async fn run(path: &Path, on_ready: impl FnOnce(&server::Running)) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};

    let loaded = Config::load(path)?;
    match tls::ensure_self_signed(&loaded.config.tls) {
        Ok(true) => {
            tracing::warn!(cert = %loaded.config.tls.cert.display(), "created a self-signed development certificate")
        }
        Ok(false) => {}
        Err(message) => {
            return Err(config::ConfigError {
                file: path.to_path_buf(),
                position: None,
                message,
            }
            .into())
        }
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let snapshot = Snapshot::build(loaded.config, None)?;
    // Handlers first: a signal that arrives once we are ready must not kill us.
    let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    let running = server::start(snapshot).await?;
    on_ready(&running);

    loop {
        tokio::select! {
            _ = hup.recv() => match running.reload(path) {
                Ok(warnings) => {
                    for w in warnings {
                        tracing::warn!("{w}");
                    }
                    tracing::info!(config = %path.display(), "configuration reloaded");
                }
                Err(e) => tracing::error!("reload failed, keeping the previous configuration: {e}"),
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    let grace = running.gateway.snapshot.load().config.limits.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down");
    // A second signal skips the drain.
    tokio::select! {
        _ = running.shutdown(grace) => {}
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
    }
    Ok(())
}
