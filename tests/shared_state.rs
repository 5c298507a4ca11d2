//! Several instances sharing state through a real `redis-server`: rate limits
//! drawn from one bucket, the store going away and coming back, revocations
//! in force on every instance; and local rate limits with every key kind.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::child;
use support::redis::RedisServer;
use support::tokens::*;
use support::*;

/// A token with `scope: api` and an `iat` unless `claims` says otherwise.
fn token(claims: serde_json::Value) -> String {
    let mut all = json!({"scope": "api", "iat": now() - 10});
    all.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
    support::tokens::token(all)
}

/// A gateway in front of `up` with `extra` top-level YAML (store, policies)
/// and `routes`.
async fn gateway(up: &RecordingUpstream, extra: &str, routes: &str) -> TestGateway {
    let dir = GatewayDir::new();
    let yaml = format!(
        r#"{}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
{extra}upstreams:
  app:
    targets: [{}]
routes:
{routes}"#,
        header_with_admin(),
        up.url()
    );
    dir.start(&yaml).await
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Reply {
    gw.client(Proto::H1).await.send(req("GET", path, headers, "")).await
}

async fn post_admin(gw: &TestGateway, path: &str, body: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(gw.admin_addr.unwrap()).await.unwrap();
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    status_and_body(&exchange(&mut tcp, raw.as_bytes()).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_one_budget_exactly() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let up = RecordingUpstream::start("app").await;
    let extra = format!(
        r#"store:
  redis: {}
  timeout: 2s
rate_limits:
  shared:
    key: route
    rate: 1/h
    burst: 10
    store: redis
"#,
        redis.url()
    );
    let routes = r#"  - name: limited
    match: { path: /limited }
    upstream: app
    public: true
    rate_limits: [shared]
"#;
    let a = gateway(&up, &extra, routes).await;
    let b = gateway(&up, &extra, routes).await;
    let mut calls = Vec::new();
    for i in 0..30 {
        let (addr, cert) = if i % 2 == 0 {
            (a.addr, a.cert.clone())
        } else {
            (b.addr, b.cert.clone())
        };
        calls.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, &cert, Proto::H1).await;
            c.send(req("GET", "/limited", &[], "")).await
        }));
    }
    let mut passed = 0;
    for call in calls {
        let r = call.await.unwrap();
        match r.status.as_u16() {
            200 => passed += 1,
            429 => {
                r.assert_error(429, "rate_limited");
                let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=3600).contains(&wait), "{wait}");
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!(passed, 10, "burst 10 across both instances");
    assert_eq!(up.requests().len(), 10, "refused requests never reach the upstream");
    let (_, metrics) = a.admin("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_rate_limited_total{route="limited",policy="shared"}"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_applies_on_store_error_and_heals() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let mut redis = RedisServer::start().await;
    let port = redis.port;
    let up = RecordingUpstream::start("app").await;
    let extra = format!(
        r#"store:
  redis: {}
  timeout: 400ms
rate_limits:
  lenient:
    key: client_ip
    rate: 1/h
    burst: 2
    store: redis
    on_store_error: allow
  strict:
    key: client_ip
    rate: 1/h
    burst: 100
    store: redis
    on_store_error: deny
"#,
        redis.url()
    );
    let routes = r#"  - name: outage-allow
    match: { path: /allow }
    upstream: app
    public: true
    rate_limits: [lenient]
  - name: outage-deny
    match: { path: /deny }
    upstream: app
    public: true
    rate_limits: [strict]
"#;
    let gw = gateway(&up, &extra, routes).await;
    assert_eq!(get(&gw, "/deny", &[]).await.status, 200);

    redis.stop();
    for _ in 0..4 {
        let started = Instant::now();
        assert_eq!(get(&gw, "/allow", &[]).await.status, 200, "allow keeps serving");
        // Bounded by store.timeout (400 ms), with room for a new TLS
        // connection in this debug build on a busy machine.
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        get(&gw, "/deny", &[])
            .await
            .assert_error(503, "temporarily_unavailable");
    }
    let (_, metrics) = gw.admin("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_store_errors_total{op="rate_limit"}"#),
        "{metrics}"
    );

    // Back on the same address: limits apply again, no restart of the gateway.
    let _redis = RedisServer::start_on(port).await;
    wait_for_async(
        "the shared budget to run out (429)",
        Duration::from_secs(15),
        || async { get(&gw, "/allow", &[]).await.status == 429 },
    )
    .await;
    assert_eq!(get(&gw, "/deny", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_is_in_force_on_every_instance() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let up = RecordingUpstream::start("app").await;
    let extra = format!(
        r#"store:
  redis: {}
revocation: {{ store: redis }}
"#,
        redis.url()
    );
    let routes = r#"  - name: api
    match: { path: /api }
    upstream: app
    auth: { scopes: [api] }
"#;
    let a = gateway(&up, &extra, routes).await;
    let b = gateway(&up, &extra, routes).await;
    for gw in [&a, &b] {
        wait_for_async("/readyz to answer 200", Duration::from_secs(10), || async {
            gw.admin("/readyz").await.0 == 200
        })
        .await;
    }
    let leaked = token(json!({"jti": "leaked-1"}));
    let other = token(json!({"jti": "other-1"}));
    let auth = |t: &str| format!("Bearer {t}");
    for gw in [&a, &b] {
        // Twice on one kept-alive connection (one worker): the second answer
        // comes from the verified-token cache on any core count.
        let mut c = gw.client(Proto::H1).await;
        for _ in 0..2 {
            let r = c
                .send(req("GET", "/api", &[("authorization", &auth(&leaked))], ""))
                .await;
            assert_eq!(r.status, 200);
        }
    }

    let (status, body) = post_admin(&a, "/revoke", &format!(r#"{{"jti":"leaked-1","exp":{}}}"#, now() + 600)).await;
    assert_eq!(status, 200, "{body}");
    let revoked_at = Instant::now();
    for gw in [&a, &b] {
        wait_for_async("the token to be refused (401)", Duration::from_secs(5), || async {
            get(gw, "/api", &[("authorization", &auth(&leaked))]).await.status == 401
        })
        .await;
    }
    // Within the documented second, plus 500 ms for this debug build's
    // polling (a new TLS connection per check) on a busy 2-core machine.
    assert!(
        revoked_at.elapsed() < Duration::from_millis(1500),
        "{:?}",
        revoked_at.elapsed()
    );
    let r = get(&b, "/api", &[("authorization", &auth(&leaked))]).await;
    r.assert_error(401, "invalid_token");
    assert_eq!(r.json()["error_description"], "The token has been revoked.");
    assert_eq!(get(&b, "/api", &[("authorization", &auth(&other))]).await.status, 200);

    // "Log out everywhere": every token of the subject issued before now.
    let (status, body) = post_admin(&b, "/revoke", &format!(r#"{{"sub":"alice","before":{}}}"#, now() + 1)).await;
    assert_eq!(status, 200, "{body}");
    for gw in [&a, &b] {
        wait_for_async("the token to be refused (401)", Duration::from_secs(5), || async {
            get(gw, "/api", &[("authorization", &auth(&other))]).await.status == 401
        })
        .await;
    }
    // Bob is not affected.
    let bob = token(json!({"sub": "bob"}));
    assert_eq!(get(&a, "/api", &[("authorization", &auth(&bob))]).await.status, 200);

    // An instance started afterwards loads the list before it is ready.
    let c = gateway(&up, &extra, routes).await;
    wait_for_async("/readyz to answer 200", Duration::from_secs(10), || async {
        c.admin("/readyz").await.0 == 200
    })
    .await;
    get(&c, "/api", &[("authorization", &auth(&leaked))])
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(c.revocations_held(), 2, "the new instance loaded both entries");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_starts_without_redis_and_readyz_names_the_store() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let port = free_port().await;
    let up = RecordingUpstream::start("app").await;
    let extra = format!(
        r#"store:
  redis: redis://127.0.0.1:{port}/0
revocation: {{ store: redis }}
"#
    );
    let routes = r#"  - name: api
    match: { path: /api }
    upstream: app
    auth: {}
"#;
    let routes = format!("{routes}  - {{ name: open, match: {{ path: /open }}, upstream: app, public: true }}\n");
    let gw = gateway(&up, &extra, &routes).await;
    let allow = gateway(
        &up,
        &extra.replace(
            "revocation: { store: redis }",
            "revocation: { store: redis, until_loaded: allow }",
        ),
        &routes,
    )
    .await;
    let (status, body) = gw.admin("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("store: redis://127.0.0.1"), "{body}");
    // Until the revocation list is loaded, protected routes refuse (a token
    // revoked before this instance started must not get through), unless
    // `until_loaded: allow`; public routes are not concerned.
    let bearer = format!("Bearer {}", token(json!({})));
    let before = up.requests().len();
    get(&gw, "/api", &[("authorization", &bearer)])
        .await
        .assert_error(503, "temporarily_unavailable");
    assert_eq!(up.requests().len(), before, "nothing went upstream");
    assert_eq!(get(&gw, "/open", &[]).await.status, 200);
    assert_eq!(get(&allow, "/api", &[("authorization", &bearer)]).await.status, 200);
    let _redis = RedisServer::start_on(port).await;
    wait_for_async("/readyz to answer 200", Duration::from_secs(15), || async {
        gw.admin("/readyz").await.0 == 200
    })
    .await;
    assert_eq!(get(&gw, "/api", &[("authorization", &bearer)]).await.status, 200);
}

/// A revoked token's open WebSocket tunnels close within the second that
/// revocation takes everywhere; other tunnels stay open.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_tokens_tunnels_close() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let ws_up = support::ws::WsUpstream::start().await;
    let dir = GatewayDir::new();
    let yaml = format!(
        r#"{}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
store:
  redis: {}
revocation: {{ store: redis }}
upstreams:
  ws:
    targets: [{}]
routes:
  - name: chat
    match: {{ path: /chat }}
    upstream: ws
    auth: {{ scopes: [api] }}
    websocket: true
"#,
        header_with_admin(),
        redis.url(),
        ws_up.url()
    );
    let gw = dir.start(&yaml).await;
    wait_for_async("/readyz to answer 200", Duration::from_secs(10), || async {
        gw.admin("/readyz").await.0 == 200
    })
    .await;
    let leaked = format!("Bearer {}", token(json!({"jti": "tunnel-1"})));
    let kept = format!("Bearer {}", token(json!({"jti": "tunnel-2"})));
    let (mut doomed, _) = support::ws::connect(gw.addr, &gw.cert, "/chat", &[("authorization", &leaked)])
        .await
        .expect("upgraded");
    let (mut other, _) = support::ws::connect(gw.addr, &gw.cert, "/chat", &[("authorization", &kept)])
        .await
        .expect("upgraded");
    assert!(support::ws::round_trip(&mut doomed, "before").await.is_some());
    let (status, body) = post_admin(
        &gw,
        "/revoke",
        &format!(r#"{{"jti":"tunnel-1","exp":{}}}"#, now() + 600),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let revoked_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), support::ws::closed(&mut doomed))
        .await
        .expect("the revoked token's tunnel stayed open");
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "closed {:?} after the revocation",
        revoked_at.elapsed()
    );
    assert_eq!(
        support::ws::round_trip(&mut other, "still here").await.as_deref(),
        Some("echo: still here")
    );
    wait_for_async(
        "the tunnel to be counted closed at token expiry",
        Duration::from_secs(5),
        || async {
            gw.admin("/metrics")
                .await
                .1
                .lines()
                .any(|l| l == r#"portcullis_websocket_closed_total{route="chat",reason="revoked"} 1"#)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_refuses_bad_requests() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let up = RecordingUpstream::start("app").await;
    let extra = format!(
        r#"store:
  redis: {}
revocation: {{ store: redis }}
"#,
        redis.url()
    );
    let routes = r#"  - name: api
    match: { path: /api }
    upstream: app
    auth: {}
"#;
    let gw = gateway(&up, &extra, routes).await;
    for body in [
        "",
        "{}",
        "not json",
        r#"{"jti":"a"}"#,
        r#"{"jti":"","exp":1}"#,
        r#"{"sub":"u","before":"yesterday"}"#,
    ] {
        let (status, out) = post_admin(&gw, "/revoke", body).await;
        assert_eq!(status, 400, "{body}: {out}");
        assert!(out.contains(r#""error":"invalid_request""#), "{out}");
    }
    let (status, _) = post_admin(&gw, "/revoke", &"x".repeat(5000)).await;
    assert_eq!(status, 413);
    assert_eq!(gw.admin("/revoke").await.0, 405);
    // Without `revocation:` there is nothing to revoke into.
    let plain = gateway(&up, "", routes).await;
    let (status, out) = post_admin(&plain, "/revoke", r#"{"jti":"a","exp":1}"#).await;
    assert_eq!(status, 404, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_limits_with_every_key_kind() {
    let up = RecordingUpstream::start("app").await;
    let mut extra = String::from(
        r#"rate_limits:
"#,
    );
    for (name, key) in [
        ("by-subject", "subject"),
        ("by-ip", "client_ip"),
        ("by-route", "route"),
        ("by-header", "\"header:X-Api-Key\""),
        ("by-claim", "\"claim:tenant\""),
    ] {
        extra.push_str(&format!(
            r#"  {name}:
    key: {key}
    rate: 1/h
    burst: 1
"#
        ));
    }
    let mut routes = String::new();
    for name in ["by-subject", "by-ip", "by-route", "by-header", "by-claim"] {
        routes.push_str(&format!(
            r#"  - name: local-{name}
    match: {{ path: /{name} }}
    upstream: app
    auth: {{}}
    rate_limits: [{name}]
"#
        ));
    }
    let gw = gateway(&up, &extra, &routes).await;
    let alice = format!("Bearer {}", token(json!({"tenant": "t1"})));
    let bob = format!("Bearer {}", token(json!({"sub": "bob", "tenant": "t2"})));
    let carol = format!("Bearer {}", token(json!({"sub": "carol", "tenant": "t1"})));
    let call = |path: &'static str, auth: String, key: Option<&'static str>| {
        let gw = &gw;
        async move {
            let mut h = vec![("authorization", auth.as_str())];
            h.extend(key.map(|k| ("x-api-key", k)));
            get(gw, path, &h).await
        }
    };
    let limited = |r: Reply| {
        r.assert_error(429, "rate_limited");
        let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((3500..=3600).contains(&wait), "{wait}");
    };
    // Per subject: alice's second call is over, bob has his own bucket.
    assert_eq!(call("/by-subject", alice.clone(), None).await.status, 200);
    limited(call("/by-subject", alice.clone(), None).await);
    assert_eq!(call("/by-subject", bob.clone(), None).await.status, 200);
    // Per client address and per route: everyone shares.
    for path in ["/by-ip", "/by-route"] {
        assert_eq!(call(path, alice.clone(), None).await.status, 200);
        limited(call(path, bob.clone(), None).await);
    }
    // Per header: per value; a request without it is not limited.
    assert_eq!(call("/by-header", alice.clone(), Some("k1")).await.status, 200);
    limited(call("/by-header", bob.clone(), Some("k1")).await);
    assert_eq!(call("/by-header", alice.clone(), Some("k2")).await.status, 200);
    for _ in 0..3 {
        assert_eq!(call("/by-header", alice.clone(), None).await.status, 200);
    }
    // Per claim: alice and carol share tenant t1.
    assert_eq!(call("/by-claim", alice.clone(), None).await.status, 200);
    limited(call("/by-claim", carol.clone(), None).await);
    assert_eq!(call("/by-claim", bob.clone(), None).await.status, 200);
    // A refused request never reached the upstream.
    assert_eq!(up.requests().len(), 11);
}

/// The gateway binary as a child process (for settings read from its
/// environment), in front of `up`, with `store` as its `store:` section and
/// one public route limited through Redis.
fn child_config(up: &RecordingUpstream, store: &str) -> String {
    format!(
        r#"listen:
  https: 127.0.0.1:0
  admin: 127.0.0.1:0
tls:
  cert: cert.pem
  key: key.pem
providers:
  app:
    secret_file: secret
    algorithms: [HS256]
{store}rate_limits:
  shared:
    key: route
    rate: 1/h
    burst: 1
    store: redis
upstreams:
  app:
    targets: [{}]
routes:
  - name: limited
    match: {{ path: /limited }}
    upstream: app
    public: true
    rate_limits: [shared]
"#,
        up.url()
    )
}

/// `store.password_env`: the gateway AUTHs with the password from its
/// environment; with a wrong one Redis refuses it, it is not ready and says
/// why; neither password ever appears in a log line.
#[tokio::test(flavor = "multi_thread")]
async fn password_env_authenticates_and_never_reaches_the_logs() {
    if !require("redis-server", "redis-server") {
        return;
    }
    const VAR: &str = "PORTCULLIS_TEST_REDIS_PASSWORD";
    const PASSWORD: &str = "redis-pw-7f3a9c21";
    const WRONG: &str = "not-the-redis-pw-5e1d";
    let port = free_port().await;
    let options = support::redis::Options {
        password: Some(PASSWORD.into()),
        tls: None,
    };
    let _redis = RedisServer::start_with(port, options).await;
    let up = RecordingUpstream::start("app").await;
    let yaml = child_config(
        &up,
        &format!("store:\n  redis: redis://127.0.0.1:{port}/0\n  password_env: {VAR}\n  timeout: 2s\n"),
    );

    let good = child::Gateway::start_with_env(&yaml, None, &[(VAR, PASSWORD)]);
    wait_for_async("/readyz to answer 200", Duration::from_secs(10), || async {
        good.admin("/readyz").await.0 == 200
    })
    .await;
    assert_eq!(good.get("/limited").await, 200);
    assert_eq!(
        good.get("/limited").await,
        429,
        "the limit is kept in the authenticated Redis"
    );

    let wrong = child::Gateway::start_with_env(&yaml, None, &[(VAR, WRONG)]);
    let line = wrong.wait_log("cannot reach the store").await;
    assert!(line.contains("WRONGPASS") || line.contains("uthentication"), "{line}");
    let (status, body) = wrong.admin("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("store"), "{body}");
    assert_eq!(wrong.get("/limited").await, 200, "on_store_error: allow");

    for l in good.logs().iter().chain(wrong.logs().iter()) {
        assert!(
            !l.contains(PASSWORD) && !l.contains(WRONG),
            "a log line holds a password: {l}"
        );
    }
}

/// `rediss://` with `store.ca_file`: two instances share a limit over TLS.
/// Without the CA the server's certificate is not trusted and the gateway
/// never talks to it in the clear instead.
#[tokio::test(flavor = "multi_thread")]
async fn rediss_trusts_the_configured_ca_and_only_it() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = portcullis::tls::self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert_path, key_path) = (certs.path().join("redis.crt"), certs.path().join("redis.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let port = free_port().await;
    // The README's headline set-up: rediss:// with a private CA and a password
    // from the environment.
    const PASSWORD: &str = "a-redis-password-over-tls";
    let options = support::redis::Options {
        password: Some(PASSWORD.into()),
        tls: Some((cert_path.clone(), key_path)),
    };
    let redis = RedisServer::start_with(port, options).await;
    assert!(redis.url().starts_with("rediss://"));
    let up = RecordingUpstream::start("app").await;

    let trusted = format!(
        "store:\n  redis: {}\n  password_env: REDIS_TLS_PASSWORD\n  ca_file: {}\n  timeout: 2s\n",
        redis.url(),
        cert_path.display()
    );
    let env = [("REDIS_TLS_PASSWORD", PASSWORD)];
    let a = child::Gateway::start_with_env(&child_config(&up, &trusted), None, &env);
    let b = child::Gateway::start_with_env(&child_config(&up, &trusted), None, &env);
    for gw in [&a, &b] {
        wait_for_async("/readyz to answer 200", Duration::from_secs(10), || async {
            gw.admin("/readyz").await.0 == 200
        })
        .await;
    }
    assert_eq!(a.get("/limited").await, 200);
    assert_eq!(b.get("/limited").await, 429, "one bucket, shared over TLS");
    for gw in [&a, &b] {
        assert!(
            gw.logs().iter().all(|l| !l.contains(PASSWORD)),
            "the password was logged"
        );
    }

    let untrusted = format!("store:\n  redis: {}\n  timeout: 2s\n", redis.url());
    let c = child::Gateway::start(&child_config(&up, &untrusted), None);
    let line = c.wait_log("cannot reach the store").await;
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert_eq!(c.admin("/readyz").await.0, 503);
}

/// Send raw bytes to the admin listener and read the answer.
async fn admin_exchange(gw: &TestGateway, raw: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(gw.admin_addr.unwrap()).await.unwrap();
    status_and_body(&exchange(&mut tcp, raw.as_bytes()).await)
}

fn revoke_request(extra_headers: &str, body: &str) -> String {
    format!(
        "POST /revoke HTTP/1.1\r\nHost: admin\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `POST /revoke` only from a non-browser client with a JSON body, bounded
/// `before` and `exp`, the admin token when one is configured, and a body
/// that arrives in time; `/healthz` answers while every admin slot is held.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_refuses_browsers_strangers_and_slow_bodies() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("admin.token"), "an-admin-secret-0123456789\n").unwrap();
    let yaml = format!(
        r#"{}limits:
  header_read_timeout: 2s
providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
store:
  redis: {}
revocation: {{ store: redis, max_token_lifetime: 1h }}
admin:
  token_file: admin.token
upstreams:
  app:
    targets: [{}]
routes:
  - {{ name: api, match: {{ path: /api }}, upstream: app, auth: {{}} }}
"#,
        header_with_admin(),
        redis.url(),
        up.url()
    );
    let gw = dir.start(&yaml).await;
    wait_for_async("/readyz to answer 200", Duration::from_secs(10), || async {
        gw.admin("/readyz").await.0 == 200
    })
    .await;
    let good = format!(r#"{{"jti":"j1","exp":{}}}"#, now() + 600);
    let auth = "Authorization: Bearer an-admin-secret-0123456789\r\n";
    let json = "Content-Type: application/json\r\n";
    let cases = [
        // No token, a wrong one, another scheme.
        (String::from(json), good.clone(), 401, "unauthorized"),
        (
            format!("{json}Authorization: Bearer an-admin-secret-012345678X\r\n"),
            good.clone(),
            401,
            "unauthorized",
        ),
        (
            format!("{json}Authorization: Basic an-admin-secret-0123456789\r\n"),
            good.clone(),
            401,
            "unauthorized",
        ),
        // A page's form or text/plain post.
        (
            format!("{auth}Content-Type: text/plain\r\n"),
            good.clone(),
            415,
            "unsupported_media_type",
        ),
        (auth.to_string(), good.clone(), 415, "unsupported_media_type"),
        // From a browser, whatever else it carries.
        (
            format!("{auth}{json}Origin: https://evil.example\r\n"),
            good.clone(),
            403,
            "forbidden",
        ),
        (format!("{auth}{json}Origin: null\r\n"), good.clone(), 403, "forbidden"),
        // Lock-outs with no way back.
        (
            format!("{auth}{json}"),
            format!(r#"{{"sub":"alice","before":{}}}"#, now() + 3600),
            400,
            "invalid_request",
        ),
        (
            format!("{auth}{json}"),
            format!(r#"{{"jti":"j2","exp":{}}}"#, now() + 7200),
            400,
            "invalid_request",
        ),
    ];
    for (headers, body, status, code) in cases {
        let (got, out) = admin_exchange(&gw, &revoke_request(&headers, &body)).await;
        assert_eq!(got, status, "{headers:?} {body}: {out}");
        assert!(out.contains(&format!(r#""error":"{code}""#)), "{out}");
    }
    assert_eq!(gw.revocations_held(), 0, "nothing refused was recorded");
    // The right token, JSON, bounded values: recorded.
    let (got, out) = admin_exchange(&gw, &revoke_request(&format!("{auth}{json}"), &good)).await;
    assert_eq!(got, 200, "{out}");
    let (got, out) = admin_exchange(
        &gw,
        &revoke_request(
            &format!("{auth}Content-Type: application/json; charset=utf-8\r\n"),
            &format!(r#"{{"sub":"alice","before":{}}}"#, now() + 60),
        ),
    )
    .await;
    assert_eq!(got, 200, "{out}");
    // Reads need no token, but not from a browser either.
    assert_eq!(gw.admin("/healthz").await.0, 200);
    let (got, _) = admin_exchange(
        &gw,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(got, 403);

    // Slow bodies: each held connection is answered 408 within the deadline,
    // and while all of them hold every regular slot, /healthz still answers.
    use tokio::io::AsyncWriteExt;
    let mut slow = Vec::new();
    for _ in 0..70 {
        let mut tcp = tokio::net::TcpStream::connect(gw.admin_addr.unwrap()).await.unwrap();
        let head = format!("POST /revoke HTTP/1.1\r\nHost: admin\r\n{auth}{json}Content-Length: 100\r\n\r\n{{\"jti\":");
        tcp.write_all(head.as_bytes()).await.unwrap();
        slow.push(tcp);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(1), gw.admin("/healthz"))
        .await
        .expect("/healthz answered while the admin slots are held");
    assert_eq!(status, 200);
    assert!(asked.elapsed() < Duration::from_secs(1));
    let started = Instant::now();
    let (reply, _) = read_to_close(&mut slow[0], Duration::from_secs(6)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

/// A store outage under load logs a bounded number of warnings (one per
/// kind of command per interval), not one per request; every failure is
/// still counted in the metric.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_logs_one_warning_per_interval() {
    let port = closed_port().await.port();
    let up = RecordingUpstream::start("app").await;
    let store = format!("store:\n  redis: redis://127.0.0.1:{port}/0\n  timeout: 50ms\n");
    let gw = child::Gateway::start(&child_config(&up, &store), None);
    let mut c = gw.client(Proto::H1).await;
    for _ in 0..40 {
        // on_store_error: allow (the default): served despite the outage.
        assert_eq!(c.send(req("GET", "/limited", &[], "")).await.status, 200);
    }
    let warned = gw
        .logs()
        .iter()
        .filter(|l| l.contains("store command failed") && l.contains("rate_limit"))
        .count();
    assert!((1..=2).contains(&warned), "{warned} warnings for 40 failed checks");
    let (_, metrics) = gw.admin("/metrics").await;
    let failed: u64 = metrics
        .lines()
        .find(|l| l.starts_with(r#"portcullis_store_errors_total{op="rate_limit"}"#))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(failed >= 40, "{failed}");
}

/// A revocation whose message never arrived (written to Redis behind the
/// channel's back, as after a silently dead subscription) is in force after
/// the follower's periodic reload, within a minute.
#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_the_channel_missed_is_loaded_within_a_minute() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let up = RecordingUpstream::start("app").await;
    let extra = format!("store:\n  redis: {}\nrevocation: {{ store: redis }}\n", redis.url());
    let routes = "  - { name: api, match: { path: /api }, upstream: app, auth: {} }\n";
    let gw = gateway(&up, &extra, routes).await;
    wait_for_async("/readyz to answer 200", Duration::from_secs(10), || async {
        gw.admin("/readyz").await.0 == 200
    })
    .await;
    let auth = format!("Bearer {}", token(json!({"jti": "missed-1"})));
    assert_eq!(get(&gw, "/api", &[("authorization", &auth)]).await.status, 200);
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let exp = now() + 600;
    let _: () = ::redis::cmd("SET")
        .arg("portcullis:revoked:jti:missed-1")
        .arg(exp)
        .arg("EXAT")
        .arg(exp + 3600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let written = Instant::now();
    wait_for_async("the token to be refused (401)", Duration::from_secs(60), || async {
        get(&gw, "/api", &[("authorization", &auth)]).await.status == 401
    })
    .await;
    assert!(written.elapsed() < Duration::from_secs(60), "{:?}", written.elapsed());
}

/// A `header:` key's value is the client's to choose: Redis key names never
/// hold it (a digest stands in), and two values still get two buckets.
#[tokio::test(flavor = "multi_thread")]
async fn redis_key_names_never_hold_a_raw_header_value() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let redis = RedisServer::start().await;
    let up = RecordingUpstream::start("app").await;
    let extra = format!(
        r#"store:
  redis: {}
rate_limits:
  per-key:
    key: "header:x-api-key"
    rate: 1/h
    burst: 1
    store: redis
"#,
        redis.url()
    );
    let routes = "  - { name: keyed, match: { path: /keyed }, upstream: app, public: true, rate_limits: [per-key] }\n";
    let gw = gateway(&up, &extra, routes).await;
    for value in ["plain-key-value-1", "other-key-value-2"] {
        assert_eq!(get(&gw, "/keyed", &[("x-api-key", value)]).await.status, 200);
        get(&gw, "/keyed", &[("x-api-key", value)])
            .await
            .assert_error(429, "rate_limited");
    }
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    let buckets: Vec<&String> = keys.iter().filter(|k| k.contains("rl:per-key:")).collect();
    assert_eq!(buckets.len(), 2, "{keys:?}");
    for k in &keys {
        assert!(!k.contains("key-value"), "a raw header value in a key name: {k}");
    }
}
