//! Turns a [`RawConfig`] into a [`Config`], enforcing every rule of docs/configuration.md.
//! Each error names the field and says how to fix it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::raw::{RawAuth, RawConfig, RawProvider, RawRoute, RawUpstream};
use super::*;
use crate::routing::normalize::normalize;

/// JWS algorithms the gateway can verify.
pub const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Headers a deployment must never let the identity mapping overwrite.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

pub(super) struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    base: &'a Path,
    pub(super) warnings: Vec<String>,
}

impl Ctx<'_> {
    /// `message` starts with the field it is about, which gives its position.
    pub(super) fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::in_text(self.file, self.text, message.into())
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Resolve a path and make sure it names a readable file.
    fn existing_file(&self, field: &str, p: &Path) -> Result<PathBuf, ConfigError> {
        let path = self.resolve(p);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(self.err(format!("{field}: {} is not a file", path.display()))),
            Err(e) => Err(self.err(format!("{field}: cannot read {}: {e}", path.display()))),
        }
    }
}

pub(super) fn validate(raw: RawConfig, text: &str, file: &Path, base: &Path) -> Result<Loaded, ConfigError> {
    let mut ctx = Ctx {
        file,
        text,
        base,
        warnings: Vec::new(),
    };

    let listen = Listen {
        https: raw.listen.https.0,
        http: raw.listen.http.map(|a| a.0),
        admin: raw.listen.admin.map(|a| a.0),
    };
    let mut seen = vec![("https", listen.https)];
    for (name, addr) in [("http", listen.http), ("admin", listen.admin)] {
        if let Some(addr) = addr {
            if let Some((other, _)) = seen.iter().find(|(_, a)| *a == addr && addr.port() != 0) {
                return Err(ctx.err(format!(
                    "listen.{name}: {addr} is already used by listen.{other}; give each listener its own port"
                )));
            }
            seen.push((name, addr));
        }
    }

    let tls = validate_tls(&ctx, raw.tls)?;
    let limits = validate_limits(&ctx, raw.limits)?;

    let mut providers = Vec::new();
    for (name, p) in raw.providers {
        providers.push(validate_provider(&mut ctx, name, p)?);
    }
    let mut issuers = BTreeMap::new();
    for p in &providers {
        if let Some(other) = issuers.insert(p.issuer.clone(), &p.name) {
            return Err(ctx.err(match &p.issuer {
                Some(iss) => format!("providers.{}: issuer {iss:?} is also the issuer of providers.{other}; two providers cannot share an issuer", p.name),
                None => format!("providers.{}: only one provider may leave out `issuer`, and providers.{other} already does", p.name),
            }));
        }
    }

    let identity = validate_identity(&ctx, raw.identity)?;

    let mut upstreams = Vec::new();
    for (name, u) in raw.upstreams {
        upstreams.push(validate_upstream(&mut ctx, name, u)?);
    }

    let mut cors = Vec::new();
    for (name, c) in raw.cors {
        cors.push(super::browser::validate_cors(&ctx, name, c)?);
    }
    let store = super::shared::store(&mut ctx, raw.store)?;
    let rate_limits = super::shared::rate_limits(&ctx, raw.rate_limits, store.as_ref())?;
    let revocation = super::shared::revocation(&ctx, raw.revocation, store.as_ref())?;

    if raw.routes.is_empty() {
        return Err(ctx.err("routes: no routes are defined; every request would be answered 404"));
    }
    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let route = validate_route(&mut ctx, i, r, &upstreams, &providers, &cors, &rate_limits)?;
        if routes.iter().any(|other| other.name == route.name) {
            return Err(ctx.err(format!(
                "routes[{i}]: the name {:?} is used twice; route names must be unique",
                route.name
            )));
        }
        routes.push(route);
    }
    for (i, route) in routes.iter().enumerate() {
        if let Some(earlier) = routes[..i].iter().find(|earlier| covers(earlier, route)) {
            ctx.warnings.push(format!(
                "route {:?} can never match: the earlier route {:?} matches every request it would",
                route.name, earlier.name
            ));
        }
    }

    warn_trailing_slash_fallthrough(&mut ctx, &routes);

    let config = Config {
        source: file.to_path_buf(),
        listen,
        tls,
        limits,
        providers,
        identity,
        upstreams,
        routes,
        allow_semicolons: raw.paths.allow_semicolons,
        cors,
        store,
        rate_limits,
        revocation,
    };
    Ok(Loaded {
        config,
        warnings: ctx.warnings,
    })
}

