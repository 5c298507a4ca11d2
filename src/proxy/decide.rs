//! The route's decision about a request: routing, the client's address,
//! the token (verified or introspected), scopes and claims, rate limits.
//! Shared by the proxy and the decision API, which runs it for a request
//! another proxy describes and forwards nothing.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;

use super::access::{check_access, check_cookie_origin, claims_path_params, note_monitor_denial};
use super::access_log::AccessLog;
use super::Answering;
use crate::auth::credential;
use crate::config::{Access, TokenSource};
use crate::error::GatewayError;
use crate::routing::table::Lookup;
use crate::snapshot::Snapshot;

/// What the route's policy let through.
pub(crate) struct Allowed {
    pub route_index: usize,
    /// The verified identity (on a monitor route, also one the policy would refuse).
    pub identity: Option<Arc<crate::auth::Caller>>,
    /// Monitor mode: let through although enforcement would refuse.
    pub monitor_denied: bool,
    /// SHA-256 of the token, when the assertion is reused per token.
    pub token_key: Option<[u8; 32]>,
}

/// Which listener asks: the HTTPS listener forwards what is allowed (a route
/// without an upstream does not exist for it), the decision API only decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    Https,
    Decision,
}

/// Route the request and apply the route's policy. `client`: the client's address.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn decide(
    snap: &Snapshot,
    listener: Listener,
    client: IpAddr,
    parts: &http::request::Parts,
    host: Option<&(HeaderValue, String)>,
    path: &str,
    log: &mut AccessLog,
    answering: &mut Answering,
) -> Result<Allowed, GatewayError> {
    let host_name = host.map(|(_, h)| h.as_str());
    let route_index = match snap.routes.find(host_name, &parts.method, path) {
        Lookup::Found(i) => i,
        Lookup::MethodNotAllowed(allow) => return Err(GatewayError::MethodNotAllowed(allow)),
        Lookup::NotFound => return Err(GatewayError::NotFound),
    };
    let route = snap.routes.get(route_index);
    let route_metrics = match listener {
        Listener::Https if route.upstream.is_none() => return Err(GatewayError::NotFound),
        Listener::Https => &snap.route_metrics,
        Listener::Decision => &snap.decision_route_metrics,
    };
    log.route = route_metrics.get(route_index).cloned();
    if let (Some(t), Some(names)) = (&log.trace, snap.trace_routes.get(route_index)) {
        t.routed(&parts.method, names);
    }
    answering.cors_policy = route.cors;
    if let Access::Protected(rule) = &route.access {
        if rule.resource_metadata {
            answering.metadata_url = crate::resource_metadata::url_for(route, host.map(|(v, _)| v));
        }
    }

    // The client's address first: a route limited to some networks says
    // nothing more to anyone else (monitor mode records it and goes on).
    let monitor = matches!(&route.access, Access::Protected(rule) if rule.monitor);
    let mut monitor_denied = false;
    if !route.source_ips.is_empty() && !route.source_ips.iter().any(|c| c.contains(client)) {
        log.denied_by = Some("source_ips".into());
        let e = GatewayError::SourceDenied;
        if !monitor {
            crate::metrics::auth_failure(crate::auth::failure_reason(&e));
            return Err(e);
        }
        note_monitor_denial(log, &e);
        monitor_denied = true;
    }

    // Authenticate and authorise before anything is sent on.
    let mut token_key = None;
    let identity = match &route.access {
        Access::Public => None,
        Access::Protected(rule) => {
            log.protected = true;
            let found = credential::find(&rule.token_sources, &parts.headers, parts.uri.query());
            if let Ok(Some(TokenSource::Cookie(_))) = found.as_ref().map(|f| f.map(|c| c.source)) {
                check_cookie_origin(snap, route, &parts.method, &parts.headers, host.map(|(v, _)| v))?;
            }
            let token = found.map(|f| f.map(|c| c.token));
            // The assertion is reused per token (and upstream): keyed by its digest.
            if snap.assertion.as_ref().is_some_and(|s| !s.bind_request) {
                token_key = token
                    .as_ref()
                    .ok()
                    .copied()
                    .flatten()
                    .map(crate::auth::cache::TokenCache::key);
            }
            let path_params = claims_path_params(route, rule, path);
            let facts = crate::policy::Facts {
                host: host_name,
                path_params: &path_params,
            };
            let checked = Box::pin(check_access(snap, rule, token, &facts)).await;
            if let Err((GatewayError::ClaimsDenied(i), _)) = &checked {
                log.denied_by = Some(format!("claims[{i}] {}", rule.claims[*i]));
            }
            match checked {
                Ok(identity) => Some(identity),
                // Monitor mode: forward anyway, with identity headers only
                // for a token that verified; the log and a metric say why.
                Err((e, verified)) if rule.monitor => {
                    note_monitor_denial(log, &e);
                    monitor_denied = true;
                    verified
                }
                Err((e, _)) => return Err(e),
            }
        }
    };
    if let Some(identity) = &identity {
        log.subject = identity
            .subject
            .as_ref()
            .map(|s| s.as_str().map_or_else(|| s.to_string(), str::to_string));
    }

    if !route.rate_limits.is_empty() {
        let facts = crate::limits::RequestFacts {
            route: &route.name,
            client,
            headers: &parts.headers,
            identity: identity.as_deref(),
        };
        let route_name = log.route_name().cloned().unwrap_or_else(|| route.name.as_str().into());
        // Boxed, like the other large awaits: most routes have no limits, and
        // an inline await would make every request's future carry its state.
        Box::pin(crate::limits::check(
            &snap.config.rate_limits,
            &snap.buckets,
            snap.store.as_deref(),
            &route.rate_limits,
            &facts,
            &route_name,
        ))
        .await?;
    }

    Ok(Allowed {
        route_index,
        identity,
        monitor_denied,
        token_key,
    })
}
