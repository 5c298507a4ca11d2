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

const SECRET: &str = "a-websocket-test-secret-of-decent-length";

fn token_for(scope: &str, ttl: u64) -> String {
    hs_sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "alice", "scope": scope, "exp": now() + ttl}),
    )
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
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    std::fs::write(dir.path().join("ws.secret"), SECRET).unwrap();
    let yaml = format!(
        r#"{header}limits:
  shutdown_grace: 1s
{limits}providers:
  app:
    secret_file: ws.secret
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
    let gw = TestGateway::start_in(dir, cert, &yaml).await;
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
    assert!(m.contains(r#"portcullis_websocket_open{route="ws-echo"} 1"#), "{m}");
    // The client closes: the tunnel ends and says so.
    client.close(None).await.unwrap();
    wait_for_async(Duration::from_secs(5), || async {
        let m = metrics(&s).await;
        m.contains(r#"portcullis_websocket_open{route="ws-echo"} 0"#)
            && m.contains(r#"portcullis_websocket_closed_total{route="ws-echo",reason="client"} 1"#)
    })
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
    let auth = bearer(&token_for("chat", 3));
    let (mut client, _) = ws::connect(s.gw.addr, &s.gw.cert, "/ws/chat", &[("authorization", &auth)])
        .await
        .expect("upgraded");
    let opened = Instant::now();
    assert!(ws::round_trip(&mut client, "still valid").await.is_some());
    tokio::time::timeout(Duration::from_secs(15), ws::closed(&mut client))
        .await
        .expect("the tunnel outlived its token");
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        opened.elapsed()
    );
    wait_for_async(Duration::from_secs(5), || async {
        metrics(&s)
            .await
            .contains(r#"portcullis_websocket_closed_total{route="ws-chat",reason="token_expired"} 1"#)
    })
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
    wait_for_async(Duration::from_secs(5), || async {
        metrics(&s)
            .await
            .contains(r#"portcullis_websocket_closed_total{route="ws-short",reason="idle"} 1"#)
    })
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
        .contains(r#"portcullis_websocket_closed_total{route="ws-chat",reason="shutdown"} 1"#));
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
