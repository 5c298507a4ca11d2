//! Request shapes that common upstreams read differently from the route
//! table, forwarding headers the gateway does not own, and listener budgets.
//! Each test sends the attack over a real socket and checks what the upstream
//! received (or that it received nothing).

mod support;

use std::time::Duration;

use support::*;

fn config(up: &RecordingUpstream, extra: &str) -> String {
    format!(
        r#"{}{extra}upstreams:
  app:
    targets: [{}]
routes:
  - name: write
    match: {{ path: /api/orders, methods: [POST] }}
    upstream: app
    public: true
  - name: public
    match: {{ path: /api/public }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_not_in_upper_case_are_refused() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        for method in ["post", "Post", "get"] {
            let r = c.send(req(method, "/api/public/x", &[], "")).await;
            r.assert_error(400, "invalid_request");
        }
        assert_eq!(c.send(req("POST", "/api/orders", &[], "")).await.status, 200);
    }
    assert_eq!(up.requests().len(), 2, "only the upper-case requests were forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn http1_without_host_is_refused() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    // HTTP/1.0 had no Host requirement, but a host-scoped route needs one,
    // and an upstream would pick its own default: refused like HTTP/1.1.
    for head in [
        &b"GET /api/public HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET /api/public HTTP/1.0\r\n\r\n",
    ] {
        let mut tls = gw.raw().await;
        let out = exchange(&mut tls, head).await;
        assert!(
            out.starts_with("HTTP/1.1 400") || out.starts_with("HTTP/1.0 400"),
            "{out}"
        );
        assert!(out.contains("invalid_request"), "{out}");
    }
    assert!(up.requests().is_empty());
    let mut tls = gw.raw().await;
    let out = exchange(&mut tls, b"GET /api/public HTTP/1.0\r\nHost: localhost\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn semicolons_in_paths_are_refused_unless_allowed() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    for path in ["/api/public/..;/admin", "/api/public;x=1", "/api/public/a;jsessionid=1"] {
        for proto in [Proto::H1, Proto::H2] {
            let r = gw.client(proto).await.send(req("GET", path, &[], "")).await;
            r.assert_error(400, "invalid_request");
        }
    }
    // Encoded, it is refused too: some servers decode `%3B` before they
    // split path parameters off.
    for path in ["/api/public/a%3Bb", "/api/public/..%3b/admin"] {
        gw.get(path).await.assert_error(400, "invalid_request");
    }
    assert!(up.requests().is_empty());

    let allowed = TestGateway::start(&config(
        &up,
        r#"paths:
  allow_semicolons: true
"#,
    ))
    .await;
    let r = allowed.get("/api/public/a;jsessionid=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().path_and_query, "/api/public/a;jsessionid=1");
    assert_eq!(allowed.get("/api/public/a%3Bb").await.status, 200);
}

/// Method and URL overrides never reach the upstream: frameworks act on
/// them, which would turn a request routed as a GET into a DELETE upstream.
#[tokio::test(flavor = "multi_thread")]
async fn method_and_url_overrides_are_always_removed() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    for proto in [Proto::H1, Proto::H2] {
        let r = gw
            .client(proto)
            .await
            .send(req(
                "GET",
                "/api/public/x",
                &[
                    ("x-http-method-override", "DELETE"),
                    ("x-method-override", "DELETE"),
                    ("x-original-url", "/admin"),
                    ("x-rewrite-url", "/admin"),
                    ("x-kept", "yes"),
                ],
                "",
            ))
            .await;
        assert_eq!(r.status, 200);
        let seen = up.last();
        assert_eq!(seen.headers["x-kept"], "yes");
        for name in [
            "x-http-method-override",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
        ] {
            assert!(
                !seen.headers.contains_key(name),
                "{proto:?}: {name} reached the upstream"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trailing_dot_on_the_host_is_the_same_host() {
    let admin = RecordingUpstream::start("admin").await;
    let public = RecordingUpstream::start("public").await;
    let yaml = format!(
        r#"{}upstreams:
  admin:
    targets: [{}]
  public:
    targets: [{}]
routes:
  - match: {{ path: /, host: admin.example.com }}
    upstream: admin
    public: true
  - match: {{ path: / }}
    upstream: public
    public: true
"#,
        header(""),
        admin.url(),
        public.url()
    );
    let gw = TestGateway::start(&yaml).await;
    for host in ["admin.example.com.", "ADMIN.example.com.:8443"] {
        for proto in [Proto::H1, Proto::H2] {
            let mut c = gw.client(proto).await;
            let r = match proto {
                Proto::H1 => c.send(req("GET", "/x", &[("host", host)], "")).await,
                Proto::H2 => {
                    let uri = format!("https://{host}/x");
                    c.send(req("GET", &uri, &[], "")).await
                }
            };
            assert_eq!(r.text(), "upstream: admin", "{host} {proto:?}");
            let seen = admin.last();
            let want = host.replacen(".:", ":", 1);
            let want = want.strip_suffix('.').unwrap_or(&want);
            assert_eq!(seen.headers["host"], want);
            assert_eq!(seen.headers["x-forwarded-host"], want);
        }
    }
    assert!(public.requests().is_empty());
    // A host that is only a dot is malformed.
    let r = gw
        .client(Proto::H1)
        .await
        .send(req("GET", "/x", &[("host", ".")], ""))
        .await;
    r.assert_error(400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_forwarding_headers_never_reach_the_upstream() {
    let up = RecordingUpstream::start("app").await;
    // Even with nothing configured to strip.
    let gw = TestGateway::start(&config(
        &up,
        r#"identity:
  strip_incoming: []
"#,
    ))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let headers = [
            ("forwarded", "for=10.0.0.1;host=admin;proto=https"),
            ("x-real-ip", "10.0.0.1"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
        ];
        let r = gw
            .client(proto)
            .await
            .send(req("GET", "/api/public", &headers, ""))
            .await;
        assert_eq!(r.status, 200);
        let h = up.last().headers;
        for (name, _) in headers {
            assert!(!h.contains_key(name), "{proto:?}: {name} reached the upstream");
        }
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redirect_listener_has_its_own_connection_budget() {
    let up = RecordingUpstream::start("app").await;
    let yaml = config(
        &up,
        r#"limits:
  max_connections: 1
"#,
    )
    .replacen(
        "  https: 127.0.0.1:0\n",
        r#"  https: 127.0.0.1:0
  http: 127.0.0.1:0
"#,
        1,
    );
    let gw = TestGateway::start(&yaml).await;
    // Several HTTPS connections one after another, and redirects in between:
    // none may wait on the other listener's place.
    for _ in 0..2 {
        for _ in 0..2 {
            let r = tokio::time::timeout(Duration::from_secs(5), gw.get("/api/public"))
                .await
                .expect("an HTTPS client waited for a place the redirect listener held");
            assert_eq!(r.status, 200);
        }
        let http = gw.http_addr.expect("http listener");
        let out = tokio::time::timeout(Duration::from_secs(5), admin_get(http, "/x", ""))
            .await
            .expect("redirect listener answers");
        assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    }
}

/// A request the client abandons after it reached the upstream still gets its
/// access-log line and metrics, with status 499.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_requests_are_logged_as_499() {
    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"{}upstreams:
  app:
    targets: [{}]
routes:
  - name: abandoned-h1
    match: {{ path: /h1 }}
    upstream: app
    public: true
  - name: abandoned-h2
    match: {{ path: /h2 }}
    upstream: app
    public: true
"#,
        header_with_admin(),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    for (proto, path) in [(Proto::H1, "/h1"), (Proto::H2, "/h2")] {
        let mut c = gw.client(proto).await;
        let before = up.requests().len();
        let call = tokio::spawn(async move { c.send(req("POST", path, &[("x-test", "sleep:2000")], "write")).await });
        wait_for("the upstream to receive the request", Duration::from_secs(5), || {
            up.requests().len() > before
        })
        .await;
        // Dropping the client resets the HTTP/2 stream / closes the HTTP/1.1 connection.
        call.abort();
        let line = format!(
            r#"portcullis_requests_total{{route="abandoned-{}",listener="https",status="499"}} 1"#,
            &path[1..]
        );
        wait_for_async(&format!("the metrics to show {line:?}"), Duration::from_secs(5), || {
            let gw = &gw;
            let line = line.clone();
            async move { gw.admin("/metrics").await.1.lines().any(|l| l == line) }
        })
        .await;
    }
}
