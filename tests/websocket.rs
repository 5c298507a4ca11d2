//! WebSockets through the gateway with a real client and server
//! (tokio-tungstenite) over TLS: the upgrade goes through the whole pipeline,
//! tokens may come from the query or a cookie, and tunnels end on close,
//! idle, token expiry and shutdown — but not on reload.

mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::tokens::*;
use support::ws::{self, WsUpstream};
use support::*;

fn token_for(scope: &str, ttl: u64) -> String {
    support::tokens::token(json!({"scope": scope, "exp": now() + ttl}))
}

fn token(scope: &str) -> String {
    token_for(scope, 600)
}

struct Setup {
    gw: TestGateway,
    ws: WsUpstream,
    plain: RecordingUpstream,
}

async fn setup(limits: &str) -> Setup {
    let ws = WsUpstream::start().await;
    let plain = RecordingUpstream::start("plain").await;
    let dir = GatewayDir::new();
    let yaml = format!(
        r#"{header}limits:
  shutdown_grace: 1s
{limits}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
    leeway: 0s
cors:
  web:
    allow_origins: [https://app.example.com]
    allow_credentials: true
upstreams:
  ws:
    targets: [{ws}]
  plain:
    targets: [{plain}]
routes:
  - name: ws-chat
    match: {{ path: /ws/chat }}
    upstream: ws
    auth: {{ scopes: [chat], token_sources: [header, "query:access_token", "cookie:session"] }}
    websocket: true
    cors: web
  - name: ws-echo
    match: {{ path: /ws/echo }}
    upstream: ws
    auth: {{ scopes: [chat] }}
    websocket: true
  - name: ws-short
    match: {{ path: /ws/short }}
    upstream: ws
    auth: {{ scopes: [chat] }}
    websocket: {{ idle_timeout: 1s }}
  - name: ws-any
    match: {{ path: /ws/any }}
    upstream: plain
    public: true
    websocket: true
  - name: plain
    match: {{ path: /plain }}
    upstream: plain
    public: true
"#,
        header = header_with_admin(),
        ws = ws.url(),
        plain = plain.url(),
    );
    let gw = dir.start(&yaml).await;
    Setup { gw, ws, plain }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn metrics(s: &Setup) -> String {
    s.gw.admin("/metrics").await.1
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_flow_both_ways_with_identity_and_subprotocol() {
    let s = setup("").await;
    let auth = bearer(&token("chat"));
    let (mut client, resp) = ws::connect(
        s.gw.addr,
        &s.gw.cert,
        "/ws/echo?room=7",
        &[
            ("authorization", &auth),
            ("sec-websocket-protocol", "chat.v1, chat.v2"),
            ("x-auth-subject", "mallory"),
        ],
    )
    .await
    .expect("upgraded");
    assert_eq!(resp["sec-websocket-protocol"], "chat.v2");
    assert!(resp.contains_key("sec-websocket-accept"));
    for i in 0..3 {
        assert_eq!(
            ws::round_trip(&mut client, &format!("hello {i}")).await.as_deref(),
            Some(format!("echo: hello {i}").as_str())
        );
    }
    let seen = s.ws.last();
    assert_eq!(seen.path_and_query, "/ws/echo?room=7");
    assert_eq!(
        seen.headers["x-auth-subject"], "alice",
        "identity set, the spoofed copy gone"
    );
    assert_eq!(seen.headers.get_all("x-auth-subject").iter().count(), 1);
    assert_eq!(seen.headers["x-auth-scopes"], "chat");
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.headers.contains_key("sec-websocket-key"));
    assert_eq!(seen.headers["sec-websocket-version"], "13");
    let m = metrics(&s).await;
    assert!(
        m.lines()
            .any(|l| l == r#"portcullis_websocket_open{route="ws-echo"} 1"#),
        "{m}"
    );
    // The client closes: the tunnel ends and says so.
    client.close(None).await.unwrap();
    wait_for_async(
        "the tunnel to be counted closed by the client",
        Duration::from_secs(5),
        || async {
            let m = metrics(&s).await;
            m.lines()
                .any(|l| l == r#"portcullis_websocket_open{route="ws-echo"} 0"#)
                && m.lines()
                    .any(|l| l == r#"portcullis_websocket_closed_total{route="ws-echo",reason="client"} 1"#)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_upgrades_get_json_never_101() {
    let s = setup("").await;
    let (status, body) = ws::connect(s.gw.addr, &s.gw.cert, "/ws/chat", &[]).await.err().unwrap();
    assert_eq!(status, 401);
    assert!(body.contains(r#""error":"unauthorized""#), "{body}");
    let auth = bearer(&token("other"));
    let (status, body) = ws::connect(s.gw.addr, &s.gw.cert, "/ws/chat", &[("authorization", &auth)])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("insufficient_scope"), "{body}");
    assert_eq!(s.ws.count(), 0, "the upstream never saw a refused upgrade");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_query_and_cookie_never_reach_the_upstream() {
    let s = setup("").await;
    let t = token("chat");
    let path = format!("/ws/chat?room=1&access_token={t}&x=2");
    let (mut client, _) = ws::connect(s.gw.addr, &s.gw.cert, &path, &[])
        .await
        .expect("query token");
    assert!(ws::round_trip(&mut client, "q").await.is_some());
    assert_eq!(s.ws.last().path_and_query, "/ws/chat?room=1&x=2");

    let cookie = format!("theme=dark; session={t}; lang=en");
    for origin in [None, Some("https://localhost"), Some("https://app.example.com")] {
        let mut headers = vec![("cookie", cookie.as_str())];
        headers.extend(origin.map(|o| ("origin", o)));
        let (mut client, _) = ws::connect(s.gw.addr, &s.gw.cert, "/ws/chat", &headers)
            .await
            .unwrap_or_else(|e| panic!("cookie token from {origin:?}: {e:?}"));
        assert!(ws::round_trip(&mut client, "c").await.is_some());
        let seen = s.ws.last();
        assert_eq!(seen.headers["cookie"], "theme=dark; lang=en");
        assert_eq!(seen.headers["x-auth-subject"], "alice");
    }

    // Cross-site WebSocket hijacking: the browser attaches the cookie for an
    // attacker's page too. Refused before authentication.
    let before = s.ws.count();
    for origin in [
        "https://evil.example",
        "http://localhost",
        "https://app.example.com.evil.net",
    ] {
        let (status, body) = ws::connect(
            s.gw.addr,
            &s.gw.cert,
            "/ws/chat",
            &[("cookie", &cookie), ("origin", origin)],
        )
        .await
        .err()
        .unwrap();
        assert_eq!(status, 403, "{origin}");
        assert!(body.contains("cors_rejected"), "{body}");
    }
    assert_eq!(s.ws.count(), before);
    // A bearer header is not ambient authority: any Origin may send one.
    let auth = bearer(&t);
    assert!(ws::connect(
        s.gw.addr,
        &s.gw.cert,
        "/ws/chat",
        &[("authorization", &auth), ("origin", "https://evil.example")]
    )
    .await
    .is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_closes_when_its_token_expires() {
    let s = setup("").await;
    // Judged against the token's own `exp` (leeway 0 here), not against
    // how long the upgrade took on a busy machine.
    let exp = now() + 3;
    let auth = bearer(&hs_sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "alice", "scope": "chat", "exp": exp}),
    ));
    let (mut client, _) = ws::connect(s.gw.addr, &s.gw.cert, "/ws/chat", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    assert!(ws::round_trip(&mut client, "still valid").await.is_some());
    tokio::time::timeout(Duration::from_secs(15), ws::closed(&mut client))
        .await
        .expect("the tunnel outlived its token");
    let closed = std::time::SystemTime::now();
    assert!(
        closed >= std::time::UNIX_EPOCH + Duration::from_secs(exp),
        "closed at {closed:?}, before the token's exp {exp}"
    );
    wait_for_async(
        "the tunnel to be counted closed at token expiry",
        Duration::from_secs(5),
        || async {
            metrics(&s)
                .await
                .lines()
                .any(|l| l == r#"portcullis_websocket_closed_total{route="ws-chat",reason="token_expired"} 1"#)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_tunnel_is_closed() {
    let s = setup("").await;
    let auth = bearer(&token("chat"));
    let (mut client, _) = ws::connect(s.gw.addr, &s.gw.cert, "/ws/short", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    // Traffic keeps it open past the idle timeout...
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(ws::round_trip(&mut client, "ping").await.is_some());
    }
    // ...silence does not.
    tokio::time::timeout(Duration::from_secs(5), ws::closed(&mut client))
        .await
        .expect("idle tunnel closed");
    wait_for_async(
        "the tunnel to be counted closed for idleness",
        Duration::from_secs(5),
        || async {
            metrics(&s)
                .await
                .lines()
                .any(|l| l == r#"portcullis_websocket_closed_total{route="ws-short",reason="idle"} 1"#)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_leaves_tunnels_open_and_shutdown_closes_them_after_the_grace() {
    let s = setup("").await;
    let auth = bearer(&token("chat"));
    let (mut client, _) = ws::connect(s.gw.addr, &s.gw.cert, "/ws/chat", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    s.gw.reload().expect("reload");
    assert_eq!(
        ws::round_trip(&mut client, "after reload").await.as_deref(),
        Some("echo: after reload")
    );

    let Setup {
        mut gw,
        ws: _ws,
        plain: _plain,
    } = s;
    let running = gw.running.take().unwrap();
    let started = Instant::now();
    let stopping = tokio::spawn(running.shutdown(Duration::from_secs(1)));
    // Within the grace the tunnel still works.
    assert!(ws::round_trip(&mut client, "during grace").await.is_some());
    tokio::time::timeout(Duration::from_secs(5), ws::closed(&mut client))
        .await
        .expect("closed at the end of the grace");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .unwrap()
        .unwrap();
    assert!(portcullis::metrics::render(false)
        .lines()
        .any(|l| l == r#"portcullis_websocket_closed_total{route="ws-chat",reason="shutdown"} 1"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_happen_only_for_websocket_on_websocket_routes() {
    let s = setup("").await;
    // A route without `websocket`: the upgrade is dropped, the request forwarded plainly.
    let (status, _) = ws::connect(s.gw.addr, &s.gw.cert, "/plain", &[]).await.err().unwrap();
    assert_eq!(status, 200);
    let seen = s.plain.last();
    assert!(seen.headers.get("upgrade").is_none());
    assert!(seen.headers.get("connection").is_none());
    // Another protocol on a WebSocket route is never performed either.
    let r =
        s.gw.client(Proto::H1)
            .await
            .send(req(
                "GET",
                "/ws/any",
                &[("connection", "upgrade"), ("upgrade", "h2c")],
                "",
            ))
            .await;
    assert_eq!(r.status, 200);
    assert!(s.plain.last().headers.get("upgrade").is_none());
}

/// A gateway with its own limits and upstreams for the bounds tests: `ws`
/// (the WebSocket upstream) with `upstream_limits`, and a plain route to it.
/// Route names of its own: metrics are process-wide and the other tests
/// count their routes' tunnels exactly.
async fn bounded(ws: &WsUpstream, limits: &str, upstream_limits: &str) -> TestGateway {
    let dir = GatewayDir::new();
    let yaml = format!(
        r#"{header}limits:
  shutdown_grace: 1s
{limits}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
upstreams:
  ws:
    targets: [{ws}]
{upstream_limits}routes:
  - name: bounded-echo
    match: {{ path: /ws/echo }}
    upstream: ws
    public: true
    websocket: true
  - name: bounded-plain
    match: {{ path: /ws/plain }}
    upstream: ws
    public: true
"#,
        header = header_with_admin(),
        ws = ws.url(),
    );
    dir.start(&yaml).await
}

/// `max_tunnels` (default half of `max_connections`) caps tunnels per target
/// with an immediate 503, and plain requests to the same upstream still get
/// a connection while the tunnels are open.
#[tokio::test(flavor = "multi_thread")]
async fn tunnels_have_a_cap_of_their_own_per_target() {
    let ws = WsUpstream::start().await;
    let gw = bounded(&ws, "", "    max_connections: 4\n").await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let (mut c, _) = ws::connect(gw.addr, &gw.cert, "/ws/echo", &[])
            .await
            .expect("within max_tunnels");
        assert!(ws::round_trip(&mut c, "hi").await.is_some());
        open.push(c);
    }
    let (status, body) = ws::connect(gw.addr, &gw.cert, "/ws/echo", &[]).await.err().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("temporarily_unavailable"), "{body}");
    assert_eq!(ws.count(), 2, "the third upgrade never reached the upstream");
    // HTTP traffic keeps its permits: the request is sent (the WebSocket
    // server refuses a plain GET, which is its answer, not a 503).
    let before = ws.count();
    let r = gw.client(Proto::H1).await.send(req("GET", "/ws/plain", &[], "")).await;
    assert_ne!(r.status, 503, "{}", r.text());
    assert_eq!(ws.count(), before, "a plain GET is no handshake");
    // Closing a tunnel gives its place back.
    open.pop().unwrap().close(None).await.unwrap();
    let mut again = None;
    for _ in 0..50 {
        if let Ok((c, _)) = ws::connect(gw.addr, &gw.cert, "/ws/echo", &[]).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ws::round_trip(again.as_mut().expect("a freed tunnel place"), "x")
        .await
        .is_some());

    // max_tunnels cannot exceed max_connections.
    let d = GatewayDir::new();
    let yaml = format!(
        "{}upstreams:\n  ws:\n    targets: [{}]\n    max_connections: 2\n    max_tunnels: 3\nroutes:\n  - {{ name: r, match: {{ path: / }}, upstream: ws, public: true }}\n",
        header(""),
        ws.url()
    );
    std::fs::write(d.path().join("gateway.yaml"), yaml).unwrap();
    let e = portcullis::load_config(&d.path().join("gateway.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .contains("upstreams.ws.max_tunnels: must be between 1 and max_connections (2)"),
        "{e}"
    );
}

/// An upgraded client connection keeps its place in `limits.max_connections`:
/// with 2 places and 2 tunnels open, a third client waits in the backlog
/// until a tunnel closes.
#[tokio::test(flavor = "multi_thread")]
async fn tunnels_count_against_max_connections() {
    let ws = WsUpstream::start().await;
    let gw = bounded(&ws, "  max_connections: 2\n", "").await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let (mut c, _) = ws::connect(gw.addr, &gw.cert, "/ws/echo", &[]).await.expect("upgraded");
        assert!(ws::round_trip(&mut c, "hi").await.is_some());
        open.push(c);
    }
    let (addr, cert) = (gw.addr, gw.cert.clone());
    let mut third = tokio::spawn(async move { ws::connect(addr, &cert, "/ws/echo", &[]).await.map(|(c, _)| c) });
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut third)
            .await
            .is_err(),
        "a third connection was served beside two tunnels with max_connections: 2"
    );
    open.pop().unwrap().close(None).await.unwrap();
    let mut c = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served once a tunnel closed")
        .unwrap()
        .expect("upgraded");
    assert!(ws::round_trip(&mut c, "third").await.is_some());
}

/// An upstream that answers every request with `answer` and records what it
/// received, bytes after the head included.
async fn scripted_upstream(answer: &'static str) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut answered = false;
                loop {
                    let n = match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => n,
                        _ => return,
                    };
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if !answered && record.lock().unwrap().windows(4).any(|w| w == b"\r\n\r\n") {
                        answered = true;
                        if tcp.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

/// A `101` is relayed only when it completes this WebSocket handshake; any
/// other (no or a wrong `Sec-WebSocket-Accept`, another protocol, or a 101
/// on a route without `websocket`) is a 502 and nothing the client sends
/// after reaches the upstream. An upgrade request with a body is a 400.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_real_websocket_handshake_is_relayed() {
    for answer in [
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    ] {
        let (url, seen) = scripted_upstream(answer).await;
        let dir = GatewayDir::new();
        let yaml = format!(
            "{}upstreams:\n  up:\n    targets: [{url}]\nroutes:\n  - {{ name: ws, match: {{ path: /ws }}, upstream: up, public: true, websocket: true }}\n  - {{ name: plain, match: {{ path: /plain }}, upstream: up, public: true }}\n",
            header("")
        );
        let gw = dir.start(&yaml).await;
        let (status, body) = ws::connect(gw.addr, &gw.cert, "/ws", &[]).await.err().unwrap();
        assert_eq!(status, 502, "{answer:?}: {body}");
        assert!(body.contains("bad_gateway"), "{body}");

        // By hand: the handshake (with another key than the one the second
        // answer's accept is for) and, right behind it, bytes that a relayed
        // fake 101 would have carried to the upstream as a request of their own.
        for path in ["/ws", "/plain"] {
            use tokio::io::AsyncWriteExt;
            let mut tls = gw.raw().await;
            let bytes = format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nX-Auth-Subject: root\r\nConnection: close\r\n\r\n"
            );
            tls.write_all(bytes.as_bytes()).await.unwrap();
            let (reply, _) = read_to_close(&mut tls, Duration::from_secs(3)).await;
            assert!(reply.starts_with("HTTP/1.1 502"), "{path} {answer:?}: {reply}");
            assert!(reply.contains("HTTP/1.1 404"), "the second request was the gateway's to answer: {reply}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let received = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        assert!(!received.contains("root"), "{received}");
    }

    // An upgrade request with a body is refused before anything goes upstream.
    let ws = WsUpstream::start().await;
    let gw = bounded(&ws, "", "").await;
    let mut tls = gw.raw().await;
    let reply = exchange(
        &mut tls,
        b"GET /ws/echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("invalid_request"), "{reply}");
    assert_eq!(ws.count(), 0);
}

/// The other tunnel endings and bounds: a token's expiry closes a tunnel
/// only after the provider's leeway, `close_at_token_expiry: false` keeps it
/// open past it, an upstream that closes first is counted as `upstream`, and
/// upgrades are rate-limited like any request (429, never a 101).
#[tokio::test(flavor = "multi_thread")]
async fn leeway_no_expiry_upstream_close_and_rate_limited_upgrades() {
    let ws = WsUpstream::start().await;
    let dir = GatewayDir::new();
    let yaml = format!(
        r#"{header}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
    leeway: 3s
rate_limits:
  two: {{ key: route, rate: 1/h, burst: 2 }}
upstreams:
  ws:
    targets: [{ws}]
routes:
  - name: ws-leeway
    match: {{ path: /ws/leeway }}
    upstream: ws
    auth: {{ scopes: [chat] }}
    websocket: true
  - name: ws-forever
    match: {{ path: /ws/forever }}
    upstream: ws
    auth: {{ scopes: [chat] }}
    websocket: {{ close_at_token_expiry: false }}
  - name: ws-limited
    match: {{ path: /ws/limited }}
    upstream: ws
    public: true
    websocket: true
    rate_limits: [two]
"#,
        header = header_with_admin(),
        ws = ws.url(),
    );
    let gw = dir.start(&yaml).await;
    let metric = |line: &'static str| {
        let gw = &gw;
        async move { gw.admin("/metrics").await.1.lines().any(|l| l == line) }
    };

    // exp is one second ahead; with 3 s of leeway the tunnel lives ~4 s.
    let exp = now() + 1;
    let short = format!(
        "Bearer {}",
        hs_sign(
            Algorithm::HS256,
            SECRET.as_bytes(),
            &json!({"sub": "al", "scope": "chat", "exp": exp})
        )
    );
    let (mut leeway, _) = ws::connect(gw.addr, &gw.cert, "/ws/leeway", &[("authorization", &short)])
        .await
        .expect("upgraded");
    let (mut forever, _) = ws::connect(gw.addr, &gw.cert, "/ws/forever", &[("authorization", &short)])
        .await
        .expect("upgraded");
    let unix = |t: u64| std::time::UNIX_EPOCH + Duration::from_secs(t);
    let past_exp = unix(exp + 1)
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(past_exp).await;
    assert!(
        ws::round_trip(&mut leeway, "past exp").await.is_some(),
        "closed before the leeway ran out"
    );
    tokio::time::timeout(Duration::from_secs(10), ws::closed(&mut leeway))
        .await
        .expect("the tunnel outlived its token and leeway");
    let closed_at = std::time::SystemTime::now();
    assert!(closed_at >= unix(exp + 2), "closed before exp + leeway: {closed_at:?}");
    wait_for_async(
        "the leeway tunnel counted token_expired",
        Duration::from_secs(5),
        || metric(r#"portcullis_websocket_closed_total{route="ws-leeway",reason="token_expired"} 1"#),
    )
    .await;
    assert_eq!(
        ws::round_trip(&mut forever, "still here").await.as_deref(),
        Some("echo: still here"),
        "close_at_token_expiry: false keeps the tunnel"
    );

    // The upstream ends the conversation: reason `upstream`.
    use futures_util::SinkExt;
    forever
        .send(tokio_tungstenite::tungstenite::Message::text("bye"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), ws::closed(&mut forever))
        .await
        .expect("the upstream's close reached the client");
    wait_for_async(
        "the tunnel counted closed by the upstream",
        Duration::from_secs(5),
        || metric(r#"portcullis_websocket_closed_total{route="ws-forever",reason="upstream"} 1"#),
    )
    .await;

    // Upgrades count against the route's rate limit like any request.
    let first = ws::connect(gw.addr, &gw.cert, "/ws/limited", &[]).await;
    let second = ws::connect(gw.addr, &gw.cert, "/ws/limited", &[]).await;
    assert!(first.is_ok() && second.is_ok());
    match ws::connect(gw.addr, &gw.cert, "/ws/limited", &[]).await {
        Err((status, body)) => {
            assert_eq!(status, 429);
            assert!(body.contains("\"rate_limited\""), "{body}");
        }
        Ok(_) => panic!("a third upgrade was let through the rate limit"),
    }
}
