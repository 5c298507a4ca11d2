//! The compiled, immutable form of one configuration: everything a request
//! needs, built once per load or reload and swapped in atomically.

use std::sync::Arc;

use rustls::ServerConfig;

use crate::auth::cache::TokenCache;
use crate::auth::ProviderState;
use crate::config::{Config, ConfigError};
use crate::limits::LocalBuckets;
use crate::proxy::forward::{SharedPool, UpstreamPool};
use crate::proxy::headers::{IdentityHeaders, StripRules};
use crate::routing::table::RouteTable;
use crate::store::Store;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Config,
    /// `None` without `listen.https`.
    pub tls: Option<Arc<ServerConfig>>,
    pub routes: RouteTable,
    /// Each route's metrics (and its name, shared with the log), indexed like
    /// `config.routes`, so that a request counts itself without a lookup.
    pub route_metrics: Vec<Arc<crate::metrics::RouteMetrics>>,
    /// The same for the decision API (empty without `listen.decision`).
    pub decision_route_metrics: Vec<Arc<crate::metrics::RouteMetrics>>,
    /// Indexed like `config.upstreams`.
    pub upstreams: Vec<SharedPool>,
    /// Indexed like `config.providers`.
    pub providers: Vec<Arc<ProviderState>>,
    /// Shared with request bodies, which apply it to trailers.
    pub strip: Arc<StripRules>,
    pub identity: IdentityHeaders,
    /// Verified tokens; a reload starts with an empty cache.
    pub tokens: TokenCache,
    /// The shared store, kept across reloads while its settings are unchanged.
    pub store: Option<Arc<Store>>,
    /// Local rate-limit buckets, indexed like `config.rate_limits`.
    pub buckets: Vec<Arc<LocalBuckets>>,
    /// The routes that serve protected-resource metadata (RFC 9728).
    pub resource_metadata: Vec<usize>,
    /// `identity.assertion`'s signer (keys re-read on every reload).
    pub assertion: Option<Arc<crate::assertion::Signer>>,
    /// `telemetry`'s tracer, kept across reloads that leave it unchanged.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// With `telemetry`, what a span records of each route, in the order of
    /// `config.routes` (made once here, not for every request).
    pub trace_routes: Vec<crate::telemetry::RouteNames>,
}

impl Snapshot {
    /// Start what runs beside requests: remote key refresh for providers that
    /// do not have it running yet. Never called by `check`.
    pub(crate) fn start_background(&self) {
        crate::metrics::register(&self.config, crate::proxy::forward::UpstreamFailure::KINDS);
        for p in &self.providers {
            p.start_refresher();
        }
        if let Some(store) = &self.store {
            store.start();
        }
        if let Some(t) = &self.telemetry {
            t.start();
        }
    }

