//! CORS over real sockets: preflights answered by the gateway (never the
//! upstream), refused ones without any Access-Control-* header, and the
//! policy's headers on every response to an allowed origin, errors included.

mod support;

use support::*;

fn config(up: &RecordingUpstream) -> String {
    format!(
        r#"{header}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
cors:
  web:
    allow_origins: [https://app.example.com, "https://*.example.org"]
    allow_methods: [GET, POST]
    allow_headers: [Authorization, Content-Type]
    expose_headers: [X-Request-Id]
    allow_credentials: true
    max_age: 10m
  open:
    allow_origins: ["*"]
upstreams:
  app:
    targets: [{up}]
routes:
  - name: cors-api
    match: {{ path: /api, methods: [GET, POST, DELETE] }}
    upstream: app
    auth: {{}}
    cors: web
  - name: cors-open
    match: {{ path: /open }}
    upstream: app
    public: true
    cors: open
  - name: cors-none
    match: {{ path: /plain }}
    upstream: app
    public: true
  - name: cookie-listed
    match: {{ path: /cookie-listed }}
    upstream: app
    auth: {{ token_sources: [header, "cookie:session"] }}
    cors: web
  - name: all-sources
    match: {{ path: /all-sources }}
    upstream: app
    auth: {{ token_sources: [header, "query:access_token", "cookie:session"] }}
  - name: cookie-open
    match: {{ path: /cookie-open }}
    upstream: app
    auth: {{ token_sources: [header, "cookie:session"] }}
    cors: open
"#,
        header = header(""),
        up = up.url()
    )
}

async fn start(up: &RecordingUpstream) -> TestGateway {
    GatewayDir::new().start(&config(up)).await
}

fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("origin", origin), ("access-control-request-method", method)];
    if !headers.is_empty() {
        h.push(("access-control-request-headers", headers));
    }
    h
}

