//! Turns a [`RawConfig`] into a [`Config`], enforcing every rule of docs/configuration.md.
//! Each error names the field and says how to fix it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::ctx::Ctx;
use super::raw::{RawConfig, RawUpstream};
use super::*;

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

pub(super) fn validate(raw: RawConfig, text: &str, file: &Path, base: &Path) -> Result<Loaded, ConfigError> {
    let mut ctx = Ctx::new(file, text, base);

    let listen = Listen {
        https: raw.listen.https.map(|a| a.0),
        http: raw.listen.http.map(|a| a.0),
        admin: raw.listen.admin.map(|a| a.0),
        decision: raw.listen.decision.map(|a| a.0),
    };
    if listen.https.is_none() && listen.decision.is_none() {
        return Err(ctx.err(
            "listen.https",
            "missing; the gateway needs an HTTPS listener (or, for a decision service only, listen.decision)",
        ));
    }
    if listen.http.is_some() && listen.https.is_none() {
        return Err(ctx.err("listen.http", "redirects to listen.https, which is not set"));
    }
    let mut seen = Vec::new();
    for (name, addr) in [
        ("https", listen.https),
        ("http", listen.http),
        ("admin", listen.admin),
        ("decision", listen.decision),
    ] {
        if let Some(addr) = addr {
            if let Some((other, _)) = seen.iter().find(|(_, a)| *a == addr && addr.port() != 0) {
                return Err(ctx.err(
                    Field::key("listen").at(name),
                    format!("{addr} is already used by listen.{other}; give each listener its own port"),
                ));
            }
            seen.push((name, addr));
        }
    }

    let tls = match (raw.tls, listen.https) {
        (Some(t), _) => Some(validate_tls(&ctx, t)?),
        (None, Some(_)) => return Err(ctx.err("tls", "missing; listen.https needs a certificate and key")),
        (None, None) => None,
    };
    let limits = validate_limits(&ctx, raw.limits)?;

    let mut providers = Vec::new();
    for (name, p) in raw.providers {
        providers.push(super::provider::validate_provider(&mut ctx, name, p)?);
    }
    let mut issuers = BTreeMap::new();
    for p in &providers {
        if let Some(other) = issuers.insert(p.issuer.clone(), &p.name) {
            let field = Field::key("providers").at(p.name.as_str());
            return Err(ctx.err(
                field,
                match &p.issuer {
                    Some(iss) => format!(
                        "issuer {iss:?} is also the issuer of providers.{other}; two providers cannot share an issuer"
                    ),
                    None => format!("only one provider may leave out `issuer`, and providers.{other} already does"),
                },
            ));
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
    let store = super::shared_state::store(&mut ctx, raw.store)?;
    let rate_limits = super::shared_state::rate_limits(&ctx, raw.rate_limits, store.as_ref())?;
    let revocation = super::shared_state::revocation(&ctx, raw.revocation, store.as_ref())?;
    let admin_token = admin_token(&ctx, raw.admin)?;
    let open_admin = listen.admin.filter(|a| !a.ip().is_loopback());
    if let (Some(addr), Some(_), None) = (open_admin, &revocation, &admin_token) {
        ctx.warnings.push(format!(
            "listen.admin: POST /revoke is reachable on {addr}, which is not a loopback address, without admin.token_file: anyone who reaches the port can revoke any user's tokens; set admin.token_file"
        ));
    }

    if raw.routes.is_empty() {
        return Err(ctx.err("routes", "no routes are defined; every request would be answered 404"));
    }
    let mut routes: Vec<Route> = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let route = super::route::validate_route(&mut ctx, i, r, &upstreams, &providers, &cors, &rate_limits)?;
        if route.upstream.is_none() && listen.decision.is_none() {
            return Err(ctx.err(
                Field::key("routes").index(i).named(route.name.as_str()).at("upstream"),
                "missing; only a gateway with listen.decision has routes it decides on without forwarding",
            ));
        }
        if !names.insert(route.name.clone()) {
            return Err(ctx.err(
                Field::key("routes").index(i),
                format!("the name {:?} is used twice; route names must be unique", route.name),
            ));
        }
        routes.push(route);
    }
    super::browser::warn_cookie_with_any_origin(&mut ctx, &routes, &cors);
    check_metadata_urls(&ctx, &routes)?;

    let telemetry = match raw.telemetry {
        Some(t) => Some(super::telemetry::validate(&ctx, t)?),
        None => None,
    };

    let config = Config {
        telemetry,
        watch: raw.reload.watch,
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
        admin_token,
    };
    Ok(Loaded {
        config,
        warnings: ctx.warnings,
    })
}

/// `admin.token_file`: read now (and on every reload), never printed.
fn admin_token(ctx: &Ctx, raw: raw::RawAdmin) -> Result<Option<super::AdminToken>, ConfigError> {
    let Some(path) = raw.token_file else { return Ok(None) };
    let field = "admin.token_file";
    let path = ctx.existing_file(field, &path)?;
    let secret =
        super::read_secret_file(&path).map_err(|e| ctx.err(field, format!("cannot read {}: {e}", path.display())))?;
    if secret.len() < 16 || !secret.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ctx.err(
            field,
            "the secret must be at least 16 visible ASCII characters (no spaces), e.g. the output of `openssl rand -hex 32`",
        ));
    }
    Ok(Some(super::AdminToken::new(path, secret)))
}

