//! Portcullis: a TLS-terminating API gateway. `run` is the whole life of the
//! process: load the configuration, bind, serve, and react to signals.

#![forbid(unsafe_code)]

pub mod admin;
pub mod assertion;
pub mod auth;
pub mod cases;
pub mod clock;
pub mod config;
pub mod connection;
pub mod cors;
pub mod decision;
pub mod demo;
pub mod error;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod limits;
pub mod load;
pub mod log_format;
pub mod metrics;
pub mod mint;
pub mod openapi;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod resource_metadata;
pub mod routing;
pub mod server;
pub mod shard;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod watch;

use std::path::Path;

use snapshot::Snapshot;

/// Why the gateway could not start. Printed as one line by `main`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Bind(#[from] server::BindError),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// An error and its causes on one line, each printed once: `what: why: deeper why`.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    line
}

/// Load, validate and compile a configuration file as `check` does (nothing
/// is written to disk).
pub fn load_config(path: &Path) -> Result<(Snapshot, Vec<String>), config::ConfigError> {
    load::load(path, None, load::Purpose::Check)
}

/// Tell systemd (`Type=notify`) what we are doing; a no-op outside systemd.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// With `reload.watch`, watch the configuration's files.
fn watch_files(config: &config::Config, changed: &tokio::sync::mpsc::Sender<()>) -> Option<watch::Watch> {
    if !config.watch {
        return None;
    }
    match watch::start(&config.named_files(), changed.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the configuration's files; SIGHUP still reloads");
            None
        }
    }
}

/// Run the gateway until SIGTERM or SIGINT. SIGHUP reloads the configuration.
/// `on_ready` runs once every listener is bound.
pub async fn run(path: &Path, on_ready: impl FnOnce(&server::Running)) -> Result<(), StartError> {
    use sd_notify::NotifyState;
    use tokio::signal::unix::{signal, SignalKind};

    let (snapshot, warnings) = load::load(path, None, load::Purpose::Serve)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // Handlers first: a signal that arrives once we are ready must not kill us.
    let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    // Watching starts before serving: an edit made once the gateway answers
    // (or logs `listening`) is never missed.
    let (changed, mut changes) = tokio::sync::mpsc::channel(1);
    let mut watching = watch_files(&snapshot.config, &changed);
    let mut running = server::start(snapshot).await?;
    notify(&[NotifyState::Ready]);
    on_ready(&running);

    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            Some(()) = changes.recv() => "a watched file changed",
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let mut reloading = vec![NotifyState::Reloading];
        reloading.extend(NotifyState::monotonic_usec_now().ok());
        notify(&reloading);
        match running.reload(path) {
            Ok(warnings) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!(config = %path.display(), trigger = why, "configuration reloaded");
                // The new configuration may name other files, or stop watching.
                watching = watch_files(&running.gateway.snapshot.load().config, &changed);
            }
            Err(e) => tracing::error!(
                trigger = why,
                "reload failed, keeping the previous configuration: {}",
                one_line(&e)
            ),
        }
        notify(&[NotifyState::Ready]);
    }
    drop(watching);
    notify(&[NotifyState::Stopping]);
    running.stop_accepting().await;
    let grace = running.gateway.snapshot.load().config.limits.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down: no new connections, waiting for requests in flight");
    // A second signal skips the drain.
    tokio::select! {
        _ = running.drain(grace) => tracing::info!("stopped"),
        _ = term.recv() => tracing::warn!("second signal: exiting now"),
        _ = int.recv() => tracing::warn!("second signal: exiting now"),
    }
    Ok(())
}
