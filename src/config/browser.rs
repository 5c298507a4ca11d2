//! Validation of what browser and long-lived clients need: CORS policies,
//! WebSocket settings and token sources.

use std::time::Duration;

use http::Method;

use super::ctx::Ctx;
use super::raw::{RawCors, RawWebSocket};
use super::{ConfigError, CorsPolicy, Field, OriginPattern, TokenSource, WebSocketPolicy};

pub(super) fn validate_cors(ctx: &Ctx, name: String, raw: RawCors) -> Result<CorsPolicy, ConfigError> {
    let at = Field::key("cors").at(name.as_str());
    if raw.allow_origins.is_empty() {
        return Err(ctx.err(
            at.at("allow_origins"),
            "the list is empty, so no browser could call; list origins such as https://app.example.com",
        ));
    }
    let mut origins = Vec::new();
    for o in &raw.allow_origins {
        origins.push(origin_pattern(o).map_err(|why| ctx.err(at.at("allow_origins"), format!("{o:?} {why}")))?);
    }
    if raw.allow_credentials && origins.contains(&OriginPattern::Any) {
        return Err(ctx.err(at.at("allow_credentials"), "cannot be true with the origin \"*\" (browsers refuse it, and it would let any site act with the user's credentials); list the origins"));
    }
    let allow_methods = match raw.allow_methods {
        None => None,
        Some(list) => {
            let mut methods = Vec::new();
            for m in list {
                let upper = m.to_ascii_uppercase();
                let method = Method::from_bytes(upper.as_bytes())
                    .map_err(|_| ctx.err(at.at("allow_methods"), format!("{m:?} is not an HTTP method")))?;
                methods.push(method);
            }
            Some(methods)
        }
    };
    Ok(CorsPolicy {
        name,
        origins,
        allow_methods,
        allow_headers: raw.allow_headers.into_iter().map(|h| h.0).collect(),
        expose_headers: raw.expose_headers.into_iter().map(|h| h.0).collect(),
        allow_credentials: raw.allow_credentials,
        max_age: raw.max_age.map(|d| d.0),
    })
}

/// `*`, or `scheme://host[:port]` with at most one leading `*.` label.
pub(crate) fn origin_pattern(text: &str) -> Result<OriginPattern, &'static str> {
    if text == "*" {
        return Ok(OriginPattern::Any);
    }
    let lower = text.to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or("is not an origin: write scheme://host[:port], e.g. https://app.example.com")?;
    if scheme != "https" && scheme != "http" {
        return Err("must start with https:// or http://");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err("is not an origin: no path, query or user part, just scheme://host[:port]");
    }
    // An IPv6 literal keeps its colons inside brackets.
    let split_at = match rest.find(']') {
        Some(close) => rest[close..].find(':').map(|i| close + i),
        None => rest.rfind(':'),
    };
    let (host, port) = match split_at {
        Some(i) => {
            let port: u16 = rest[i + 1..].parse().map_err(|_| "has an invalid port")?;
            (&rest[..i], Some(port))
        }
        None => (rest, None),
    };
    match host.strip_prefix("*.") {
        Some(suffix) => {
            if suffix.is_empty() || suffix.contains('*') || !suffix.contains('.') && suffix != "localhost" {
                return Err("may only use `*.` before a domain of two labels or more, as in https://*.example.com");
            }
            check_host(suffix)?;
            Ok(OriginPattern::Subdomains {
                scheme: scheme.to_string(),
                suffix: format!(".{suffix}"),
                port,
            })
        }
        None => {
            if host.contains('*') {
                return Err("may only have one `*.` wildcard, as its first label");
            }
            check_host(host)?;
            Ok(OriginPattern::Exact(lower))
        }
    }
}

fn check_host(host: &str) -> Result<(), &'static str> {
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if ok {
        Ok(())
    } else {
        Err("has an invalid host")
    }
}

