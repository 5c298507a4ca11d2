//! Validation of `routes`: paths in normal form, methods, hosts, the upstream,
//! access rules, and the lints for routes that can never match or that leave a
//! protected path reachable through a later public one.

use http::Method;

use super::ctx::Ctx;
use super::raw::{RawAuth, RawRoute};
use super::*;
use crate::routing::normalize::normalize;
use crate::routing::normalize::segment_prefix;

/// A path written in a route must already be normalised, or it could never match.
fn route_path(ctx: &Ctx, field: &Field, p: &str) -> Result<String, ConfigError> {
    match normalize(p) {
        Ok(n) if n == p => Ok(n),
        Ok(n) if n.len() > 1 && n.trim_end_matches('/') == p.trim_end_matches('/') => Ok(n),
        Ok(n) => Err(ctx.err(
            field,
            format!("{p:?} is not in normal form, so no request could match it; write {n:?}"),
        )),
        Err(e) => Err(ctx.err(field, format!("{p:?} is not a valid path: {e}"))),
    }
}

pub(super) fn validate_route(
    ctx: &mut Ctx,
    i: usize,
    raw: RawRoute,
    upstreams: &[Upstream],
    providers: &[Provider],
    cors: &[CorsPolicy],
    limits: &[RateLimitPolicy],
) -> Result<Route, ConfigError> {
    let name = raw.name.unwrap_or_else(|| format!("routes[{i}]"));
    // Names reach logs, metrics labels and `check`'s table as they are.
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(ctx.err(
            Field::key("routes").index(i).at("name"),
            format!("{name:?} is not a usable route name: it must be non-empty, without control characters"),
        ));
    }
    let at = Field::key("routes").index(i).named(name.as_str());
    let path = match (&raw.matcher.path, &raw.matcher.path_exact, &raw.matcher.path_template) {
        (Some(p), None, None) => {
            let p = route_path(ctx, &at.at("match").at("path"), p)?;
            let trimmed = p.trim_end_matches('/');
            PathMatch::Prefix(if trimmed.is_empty() { "/".into() } else { trimmed.into() })
        }
        (None, Some(p), None) => PathMatch::Exact(route_path(ctx, &at.at("match").at("path_exact"), p)?),
        (None, None, Some(t)) => {
            let field = at.at("match").at("path_template");
            let template = crate::routing::template::PathTemplate::parse(t)
                .map_err(|why| ctx.err(&field, format!("{t:?} {why}")))?;
            // Its literal segments must be in normal form, or nothing could match.
            let literal = t.replace(['{', '}'], "");
            route_path(ctx, &field, &literal)?;
            PathMatch::Template(template)
        }
        _ => {
            return Err(ctx.err(
                at.at("match"),
                "set exactly one of `path` (prefix), `path_exact` or `path_template`",
            ))
        }
    };
    let methods = match raw.matcher.methods {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ctx.err(
                at.at("match").at("methods"),
                "the list is empty; leave it out to allow any method",
            ))
        }
        Some(list) => {
            let mut methods = Vec::new();
            for m in list {
                let upper = m.to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes())
                    .map_err(|_| ctx.err(at.at("match").at("methods"), format!("{m:?} is not an HTTP method")))?;
                if !methods.contains(&method) {
                    methods.push(method);
                }
            }
            Some(methods)
        }
    };
    let host = match raw.matcher.host {
        None => None,
        Some(h) => {
            let authority: http::uri::Authority = h
                .parse()
                .map_err(|_| ctx.err(at.at("match").at("host"), format!("{h:?} is not a host name")))?;
            if authority.as_str().contains('@') {
                return Err(ctx.err(at.at("match").at("host"), format!("{h:?} is not a host name")));
            }
            Some(authority.host().to_ascii_lowercase())
        }
    };
    let upstream = match &raw.upstream {
        None => None,
        Some(name) => Some(upstreams.iter().position(|u| u.name == *name).ok_or_else(|| {
            let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            ctx.err(
                at.at("upstream"),
                format!("no upstream named {name:?}; defined upstreams: {}", known.join(", ")),
            )
        })?),
    };
    let strip_prefix = match raw.strip_prefix {
        None => None,
        Some(s) => {
            let s = route_path(ctx, &at.at("strip_prefix"), &s)?;
            let s = s.trim_end_matches('/').to_string();
            let literal;
            let matched = match &path {
                PathMatch::Prefix(p) | PathMatch::Exact(p) => p,
                PathMatch::Template(t) => {
                    literal = t.literal_prefix();
                    &literal
                }
            };
            if s.is_empty() || !segment_prefix(&s, matched) {
                return Err(ctx.err(
                    at.at("strip_prefix"),
                    format!("{s:?} is not a leading part of the route's path {matched:?}, so it would never apply"),
                ));
            }
            Some(s)
        }
    };
    let access = match (raw.auth, raw.public) {
        (Some(_), true) => return Err(ctx.err(at, "has both `auth` and `public: true`; choose one")),
        (None, false) => {
            return Err(ctx.err(
                at,
                "declares neither `auth:` nor `public: true`; routes are denied by default, say which one you mean",
            ))
        }
        (None, true) => Access::Public,
        (Some(auth), false) => {
            let template = match &path {
                PathMatch::Template(t) => Some(t),
                _ => None,
            };
            Access::Protected(validate_auth(ctx, &at, auth, providers, template)?)
        }
    };
    let source_ips = super::claims::source_ips(ctx, &at, raw.source_ips)?;
    let rate_limits = super::shared_state::route_limits(ctx, &at, raw.rate_limits, limits, raw.public)?;
    let websocket = super::browser::websocket(ctx, &at, raw.websocket)?;
    if let (Some(_), Some(u)) = (&websocket, upstream.map(|u| &upstreams[u])) {
        if u.protocol.is_http2() {
            return Err(ctx.err(at.at("websocket"), format!(
                "WebSockets go upstream as HTTP/1.1 upgrades, but upstream {:?} speaks HTTP/2; give the route an http1 upstream",
                u.name
            )));
        }
    }
    let cors = match raw.cors {
        None => None,
        Some(name) => Some(cors.iter().position(|c| c.name == name).ok_or_else(|| {
            let known: Vec<&str> = cors.iter().map(|c| c.name.as_str()).collect();
            ctx.err(
                at.at("cors"),
                format!(
                    "no CORS policy named {name:?}; defined policies: {}",
                    if known.is_empty() {
                        "none (add one under `cors:`)".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })?),
    };
    Ok(Route {
        name,
        path,
        methods,
        host,
        upstream,
        strip_prefix,
        access,
        source_ips,
        websocket,
        cors,
        rate_limits,
    })
}

fn validate_auth(
    ctx: &mut Ctx,
    at: &Field,
    raw: RawAuth,
    providers: &[Provider],
    template: Option<&crate::routing::template::PathTemplate>,
) -> Result<AuthRule, ConfigError> {
    if providers.is_empty() {
        return Err(ctx.err(
            at.at("auth"),
            "no providers are configured, so no token could ever be accepted; add one under `providers:`",
        ));
    }
    let indexes = match raw.providers {
        None => (0..providers.len()).collect(),
        Some(names) if names.is_empty() => {
            return Err(ctx.err(
                at.at("auth").at("providers"),
                "the list is empty; leave it out to allow any provider",
            ))
        }
        Some(names) => {
            let mut idx = Vec::new();
            for n in names {
                let i = providers.iter().position(|p| p.name == n).ok_or_else(|| {
                    let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                    ctx.err(
                        at.at("auth").at("providers"),
                        format!("no provider named {n:?}; defined providers: {}", known.join(", ")),
                    )
                })?;
                if !idx.contains(&i) {
                    idx.push(i);
                }
            }
            idx
        }
    };
    let introspecting: Vec<&str> = indexes
        .iter()
        .map(|&i| &providers[i])
        .filter(|p| p.introspection.is_some())
        .map(|p| p.name.as_str())
        .collect();
    if introspecting.len() > 1 {
        return Err(ctx.err(
            at.at("auth").at("providers"),
            format!(
                "allows more than one provider with `introspection` ({}); an opaque token names no issuer, so a route may send it to one provider only: list the providers explicitly",
                introspecting.join(", ")
            ),
        ));
    }
    if raw.resource_metadata && template.is_some() {
        return Err(ctx.err(
            at.at("auth").at("resource_metadata"),
            "a path_template route has no single resource URL to describe; give the metadata to a `path` route",
        ));
    }
    for s in raw.scopes.iter().chain(&raw.any_scopes) {
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
            return Err(ctx.err(
                at.at("auth"),
                format!("scope {s:?} is not a valid scope token (RFC 6749 §3.3: no spaces, quotes or backslashes)"),
            ));
        }
    }
    let token_sources = super::browser::token_sources(ctx, at, raw.token_sources)?;
    let claims = super::claims::conditions(ctx, at, raw.claims.unwrap_or_default(), template)?;
    let monitor = match raw.mode.as_deref() {
        None | Some("enforce") => false,
        Some("monitor") => {
            ctx.warnings.push(format!(
                "{at}.auth.mode: monitor: requests that fail authentication or authorisation are forwarded anyway; switch to enforce once portcullis_auth_monitor_denials_total stays at zero"
            ));
            true
        }
        Some(other) => {
            return Err(ctx.err(
                at.at("auth").at("mode"),
                format!("{other:?} is neither enforce nor monitor"),
            ));
        }
    };
    Ok(AuthRule {
        providers: indexes,
        scopes: raw.scopes,
        any_scopes: raw.any_scopes,
        token_sources,
        monitor,
        claims_read_path: claims.iter().any(|c| !c.path_params().is_empty()),
        claims,
        resource_metadata: raw.resource_metadata,
    })
}

/// Where RFC 9728 protected-resource metadata is served (§3).
pub const RESOURCE_METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

impl Route {
    /// Where the route's protected-resource metadata is served: the
    /// well-known prefix and the route's path (RFC 9728 §3.1: no terminating
    /// slash). `None` for a route without metadata.
    pub fn resource_metadata_path(&self) -> Option<String> {
        let Access::Protected(rule) = &self.access else {
            return None;
        };
        if !rule.resource_metadata {
            return None;
        }
        let path = match &self.path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) => p.trim_end_matches('/'),
            PathMatch::Template(_) => return None,
        };
        Some(format!("{RESOURCE_METADATA_PREFIX}{path}"))
    }

    /// The route's path as a trace's `http.route`: a prefix as `PREFIX/*`.
    pub fn path_pattern(&self) -> String {
        match &self.path {
            PathMatch::Prefix(p) => format!("{}/*", p.trim_end_matches('/')),
            PathMatch::Exact(p) => p.clone(),
            PathMatch::Template(t) => t.to_string(),
        }
    }
}