fn validate_tls(ctx: &Ctx, raw: raw::RawTls) -> Result<Tls, ConfigError> {
    let hsts = match raw.hsts.as_deref() {
        None => Some(HeaderValue::from_static("max-age=31536000")),
        Some("") => None,
        Some(v) => Some(
            HeaderValue::from_str(v).map_err(|_| ctx.err(format!("tls.hsts: {v:?} is not a valid header value")))?,
        ),
    };
    Ok(Tls {
        cert: ctx.resolve(&raw.cert),
        key: ctx.resolve(&raw.key),
        min_version: raw.min_version,
        hsts,
        self_signed_if_missing: raw.self_signed_if_missing,
    })
}

fn validate_limits(ctx: &Ctx, raw: raw::RawLimits) -> Result<Limits, ConfigError> {
    for (name, d) in [
        ("header_read_timeout", raw.header_read_timeout),
        ("idle_timeout", raw.idle_timeout),
        ("send_timeout", raw.send_timeout),
    ] {
        if d.0.is_zero() {
            return Err(ctx.err(format!("limits.{name}: must be longer than 0")));
        }
    }
    if raw.max_header_bytes < 1024 {
        return Err(ctx.err("limits.max_header_bytes: must be at least 1024"));
    }
    if raw.max_connections == 0 {
        return Err(ctx.err("limits.max_connections: must be at least 1"));
    }
    if raw.max_concurrent_streams == 0 {
        return Err(ctx.err("limits.max_concurrent_streams: must be at least 1"));
    }
    if raw.max_stream_resets == 0 {
        return Err(ctx.err("limits.max_stream_resets: must be at least 1"));
    }
    Ok(Limits {
        header_read_timeout: raw.header_read_timeout.0,
        idle_timeout: raw.idle_timeout.0,
        max_header_bytes: raw.max_header_bytes,
        max_body_bytes: raw.max_body_bytes,
        max_connections: raw.max_connections,
        shutdown_grace: raw.shutdown_grace.0,
        send_timeout: raw.send_timeout.0,
        max_concurrent_streams: raw.max_concurrent_streams,
        max_stream_resets: raw.max_stream_resets,
    })
}

pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Check a URL the gateway will fetch keys from: https, or http on loopback only.
fn check_fetch_url(ctx: &mut Ctx, field: &str, url: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ctx.err(format!("{field}: {url:?} is not a valid URL")))?;
    let host = uri
        .host()
        .ok_or_else(|| ctx.err(format!("{field}: {url:?} has no host")))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback_host(host) => {
            ctx.warnings.push(format!("{field}: {url:?} uses plain http; accepted only because the host is loopback"));
            Ok(())
        }
        Some("http") => Err(ctx.err(format!("{field}: {url:?} uses plain http; keys must be fetched over https (http is allowed only for loopback hosts)"))),
        _ => Err(ctx.err(format!("{field}: {url:?} must be an https:// URL"))),
    }
}