pub(super) fn websocket(
    ctx: &Ctx,
    at: &Field,
    raw: Option<RawWebSocket>,
) -> Result<Option<WebSocketPolicy>, ConfigError> {
    let settings = match raw {
        None | Some(RawWebSocket::Enabled(false)) => return Ok(None),
        Some(RawWebSocket::Enabled(true)) => Default::default(),
        Some(RawWebSocket::Settings(s)) => s,
    };
    let idle_timeout = settings.idle_timeout.map_or(Duration::from_secs(300), |d| d.0);
    if idle_timeout.is_zero() {
        return Err(ctx.err(at.at("websocket").at("idle_timeout"), "must be longer than 0"));
    }
    Ok(Some(WebSocketPolicy {
        idle_timeout,
        close_at_token_expiry: settings.close_at_token_expiry.unwrap_or(true),
    }))
}

/// `header`, `query:NAME` or `cookie:NAME`; warns about query sources.
pub(super) fn token_sources(
    ctx: &mut Ctx,
    at: &Field,
    raw: Option<Vec<String>>,
) -> Result<Vec<TokenSource>, ConfigError> {
    let Some(list) = raw else {
        return Ok(vec![TokenSource::Header]);
    };
    if list.is_empty() {
        return Err(ctx.err(
            at.at("auth").at("token_sources"),
            "the list is empty; leave it out for [header]",
        ));
    }
    let mut sources = Vec::new();
    for s in list {
        let name_ok = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        let source = match s.split_once(':') {
            None if s == "header" => TokenSource::Header,
            Some(("query", name)) if name_ok(name) => TokenSource::Query(name.to_string()),
            Some(("cookie", name)) if name_ok(name) => TokenSource::Cookie(name.to_string()),
            _ => {
                return Err(ctx.err(
                    at.at("auth").at("token_sources"),
                    format!("{s:?} is not a token source; write header, \"query:NAME\" or \"cookie:NAME\""),
                ))
            }
        };
        if sources.contains(&source) {
            return Err(ctx.err(at.at("auth").at("token_sources"), format!("{s:?} is listed twice")));
        }
        if let TokenSource::Query(name) = &source {
            ctx.warnings.push(format!(
                "{at}.auth.token_sources: tokens in the query ({name}) end up in browser histories, proxy logs and Referer headers; use it only where a header cannot be sent (WebSocket, EventSource)"
            ));
        }
        sources.push(source);
    }
    Ok(sources)
}

/// A cookie token is never taken through `"*"`: say so where a route reads
/// one and its CORS policy is open to any origin (only the gateway's own
/// origin and requests without `Origin` can then use the cookie).
pub(super) fn warn_cookie_with_any_origin(ctx: &mut Ctx, routes: &[super::Route], cors: &[CorsPolicy]) {
    for route in routes {
        let super::Access::Protected(rule) = &route.access else {
            continue;
        };
        let Some(policy) = route.cors.map(|p| &cors[p]) else {
            continue;
        };
        let cookie = rule.token_sources.iter().find_map(|s| match s {
            TokenSource::Cookie(name) => Some(name),
            _ => None,
        });
        if let Some(name) = cookie.filter(|_| policy.origins.contains(&OriginPattern::Any)) {
            ctx.warnings.push(format!(
                "route {:?} reads a token from cookie:{name} and its CORS policy {:?} allows \"*\": a cookie token is never accepted through \"*\", so cross-origin browser calls with the cookie get 403 cors_rejected; list the origins that may send it",
                route.name, policy.name
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(origin_pattern("*"), Ok(OriginPattern::Any));
        assert_eq!(
            origin_pattern("https://App.Example.com"),
            Ok(OriginPattern::Exact("https://app.example.com".into()))
        );
        assert_eq!(
            origin_pattern("http://[::1]:3000"),
            Ok(OriginPattern::Exact("http://[::1]:3000".into()))
        );
        assert_eq!(
            origin_pattern("http://localhost:3000"),
            Ok(OriginPattern::Exact("http://localhost:3000".into()))
        );
        assert_eq!(
            origin_pattern("https://*.example.com"),
            Ok(OriginPattern::Subdomains {
                scheme: "https".into(),
                suffix: ".example.com".into(),
                port: None
            })
        );
        for bad in [
            "app.example.com",
            "ftp://example.com",
            "https://example.com/",
            "https://example.com/path",
            "https://*.*.example.com",
            "https://a.*.example.com",
            "https://*.com",
            "https://*example.com",
            "https://example.com:99999",
            "https://",
            "https://user@example.com",
        ] {
            assert!(origin_pattern(bad).is_err(), "{bad} should be refused");
        }
    }
}
