//! Upstream connections: HTTP/2 upstreams (h2c, h2 over TLS), trailers, and
//! the per-target connection cap, over real sockets.

mod support;

use std::sync::atomic::Ordering;

use support::*;

fn one_route(upstream_yaml: &str) -> String {
    format!(
        r#"{}upstreams:
  app:
{upstream_yaml}routes:
  - name: all
    match: {{ path: / }}
    upstream: app
    public: true
"#,
        header("")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_upstream_serves_http1_and_http2_clients() {
    let up = RecordingUpstream::start_h2c("grpcish").await;
    let gw = TestGateway::start(&one_route(&format!(
        r#"    targets: [{}]
    protocol: h2c
"#,
        up.url()
    )))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        // HTTP/2 clients may only send `TE: trailers` themselves.
        let te = if proto == Proto::H1 {
            "deflate, trailers"
        } else {
            "trailers"
        };
        let r = c.send(req("POST", "/svc/Method?x=1", &[("te", te)], "hello")).await;
        assert_eq!(r.status, 200, "{proto:?}: {}", r.text());
        assert_eq!(r.text(), "upstream: grpcish");
        let seen = up.last();
        assert_eq!(seen.version, http::Version::HTTP_2);
        assert_eq!(seen.path_and_query, "/svc/Method?x=1");
        assert_eq!(seen.body_len, 5);
        // The client's host travels as :authority, and no Host header goes with it.
        assert_eq!(seen.authority.as_deref(), Some("localhost"));
        assert!(seen.headers.get("host").is_none());
        // Only `trailers` of TE reaches an HTTP/2 upstream.
        assert_eq!(seen.headers.get_all("te").iter().collect::<Vec<_>>(), ["trailers"]);
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 1, "one multiplexed connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn te_is_never_sent_to_http1_upstreams() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&one_route(&format!("    targets: [{}]\n", up.url()))).await;
    let r = gw
        .client(Proto::H1)
        .await
        .send(req("GET", "/x", &[("te", "trailers")], ""))
        .await;
    assert_eq!(r.status, 200);
    assert!(up.last().headers.get("te").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn h2_upstream_over_tls_with_ca_file() {
    let (up, ca_pem) = RecordingUpstream::start_h2_tls("secure-h2").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("upstream-ca.pem"), &ca_pem).unwrap();
    let yaml = one_route(&format!(
        r#"    targets: [https://localhost:{}]
    protocol: h2
    ca_file: upstream-ca.pem
    host: orders.internal
"#,
        up.addr.port()
    ));
    let gw = dir.start(&yaml).await;
    let r = gw.get("/a").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream: secure-h2");
    let seen = up.last();
    assert_eq!(seen.version, http::Version::HTTP_2);
    // `host:` picks the :authority of an HTTP/2 upstream.
    assert_eq!(seen.authority.as_deref(), Some("orders.internal"));
    assert!(seen.headers.get("host").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http1_only_tls_target_is_refused_for_h2() {
    // The target answers ALPN with http/1.1 only: the gateway must not guess.
    let (up, ca_pem) = RecordingUpstream::start_tls("h1-only").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("upstream-ca.pem"), &ca_pem).unwrap();
    let yaml = one_route(&format!(
        r#"    targets: [https://localhost:{}]
    protocol: h2
    ca_file: upstream-ca.pem
"#,
        up.addr.port()
    ));
    let gw = dir.start(&yaml).await;
    gw.get("/a").await.assert_error(502, "bad_gateway");
    assert!(up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn response_trailers_reach_http2_clients() {
    let up = RecordingUpstream::start_h2c("trailing").await;
    let gw = TestGateway::start(&one_route(&format!(
        r#"    targets: [{}]
    protocol: h2c
"#,
        up.url()
    )))
    .await;
    let r = gw
        .client(Proto::H2)
        .await
        .send(req("GET", "/t", &[("x-test", "trailers")], ""))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 5);
    let trailers = r.trailers.expect("trailers relayed");
    assert_eq!(trailers["x-trailer"], "end");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_streams_share_few_upstream_connections() {
    // 40 concurrent streams on one client connection: against an h2c upstream
    // they share one connection; against HTTP/1.1 they never exceed the cap.
    let h2 = RecordingUpstream::start_h2c("h2").await;
    let h1 = RecordingUpstream::start("h1").await;
    let yaml = format!(
        r#"{}upstreams:
  h2:
    targets: [{}]
    protocol: h2c
  h1:
    targets: [{}]
    max_connections: 4
    connect_timeout: 5s
routes:
  - match: {{ path: /h2 }}
    upstream: h2
    public: true
  - match: {{ path: /h1 }}
    upstream: h1
    public: true
"#,
        header(""),
        h2.url(),
        h1.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let client = gw.client(Proto::H2).await;
    for (path, up, most) in [("/h2", &h2, 1), ("/h1", &h1, 4)] {
        let mut calls = Vec::new();
        for _ in 0..40 {
            let mut c = client.h2_stream();
            calls.push(tokio::spawn(async move {
                c.send(req("GET", path, &[("x-test", "sleep:50")], "")).await.status
            }));
        }
        for call in calls {
            assert_eq!(call.await.unwrap(), 200);
        }
        assert_eq!(up.requests().len(), 40);
        let opened = up.connections.load(Ordering::SeqCst);
        assert!(opened >= 1 && opened <= most, "{path}: {opened} upstream connections");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_target_answers_503_after_connect_timeout() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&one_route(&format!(
        r#"    targets: [{}]
    max_connections: 1
    connect_timeout: 300ms
    request_timeout: 10s
"#,
        up.url()
    )))
    .await;
    let mut busy = gw.client(Proto::H1).await;
    let held = tokio::spawn(async move { busy.send(req("GET", "/slow", &[("x-test", "sleep:1500")], "")).await });
    // Wait until the first request holds the only connection.
    wait_for(
        "the upstream to receive the request",
        std::time::Duration::from_secs(5),
        || !up.requests().is_empty(),
    )
    .await;
    let started = std::time::Instant::now();
    gw.get("/second").await.assert_error(503, "temporarily_unavailable");
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    assert_eq!(held.await.unwrap().status, 200);
    // The connection went back to the pool: the next request reuses it.
    assert_eq!(gw.get("/third").await.status, 200);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
    assert_eq!(up.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_request_gets_the_connection_that_frees_up() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&one_route(&format!(
        r#"    targets: [{}]
    max_connections: 1
    connect_timeout: 5s
"#,
        up.url()
    )))
    .await;
    let mut busy = gw.client(Proto::H1).await;
    let held = tokio::spawn(async move { busy.send(req("GET", "/slow", &[("x-test", "sleep:300")], "")).await });
    wait_for(
        "the upstream to receive the request",
        std::time::Duration::from_secs(5),
        || !up.requests().is_empty(),
    )
    .await;
    assert_eq!(gw.get("/second").await.status, 200);
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_request_leaves_its_new_connection_in_the_pool() {
    let (up, ca_pem) =
        RecordingUpstream::start_tls_slow_handshake("slow-tls", std::time::Duration::from_millis(500)).await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("upstream-ca.pem"), &ca_pem).unwrap();
    let yaml = one_route(&format!(
        r#"    targets: [https://localhost:{}]
    ca_file: upstream-ca.pem
    max_connections: 1
"#,
        up.addr.port()
    ));
    let gw = dir.start(&yaml).await;
    // The client gives up while the gateway is still connecting upstream.
    let mut c = gw.client(Proto::H2).await;
    let call = tokio::spawn(async move { c.send(req("GET", "/first", &[], "")).await });
    wait_for(
        "the upstream to have one connection",
        std::time::Duration::from_secs(5),
        || up.connections.load(Ordering::SeqCst) == 1,
    )
    .await;
    call.abort();
    // The connection still completes and serves the next request (which, with
    // one connection allowed, waits for it).
    let r = gw.get("/second").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests().len(), 1, "the cancelled request never went out");
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "the connection was reused, not thrown away"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_trailers_reach_http2_upstreams() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let up = RecordingUpstream::start_h2c("h2").await;
    let gw = TestGateway::start(&one_route(&format!(
        r#"    targets: [{}]
    protocol: h2c
"#,
        up.url()
    )))
    .await;
    let tls = raw_tls(gw.addr, &gw.cert, &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    // Trailers get the header rules: nothing spoofed, nothing hop-by-hop.
    for (k, v) in [
        ("x-auth-subject", "root"),
        ("x-auth-scopes", "admin"),
        ("authorization", "Bearer forged"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-http-method-override", "DELETE"),
        ("proxy-authorization", "Basic eA=="),
    ] {
        trailers.insert(k, v.parse().unwrap());
    }
    let frames: Vec<Result<Frame<bytes::Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(bytes::Bytes::from_static(b"payload"))),
        Ok(Frame::trailers(trailers)),
    ];
    let req = http::Request::post("https://localhost/upload")
        .body(StreamBody::new(tokio_stream::iter(frames)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.body_len, 7);
    let trailers = seen.trailers.expect("request trailers forwarded");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(trailers.len(), 1, "{trailers:?}");
}