fn validate_provider(ctx: &mut Ctx, name: String, raw: RawProvider) -> Result<Provider, ConfigError> {
    let field = |f: &str| format!("providers.{name}.{f}");
    let mut sources = Vec::new();
    if raw.discovery {
        let issuer = raw.issuer.as_deref().ok_or_else(|| {
            ctx.err(format!(
                "{}: discovery needs an `issuer` to find the discovery document",
                field("discovery")
            ))
        })?;
        check_fetch_url(ctx, &field("issuer"), issuer)?;
        sources.push(KeySource::Discovery);
    }
    if let Some(uri) = &raw.jwks_uri {
        check_fetch_url(ctx, &field("jwks_uri"), uri)?;
        sources.push(KeySource::JwksUri(uri.clone()));
    }
    if let Some(p) = &raw.jwks_file {
        sources.push(KeySource::JwksFile(ctx.existing_file(&field("jwks_file"), p)?));
    }
    if let Some(p) = &raw.public_key_file {
        sources.push(KeySource::PublicKeyFile(
            ctx.existing_file(&field("public_key_file"), p)?,
        ));
    }
    if let Some(var) = &raw.secret_env {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => {}
            _ => {
                return Err(ctx.err(format!(
                    "{}: the environment variable {var} is not set or is empty; export it before starting the gateway",
                    field("secret_env")
                )))
            }
        }
        sources.push(KeySource::SecretEnv(var.clone()));
    }
    if let Some(p) = &raw.secret_file {
        sources.push(KeySource::SecretFile(ctx.existing_file(&field("secret_file"), p)?));
    }
    let keys = match sources.len() {
        1 => sources.remove(0),
        0 => return Err(ctx.err(format!("providers.{name}: no key source; set exactly one of discovery, jwks_uri, jwks_file, public_key_file, secret_env, secret_file"))),
        _ => return Err(ctx.err(format!("providers.{name}: more than one key source; set exactly one of discovery, jwks_uri, jwks_file, public_key_file, secret_env, secret_file"))),
    };

    let algorithms = match raw.algorithms {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(ctx.err(format!(
                    "{}: the list is empty; leave it out to allow what the keys support",
                    field("algorithms")
                )));
            }
            let mut algs: Vec<String> = Vec::new();
            for a in list {
                if a.eq_ignore_ascii_case("none") {
                    return Err(ctx.err(format!(
                        "{}: `none` is never allowed: unsigned tokens prove nothing",
                        field("algorithms")
                    )));
                }
                let known = ALGORITHMS.iter().find(|k| k.eq_ignore_ascii_case(&a)).ok_or_else(|| {
                    ctx.err(format!(
                        "{}: unknown algorithm {a:?}; supported: {}",
                        field("algorithms"),
                        ALGORITHMS.join(", ")
                    ))
                })?;
                if !algs.iter().any(|x| x == known) {
                    algs.push((*known).to_string());
                }
            }
            let hmac = algs.iter().filter(|a| a.starts_with("HS")).count();
            if hmac != 0 && hmac != algs.len() {
                return Err(ctx.err(format!("{}: mixes HMAC (HS*) with asymmetric algorithms; that enables key-confusion attacks, use one family", field("algorithms"))));
            }
            if (hmac != 0) != keys.is_hmac() {
                let want = if keys.is_hmac() {
                    "HS256, HS384 or HS512"
                } else {
                    "asymmetric algorithms (RS*, PS*, ES*, EdDSA)"
                };
                return Err(ctx.err(format!(
                    "{}: does not fit the key source; this provider's keys work with {want}",
                    field("algorithms")
                )));
            }
            Some(algs)
        }
    };

    let secret_len = match &keys {
        KeySource::SecretEnv(var) => std::env::var(var).map(|v| v.len()).ok(),
        KeySource::SecretFile(path) => crate::auth::keys::read_secret_file(path).map(|s| s.len()).ok(),
        _ => None,
    };
    if secret_len.is_some_and(|n| n < 32) {
        ctx.warnings.push(format!(
            "providers.{name}: the HMAC secret is shorter than 32 bytes; short secrets can be brute-forced offline from any token"
        ));
    }
    if raw.audiences.is_none() {
        ctx.warnings.push(format!("providers.{name}: no `audiences`, so the `aud` claim is not checked; any token from this issuer is accepted"));
    }
    if let Some(a) = &raw.audiences {
        if a.is_empty() {
            return Err(ctx.err(format!(
                "{}: the list is empty, so no token could match; list at least one audience or leave the key out",
                field("audiences")
            )));
        }
    }
    if let Some(ca) = &raw.ca_file {
        ctx.existing_file(&field("ca_file"), ca)?;
    }
    let scope_claims = raw
        .scope_claims
        .unwrap_or_else(|| vec!["scope".into(), "scp".into(), "scopes".into()]);
    if scope_claims.is_empty() {
        return Err(ctx.err(format!(
            "{}: the list is empty; leave it out for the default [scope, scp, scopes]",
            field("scope_claims")
        )));
    }
    let jwks_refresh = raw.jwks_refresh.map_or(Duration::from_secs(600), |d| d.0);
    if jwks_refresh < Duration::from_secs(1) {
        return Err(ctx.err(format!("{}: must be at least 1s", field("jwks_refresh"))));
    }
    Ok(Provider {
        issuer: raw.issuer,
        audiences: raw.audiences,
        keys,
        ca_file: raw.ca_file.map(|p| ctx.resolve(&p)),
        algorithms,
        leeway: raw.leeway.map_or(Duration::from_secs(30), |d| d.0),
        jwks_refresh,
        scope_claims,
        subject_claim: raw.subject_claim.unwrap_or_else(|| "sub".into()),
        typ: raw.typ,
        name,
    })
}

