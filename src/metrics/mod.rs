//! Prometheus metrics (docs/operations.md). One process-wide registry: counters survive
//! configuration reloads. Labels are route, upstream and provider names from
//! the configuration, never raw request data, so cardinality stays bounded.

use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

mod close_reason;
mod introspection;
mod route;

pub(crate) use close_reason::CloseReason;

pub(crate) use introspection::IntrospectionMetrics;

pub use route::{request, route, route_on, RouteMetrics};
use route::{RouteCollector, RouteList};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    listener: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteListenerLabels {
    route: Arc<str>,
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteReasonLabels {
    route: Arc<str>,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteKindLabels {
    route: Arc<str>,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoutePolicyLabels {
    route: Arc<str>,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeaderLabels {
    header: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
    result: &'static str,
}

struct Metrics {
    registry: Registry,
    routes: Arc<Mutex<RouteList>>,
    auth_failures: Family<ReasonLabels, Counter>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    jwks_refresh: Family<ProviderLabels, Counter>,
    open_connections: Gauge,
    websocket_open: Family<RouteLabels, Gauge>,
    websocket_closed: Family<RouteReasonLabels, Counter>,
    rate_limited: Family<RoutePolicyLabels, Counter>,
    monitor_denials: Family<RouteReasonLabels, Counter>,
    store_errors: Family<OpLabels, Counter>,
    identity_omitted: Family<HeaderLabels, Counter>,
    denials: Family<RouteReasonLabels, Counter>,
    revocations: Gauge,
    introspection: introspection::Families,
    drift: Family<RouteKindLabels, Counter>,
    trace_spans_dropped: Counter,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let mut registry = Registry::with_prefix("portcullis");
        let routes = Arc::new(Mutex::new(RouteList::default()));
        registry.register_collector(Box::new(RouteCollector(routes.clone())));
        let auth_failures = Family::default();
        registry.register(
            "auth_failures",
            "Requests refused by authentication or authorisation",
            auth_failures.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "upstream_errors",
            "Failed upstream requests, by upstream and kind",
            upstream_errors.clone(),
        );
        let reloads = Family::default();
        registry.register("config_reloads", "Configuration reloads, by result", reloads.clone());
        let jwks_refresh = Family::default();
        registry.register(
            "jwks_refresh",
            "Remote key fetches, by provider and result",
            jwks_refresh.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let websocket_open = Family::default();
        registry.register(
            "websocket_open",
            "WebSocket tunnels open now, by route",
            websocket_open.clone(),
        );
        let websocket_closed = Family::default();
        registry.register(
            "websocket_closed",
            "WebSocket tunnels closed, by route and reason (client, upstream, idle, token_expired, revoked, shutdown)",
            websocket_closed.clone(),
        );
        let rate_limited = Family::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by route and policy",
            rate_limited.clone(),
        );
        let store_errors = Family::default();
        registry.register(
            "store_errors",
            "Store (Redis) commands that failed or timed out, by operation",
            store_errors.clone(),
        );
        let denials = Family::default();
        registry.register(
            "denials",
            "Requests the route's policy refused, by route and reason code",
            denials.clone(),
        );
        let identity_omitted = Family::default();
        registry.register(
            "identity_headers_omitted",
            "Identity headers left out because the claim's value could not travel safely in a header",
            identity_omitted.clone(),
        );
        let revocations = Gauge::default();
        registry.register("revocations", "Revocation entries held locally", revocations.clone());
        let monitor_denials = Family::default();
        registry.register(
            "auth_monitor_denials",
            "Requests on monitor-mode routes that enforcement would have refused, by route and reason",
            monitor_denials.clone(),
        );
        let introspection = introspection::register(&mut registry);
        let drift = Family::default();
        registry.register(
            "auth_drift",
            "Protected requests where the gateway and the upstream disagreed, by route and kind (upstream_denied, gateway_denied)",
            drift.clone(),
        );
        let trace_spans_dropped = Counter::default();
        registry.register(
            "trace_spans_dropped",
            "Trace spans lost to a full export queue or a failed export",
            trace_spans_dropped.clone(),
        );
        Metrics {
            trace_spans_dropped,
            drift,
            introspection,
            monitor_denials,
            rate_limited,
            store_errors,
            identity_omitted,
            denials,
            revocations,
            websocket_open,
            websocket_closed,
            registry,
            routes,
            auth_failures,
            upstream_errors,
            reloads,
            jwks_refresh,
            open_connections,
        }
    })
}

/// Create the series a configuration will use, at zero, so every metric name
/// is visible from the first scrape on (dashboards and alerts need no traffic).
/// `upstream_error_kinds`: every `kind` of `portcullis_upstream_errors_total`
/// (the pool's list).
pub(crate) fn register(config: &crate::config::Config, upstream_error_kinds: &[&'static str]) {
    let m = metrics();
    for result in ["success", "failure"] {
        let _ = m.reloads.get_or_create(&ResultLabels { result });
        for p in &config.providers {
            if p.keys.is_remote() {
                let _ = m.jwks_refresh.get_or_create(&ProviderLabels {
                    provider: p.name.clone(),
                    result,
                });
            }
        }
    }
    for reason in AUTH_FAILURE_REASONS {
        let _ = m.auth_failures.get_or_create(&ReasonLabels { reason });
    }
    for u in &config.upstreams {
        for &kind in upstream_error_kinds {
            let _ = m.upstream_errors.get_or_create(&UpstreamLabels {
                upstream: u.name.clone(),
                kind,
            });
        }
    }
    for r in &config.routes {
        let metrics = route(&r.name);
        if matches!(r.access, crate::config::Access::Protected(_)) {
            for kind in DRIFT_KINDS {
                let _ = m.drift.get_or_create(&RouteKindLabels {
                    route: metrics.name().clone(),
                    kind,
                });
            }
        }
        if r.websocket.is_some() {
            let _ = m.websocket_open.get_or_create(&RouteLabels {
                route: metrics.name().clone(),
            });
            for reason in CloseReason::ALL {
                let _ = m.websocket_closed.get_or_create(&RouteReasonLabels {
                    route: metrics.name().clone(),
                    reason: reason.as_str(),
                });
            }
        }
    }
}

/// Every `reason` label of `portcullis_auth_failures_total`.
pub(crate) const AUTH_FAILURE_REASONS: &[&str] = &[
    "no_token",
    "malformed_token",
    "algorithm_not_allowed",
    "unsupported_crit",
    "unknown_key",
    "bad_signature",
    "wrong_type",
    "bad_claim_type",
    "expired",
    "missing_exp",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "revoked",
    "missing_scope",
    "keys_unavailable",
    "inactive",
    "introspection_unavailable",
    "revocations_not_loaded",
    "claims",
    "source_ip",
];

/// The `kind`s of `portcullis_auth_drift_total`.
const DRIFT_KINDS: [&str; 2] = ["upstream_denied", "gateway_denied"];

/// The gateway and the upstream disagreed about a request on `route`.
pub(crate) fn drift(route: &Arc<str>, kind: &'static str) {
    metrics()
        .drift
        .get_or_create(&RouteKindLabels {
            route: route.clone(),
            kind,
        })
        .inc();
}

/// A request the route's policy refused, and why (a reason code).
pub(crate) fn denial(route: &Arc<str>, reason: &'static str) {
    metrics()
        .denials
        .get_or_create(&RouteReasonLabels {
            route: route.clone(),
            reason,
        })
        .inc();
}

/// An identity header left out because its claim could not travel safely.
pub(crate) fn identity_header_omitted(header: &http::HeaderName) {
    metrics()
        .identity_omitted
        .get_or_create(&HeaderLabels {
            header: header.as_str().to_string(),
        })
        .inc();
}

/// A WebSocket tunnel opened on `route`.
pub(crate) fn websocket_opened(route: &Arc<str>) {
    metrics()
        .websocket_open
        .get_or_create(&RouteLabels { route: route.clone() })
        .inc();
}

/// A WebSocket tunnel on `route` closed, and why.
pub(crate) fn websocket_closed(route: &Arc<str>, reason: CloseReason) {
    let m = metrics();
    m.websocket_open
        .get_or_create(&RouteLabels { route: route.clone() })
        .dec();
    m.websocket_closed
        .get_or_create(&RouteReasonLabels {
            route: route.clone(),
            reason: reason.as_str(),
        })
        .inc();
}

/// A request on a monitor-mode route that enforcement would have refused.
pub(crate) fn monitor_denial(route: &Arc<str>, reason: &'static str) {
    metrics()
        .monitor_denials
        .get_or_create(&RouteReasonLabels {
            route: route.clone(),
            reason,
        })
        .inc();
}

/// A request refused by the rate-limit policy `policy` on `route`.
pub fn rate_limited(route: &Arc<str>, policy: &str) {
    metrics()
        .rate_limited
        .get_or_create(&RoutePolicyLabels {
            route: route.clone(),
            policy: policy.to_string(),
        })
        .inc();
}

/// Spans that never reached the collector (full queue, failed export).
pub(crate) fn trace_spans_dropped(n: usize) {
    metrics().trace_spans_dropped.inc_by(n as u64);
}

/// A store command that failed or timed out.
pub(crate) fn store_error(op: &'static str) {
    metrics().store_errors.get_or_create(&OpLabels { op }).inc();
}

/// How many revocation entries this instance holds.
pub fn revocations(n: usize) {
    metrics().revocations.set(i64::try_from(n).unwrap_or(i64::MAX));
}

pub(crate) fn auth_failure(reason: &'static str) {
    metrics().auth_failures.get_or_create(&ReasonLabels { reason }).inc();
}

pub(crate) fn upstream_error(upstream: &str, kind: &'static str) {
    metrics()
        .upstream_errors
        .get_or_create(&UpstreamLabels {
            upstream: upstream.to_string(),
            kind,
        })
        .inc();
}

pub(crate) fn config_reload(ok: bool) {
    metrics()
        .reloads
        .get_or_create(&ResultLabels {
            result: if ok { "success" } else { "failure" },
        })
        .inc();
}

pub fn jwks_refresh(provider: &str, ok: bool) {
    let result = if ok { "success" } else { "failure" };
    metrics()
        .jwks_refresh
        .get_or_create(&ProviderLabels {
            provider: provider.to_string(),
            result,
        })
        .inc();
}

/// Counts an open client connection until dropped.
pub(crate) struct OpenConnection(());

impl OpenConnection {
    pub fn open() -> Self {
        metrics().open_connections.inc();
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics().open_connections.dec();
    }
}

/// The Content-Type of the OpenMetrics exposition.
pub(crate) const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Content-Type of the classic Prometheus text exposition.
pub(crate) const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric in OpenMetrics text, or (`openmetrics: false`) in the classic
/// Prometheus text format 0.0.4 that every scraper and `curl | grep` reads.
pub fn render(openmetrics: bool) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    if openmetrics {
        out
    } else {
        to_prometheus_text(&out)
    }
}

/// OpenMetrics -> Prometheus 0.0.4: a counter family is named with its
/// `_total` suffix in `# HELP` / `# TYPE`, and `# UNIT` / `# EOF` do not exist.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let name = rest.split(' ').next().unwrap_or("");
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(&name) {
                    out.push_str("_total");
                }
                out.push_str(&rest[name.len()..]);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counters_with_their_suffix() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"1\"} 2\n\
                  # HELP x_open Open.\n# TYPE x_open gauge\n# UNIT x_open connections\nx_open 3\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"1\"} 2\n\
             # HELP x_open Open.\n# TYPE x_open gauge\nx_open 3\n"
        );
    }
}
