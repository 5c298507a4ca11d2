//! Proxy core over real sockets: TLS, routing, path normalisation, header
//! rewriting, streaming and upstream failures (docs/request-lifecycle.md, docs/errors.md).

mod support;

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use support::*;

/// Two public routes plus a catch-all, in front of one recording upstream.
fn config(up: &RecordingUpstream, extra: &str) -> String {
    format!(
        r#"{}upstreams:
  app:
    targets: [{}]
    request_timeout: 1s
{extra}routes:
  - name: orders
    match: {{ path: /api/orders, methods: [GET, HEAD] }}
    upstream: app
    strip_prefix: /api
    public: true
  - name: orders-write
    match: {{ path: /api/orders, methods: [POST] }}
    upstream: app
    public: true
  - name: public
    match: {{ path: /public }}
    upstream: app
    public: true
  - name: health
    match: {{ path_exact: /health }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn forwards_over_http1_and_http2_with_hsts_and_request_id() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let r = c.send(req("GET", "/public/x?b=2&a=1", &[], "")).await;
        assert_eq!(r.status, 200, "{proto:?}: {}", r.text());
        assert_eq!(
            r.version,
            if proto == Proto::H1 {
                http::Version::HTTP_11
            } else {
                http::Version::HTTP_2
            }
        );
        assert_eq!(r.text(), "upstream: app");
        // HSTS replaces the upstream's own; X-Request-Id is always returned.
        assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000"));
        let id = r.header("x-request-id").expect("x-request-id");
        assert!(id.len() >= 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        // The upstream's hop-by-hop headers never reach the client.
        assert!(r.header("x-upstream-private").is_none());
        let seen = up.last();
        assert_eq!(seen.path_and_query, "/public/x?b=2&a=1");
        assert_eq!(
            seen.version,
            http::Version::HTTP_11,
            "upstream connections are HTTP/1.1"
        );
        assert_eq!(seen.headers["x-request-id"], id);
        assert_eq!(seen.headers["host"], "localhost");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_404_405_and_strip_prefix() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let mut c = gw.client(Proto::H1).await;

    let r = c.send(req("GET", "/api/orders/7", &[], "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path_and_query, "/orders/7", "strip_prefix /api");

    let r = c.send(req("POST", "/api/orders", &[], "{}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path_and_query, "/api/orders", "second route, no strip_prefix");
    assert_eq!(up.last().body_len, 2);

    let r = c.send(req("DELETE", "/api/orders/7", &[], "")).await;
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));

    let before = up.requests().len();
    for path in ["/api/ordersX", "/nothing", "/health/x", "/healthz", "/"] {
        let r = c.send(req("GET", path, &[], "")).await;
        r.assert_error(404, "not_found");
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000"),
            "HSTS on errors too"
        );
    }
    assert_eq!(up.requests().len(), before, "refused requests never reach the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn host_matching_ignores_case_and_port() {
    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"{}upstreams:
  app:
    targets: [{}]
routes:
  - name: api
    match: {{ path: /, host: api.example.com }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let uri = if proto == Proto::H2 {
            "https://API.Example.com:8443/x"
        } else {
            "/x"
        };
        let r = c.send(req("GET", uri, &[("host", "API.Example.com:8443")], "")).await;
        assert_eq!(r.status, 200, "{proto:?}");
        assert_eq!(up.last().headers["host"], "API.Example.com:8443", "Host preserved");
        assert_eq!(up.last().headers["x-forwarded-host"], "API.Example.com:8443");
        let uri = if proto == Proto::H2 {
            "https://other.example.com/x"
        } else {
            "/x"
        };
        let r = c.send(req("GET", uri, &[("host", "other.example.com")], "")).await;
        r.assert_error(404, "not_found");
    }
}

/// The route decision and the path the upstream receives always agree.
#[tokio::test(flavor = "multi_thread")]
async fn path_bypass_attempts() {
    let admin = RecordingUpstream::start("admin").await;
    let public = RecordingUpstream::start("public").await;
    let yaml = format!(
        r#"{}upstreams:
  admin:
    targets: [{}]
  public:
    targets: [{}]
routes:
  - name: admin
    match: {{ path: /admin }}
    upstream: admin
    public: true
  - name: public
    match: {{ path: /public }}
    upstream: public
    public: true
"#,
        header(""),
        admin.url(),
        public.url()
    );
    let gw = TestGateway::start(&yaml).await;
    // (request path, expected status, upstream that must get it, path it must see)
    let cases: &[(&str, u16, Option<&str>, &str)] = &[
        ("/public/../admin", 200, Some("admin"), "/admin"),
        ("/public/%2e%2e/admin", 200, Some("admin"), "/admin"),
        ("/public/%2E%2e/admin/x", 200, Some("admin"), "/admin/x"),
        ("//admin", 200, Some("admin"), "/admin"),
        ("/./admin", 200, Some("admin"), "/admin"),
        ("/public//x", 200, Some("public"), "/public/x"),
        ("/%70ublic/x", 200, Some("public"), "/public/x"),
        (
            "/public/%252e%252e/admin",
            200,
            Some("public"),
            "/public/%252e%252e/admin",
        ),
        ("/admin%2f", 400, None, ""),
        ("/public/..%2fadmin", 400, None, ""),
        ("/public/%5c../admin", 400, None, ""),
        ("/public/%5C..%5Cadmin", 400, None, ""),
        ("/public/%00", 400, None, ""),
        ("/public/%1b", 400, None, ""),
        ("/public/%zz", 400, None, ""),
        ("/public/%", 400, None, ""),
        ("/..", 400, None, ""),
        ("/public/../../admin", 400, None, ""),
    ];
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        for (path, status, upstream, seen_path) in cases {
            let (a, p) = (admin.requests().len(), public.requests().len());
            let r = c.send(req("GET", path, &[], "")).await;
            assert_eq!(r.status.as_u16(), *status, "{proto:?} {path}: {}", r.text());
            match upstream {
                Some(name) => {
                    let up = if *name == "admin" { &admin } else { &public };
                    assert_eq!(r.text(), format!("upstream: {name}"), "{path}");
                    assert_eq!(&up.last().path_and_query, seen_path, "{path}");
                }
                None => {
                    r.assert_error(400, "invalid_request");
                    assert_eq!(
                        (admin.requests().len(), public.requests().len()),
                        (a, p),
                        "{path} reached an upstream"
                    );
                }
            }
        }
    }
}

/// A raw backslash cannot be sent through a typed client; send it by hand.
#[tokio::test(flavor = "multi_thread")]
async fn raw_backslash_is_refused() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let mut s = gw.raw().await;
    let out = exchange(
        &mut s,
        b"GET /public\\..\\admin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains(r#""error":"invalid_request""#), "{out}");
    assert!(up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_identity_and_hop_by_hop_headers_are_stripped() {
    let up = RecordingUpstream::start("app").await;
    let extra = r#"identity:
  strip_incoming: ["X-Auth-*", "X-Internal-*"]
  claims:
    X-User-Email: email
"#;
    let gw = TestGateway::start(&config(&up, extra)).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let mut headers = vec![
            ("x-auth-subject", "admin"),
            ("x_auth_scopes", "everything"),
            ("X-Internal-Role", "root"),
            ("x-user-email", "spoof@example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "client-id_1.2"),
            ("authorization", "Bearer abc"),
            ("x-keep", "yes"),
        ];
        if proto == Proto::H1 {
            headers.extend([
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic x"),
                ("te", "trailers, deflate"),
            ]);
        } else {
            // The one connection-specific header HTTP/2 allows; an HTTP/1.1
            // upstream never sees it.
            headers.push(("te", "trailers"));
        }
        let r = c.send(req("GET", "/public", &headers, "")).await;
        assert_eq!(r.status, 200, "{proto:?}");
        assert_eq!(
            r.header("x-request-id"),
            Some("client-id_1.2"),
            "a well-formed id is kept"
        );
        let h = up.last().headers;
        for gone in [
            "x-auth-subject",
            "x_auth_scopes",
            "x-internal-role",
            "x-user-email",
            "authorization",
            "connection",
            "x-drop-me",
            "keep-alive",
            "proxy-authorization",
            "te",
        ] {
            assert!(!h.contains_key(gone), "{proto:?}: {gone} reached the upstream");
        }
        assert_eq!(h["x-keep"], "yes");
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "localhost");
        assert_eq!(h["x-request-id"], "client-id_1.2");
    }
    // An ill-formed id is replaced.
    let r = gw
        .client(Proto::H1)
        .await
        .send(req("GET", "/public", &[("x-request-id", "bad id!")], ""))
        .await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert_ne!(id, "bad id!");
    assert_eq!(up.last().headers["x-request-id"], id.as_str());
}

/// Connection-specific response headers stop at the gateway, over both
/// protocols (in HTTP/2 any of them would make the response malformed).
#[tokio::test(flavor = "multi_thread")]
async fn upstream_hop_by_hop_headers_never_reach_the_client() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let r = c.send(req("GET", "/public", &[("x-test", "hop-by-hop")], "")).await;
        assert_eq!(r.status, 200, "{proto:?}: {}", r.text());
        assert_eq!(r.text(), "upstream: app", "{proto:?}");
        for gone in [
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "proxy-authenticate",
            "te",
            "x-upstream-private",
            "x-also-private",
        ] {
            assert!(r.header(gone).is_none(), "{proto:?}: {gone} reached the client");
        }
        assert_eq!(r.header("x-kept"), Some("1"), "{proto:?}: end-to-end headers pass");
        if proto == Proto::H2 {
            assert!(r.header("connection").is_none());
        } else {
            assert_ne!(r.header("connection"), Some("x-upstream-private, x-also-private"));
        }
        // The connection is still usable afterwards.
        assert_eq!(c.send(req("GET", "/public", &[], "")).await.status, 200, "{proto:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_pooled_and_reused() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let mut h2 = gw.client(Proto::H2).await;
    let mut h1 = gw.client(Proto::H1).await;
    for _ in 0..5 {
        assert_eq!(h2.send(req("GET", "/public", &[], "")).await.status, 200);
        assert_eq!(h1.send(req("GET", "/public", &[], "")).await.status, 200);
    }
    assert_eq!(up.requests().len(), 10);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled keep-alive upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn host_header_can_be_set_per_upstream() {
    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"{}upstreams:
  app:
    targets: [{}]
    host: internal.svc:8080
routes:
  - match: {{ path: / }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(gw.get("/x").await.status, 200);
    assert_eq!(up.last().headers["host"], "internal.svc:8080");
    assert_eq!(up.last().headers["x-forwarded-host"], "localhost");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_stream_both_ways() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up,
        r#"limits:
  max_body_bytes: 8388608
"#,
    ))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let big = "y".repeat(5 * 1024 * 1024);
        let r = c.send(req("POST", "/public/upload", &[], &big)).await;
        assert_eq!(r.status, 200);
        assert_eq!(up.last().body_len, big.len());
        let r = c
            .send(req("GET", "/public/download", &[("x-test", "stream:20971520")], ""))
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 20 * 1024 * 1024);
        // Streamed, not buffered: the upstream sends its first chunk, then
        // pauses 1 s; the client has those bytes long before the upstream
        // has sent the last.
        let (first, total, len) = first_bytes_then_all(&gw, proto, "drip:1048576").await;
        assert!(
            first < Duration::from_millis(700),
            "{proto:?}: first bytes after {first:?}"
        );
        assert!(total >= Duration::from_secs(1), "{proto:?}: whole body after {total:?}");
        assert_eq!(len, 1024 * 1024);
    }
}

/// GET a download over a fresh connection; how long until the first body
/// bytes, how long until the end, and how many bytes.
async fn first_bytes_then_all(gw: &TestGateway, proto: Proto, behaviour: &str) -> (Duration, Duration, usize) {
    use http_body_util::BodyExt;
    let alpn: &[&[u8]] = if proto == Proto::H1 { &[b"http/1.1"] } else { &[b"h2"] };
    let io = hyper_util::rt::TokioIo::new(raw_tls(gw.addr, &gw.cert, alpn).await);
    let request = http::Request::get("https://localhost/public/download")
        .header("x-test", behaviour)
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let started = std::time::Instant::now();
    let resp = if proto == Proto::H1 {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut request = request;
        request.headers_mut().remove("host");
        sender.send_request(request).await.unwrap()
    };
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut first = None;
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            if !data.is_empty() && first.is_none() {
                first = Some(started.elapsed());
            }
            len += data.len();
        }
    }
    (first.expect("some body bytes"), started.elapsed(), len)
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_skips_a_refusing_target() {
    let a = RecordingUpstream::start("a").await;
    let b = RecordingUpstream::start("b").await;
    let dead = closed_port().await;
    let yaml = format!(
        r#"{}upstreams:
  app:
    targets: [{}, http://{dead}, {}]
routes:
  - match: {{ path: / }}
    upstream: app
    public: true
"#,
        header(""),
        a.url(),
        b.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let mut c = gw.client(Proto::H1).await;
    for _ in 0..9 {
        let r = c.send(req("POST", "/x", &[], "payload")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The dead target's turns went to the next live one; the body arrived every time.
    let (na, nb) = (a.requests().len(), b.requests().len());
    assert_eq!(na + nb, 9);
    assert!(na >= 3 && nb >= 3, "a={na} b={nb}");
    assert!(a.requests().iter().chain(b.requests().iter()).all(|s| s.body_len == 7));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_map_to_502_and_504() {
    let dead = closed_port().await;
    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"{}upstreams:
  dead:
    targets: [http://{dead}]
    connect_timeout: 500ms
  app:
    targets: [{}]
    request_timeout: 500ms
routes:
  - match: {{ path: /dead }}
    upstream: dead
    public: true
  - match: {{ path: / }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let mut c = gw.client(Proto::H1).await;
    let r = c.send(req("GET", "/dead", &[], "")).await;
    r.assert_error(502, "bad_gateway");
    assert!(
        !r.text().contains("127.0.0.1"),
        "no internal address in errors: {}",
        r.text()
    );
    c.send(req("GET", "/x", &[("x-test", "reset")], ""))
        .await
        .assert_error(502, "bad_gateway");
    let r = c.send(req("GET", "/x", &[("x-test", "slow")], "")).await;
    r.assert_error(504, "gateway_timeout");
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn body_and_header_limits() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(
        &up,
        r#"limits:
  max_body_bytes: 1000
  max_header_bytes: 2048
"#,
    ))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let r = c.send(req("POST", "/public", &[], &"z".repeat(1000))).await;
        assert_eq!(r.status, 200, "exactly the limit passes");
        let before = up.requests().len();
        c.send(req("POST", "/public", &[], &"z".repeat(1001)))
            .await
            .assert_error(413, "payload_too_large");
        assert_eq!(
            up.requests().len(),
            before,
            "a Content-Length over the limit is refused before forwarding"
        );

        let mut c = gw.client(proto).await;
        let r = c.send(req("GET", "/public", &[("x-big", &"h".repeat(3000))], "")).await;
        r.assert_error(431, "request_header_fields_too_large");
        assert_eq!(
            up.requests().len(),
            before,
            "{proto:?}: an oversized head never reaches the upstream"
        );
    }
    // HTTP/1.1 heads of up to 100 header fields (HAProxy allows 101) are
    // parsed; more are refused by the parser itself, before any routing.
    for (fields, expected) in [(100, "HTTP/1.1 200"), (101, "HTTP/1.1 431")] {
        let before = up.requests().len();
        let mut head = String::from("GET /public HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for i in 2..fields {
            head.push_str(&format!("x-f{i}: v\r\n"));
        }
        head.push_str("\r\n");
        let mut s = gw.raw().await;
        s.write_all(head.as_bytes()).await.unwrap();
        let (out, _) = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(out.starts_with(expected), "{fields} fields: {out}");
        let forwarded = usize::from(fields <= 100);
        assert_eq!(up.requests().len(), before + forwarded, "{fields} fields");
    }
    // A chunked body (no Content-Length) is cut while it streams.
    let mut s = gw.raw().await;
    let mut msg = b"POST /public HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        msg.extend_from_slice(b"200\r\n");
        msg.extend_from_slice(&[b'q'; 0x200]);
        msg.extend_from_slice(b"\r\n");
    }
    msg.extend_from_slice(b"0\r\n\r\n");
    s.write_all(&msg).await.unwrap();
    let (out, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("payload_too_large"), "{out}");
    assert!(closed, "the connection is closed after a refused body: {out}");
    // Also when the Content-Length alone was too large and the body was never read.
    let mut s = gw.raw().await;
    let mut msg = b"POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1500\r\n\r\n".to_vec();
    msg.extend_from_slice(&[b'q'; 1500]);
    s.write_all(&msg).await.unwrap();
    let (out, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(closed, "{out}");
}

/// RFC 9112 §6.3: Content-Length with Transfer-Encoding can never smuggle a
/// second request to the upstream, and the client connection is closed.
#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    // Each attack with the body length the chunked framing gives (what must be
    // forwarded, if anything is).
    let attacks: [(&[u8], usize); 2] = [
        (b"POST /public HTTP/1.1\r\nHost: localhost\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n", 0),
        // TE.CL: to a Content-Length reader the body is `5c\r\n` and a second
        // request follows; the chunk is complete (92 bytes), then the last chunk.
        (b"POST /public HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST /admin HTTP/1.1\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: localhost\r\n\r\nxxxxxxxxxxxxxxxxxxxxx\r\n0\r\n\r\n", 0x5c),
    ];
    for (attack, chunked_len) in attacks {
        let before = up.requests().len();
        let mut s = gw.raw().await;
        s.write_all(attack).await.unwrap();
        let (out, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(closed, "the gateway must close the connection: {out}");
        assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "exactly one response: {out}");
        let after = up.requests();
        if out.starts_with("HTTP/1.1 400") {
            assert_eq!(after.len(), before, "refused, and nothing forwarded");
        } else {
            // Forwarded: exactly the one request, with the body chunked framing gives.
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            assert_eq!(
                after.len(),
                before + 1,
                "the upstream saw {} requests",
                after.len() - before
            );
            let seen = &after[before];
            assert_eq!((seen.path_and_query.as_str(), seen.body_len), ("/public", chunked_len));
            assert!(seen
                .headers
                .get("content-length")
                .is_none_or(|v| v == chunked_len.to_string().as_str()));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_on_the_https_port_is_refused() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /public HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed, "the connection is closed");
    // No HTTP answer at all: at most a TLS alert record (content type 21).
    assert!(!out.contains("HTTP/"), "{out:?}");
    assert!(out.is_empty() || out.as_bytes()[0] == 21, "{out:?}");
    assert!(up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstreams_are_verified_against_ca_file() {
    let (up, ca_pem) = RecordingUpstream::start_tls("secure").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("upstream-ca.pem"), &ca_pem).unwrap();
    let ca_pem_again = ca_pem.clone();
    let target = format!("https://127.0.0.1:{}", up.addr.port());
    let yaml = format!(
        r#"{}upstreams:
  trusted:
    targets: [{target}]
    ca_file: upstream-ca.pem
  untrusted:
    targets: [{target}]
routes:
  - match: {{ path: /trusted }}
    upstream: trusted
    public: true
  - match: {{ path: /untrusted }}
    upstream: untrusted
    public: true
"#,
        header("")
    );
    let gw = dir.start(&yaml).await;
    let r = gw.get("/trusted/x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream: secure");
    assert_eq!(up.last().headers["x-forwarded-proto"], "https");
    // Without the CA file the web PKI roots apply, and a self-signed upstream is refused.
    gw.get("/untrusted/x").await.assert_error(502, "bad_gateway");
    assert_eq!(up.requests().len(), 1);

    // A reload reads the CA file again, even when the configuration text is the same.
    let ca_path = gw.config_path.parent().unwrap().join("upstream-ca.pem");
    std::fs::write(&ca_path, tls_acceptor().1).unwrap();
    gw.reload().expect("reload");
    gw.get("/trusted/x").await.assert_error(502, "bad_gateway");
    std::fs::write(&ca_path, &ca_pem_again).unwrap();
    gw.reload().expect("reload");
    assert_eq!(gw.get("/trusted/x").await.status, 200);
}

/// A reload keeps the connection pools of upstreams whose configuration did
/// not change, and swaps routes atomically for new requests on old connections.
#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_pools_and_applies_to_open_connections() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let mut c = gw.client(Proto::H2).await;
    assert_eq!(c.send(req("GET", "/public", &[], "")).await.status, 200);
    let extra = format!(
        r#"{}  - name: added
    match: {{ path: /added }}
    upstream: app
    public: true
"#,
        ""
    );
    std::fs::write(&gw.config_path, format!("{}{extra}", config(&up, ""))).unwrap();
    gw.reload().expect("reload");
    assert_eq!(
        c.send(req("GET", "/added", &[], "")).await.status,
        200,
        "the new route, on an existing connection"
    );
    assert_eq!(c.send(req("GET", "/public", &[], "")).await.status, 200);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the upstream pool survived the reload"
    );
    // A bad file changes nothing.
    std::fs::write(&gw.config_path, "routes: [").unwrap();
    assert!(gw.reload().is_err());
    assert_eq!(c.send(req("GET", "/added", &[], "")).await.status, 200);

    // What only a restart can change is applied no further than a warning says.
    let moved = config(
        &up,
        r#"limits:
  max_connections: 5
"#,
    )
    .replacen(
        "https: 127.0.0.1:0",
        r#"https: 127.0.0.1:0
  http: 127.0.0.1:0"#,
        1,
    );
    std::fs::write(&gw.config_path, moved).unwrap();
    let warnings = gw.reload().expect("reload").join("\n");
    assert!(
        warnings.contains("listen: listener addresses cannot change on reload"),
        "{warnings}"
    );
    assert!(warnings.contains("limits.max_connections: stays 10000"), "{warnings}");
    assert_eq!(
        c.send(req("GET", "/added", &[], "")).await.status,
        404,
        "the rest is applied"
    );
}