fn validate_identity(ctx: &Ctx, raw: raw::RawIdentity) -> Result<Identity, ConfigError> {
    let subject_header = raw
        .subject_header
        .map_or(HeaderName::from_static("x-auth-subject"), |h| h.0);
    let scopes_header = raw
        .scopes_header
        .map_or(HeaderName::from_static("x-auth-scopes"), |h| h.0);
    let claims: Vec<(HeaderName, String)> = raw.claims.into_iter().map(|(h, c)| (h.0, c)).collect();
    let mut names = vec![
        ("identity.subject_header", &subject_header),
        ("identity.scopes_header", &scopes_header),
    ];
    names.extend(claims.iter().map(|(h, _)| ("identity.claims", h)));
    let mut seen = HashSet::new();
    for (field, h) in &names {
        if RESERVED_HEADERS.contains(&h.as_str()) {
            return Err(ctx.err(format!(
                "{field}: {h} is a header the gateway or HTTP itself controls; choose another name"
            )));
        }
        if !seen.insert(h.as_str()) {
            return Err(ctx.err(format!(
                "{field}: the header {h} is used twice; each identity header needs its own name"
            )));
        }
    }
    let patterns = raw.strip_incoming.unwrap_or_else(|| vec!["X-Auth-*".into()]);
    let mut strip_incoming = Vec::new();
    for p in patterns {
        if p.is_empty()
            || !p
                .bytes()
                .all(|b| b == b'*' || b.is_ascii_alphanumeric() || b"!#$%&'+-.^_`|~".contains(&b))
        {
            return Err(ctx.err(format!("identity.strip_incoming: {p:?} is not a header name pattern (letters, digits, '-', '_' and '*' wildcards)")));
        }
        strip_incoming.push(crate::proxy::headers::fold_header_name(&p));
    }
    Ok(Identity {
        subject_header,
        scopes_header,
        claims,
        strip_incoming,
        forward_authorization: raw.forward_authorization,
    })
}

