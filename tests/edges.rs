//! Edges that a regression would open silently: host confusion, byte-exact
//! matching, a stalled TLS handshake, a streamed HTTP/2 body over the limit,
//! upstream statuses and failures, and in-flight requests across a reload.

mod support;

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use support::*;

fn hosts_config(admin: &RecordingUpstream, public: &RecordingUpstream) -> String {
    format!(
        r#"{}upstreams:
  admin:
    targets: [{}]
  public:
    targets: [{}]
routes:
  - name: admin-host
    match: {{ path: /, host: admin.test }}
    upstream: admin
    public: true
  - name: others
    match: {{ path: / }}
    upstream: public
    public: true
"#,
        header(""),
        admin.url(),
        public.url()
    )
}

/// Routing and the forwarded `Host` use the same host: the absolute-form
/// target's authority or HTTP/2 `:authority` over a `Host` header that says
/// otherwise; two `Host` headers are refused.
#[tokio::test(flavor = "multi_thread")]
async fn host_confusion_is_resolved_one_way() {
    let admin = RecordingUpstream::start("admin").await;
    let public = RecordingUpstream::start("public").await;
    let gw = TestGateway::start(&hosts_config(&admin, &public)).await;

    // HTTP/1.1 absolute-form: the target's authority wins over Host.
    let mut tls = gw.raw().await;
    let out = exchange(
        &mut tls,
        b"GET https://admin.test/x HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("upstream: admin"), "{out}");
    assert_eq!(admin.last().headers["host"], "admin.test");
    assert_eq!(admin.last().headers["x-forwarded-host"], "admin.test");

    // HTTP/2: :authority wins over a Host header.
    let r = gw
        .client(Proto::H2)
        .await
        .send(req("GET", "https://public.test/y", &[("host", "admin.test")], ""))
        .await;
    assert_eq!(r.text(), "upstream: public");
    assert_eq!(public.last().headers["host"], "public.test");

    // Two Host headers: refused, never routed.
    let mut tls = gw.raw().await;
    let out = exchange(
        &mut tls,
        b"GET /z HTTP/1.1\r\nHost: public.test\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(admin.requests().len(), 1);
    assert_eq!(public.requests().len(), 1);
}

/// Paths compare byte for byte after normalisation: `/Admin` is not `/admin`.
#[tokio::test(flavor = "multi_thread")]
async fn path_matching_is_byte_exact() {
    let admin = RecordingUpstream::start("admin").await;
    let public = RecordingUpstream::start("public").await;
    let yaml = format!(
        r#"{}upstreams:
  admin:
    targets: [{}]
  public:
    targets: [{}]
routes:
  - match: {{ path: /admin }}
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
    assert_eq!(gw.get("/admin/x").await.text(), "upstream: admin");
    for path in ["/Admin", "/ADMIN/x", "/adminx"] {
        assert_eq!(gw.get(path).await.text(), "upstream: public", "{path}");
    }
    gw.get("/admin;x=1").await.assert_error(400, "invalid_request");
}

/// A client that opens a TCP connection and never finishes the TLS handshake
/// is cut at `header_read_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_tls_handshake_is_cut() {
    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"{}limits:
  header_read_timeout: 500ms
upstreams:
  app:
    targets: [{}]
routes:
  - match: {{ path: / }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // The first bytes of a ClientHello, then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_to_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed, "the stalled handshake held the connection");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

/// An HTTP/2 body without Content-Length is cut at `max_body_bytes` while
/// it streams, with 413 when nothing was answered yet.
#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_http2_body_over_the_limit_is_refused() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"{}limits:
  max_body_bytes: 1000
upstreams:
  app:
    targets: [{}]
routes:
  - match: {{ path: / }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let tls = raw_tls(gw.addr, &gw.cert, &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // Three frames (900 bytes), a pause long enough for them to be forwarded,
    // then seven more: the fourth goes over the limit mid-stream.
    let frames = futures_util::stream::unfold(0u32, |i| async move {
        if i == 10 {
            return None;
        }
        if i == 3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let frame: Result<Frame<bytes::Bytes>, std::io::Error> = Ok(Frame::data(bytes::Bytes::from(vec![b'x'; 300])));
        Some((frame, i + 1))
    });
    let req = http::Request::post("https://localhost/upload")
        .body(StreamBody::new(Box::pin(frames)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    // What went upstream: the frames within the limit, then a cut, never a
    // body that looked complete.
    wait_for("the upstream to receive the request", Duration::from_secs(5), || {
        !up.requests().is_empty()
    })
    .await;
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body_len, 900, "the frames within the limit were streamed");
    assert!(seen[0].body_cut, "the upstream saw a complete body");
}

/// Upstream statuses pass through untouched; failures are counted by kind.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_statuses_pass_through_and_failures_are_counted() {
    let up = RecordingUpstream::start("app").await;
    let dead = closed_port().await;
    let yaml = format!(
        r#"{}upstreams:
  edges-app:
    targets: [{}]
    request_timeout: 500ms
  edges-dead:
    targets: [http://{dead}]
routes:
  - match: {{ path: /dead }}
    upstream: edges-dead
    public: true
  - match: {{ path: / }}
    upstream: edges-app
    public: true
"#,
        header_with_admin(),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let mut c = gw.client(Proto::H1).await;
    for status in ["201", "204", "301", "404", "418", "500", "503"] {
        let r = c
            .send(req("GET", "/s", &[("x-test", &format!("status:{status}"))], ""))
            .await;
        assert_eq!(r.status.as_str(), status);
        assert_ne!(
            r.header("content-type"),
            Some("application/json"),
            "the upstream's own answer"
        );
    }
    c.send(req("GET", "/s", &[("x-test", "reset")], ""))
        .await
        .assert_error(502, "bad_gateway");
    c.send(req("GET", "/s", &[("x-test", "slow")], ""))
        .await
        .assert_error(504, "gateway_timeout");
    gw.get("/dead").await.assert_error(502, "bad_gateway");
    let (_, metrics) = gw.admin("/metrics").await;
    for (upstream, kind) in [
        ("edges-app", "reset"),
        ("edges-app", "timeout"),
        ("edges-dead", "connect"),
    ] {
        let line = format!(r#"portcullis_upstream_errors_total{{upstream="{upstream}",kind="{kind}"}} 1"#);
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}

/// An upstream that fails after its response has started: the client must see
/// a broken response (no final chunk, a reset stream), never a short body that
/// looks complete; and the gateway keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_reset_mid_body_is_passed_on_as_a_broken_response() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&format!(
        r#"{}upstreams:
  app:
    targets: [{}]
routes:
  - match: {{ path: / }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    ))
    .await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let mut cut = req("GET", "/big", &[("x-test", "cut:100000")], "");
        let outcome = c.try_send(&mut cut).await;
        assert!(
            outcome.is_err(),
            "{proto:?}: a cut body was delivered as complete: {}",
            outcome
                .map(|r| format!("{} {}", r.status, r.text()))
                .unwrap_or_default()
        );
        let r = gw.get("/after").await;
        assert_eq!(r.status, 200, "{proto:?}: still serving");
    }
    // Over HTTP/1.1 the chunked body ends without its last chunk.
    let mut tls = gw.raw().await;
    tls.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\nx-test: cut:1000\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_to_close(&mut tls, Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(closed, "the connection is closed");
    assert!(!out.ends_with("0\r\n\r\n"), "the body looked complete: {out}");
}

/// A target that drops packets (its accept queue is full, so the kernel
/// ignores new SYNs): the connect attempt is bounded by `connect_timeout`,
/// answered 502 and counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_drops_packets_is_bounded_by_connect_timeout() {
    // A listener that never accepts, its queue filled until a connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let black_hole = socket.listen(0).unwrap();
    let addr = black_hole.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connect failed instead of hanging: {e}"),
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    let gw = TestGateway::start(&format!(
        r#"{}upstreams:
  edges-silent:
    targets: [http://{addr}]
    connect_timeout: 700ms
routes:
  - match: {{ path: / }}
    upstream: edges-silent
    public: true
"#,
        header_with_admin(),
    ))
    .await;
    let started = Instant::now();
    gw.get("/x").await.assert_error(502, "bad_gateway");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600),
        "answered before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "connect_timeout not applied: {took:?}");
    let (_, metrics) = gw.admin("/metrics").await;
    let line = r#"portcullis_upstream_errors_total{upstream="edges-silent",kind="connect"} 1"#;
    assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    drop(black_hole);
}

/// A request in flight during a reload finishes under the configuration it
/// started with; the next one on the same connection gets the new one.
#[tokio::test(flavor = "multi_thread")]
async fn in_flight_requests_finish_under_the_old_configuration() {
    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"{}upstreams:
  app:
    targets: [{}]
    request_timeout: 10s
routes:
  - name: old
    match: {{ path: / }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    );
    let gw = TestGateway::start(&yaml).await;
    let client = gw.client(Proto::H2).await;
    let mut first = client.h2_stream();
    let slow = tokio::spawn(async move { first.send(req("GET", "/slow", &[("x-test", "sleep:2000")], "")).await });
    wait_for("the upstream to receive the request", Duration::from_secs(5), || {
        !up.requests().is_empty()
    })
    .await;
    let new = yaml
        .replace("name: old", "name: new")
        .replace("path: / }", "path: /api }");
    assert_ne!(new, yaml);
    std::fs::write(&gw.config_path, new).unwrap();
    gw.reload().expect("reload");
    // The upstream holds the answer for 2 s: the reload finished while the
    // request was still waiting for it.
    assert!(!slow.is_finished(), "the request ended before the reload did");
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request finished under the old routes");
    // The same connection now routes with the new table: `/slow` has no route.
    client
        .h2_stream()
        .send(req("GET", "/slow", &[], ""))
        .await
        .assert_error(404, "not_found");
}