fn validate_tls(ctx: &Ctx, raw: raw::RawTls) -> Result<Tls, ConfigError> {
    let hsts = match raw.hsts.as_deref() {
        None => Some(HeaderValue::from_static("max-age=31536000")),
        Some("") => None,
        Some(v) => Some(
            HeaderValue::from_str(v).map_err(|_| ctx.err("tls.hsts", format!("{v:?} is not a valid header value")))?,
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
            return Err(ctx.err(Field::key("limits").at(name), "must be longer than 0"));
        }
    }
    if raw.max_header_bytes < 1024 {
        return Err(ctx.err("limits.max_header_bytes", "must be at least 1024"));
    }
    if raw.max_connections == 0 {
        return Err(ctx.err("limits.max_connections", "must be at least 1"));
    }
    if raw.max_concurrent_streams == 0 {
        return Err(ctx.err("limits.max_concurrent_streams", "must be at least 1"));
    }
    if raw.max_stream_resets == 0 {
        return Err(ctx.err("limits.max_stream_resets", "must be at least 1"));
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

fn validate_identity(ctx: &Ctx, raw: raw::RawIdentity) -> Result<IdentitySettings, ConfigError> {
    let subject_header = raw
        .subject_header
        .map_or(HeaderName::from_static("x-auth-subject"), |h| h.0);
    let scopes_header = raw
        .scopes_header
        .map_or(HeaderName::from_static("x-auth-scopes"), |h| h.0);
    let mut claims = Vec::new();
    for (header, spec) in raw.claims {
        let at = Field::from("identity.claims").at(header.0.as_str());
        let (claim, join, format) = match spec {
            raw::RawClaimHeader::Claim(c) => (c, None, None),
            raw::RawClaimHeader::Settings(s) => (s.claim, s.join, s.format),
        };
        let claim =
            crate::policy::Pointer::parse(&claim).map_err(|why| ctx.err(at.clone(), format!("{claim:?} {why}")))?;
        let join = join.unwrap_or_else(|| ",".into());
        if join.is_empty() || !join.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(ctx.err(at.at("join"), "must be one or more visible ASCII characters or spaces"));
        }
        let json = match format.as_deref() {
            None | Some("plain") => false,
            Some("json") => true,
            Some(other) => return Err(ctx.err(at.at("format"), format!("{other:?} is neither plain nor json"))),
        };
        claims.push(super::ClaimHeader {
            header: header.0,
            claim,
            join,
            json,
        });
    }
    let mut names = vec![
        ("identity.subject_header", &subject_header),
        ("identity.scopes_header", &scopes_header),
    ];
    names.extend(claims.iter().map(|c| ("identity.claims", &c.header)));
    let assertion = match raw.assertion {
        Some(a) => Some(super::assertion::validate(ctx, a)?),
        None => None,
    };
    if let Some(a) = &assertion {
        names.push(("identity.assertion.header", &a.header));
    }
    let mut seen = HashSet::new();
    for (field, h) in &names {
        if RESERVED_HEADERS.contains(&h.as_str()) {
            return Err(ctx.err(
                *field,
                format!("{h} is a header the gateway or HTTP itself controls; choose another name"),
            ));
        }
        if !seen.insert(h.as_str()) {
            return Err(ctx.err(
                *field,
                format!("the header {h} is used twice; each identity header needs its own name"),
            ));
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
            return Err(ctx.err(
                "identity.strip_incoming",
                format!("{p:?} is not a header name pattern (letters, digits, '-', '_' and '*' wildcards)"),
            ));
        }
        strip_incoming.push(super::fold_header_name(&p));
    }
    Ok(IdentitySettings {
        subject_header,
        scopes_header,
        claims,
        strip_incoming,
        forward_authorization: raw.forward_authorization,
        assertion,
    })
}

fn validate_upstream(ctx: &mut Ctx, name: String, raw: RawUpstream) -> Result<Upstream, ConfigError> {
    let at = Field::key("upstreams").at(name.as_str());
    if raw.targets.is_empty() {
        return Err(ctx.err(
            at.at("targets"),
            "the list is empty; name at least one http:// or https:// target",
        ));
    }
    let mut targets = Vec::new();
    for t in &raw.targets {
        let bad = || {
            ctx.err(
                at.at("targets"),
                format!("{t:?} is not a valid target; write http://host:port or https://host:port"),
            )
        };
        let uri: http::Uri = t.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(ctx.err(
                at.at("targets"),
                format!("{t:?} has a path; targets are origins only (use a route's strip_prefix to rewrite paths)"),
            ));
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
                return Err(ctx.err(at.at("host"), format!("{h:?} is neither `preserve` nor a host[:port]")));
            }
            HostPolicy::Literal(
                HeaderValue::from_str(h)
                    .map_err(|_| ctx.err(at.at("host"), format!("{h:?} is not a valid header value")))?,
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
            Some(ctx.existing_file(at.at("ca_file"), p)?)
        }
        None => None,
    };
    match raw.protocol {
        UpstreamProtocol::H2 if targets.iter().any(|t| !t.https) => {
            return Err(ctx.err(
                at.at("protocol"),
                "h2 is HTTP/2 over TLS and needs https:// targets; use h2c for http:// targets",
            ));
        }
        UpstreamProtocol::H2c if targets.iter().any(|t| t.https) => {
            return Err(ctx.err(
                at.at("protocol"),
                "h2c is HTTP/2 over plain TCP and needs http:// targets; use h2 for https:// targets",
            ));
        }
        _ => {}
    }
    let max_connections = raw.max_connections.unwrap_or(256);
    if max_connections == 0 {
        return Err(ctx.err(at.at("max_connections"), "must be at least 1"));
    }
    // Tunnels live long and each holds a connection: capped below the
    // connection budget, so HTTP requests always keep some.
    let max_tunnels = raw.max_tunnels.unwrap_or((max_connections / 2).max(1));
    if max_tunnels == 0 || max_tunnels > max_connections {
        return Err(ctx.err(
            at.at("max_tunnels"),
            format!("must be between 1 and max_connections ({max_connections})"),
        ));
    }
    let connect_timeout = raw.connect_timeout.map_or(Duration::from_secs(2), |d| d.0);
    let request_timeout = raw.request_timeout.map_or(Duration::from_secs(30), |d| d.0);
    if connect_timeout.is_zero() || request_timeout.is_zero() {
        return Err(ctx.err(&at, "connect_timeout and request_timeout must be longer than 0"));
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
        max_tunnels,
    })
}

/// Two routes must not serve protected-resource metadata at the same URL:
/// the same path, and hosts that can coincide (either without `host`, or equal).
fn check_metadata_urls(ctx: &Ctx, routes: &[Route]) -> Result<(), ConfigError> {
    let with_metadata: Vec<(usize, &Route, String)> = routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r, r.resource_metadata_path()?)))
        .collect();
    for (n, (i, a, path)) in with_metadata.iter().enumerate() {
        for (j, b, other) in &with_metadata[..n] {
            let hosts_meet = a.host.is_none() || b.host.is_none() || a.host == b.host;
            if path == other && hosts_meet {
                return Err(ctx.err(
                    Field::key("routes").index(*i).named(a.name.as_str()).at("auth").at("resource_metadata"),
                    format!(
                        "its metadata URL {path} is also routes[{j}] ({})'s; give one of them another path or host, or drop resource_metadata from one",
                        b.name
                    ),
                ));
            }
        }
    }
    Ok(())
}