fn validate_upstream(ctx: &mut Ctx, name: String, raw: RawUpstream) -> Result<Upstream, ConfigError> {
    if raw.targets.is_empty() {
        return Err(ctx.err(format!(
            "upstreams.{name}.targets: the list is empty; name at least one http:// or https:// target"
        )));
    }
    let mut targets = Vec::new();
    for t in &raw.targets {
        let bad = || {
            ctx.err(format!(
                "upstreams.{name}.targets: {t:?} is not a valid target; write http://host:port or https://host:port"
            ))
        };
        let uri: http::Uri = t.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(ctx.err(format!("upstreams.{name}.targets: {t:?} has a path; targets are origins only (use a route's strip_prefix to rewrite paths)")));
        }
        let authority = uri.authority().ok_or_else(bad)?;
        if authority.as_str().contains('@') {
            return Err(bad());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = format!("{}:{port}", authority.host()).parse().map_err(|_| bad())?;
        targets.push(Target { https, authority });
    }
    let host = match raw.host.as_deref() {
        None | Some("preserve") => HostPolicy::Preserve,
        Some(h) => {
            let valid = !h.is_empty()
                && h.parse::<http::uri::Authority>()
                    .is_ok_and(|a| a.as_str() == h && !h.contains('@'));
            if !valid {
                return Err(ctx.err(format!(
                    "upstreams.{name}.host: {h:?} is neither `preserve` nor a host[:port]"
                )));
            }
            HostPolicy::Literal(
                HeaderValue::from_str(h)
                    .map_err(|_| ctx.err(format!("upstreams.{name}.host: {h:?} is not a valid header value")))?,
            )
        }
    };
    let ca_file = match &raw.ca_file {
        Some(p) => {
            if !targets.iter().any(|t| t.https) {
                ctx.warnings.push(format!(
                    "upstreams.{name}.ca_file: no target uses https, so the CA file is not used"
                ));
            }
            Some(ctx.existing_file(&format!("upstreams.{name}.ca_file"), p)?)
        }
        None => None,
    };
    match raw.protocol {
        UpstreamProtocol::H2 if targets.iter().any(|t| !t.https) => {
            return Err(ctx.err(format!("upstreams.{name}.protocol: h2 is HTTP/2 over TLS and needs https:// targets; use h2c for http:// targets")));
        }
        UpstreamProtocol::H2c if targets.iter().any(|t| t.https) => {
            return Err(ctx.err(format!("upstreams.{name}.protocol: h2c is HTTP/2 over plain TCP and needs http:// targets; use h2 for https:// targets")));
        }
        _ => {}
    }
    let max_connections = raw.max_connections.unwrap_or(256);
    if max_connections == 0 {
        return Err(ctx.err(format!("upstreams.{name}.max_connections: must be at least 1")));
    }
    let connect_timeout = raw.connect_timeout.map_or(Duration::from_secs(2), |d| d.0);
    let request_timeout = raw.request_timeout.map_or(Duration::from_secs(30), |d| d.0);
    if connect_timeout.is_zero() || request_timeout.is_zero() {
        return Err(ctx.err(format!(
            "upstreams.{name}: connect_timeout and request_timeout must be longer than 0"
        )));
    }
    Ok(Upstream {
        name,
        targets,
        connect_timeout,
        request_timeout,
        host,
        ca_file,
        protocol: raw.protocol,
        max_connections,
    })
}

/// A path written in a route must already be normalised, or it could never match.
fn route_path(ctx: &Ctx, field: &str, p: &str) -> Result<String, ConfigError> {
    match normalize(p) {
        Ok(n) if n == p => Ok(n),
        Ok(n) if n.len() > 1 && n.trim_end_matches('/') == p.trim_end_matches('/') => Ok(n),
        Ok(n) => Err(ctx.err(format!(
            "{field}: {p:?} is not in normal form, so no request could match it; write {n:?}"
        ))),
        Err(e) => Err(ctx.err(format!("{field}: {p:?} is not a valid path: {e}"))),
    }
}

