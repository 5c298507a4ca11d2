//! The Redis that several gateway instances share: one multiplexed
//! connection per instance that reconnects by itself, every command bounded
//! by `store.timeout`. Redis is the source of truth; what each request needs
//! (the revocation list) is copied locally, so no request waits on Redis
//! except a shared rate-limit check, which costs one round trip.
//!
//! The gateway starts without Redis reachable: `/readyz` names the store
//! until a command has succeeded (and, with revocation, until the local copy
//! has been loaded).

pub mod revocation;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::IntoConnectionInfo;

use crate::config::{ConfigError, RevocationConfig, StoreConfig};
use revocation::Revocations;

/// Why a store command did not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// One instance's view of the shared store.
pub struct Store {
    pub config: StoreConfig,
    /// Digest of `ca_file`'s content: a reload with a new CA builds a new client.
    pub ca_digest: Option<[u8; 32]>,
    client: redis::Client,
    /// Built on first use, inside the runtime: redis-rs spawns its driver task
    /// when the manager is made, so `check` and `explain` (which never talk to
    /// Redis) must not make one.
    conn: OnceLock<ConnectionManager>,
    reached: AtomicBool,
    /// Per kind of command: when its failure was last logged, and how many
    /// failures went unlogged since (an outage must not log once per request).
    warned: dashmap::DashMap<&'static str, (Option<std::time::Instant>, u64)>,
    /// The local copy of the revocation list, when `revocation` is configured.
    pub revocations: Option<Arc<Revocations>>,
    started: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Set up the client; nothing is sent until [`Store::start`].
    pub fn new(config: &StoreConfig, revocation: Option<&RevocationConfig>) -> Result<Self, ConfigError> {
        let unusable = |e: redis::RedisError| ConfigError::new("store.redis", "not a usable Redis URL").because(e);
        let mut info = config.url.as_str().into_connection_info().map_err(unusable)?;
        if let Some(var) = &config.password_env {
            let password =
                std::env::var(var).map_err(|_| ConfigError::new("store.password_env", format!("{var} is not set")))?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = if config.url.starts_with("rediss:") {
            // redis-rs builds its TLS client from the process-wide rustls
            // provider: make that the gateway's own (a no-op if already set).
            let _ = crate::tls::provider().as_ref().clone().install_default();
            let root_cert = match &config.ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|e| {
                    ConfigError::new("store.ca_file", format!("cannot read {}", path.display())).because(e)
                })?),
                None => None,
            };
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert,
            };
            redis::Client::build_with_tls(info, certs).map_err(unusable)?
        } else {
            redis::Client::open(info).map_err(unusable)?
        };
        Ok(Store {
            config: config.clone(),
            ca_digest: crate::tls::ca_digest(config.ca_file.as_deref()),
            client,
            conn: OnceLock::new(),
            reached: AtomicBool::new(false),
            warned: dashmap::DashMap::new(),
            revocations: revocation.map(|r| Arc::new(Revocations::new(r.max_token_lifetime))),
            started: AtomicBool::new(false),
        })
    }

    /// Whether the store has answered and (with revocation) the local copy is loaded.
    pub fn ready(&self) -> bool {
        self.reached.load(Ordering::Acquire) && self.revocations.as_ref().is_none_or(|r| r.loaded())
    }

    /// A key under the configured prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.config.key_prefix)
    }

    /// The shared connection, made on first use (it connects lazily too).
    /// Must be called inside the Tokio runtime.
    fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(conn) = self.conn.get() {
            return Ok(conn.clone());
        }
        let settings = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.config.timeout.max(Duration::from_secs(1))))
            .set_response_timeout(Some(self.config.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), settings)?;
        // Two first callers at once: one manager wins, the other is dropped unused.
        Ok(self.conn.get_or_init(|| made).clone())
    }

    /// Run a command on the shared connection, bounded by `store.timeout`.
    pub async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let span = crate::telemetry::child("redis", crate::telemetry::Kind::Client);
        if let Some(span) = &span {
            span.set("db.system.name", "redis");
            span.set("db.operation.name", op);
        }
        let attempt = async {
            let conn = self.connection()?;
            f(conn).await
        };
        let result = match tokio::time::timeout(self.config.timeout, attempt).await {
            Ok(Ok(v)) => {
                self.reached.store(true, Ordering::Release);
                return Ok(v);
            }
            Ok(Err(e)) => StoreError::Redis(e),
            Err(_) => StoreError::Timeout(self.config.timeout),
        };
        self.warn_throttled(op, &result);
        crate::metrics::store_error(op);
        if let Some(span) = &span {
            span.fail(match result {
                StoreError::Timeout(_) => "timeout",
                _ => "redis_error",
            });
        }
        Err(result)
    }

    /// Log a failed command at most once per [`WARN_EVERY`] for each kind of
    /// command, saying how many more failed meanwhile (the metric counts each).
    fn warn_throttled(&self, op: &'static str, error: &StoreError) {
        let now = std::time::Instant::now();
        let mut entry = self.warned.entry(op).or_insert((None, 0));
        let (last, quiet) = *entry;
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            *entry = (last, quiet + 1);
            return;
        }
        *entry = (Some(now), 0);
        drop(entry);
        tracing::warn!(op, error = %error, also_failed = quiet, "store command failed");
    }

    /// Start what runs beside requests: reaching Redis, and keeping the
    /// revocation copy in step. Once per store; it ends with the store.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        match &self.revocations {
            Some(_) => {
                tokio::spawn(revocation::follow(weak));
            }
            None => {
                tokio::spawn(reach(weak));
            }
        }
    }

    /// Why a fresh connection cannot be made, if it cannot: the shared
    /// connection retries quietly and only ever reports a timeout, while an
    /// operator needs the reason (a wrong password, an untrusted certificate).
    async fn why_unreachable(&self) -> Option<StoreError> {
        let limit = self.config.timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(limit, self.client.get_multiplexed_async_connection()).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(StoreError::Redis(e)),
            Err(_) => Some(StoreError::Timeout(limit)),
        }
    }

    /// A dedicated connection for pub/sub (it cannot share the multiplexed one).
    async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let limit = self.config.timeout.max(Duration::from_secs(1));
        match tokio::time::timeout(limit, self.client.get_async_pubsub()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }
}

/// How often each kind of failed store command is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// PING until Redis answers once, so `/readyz` can say so.
async fn reach(store: Weak<Store>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(s) = store.upgrade() else { return };
        let ok = s
            .run("ping", |mut c| async move {
                redis::cmd("PING").query_async::<String>(&mut c).await
            })
            .await
            .is_ok();
        if ok {
            return;
        }
        if let Some(why) = s.why_unreachable().await {
            tracing::warn!(error = %why, "cannot reach the store");
        }
        drop(s);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