fn no_cors_headers(r: &Reply) {
    let leaked: Vec<_> = r
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn preflights_are_answered_by_the_gateway() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        for origin in [
            "https://app.example.com",
            "https://a.example.org",
            "https://x.y.example.org",
        ] {
            let r = c
                .send(req(
                    "OPTIONS",
                    "/api/orders",
                    &preflight(origin, "POST", "content-type, authorization"),
                    "",
                ))
                .await;
            assert_eq!(r.status, 204, "{origin}: {}", r.text());
            assert_eq!(r.header("access-control-allow-origin"), Some(origin));
            assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
            assert_eq!(
                r.header("access-control-allow-headers"),
                Some("authorization, content-type")
            );
            assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
            assert_eq!(r.header("access-control-max-age"), Some("600"));
            assert_eq!(r.header("vary"), Some("Origin"));
        }
    }
    assert!(up.requests().is_empty(), "no preflight reaches the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_preflights_carry_no_cors_headers() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up).await;
    let mut c = gw.client(Proto::H1).await;
    for (origin, method, headers) in [
        ("https://evil.example", "GET", ""),
        ("https://app.example.com.evil.net", "GET", ""),
        ("https://example.org", "GET", ""),
        ("https://evilexample.org", "GET", ""),
        ("http://app.example.com", "GET", ""),
        ("https://app.example.com", "DELETE", ""),
        ("https://app.example.com", "GET", "x-secret"),
    ] {
        let r = c
            .send(req("OPTIONS", "/api/orders", &preflight(origin, method, headers), ""))
            .await;
        r.assert_error(403, "cors_rejected");
        no_cors_headers(&r);
    }
    assert!(up.requests().is_empty());
    // On a route without a policy, OPTIONS is an ordinary request.
    let r = c
        .send(req(
            "OPTIONS",
            "/plain",
            &preflight("https://app.example.com", "GET", ""),
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().method, "OPTIONS");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_to_allowed_origins_carry_the_policy_errors_included() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up).await;
    let mut c = gw.client(Proto::H1).await;
    // A 401 made by the gateway: the browser app can read it.
    let r = c
        .send(req("GET", "/api/orders", &[("origin", "https://app.example.com")], ""))
        .await;
    r.assert_error(401, "unauthorized");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-expose-headers"), Some("x-request-id"));
    assert_eq!(r.header("vary"), Some("Origin"));
    // Another origin: nothing.
    let r = c
        .send(req("GET", "/api/orders", &[("origin", "https://evil.example")], ""))
        .await;
    r.assert_error(401, "unauthorized");
    no_cors_headers(&r);

    // An open policy answers `*` (no credentials) and replaces the upstream's own.
    let r = c
        .send(req(
            "GET",
            "/open/x",
            &[("origin", "https://anyone.example"), ("x-test", "cors")],
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-max-age"),
        None,
        "the upstream's CORS headers are gone"
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-credentials").is_none());
}

/// A cookie rides along on requests from any site, so a cookie token is taken
/// only from the gateway's own origin or one the policy names: never through
/// `"*"`, never for `Origin: null`; a cross-site fetch without `Origin` that
/// is not GET/HEAD is foreign too. Nothing refused reaches the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn cookie_tokens_need_an_origin_the_policy_names() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up).await;
    let token = tokens::token(serde_json::json!({"sub": "victim"}));
    let cookie = format!("session={token}");
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let mut forwarded = 0;
        for (method, path, extra, allowed) in [
            ("POST", "/cookie-open/x", vec![("origin", "https://evil.net")], false),
            ("GET", "/cookie-open/x", vec![("origin", "https://evil.net")], false),
            ("POST", "/cookie-open/x", vec![("origin", "null")], false),
            ("POST", "/cookie-listed/x", vec![("origin", "null")], false),
            ("POST", "/cookie-listed/x", vec![("origin", "https://evil.net")], false),
            (
                "POST",
                "/cookie-listed/x",
                vec![("origin", "https://app.example.com")],
                true,
            ),
            (
                "POST",
                "/cookie-listed/x",
                vec![("origin", "https://a.example.org")],
                true,
            ),
            ("POST", "/cookie-open/x", vec![("origin", "https://localhost")], true),
            ("POST", "/cookie-open/x", vec![], true),
            ("POST", "/cookie-open/x", vec![("sec-fetch-site", "cross-site")], false),
            (
                "DELETE",
                "/cookie-listed/x",
                vec![("sec-fetch-site", "cross-site")],
                false,
            ),
            ("GET", "/cookie-open/x", vec![("sec-fetch-site", "cross-site")], true),
            ("HEAD", "/cookie-open/x", vec![("sec-fetch-site", "cross-site")], true),
            ("POST", "/cookie-open/x", vec![("sec-fetch-site", "same-site")], true),
            // With an Origin, the Origin decides.
            (
                "POST",
                "/cookie-listed/x",
                vec![("origin", "https://app.example.com"), ("sec-fetch-site", "cross-site")],
                true,
            ),
        ] {
            let mut headers = vec![("cookie", cookie.as_str())];
            headers.extend(extra.iter().copied());
            let before = up.requests().len();
            let r = c.send(req(method, path, &headers, "")).await;
            if allowed {
                assert_eq!(r.status, 200, "{proto:?} {method} {path} {extra:?}: {}", r.text());
                forwarded += 1;
                assert_eq!(up.requests().len(), before + 1);
            } else {
                r.assert_error(403, "cors_rejected");
                assert_eq!(
                    up.requests().len(),
                    before,
                    "{method} {path} {extra:?} reached the upstream"
                );
            }
        }
        assert!(forwarded > 0);
        // The same foreign origin with a header token is an ordinary CORS call.
        let bearer = format!("Bearer {token}");
        let r = c
            .send(req(
                "POST",
                "/cookie-open/x",
                &[("authorization", bearer.as_str()), ("origin", "https://evil.net")],
                "",
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// `Vary: Origin` on every response of a CORS route, whether the origin is
/// allowed, foreign or absent; never on a route without a policy.
#[tokio::test(flavor = "multi_thread")]
async fn every_response_of_a_cors_route_varies_on_origin() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up).await;
    let mut c = gw.client(Proto::H1).await;
    for (path, origin, want) in [
        ("/api/orders", Some("https://evil.example"), Some("Origin")),
        ("/api/orders", None, Some("Origin")),
        ("/open/x", None, Some("Origin")),
        ("/open/x", Some("https://anyone.example"), Some("Origin")),
        ("/plain/x", Some("https://anyone.example"), None),
    ] {
        let headers: Vec<(&str, &str)> = origin.iter().map(|o| ("origin", *o)).collect();
        let r = c.send(req("GET", path, &headers, "")).await;
        assert_eq!(r.header("vary"), want, "{path} {origin:?}");
        if origin == Some("https://evil.example") {
            no_cors_headers(&r);
        }
    }
}

/// Every token source the route reads is emptied before the request goes
/// upstream, not only the one that supplied the token: a second credential
/// in another source would reach the upstream unchecked. Names count as
/// servers read them (`access%5Ftoken`, `session =`); a source given twice
/// that way is ambiguous (400).
#[tokio::test(flavor = "multi_thread")]
async fn every_token_source_is_emptied_before_the_upstream() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up).await;
    let sign = |sub: &str| tokens::token(serde_json::json!({ "sub": sub }));
    let (used, other) = (sign("alice"), sign("mallory"));
    let bearer = format!("Bearer {used}");
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        for (path, cookie) in [
            (
                format!("/all-sources/x?a=1&access_token={other}&b=2"),
                format!("theme=dark; session={other}"),
            ),
            (
                format!("/all-sources/x?a=1&access%5Ftoken={other}&b=2"),
                format!("theme=dark; session ={other}"),
            ),
        ] {
            let r = c
                .send(req(
                    "GET",
                    &path,
                    &[("authorization", bearer.as_str()), ("cookie", cookie.as_str())],
                    "",
                ))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let seen = up.last();
            assert_eq!(seen.path_and_query, "/all-sources/x?a=1&b=2", "{proto:?}");
            assert_eq!(seen.headers["cookie"], "theme=dark", "{proto:?}");
            assert_eq!(seen.headers["x-auth-subject"], "alice");
            assert!(seen.headers.get("authorization").is_none());
        }
        // The same parameter under two spellings, or the cookie twice: ambiguous.
        let before = up.requests().len();
        let path = format!("/all-sources/x?access_token={used}&access%5ftoken={other}");
        c.send(req("GET", &path, &[], ""))
            .await
            .assert_error(400, "invalid_request");
        let cookie = format!("session={used}; session ={other}");
        c.send(req("GET", "/all-sources/x", &[("cookie", cookie.as_str())], ""))
            .await
            .assert_error(400, "invalid_request");
        assert_eq!(up.requests().len(), before);
    }
}
