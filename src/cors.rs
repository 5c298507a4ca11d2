//! CORS (the Fetch standard, "CORS protocol"): which browser origins may call
//! a route, the gateway's own answer to preflights, and the headers on every
//! response to an allowed origin, gateway-made errors included, so a browser
//! app can read a 401 and act on it.
//!
//! Origins are compared exactly on `scheme://host[:port]` (case-insensitive);
//! `https://*.example.com` needs one or more whole labels in front of
//! `.example.com`, so it never matches `example.com.evil.net` or
//! `evilexample.com`. Every `Access-Control-*` header an upstream sends on a
//! route with a policy is replaced by the gateway's.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use crate::config::{CorsPolicy, OriginPattern};

/// Whether `origin` (an `Origin` header value) is one the policy allows.
pub(crate) fn allows_origin(policy: &CorsPolicy, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    policy.origins.iter().any(|p| origin_matches(p, origin))
}

/// Whether the policy names `origin` itself (exactly, or by a `*.` label
/// wildcard): `"*"` does not count, and `Origin: null` (sandboxed frames,
/// `file:` pages, some redirects) is never listed. This is what a cookie token
/// needs, since a cookie rides along on requests from any site.
pub(crate) fn lists_origin(policy: &CorsPolicy, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    !origin.eq_ignore_ascii_case("null")
        && policy
            .origins
            .iter()
            .any(|p| *p != OriginPattern::Any && origin_matches(p, origin))
}

pub(crate) fn origin_matches(pattern: &OriginPattern, origin: &str) -> bool {
    match pattern {
        OriginPattern::Any => true,
        OriginPattern::Exact(o) => o.eq_ignore_ascii_case(origin),
        OriginPattern::Subdomains { scheme, suffix, port } => {
            let Some((s, rest)) = origin.split_once("://") else {
                return false;
            };
            let (host, origin_port) = match rest.rsplit_once(':') {
                // A browser writes the port in decimal, without a sign or
                // leading zeros: `:08443` or `:+8443` is no origin it sends.
                Some((h, p)) if !h.contains(']') || h.ends_with(']') => match p.parse::<u16>() {
                    Ok(n) if p.starts_with(|c: char| c.is_ascii_digit() && c != '0') => (h, Some(n)),
                    _ => return false,
                },
                _ => (rest, None),
            };
            let host = host.to_ascii_lowercase();
            let Some(labels) = host.strip_suffix(suffix.as_str()) else {
                return false;
            };
            s.eq_ignore_ascii_case(scheme)
                && origin_port == *port
                && !labels.is_empty()
                && labels
                    .split('.')
                    .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        }
    }
}

/// Whether `origin` is the gateway's own: `https://` and the request's host.
pub(crate) fn same_origin(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(|h| h.to_str())) else {
        return false;
    };
    origin.strip_prefix("https://").is_some_and(|o| {
        o.eq_ignore_ascii_case(host) || o.eq_ignore_ascii_case(host.strip_suffix(":443").unwrap_or(""))
    })
}

/// A preflight: an `OPTIONS` request with `Origin` and
/// `Access-Control-Request-Method`. Returns the requested method.
pub(crate) fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
    if method != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(requested.as_bytes()).ok()
}

/// The gateway's answer to a preflight the route's policy allows, or `None`
/// when it does not (origin, method or a requested header).
pub(crate) fn answer_preflight(
    policy: &CorsPolicy,
    route_methods: Option<&[Method]>,
    headers: &HeaderMap,
    requested: &Method,
) -> Option<Response<Full<Bytes>>> {
    let origin = headers.get(header::ORIGIN)?;
    if !allows_origin(policy, origin) {
        return None;
    }
    let methods: Vec<Method> = match (&policy.allow_methods, route_methods) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => m.to_vec(),
        (None, None) => vec![requested.clone()],
    };
    if !methods.contains(requested) {
        return None;
    }
    for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        let list = value.to_str().ok()?;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !policy
                .allow_headers
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(name))
            {
                return None;
            }
        }
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin_value(policy, origin));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        join(methods.iter().map(Method::as_str)),
    );
    if !policy.allow_headers.is_empty() {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            join(policy.allow_headers.iter().map(HeaderName::as_str)),
        );
    }
    if let Some(age) = policy.max_age {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
    }
    if policy.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    Some(resp)
}

/// Put the policy's headers on a response (the upstream's or the gateway's
/// own) to a request from `origin`: the upstream's `Access-Control-*` headers
/// are replaced; nothing but `Vary: Origin` is added for an origin the policy
/// does not allow. `Vary` goes on every response of the route, so a shared
/// cache never serves one origin's answer to another.
pub fn apply(policy: &CorsPolicy, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
    let theirs: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for k in theirs {
        h.remove(k);
    }
    add_vary_origin(h);
    let Some(origin) = origin.filter(|o| allows_origin(policy, o)) else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin_value(policy, origin));
    if policy.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !policy.expose_headers.is_empty() {
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            join(policy.expose_headers.iter().map(HeaderName::as_str)),
        );
    }
}

/// `*` for a policy open to any origin without credentials, else the origin
/// itself (browsers need the exact origin when credentials are involved).
fn allow_origin_value(policy: &CorsPolicy, origin: &HeaderValue) -> HeaderValue {
    if !policy.allow_credentials && policy.origins.contains(&OriginPattern::Any) {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    }
}