    /// Read and parse everything the configuration names. Upstream pools and
    /// provider key stores whose configuration (and `ca_file` content) is
    /// unchanged from `previous` are carried over.
    pub fn build(config: Config, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigError> {
        let fail = |e: ConfigError| e.in_file(&config.source);
        let tls = match &config.tls {
            Some(t) => Some(crate::tls::server_config(t).map_err(fail)?),
            None => None,
        };
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            let ca_digest = crate::tls::ca_digest(u.ca_file.as_deref());
            let reused = previous.and_then(|p| {
                p.upstreams
                    .iter()
                    .find(|old| old.config == *u && old.ca_digest == ca_digest)
                    .cloned()
            });
            let pool = match reused {
                Some(pool) => pool,
                None => Arc::new(UpstreamPool::new(u).map_err(fail)?),
            };
            upstreams.push(pool);
        }
        let mut providers = Vec::with_capacity(config.providers.len());
        for p in &config.providers {
            // Local key files are re-read on every build (they may have changed
            // on disk); a remote provider keeps the keys it has fetched as long
            // as what decides them (source, issuer, algorithms) is unchanged,
            // so a reload while the IdP is down never empties it.
            let same_keys = previous
                .and_then(|prev| prev.providers.iter().find(|old| same_key_source(&old.config, p)))
                .filter(|old| old.config.keys.is_remote());
            let ca_digest = crate::tls::ca_digest(p.ca_file.as_deref());
            let state = match same_keys {
                Some(old) if old.config == *p && old.remote.as_ref().is_some_and(|r| r.ca_digest == ca_digest) => {
                    old.clone()
                }
                // Other settings or a new CA file: a new state (fetching with a
                // new client), serving the keys already held meanwhile.
                Some(old) => {
                    let state = ProviderState::new(p.clone()).map_err(fail)?;
                    state.keys.store(old.keys.load_full());
                    Arc::new(state)
                }
                None => {
                    let mut state = ProviderState::new(p.clone()).map_err(fail)?;
                    // An unchanged introspecting provider keeps its cache of
                    // answers (never decisions: routes are checked on every request).
                    let unchanged = previous
                        .and_then(|prev| prev.providers.iter().find(|old| old.config == *p))
                        .and_then(|old| old.introspection.clone())
                        .filter(|i| i.ca_digest == ca_digest);
                    if unchanged.is_some() {
                        state.introspection = unchanged;
                    }
                    Arc::new(state)
                }
            };
            providers.push(state);
        }
        let identity = &config.identity;
        let mut identity_names = vec![&identity.subject_header, &identity.scopes_header];
        identity_names.extend(identity.claims.iter().map(|c| &c.header));
        identity_names.extend(identity.assertion.iter().map(|a| &a.header));
        let strip = Arc::new(StripRules::new(identity.strip_incoming.clone(), &identity_names));
        let identity = IdentityHeaders::new(identity);
        let routes = RouteTable::new(config.routes.clone());
        let route_metrics = config.routes.iter().map(|r| crate::metrics::route(&r.name)).collect();
        let decision_route_metrics = match config.listen.decision {
            Some(_) => config
                .routes
                .iter()
                .map(|r| crate::metrics::route_on(&r.name, "decision"))
                .collect(),
            None => Vec::new(),
        };
        let store = match &config.store {
            None => None,
            Some(sc) => {
                let reused = previous.and_then(|p| p.store.as_ref()).filter(|old| {
                    old.config == *sc
                        && old.ca_digest == crate::tls::ca_digest(sc.ca_file.as_deref())
                        && old.revocations.is_some() == config.revocation.is_some()
                });
                match reused {
                    Some(old) => Some(old.clone()),
                    None => Some(Arc::new(Store::new(sc, config.revocation.as_ref()).map_err(fail)?)),
                }
            }
        };
        // A policy whose settings are unchanged keeps its buckets (and so its counts).
        let buckets = config
            .rate_limits
            .iter()
            .map(|policy| {
                previous
                    .and_then(|prev| {
                        let i = prev.config.rate_limits.iter().position(|old| old == policy)?;
                        prev.buckets.get(i).cloned()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let resource_metadata = config
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.resource_metadata_path().is_some())
            .map(|(i, _)| i)
            .collect();
        let assertion = crate::assertion::signer(&config).map_err(fail)?;
        let telemetry = match &config.telemetry {
            None => None,
            Some(tc) => {
                let reused = previous
                    .and_then(|p| p.telemetry.as_ref())
                    .filter(|old| old.config == *tc && old.ca_digest == crate::tls::ca_digest(tc.ca_file.as_deref()));
                match reused {
                    Some(old) => Some(old.clone()),
                    None => Some(Arc::new(crate::telemetry::Telemetry::new(tc).map_err(fail)?)),
                }
            }
        };
        let trace_routes = match telemetry {
            Some(_) => config.routes.iter().map(crate::telemetry::RouteNames::new).collect(),
            None => Vec::new(),
        };
        Ok(Snapshot {
            telemetry,
            trace_routes,
            assertion,
            config,
            tls,
            routes,
            route_metrics,
            decision_route_metrics,
            upstreams,
            providers,
            strip,
            identity,
            tokens: TokenCache::default(),
            resource_metadata,
            store,
            buckets,
        })
    }
}

/// Whether two provider configurations fetch and accept the same keys: the
/// fields that decide which keys are loaded and what each may verify.
fn same_key_source(a: &crate::config::Provider, b: &crate::config::Provider) -> bool {
    a.keys == b.keys && a.issuer == b.issuer && a.algorithms == b.algorithms && a.ca_file == b.ca_file
}