fn validate_route(
    ctx: &mut Ctx,
    i: usize,
    raw: RawRoute,
    upstreams: &[Upstream],
    providers: &[Provider],
    cors: &[CorsPolicy],
    limits: &[RateLimitPolicy],
) -> Result<Route, ConfigError> {
    let name = raw.name.unwrap_or_else(|| format!("routes[{i}]"));
    let at = format!("routes[{i}] ({name})");
    let path = match (&raw.matcher.path, &raw.matcher.path_exact, &raw.matcher.path_template) {
        (Some(p), None, None) => {
            let p = route_path(ctx, &format!("{at}.match.path"), p)?;
            let trimmed = p.trim_end_matches('/');
            PathMatch::Prefix(if trimmed.is_empty() { "/".into() } else { trimmed.into() })
        }
        (None, Some(p), None) => PathMatch::Exact(route_path(ctx, &format!("{at}.match.path_exact"), p)?),
        (None, None, Some(t)) => {
            let field = format!("{at}.match.path_template");
            let template = crate::routing::template::PathTemplate::parse(t)
                .map_err(|why| ctx.err(format!("{field}: {t:?} {why}")))?;
            // Its literal segments must be in normal form, or nothing could match.
            let literal = t.replace(['{', '}'], "");
            route_path(ctx, &field, &literal)?;
            PathMatch::Template(template)
        }
        _ => {
            return Err(ctx.err(format!(
                "{at}.match: set exactly one of `path` (prefix), `path_exact` or `path_template`"
            )))
        }
    };
    let methods = match raw.matcher.methods {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ctx.err(format!(
                "{at}.match.methods: the list is empty; leave it out to allow any method"
            )))
        }
        Some(list) => {
            let mut methods = Vec::new();
            for m in list {
                let upper = m.to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes())
                    .map_err(|_| ctx.err(format!("{at}.match.methods: {m:?} is not an HTTP method")))?;
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
                .map_err(|_| ctx.err(format!("{at}.match.host: {h:?} is not a host name")))?;
            if authority.as_str().contains('@') {
                return Err(ctx.err(format!("{at}.match.host: {h:?} is not a host name")));
            }
            Some(authority.host().to_ascii_lowercase())
        }
    };
    let upstream = upstreams.iter().position(|u| u.name == raw.upstream).ok_or_else(|| {
        let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        ctx.err(format!(
            "{at}.upstream: no upstream named {:?}; defined upstreams: {}",
            raw.upstream,
            known.join(", ")
        ))
    })?;
    let strip_prefix = match raw.strip_prefix {
        None => None,
        Some(s) => {
            let s = route_path(ctx, &format!("{at}.strip_prefix"), &s)?;
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
                return Err(ctx.err(format!("{at}.strip_prefix: {s:?} is not a leading part of the route's path {matched:?}, so it would never apply")));
            }
            Some(s)
        }
    };
    let access = match (raw.auth, raw.public) {
        (Some(_), true) => return Err(ctx.err(format!("{at}: has both `auth` and `public: true`; choose one"))),
        (None, false) => {
            return Err(ctx.err(format!(
            "{at}: declares neither `auth:` nor `public: true`; routes are denied by default, say which one you mean"
        )))
        }
        (None, true) => Access::Public,
        (Some(auth), false) => Access::Protected(validate_auth(ctx, &at, auth, providers)?),
    };
    let rate_limits = super::shared::route_limits(ctx, &at, raw.rate_limits, limits, raw.public)?;
    let websocket = super::browser::websocket(ctx, &at, raw.websocket)?;
    if websocket.is_some() && upstreams[upstream].protocol.is_http2() {
        return Err(ctx.err(format!(
            "{at}.websocket: WebSockets go upstream as HTTP/1.1 upgrades, but upstream {:?} speaks HTTP/2; give the route an http1 upstream",
            upstreams[upstream].name
        )));
    }
    let cors = match raw.cors {
        None => None,
        Some(name) => Some(cors.iter().position(|c| c.name == name).ok_or_else(|| {
            let known: Vec<&str> = cors.iter().map(|c| c.name.as_str()).collect();
            ctx.err(format!(
                "{at}.cors: no CORS policy named {name:?}; defined policies: {}",
                if known.is_empty() {
                    "none (add one under `cors:`)".to_string()
                } else {
                    known.join(", ")
                }
            ))
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
        websocket,
        cors,
        rate_limits,
    })
}

fn validate_auth(ctx: &mut Ctx, at: &str, raw: RawAuth, providers: &[Provider]) -> Result<AuthRule, ConfigError> {
    if providers.is_empty() {
        return Err(ctx.err(format!(
            "{at}.auth: no providers are configured, so no token could ever be accepted; add one under `providers:`"
        )));
    }
    let indexes = match raw.providers {
        None => (0..providers.len()).collect(),
        Some(names) if names.is_empty() => {
            return Err(ctx.err(format!(
                "{at}.auth.providers: the list is empty; leave it out to allow any provider"
            )))
        }
        Some(names) => {
            let mut idx = Vec::new();
            for n in names {
                let i = providers.iter().position(|p| p.name == n).ok_or_else(|| {
                    let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                    ctx.err(format!(
                        "{at}.auth.providers: no provider named {n:?}; defined providers: {}",
                        known.join(", ")
                    ))
                })?;
                if !idx.contains(&i) {
                    idx.push(i);
                }
            }
            idx
        }
    };
    for s in raw.scopes.iter().chain(&raw.any_scopes) {
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\') {
            return Err(ctx.err(format!(
                "{at}.auth: scope {s:?} is not a valid scope token (RFC 6749 §3.3: no spaces, quotes or backslashes)"
            )));
        }
    }
    let token_sources = super::browser::token_sources(ctx, at, raw.token_sources)?;
    let monitor = match raw.mode.as_deref() {
        None | Some("enforce") => false,
        Some("monitor") => {
            ctx.warnings.push(format!(
                "{at}.auth.mode: monitor: requests that fail authentication or authorisation are forwarded anyway; switch to enforce once portcullis_auth_monitor_denials_total stays at zero"
            ));
            true
        }
        Some(other) => {
            return Err(ctx.err(format!("{at}.auth.mode: {other:?} is neither enforce nor monitor")));
        }
    };
    Ok(AuthRule {
        providers: indexes,
        scopes: raw.scopes,
        any_scopes: raw.any_scopes,
        token_sources,
        monitor,
    })
}