fn add_vary_origin(h: &mut HeaderMap) {
    let already = h.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("origin") || t.trim() == "*")
    });
    if !already {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> HeaderValue {
    let text = items.collect::<Vec<_>>().join(", ");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[OriginPattern]) -> CorsPolicy {
        CorsPolicy {
            name: "web".into(),
            origins: origins.to_vec(),
            allow_methods: None,
            allow_headers: vec![
                HeaderName::from_static("authorization"),
                HeaderName::from_static("content-type"),
            ],
            expose_headers: vec![HeaderName::from_static("x-request-id")],
            allow_credentials: false,
            max_age: Some(std::time::Duration::from_secs(600)),
        }
    }

    #[test]
    fn origin_table() {
        let sub = OriginPattern::Subdomains {
            scheme: "https".into(),
            suffix: ".example.com".into(),
            port: None,
        };
        let exact = OriginPattern::Exact("https://app.example.com".into());
        let cases = [
            (&exact, "https://app.example.com", true),
            (&exact, "HTTPS://APP.EXAMPLE.COM", true),
            (&exact, "http://app.example.com", false),
            (&exact, "https://app.example.com:8443", false),
            (&exact, "https://app.example.com.evil.net", false),
            (&sub, "https://a.example.com", true),
            (&sub, "https://a.b.example.com", true),
            (&sub, "https://example.com", false),
            (&sub, "https://evilexample.com", false),
            (&sub, "https://example.com.evil.net", false),
            (&sub, "https://a.example.com.evil.net", false),
            (&sub, "https://.example.com", false),
            (&sub, "https://a..example.com", false),
            (&sub, "http://a.example.com", false),
            (&sub, "https://a.example.com:444", false),
            (&sub, "https://a_b.example.com", false),
            (&OriginPattern::Any, "null", true),
        ];
        // Found by the cors fuzz target: a port written with a leading zero or a sign.
        let with_port = OriginPattern::Subdomains {
            scheme: "https".into(),
            suffix: ".example.com".into(),
            port: Some(8443),
        };
        let cases = cases.into_iter().chain([
            (&with_port, "https://a.example.com:8443", true),
            (&with_port, "HTTPS://A.B.EXAMPLE.COM:08443", false),
            (&with_port, "https://a.example.com:+8443", false),
            (&with_port, "https://a.example.com:", false),
        ]);
        for (pattern, origin, want) in cases {
            assert_eq!(origin_matches(pattern, origin), want, "{pattern:?} vs {origin}");
        }
    }

    #[test]
    fn preflights() {
        let p = policy(&[OriginPattern::Exact("https://app.example.com".into())]);
        let req = |origin: &str, method: &str, hdrs: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, origin.parse().unwrap());
            h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, method.parse().unwrap());
            if !hdrs.is_empty() {
                h.insert(header::ACCESS_CONTROL_REQUEST_HEADERS, hdrs.parse().unwrap());
            }
            h
        };
        let methods = [Method::GET, Method::POST];
        let ok = answer_preflight(
            &p,
            Some(&methods),
            &req("https://app.example.com", "POST", "authorization, Content-Type"),
            &Method::POST,
        )
        .expect("allowed");
        assert_eq!(ok.status(), 204);
        let h = ok.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[header::VARY], "Origin");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        // Wrong origin, method or header: refused.
        assert!(answer_preflight(
            &p,
            Some(&methods),
            &req("https://evil.example", "POST", ""),
            &Method::POST
        )
        .is_none());
        assert!(answer_preflight(
            &p,
            Some(&methods),
            &req("https://app.example.com", "DELETE", ""),
            &Method::DELETE
        )
        .is_none());
        assert!(answer_preflight(
            &p,
            Some(&methods),
            &req("https://app.example.com", "GET", "x-secret"),
            &Method::GET
        )
        .is_none());
    }

    #[test]
    fn responses_get_the_policy_and_lose_the_upstreams() {
        let p = policy(&[OriginPattern::Any]);
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            "https://upstream.example".parse().unwrap(),
        );
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".parse().unwrap());
        h.insert(header::VARY, "Accept-Encoding".parse().unwrap());
        apply(&p, Some(&"https://any.example".parse().unwrap()), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);
        // No origin: the upstream's CORS headers are still gone, and the
        // answer still varies on Origin (a cache must not reuse it for one).
        let mut h = HeaderMap::new();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".parse().unwrap());
        apply(&p, None, &mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::VARY], "Origin");
    }

    #[test]
    fn cookie_origins_must_be_listed_by_name() {
        let any = policy(&[OriginPattern::Any]);
        let listed = policy(&[
            OriginPattern::Exact("https://app.example.com".into()),
            OriginPattern::Subdomains {
                scheme: "https".into(),
                suffix: ".example.org".into(),
                port: None,
            },
        ]);
        let o = |s: &'static str| HeaderValue::from_static(s);
        assert!(allows_origin(&any, &o("https://evil.net")));
        assert!(!lists_origin(&any, &o("https://evil.net")));
        assert!(!lists_origin(&any, &o("null")));
        assert!(lists_origin(&listed, &o("https://app.example.com")));
        assert!(lists_origin(&listed, &o("https://a.example.org")));
        assert!(!lists_origin(&listed, &o("https://evil.net")));
        assert!(!lists_origin(&listed, &o("null")));
        assert!(!lists_origin(&listed, &o("NULL")));
    }

    #[test]
    fn same_origin_is_https_and_the_host() {
        let host = HeaderValue::from_static("api.example.com:8443");
        assert!(same_origin(
            &"https://api.example.com:8443".parse().unwrap(),
            Some(&host)
        ));
        assert!(!same_origin(
            &"http://api.example.com:8443".parse().unwrap(),
            Some(&host)
        ));
        assert!(!same_origin(&"https://api.example.com".parse().unwrap(), Some(&host)));
        let default_port = HeaderValue::from_static("api.example.com");
        assert!(same_origin(
            &"https://api.example.com".parse().unwrap(),
            Some(&default_port)
        ));
        assert!(!same_origin(&"https://api.example.com".parse().unwrap(), None));
    }
}