/// Whether `prefix` is `path` or a leading run of its segments.
pub fn segment_prefix(prefix: &str, path: &str) -> bool {
    prefix == "/" || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// Express, Rails and others serve `/admin/` as `/admin`. A protected
/// `path_exact: /admin` does not match `/admin/`, so if that request falls to
/// a later public route, the upstream may serve the protected page unchecked.
fn warn_trailing_slash_fallthrough(ctx: &mut Ctx, routes: &[Route]) {
    for (i, route) in routes.iter().enumerate() {
        let (PathMatch::Exact(p), Access::Protected(_)) = (&route.path, &route.access) else {
            continue;
        };
        if p.ends_with('/') {
            continue;
        }
        let slashed = format!("{p}/");
        let falls_to = routes[i + 1..].iter().find(|later| {
            let host = later.host.is_none() || later.host == route.host;
            let methods = match (&route.methods, &later.methods) {
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                _ => true,
            };
            host && methods && crate::routing::table::path_matches(&later.path, &slashed)
        });
        if let Some(later) = falls_to.filter(|later| later.access == Access::Public) {
            ctx.warnings.push(format!(
                "route {:?} protects {p:?} exactly, but {slashed:?} falls to the public route {:?}; upstreams that serve {slashed:?} as {p:?} (Express, Rails) would answer it without a token: protect it with `path: {p}` or add {slashed:?}",
                route.name, later.name
            ));
        }
    }
}

/// Whether `earlier` matches every request `later` could match (shadowing).
fn covers(earlier: &Route, later: &Route) -> bool {
    let host = earlier.host.is_none() || earlier.host == later.host;
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
    };
    let path = match (&earlier.path, &later.path) {
        (PathMatch::Prefix(e), PathMatch::Prefix(l) | PathMatch::Exact(l)) => segment_prefix(e, l),
        (PathMatch::Prefix(e), PathMatch::Template(t)) => segment_prefix(e, &t.literal_prefix()),
        (PathMatch::Exact(e), PathMatch::Exact(l)) => e == l,
        (PathMatch::Template(e), PathMatch::Exact(l)) => e.matches(l),
        (PathMatch::Template(e), PathMatch::Template(l)) => l.within(e),
        (PathMatch::Exact(_) | PathMatch::Template(_), PathMatch::Prefix(_)) => false,
        (PathMatch::Exact(_), PathMatch::Template(_)) => false,
    };
    host && methods && path
}
