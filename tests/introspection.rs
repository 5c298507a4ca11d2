//! Opaque tokens (RFC 7662 introspection) end to end: a gateway in this
//! process, a recording upstream, and an introspection endpoint over HTTPS
//! that checks the gateway's client credentials, counts calls and can be made
//! slow, failing or nonsensical.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use support::introspect::{Endpoint, Trouble};
use support::tokens::*;
use support::*;

/// Names unique to the test: the metrics registry is process-wide.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A sample of the process's metrics, read exactly (`name{labels}`).
fn sample(series: &str) -> f64 {
    portcullis::metrics::render(false)
        .lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

struct Setup {
    gw: TestGateway,
    ep: Endpoint,
    up: RecordingUpstream,
    provider: String,
}

/// `introspection` is the provider's block after `client_id`/secret lines
/// (timeouts, TTLs); `routes` the YAML of the routes.
async fn setup_with(introspection: &str, routes: &str) -> Setup {
    let ep = Endpoint::start("gateway", "s3cret: with % odd chars").await;
    let provider = unique("opaque");
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("idp-ca.pem"), &ep.ca_pem).unwrap();
    std::fs::write(dir.path().join("client-secret"), "s3cret: with % odd chars\n").unwrap();
    std::fs::write(dir.path().join("hs-secret"), HS_SECRET).unwrap();
    let yaml = format!(
        r#"{}identity:
  claims:
    X-Auth-Email: email
providers:
  {provider}:
    issuer: {issuer}
    audiences: [orders-api]
    ca_file: idp-ca.pem
    secret_file: hs-secret
    introspection:
      endpoint: {url}
      client_id: gateway
      client_secret_file: client-secret
{introspection}
upstreams:
  app:
    targets: [{upstream}]
routes:
{routes}
"#,
        header(""),
        issuer = ep.issuer(),
        url = ep.url(),
        upstream = up.url(),
    );
    let gw = dir.start(&yaml).await;
    Setup { gw, ep, up, provider }
}

const HS_SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

const ORDERS: &str = r#"  - name: orders
    match: { path: /orders }
    upstream: app
    auth: { scopes: [orders:read] }
  - name: admin
    match: { path: /admin }
    upstream: app
    auth: { scopes: [admin] }
"#;

async fn setup() -> Setup {
    setup_with("", ORDERS).await
}

fn active(sub: &str, scope: &str, issuer: &str) -> serde_json::Value {
    json!({
        "active": true, "sub": sub, "scope": scope, "iss": issuer,
        "aud": ["orders-api"], "exp": now() + 600, "email": format!("{sub}@example.com"),
        "token_type": "Bearer", "client_id": "shop"
    })
}

async fn call(gw: &TestGateway, path: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    gw.client(Proto::H1)
        .await
        .send(req("GET", path, &[("authorization", &auth)], ""))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_opaque_token_is_introspected_once_and_its_answer_reused_with_every_route_check() {
    let s = setup().await;
    let token = "2YotnFZFEjr1zCsicMWpAA";
    s.ep.answer(token, active("carol", "orders:read", &s.ep.issuer()));

    let r = call(&s.gw, "/orders", token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = s.up.last();
    assert_eq!(seen.headers["x-auth-subject"], "carol");
    assert_eq!(seen.headers["x-auth-scopes"], "orders:read");
    assert_eq!(seen.headers["x-auth-email"], "carol@example.com");
    assert!(
        seen.headers.get("authorization").is_none(),
        "the token never goes upstream"
    );

    // The call carried the token, the hint and the client's credentials.
    let (form, authorization) = s.ep.set_and_get();
    assert_eq!(form["token"], token);
    assert_eq!(form["token_type_hint"], "access_token");
    assert!(
        !form.contains_key("client_secret"),
        "client_secret_basic keeps the secret out of the form"
    );
    assert!(authorization.unwrap().starts_with("Basic "));

    // A hit: no call, and the route's scopes still apply.
    for _ in 0..3 {
        assert_eq!(call(&s.gw, "/orders", token).await.status, 200);
    }
    call(&s.gw, "/admin", token)
        .await
        .assert_error(403, "insufficient_scope");
    assert_eq!(s.ep.calls(), 1, "one call, then answers from the cache");
    let p = &s.provider;
    assert_eq!(
        sample(&format!(
            r#"portcullis_introspection_cache_hits_total{{provider="{p}"}}"#
        )),
        4.0
    );
    assert_eq!(
        sample(&format!(
            r#"portcullis_introspection_requests_total{{provider="{p}",result="active"}}"#
        )),
        1.0
    );
    assert_eq!(
        sample(&format!(
            r#"portcullis_introspection_duration_seconds_count{{provider="{p}"}}"#
        )),
        1.0
    );
}

impl Endpoint {
    /// The last form and `Authorization` the endpoint received.
    fn set_and_get(&self) -> (std::collections::HashMap<String, String>, Option<String>) {
        let s = self.state.lock().unwrap();
        (
            s.forms.last().cloned().unwrap(),
            s.authorizations.last().cloned().unwrap(),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_secret_post_sends_the_credentials_in_the_form() {
    let s = setup_with("      auth_method: client_secret_post", ORDERS).await;
    s.ep.answer("opaque-post", active("dan", "orders:read", &s.ep.issuer()));
    assert_eq!(call(&s.gw, "/orders", "opaque-post").await.status, 200);
    let (form, authorization) = s.ep.set_and_get();
    assert_eq!(form["client_id"], "gateway");
    assert_eq!(form["client_secret"], "s3cret: with % odd chars");
    assert_eq!(authorization, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn inactive_tokens_are_refused_and_the_refusal_cached_for_negative_cache_ttl() {
    let s = setup_with("      negative_cache_ttl: 1s", ORDERS).await;
    let r = call(&s.gw, "/orders", "never-issued").await;
    r.assert_error(401, "invalid_token");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
    call(&s.gw, "/orders", "never-issued")
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(s.ep.calls(), 1, "the inactive answer is reused");
    assert!(sample(r#"portcullis_auth_failures_total{reason="inactive"}"#) >= 2.0);
    let p = &s.provider;
    assert_eq!(
        sample(&format!(
            r#"portcullis_introspection_requests_total{{provider="{p}",result="inactive"}}"#
        )),
        1.0
    );

    // After negative_cache_ttl the provider is asked again, and its new answer counts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    s.ep.answer("never-issued", active("erin", "orders:read", &s.ep.issuer()));
    assert_eq!(call(&s.gw, "/orders", "never-issued").await.status, 200);
    assert_eq!(s.ep.calls(), 2);
    assert_eq!(s.up.requests().len(), 1, "refused requests never reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_that_fails_gives_503_never_cached_never_a_200() {
    let s = setup_with("      timeout: 300ms", ORDERS).await;
    let token = "opaque-during-outage";
    s.ep.answer(token, active("fay", "orders:read", &s.ep.issuer()));
    let mut expected_calls = 0;
    for trouble in [Trouble::Status(500), Trouble::Status(401), Trouble::NotJson] {
        s.ep.set(|st| st.trouble = trouble);
        for _ in 0..2 {
            call(&s.gw, "/orders", token)
                .await
                .assert_error(503, "temporarily_unavailable");
            expected_calls += 1;
        }
        assert_eq!(s.ep.calls(), expected_calls, "{trouble:?}: errors are never cached");
    }
    // Too slow: refused at the timeout, not after the endpoint's answer.
    s.ep.set(|st| {
        st.trouble = Trouble::None;
        st.delay = Duration::from_secs(2);
    });
    let started = std::time::Instant::now();
    call(&s.gw, "/orders", token)
        .await
        .assert_error(503, "temporarily_unavailable");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // Back up: the token is accepted at once.
    s.ep.set(|st| st.delay = Duration::ZERO);
    assert_eq!(call(&s.gw, "/orders", token).await.status, 200);
    assert_eq!(s.up.requests().len(), 1);
    let p = &s.provider;
    assert!(
        sample(&format!(
            r#"portcullis_introspection_requests_total{{provider="{p}",result="error"}}"#
        )) >= 7.0
    );
    assert!(sample(r#"portcullis_auth_failures_total{reason="introspection_unavailable"}"#) >= 7.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_answer_ends_at_the_tokens_exp() {
    let s = setup_with("      cache_ttl: 5m", ORDERS).await;
    let token = "opaque-short-lived";
    let mut answer = active("gus", "orders:read", &s.ep.issuer());
    answer["exp"] = json!(now() + 2);
    s.ep.answer(token, answer);
    assert_eq!(call(&s.gw, "/orders", token).await.status, 200);
    assert_eq!(call(&s.gw, "/orders", token).await.status, 200);
    assert_eq!(s.ep.calls(), 1);
    // Past exp the answer is not reused, though cache_ttl has not run out:
    // the provider is asked again, and now says the token is gone.
    s.ep.answer(token, json!({"active": false}));
    wait_for_async("the token to be refused (401)", Duration::from_secs(5), || async {
        call(&s.gw, "/orders", token).await.status == 401
    })
    .await;
    assert_eq!(s.ep.calls(), 2);
}

/// With `cache_ttl: 0s` every request asks the endpoint, and no answer is
/// kept: a stream of new tokens must not fill the cache (it held 100,000
/// stale answers before, 60 MB in the benchmark).
#[tokio::test(flavor = "multi_thread")]
async fn with_no_cache_ttl_no_answer_is_kept() {
    let s = setup_with("      cache_ttl: 0s", ORDERS).await;
    for i in 0..20 {
        let token = format!("opaque-uncached-{i}");
        s.ep.answer(&token, active("ann", "orders:read", &s.ep.issuer()));
        assert_eq!(call(&s.gw, "/orders", &token).await.status, 200);
        assert_eq!(call(&s.gw, "/orders", &token).await.status, 200);
    }
    assert_eq!(s.ep.calls(), 40, "no answer is reused");
    let snap = s.gw.running.as_ref().unwrap().gateway.snapshot.load_full();
    let held: usize = snap
        .providers
        .iter()
        .filter_map(|p| p.introspection.as_ref())
        .map(|i| i.cached())
        .sum();
    assert_eq!(held, 0, "answers that may not be reused are not held");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_requests_with_a_new_token_make_one_call() {
    let s = setup().await;
    let token = "opaque-stampede";
    s.ep.answer(token, active("hal", "orders:read", &s.ep.issuer()));
    s.ep.set(|st| st.delay = Duration::from_millis(300));
    let client = s.gw.client(Proto::H2).await;
    let requests = (0..100).map(|_| {
        let mut c = client.h2_stream();
        async move {
            c.send(req(
                "GET",
                "/orders",
                &[("authorization", &format!("Bearer {token}"))],
                "",
            ))
            .await
            .status
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!(s.ep.calls(), 1, "one call shared by every request that waited for it");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_reload_cached_answers_meet_the_new_route_rules() {
    let s = setup().await;
    let token = "opaque-reloaded";
    s.ep.answer(token, active("ida", "orders:read", &s.ep.issuer()));
    assert_eq!(call(&s.gw, "/orders", token).await.status, 200);
    // The route now wants another scope and a claim: the cached answer is
    // re-checked against them, without a new call.
    let text = std::fs::read_to_string(&s.gw.config_path)
        .unwrap()
        .replace("auth: { scopes: [orders:read] }", "auth: { scopes: [orders:write] }");
    std::fs::write(&s.gw.config_path, text).unwrap();
    s.gw.reload().unwrap();
    call(&s.gw, "/orders", token)
        .await
        .assert_error(403, "insufficient_scope");
    let text = std::fs::read_to_string(&s.gw.config_path).unwrap().replace(
        "auth: { scopes: [orders:write] }",
        r#"auth: { scopes: [orders:read], claims: [{ claim: /client_id, equals: "other-app" }] }"#,
    );
    std::fs::write(&s.gw.config_path, text).unwrap();
    s.gw.reload().unwrap();
    call(&s.gw, "/orders", token).await.assert_error(403, "access_denied");
    assert_eq!(
        s.ep.calls(),
        1,
        "the answer survived both reloads; the decisions did not"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_are_checked_against_the_provider() {
    let s = setup().await;
    let issuer = s.ep.issuer();
    let cases = [
        (
            "opaque-iss",
            json!({"iss": "https://elsewhere.example/"}),
            "wrong_issuer",
        ),
        ("opaque-aud", json!({"aud": "another-api"}), "wrong_audience"),
        ("opaque-noaud", json!({"aud": null}), "wrong_audience"),
        ("opaque-refresh", json!({"token_type": "refresh_token"}), "wrong_type"),
        ("opaque-expired", json!({"exp": now() - 120}), "expired"),
        ("opaque-later", json!({"nbf": now() + 600}), "not_yet_valid"),
    ];
    for (token, change, reason) in cases {
        let mut answer = active("jo", "orders:read", &issuer);
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                answer.as_object_mut().unwrap().remove(k);
            } else {
                answer[k] = v.clone();
            }
        }
        s.ep.answer(token, answer);
        let before = sample(&format!(r#"portcullis_auth_failures_total{{reason="{reason}"}}"#));
        call(&s.gw, "/orders", token).await.assert_error(401, "invalid_token");
        let after = sample(&format!(r#"portcullis_auth_failures_total{{reason="{reason}"}}"#));
        assert!(after > before, "{token}: refused for {reason}");
    }
    assert!(s.up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn jwts_from_an_introspecting_provider_are_verified_locally() {
    let s = setup().await;
    let jwt = hs_sign(
        jsonwebtoken::Algorithm::HS256,
        HS_SECRET.as_bytes(),
        &json!({"iss": s.ep.issuer(), "aud": "orders-api", "sub": "kim", "scope": "orders:read", "exp": now() + 60}),
    );
    assert_eq!(call(&s.gw, "/orders", &jwt).await.status, 200);
    assert_eq!(s.up.last().headers["x-auth-subject"], "kim");
    // A JWS that fails verification is refused as a JWT, never sent to the endpoint.
    let forged = hs_sign(
        jsonwebtoken::Algorithm::HS256,
        b"another-secret-another-secret-another",
        &json!({"iss": s.ep.issuer(), "aud": "orders-api", "sub": "kim", "exp": now() + 60}),
    );
    call(&s.gw, "/orders", &forged).await.assert_error(401, "invalid_token");
    assert_eq!(s.ep.calls(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_without_an_introspecting_provider_refuses_opaque_tokens_without_a_call() {
    let routes = r#"  - name: local-only
    match: { path: /local }
    upstream: app
    auth: { providers: [hs] }
"#;
    let s = setup_with(
        "  hs:\n    issuer: https://hs.example/\n    audiences: [orders-api]\n    secret_file: hs-secret",
        routes,
    )
    .await;
    call(&s.gw, "/local", "opaque-anything")
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(s.ep.calls(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_providers_never_share_an_answer() {
    // The same token string, two providers with their own endpoints: each
    // endpoint is asked, and each answer stays with its provider.
    let other = Endpoint::start("gateway2", "second-secret").await;
    let token = "opaque-shared-string";
    let second = unique("second");
    let extra = format!(
        "  {second}:\n    issuer: {}\n    ca_file: idp2-ca.pem\n    introspection:\n      endpoint: {}\n      client_id: gateway2\n      client_secret_file: client-secret-2",
        other.issuer(),
        other.url()
    );
    let s = setup_with_files(&extra, &other).await;
    s.ep.answer(token, active("lee", "orders:read", &s.ep.issuer()));
    other.answer(token, json!({"active": false}));
    assert_eq!(call(&s.gw, "/first", token).await.status, 200);
    call(&s.gw, "/second", token).await.assert_error(401, "invalid_token");
    assert_eq!(call(&s.gw, "/first", token).await.status, 200);
    call(&s.gw, "/second", token).await.assert_error(401, "invalid_token");
    assert_eq!((s.ep.calls(), other.calls()), (1, 1));
}

/// [`setup_with`] for the two-provider test: the second endpoint's CA is
/// written beside the first's, and each route names its provider.
async fn setup_with_files(extra: &str, other: &Endpoint) -> Setup {
    let second = extra.trim_start().split(':').next().unwrap().to_string();
    let ep = Endpoint::start("gateway", "s3cret: with % odd chars").await;
    let provider = unique("first");
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("idp-ca.pem"), &ep.ca_pem).unwrap();
    std::fs::write(dir.path().join("idp2-ca.pem"), &other.ca_pem).unwrap();
    std::fs::write(dir.path().join("client-secret-2"), "second-secret").unwrap();
    std::fs::write(dir.path().join("client-secret"), "s3cret: with % odd chars").unwrap();
    let yaml = format!(
        r#"{}providers:
  {provider}:
    issuer: {issuer}
    audiences: [orders-api]
    ca_file: idp-ca.pem
    introspection:
      endpoint: {url}
      client_id: gateway
      client_secret_file: client-secret
{extra}
upstreams:
  app:
    targets: [{upstream}]
routes:
  - name: first
    match: {{ path: /first }}
    upstream: app
    auth: {{ providers: [{provider}] }}
  - name: second
    match: {{ path: /second }}
    upstream: app
    auth: {{ providers: [{second}] }}
"#,
        header(""),
        issuer = ep.issuer(),
        url = ep.url(),
        upstream = up.url(),
    );
    let gw = dir.start(&yaml).await;
    Setup { gw, ep, up, provider }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_endpoint_can_come_from_discovery() {
    let ep = Endpoint::start("gateway", "disc-secret").await;
    let provider = unique("disc");
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("idp-ca.pem"), &ep.ca_pem).unwrap();
    std::fs::write(dir.path().join("disc-secret"), "disc-secret").unwrap();
    let yaml = format!(
        r#"{}providers:
  {provider}:
    issuer: {}
    discovery: true
    ca_file: idp-ca.pem
    introspection:
      client_id: gateway
      client_secret_file: disc-secret
upstreams:
  app:
    targets: [{}]
routes:
  - name: disc
    match: {{ path: /disc }}
    upstream: app
    auth: {{ scopes: [orders:read] }}
"#,
        header(""),
        ep.issuer(),
        up.url()
    );
    let gw = dir.start(&yaml).await;
    ep.answer("opaque-discovered", active("max", "orders:read", &ep.issuer()));
    wait_for_async(
        "the request to be let through (200)",
        Duration::from_secs(10),
        || async { call(&gw, "/disc", "opaque-discovered").await.status == 200 },
    )
    .await;
    assert_eq!(up.last().headers["x-auth-subject"], "max");
}

/// The binary itself: `check` validates without calling the endpoint,
/// `explain` shows the answer, and neither they nor the running gateway's
/// log lines (at debug) ever hold the token or the client secret.
#[tokio::test(flavor = "multi_thread")]
async fn the_binary_never_shows_a_token_or_the_client_secret() {
    const SECRET: &str = "the-client-secret-never-shown";
    let ep = Endpoint::start("gateway", SECRET).await;
    let up = RecordingUpstream::start("app").await;
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("idp-ca.pem");
    std::fs::write(&ca, &ep.ca_pem).unwrap();
    let yaml = format!(
        r#"listen:
  https: 127.0.0.1:0
  admin: 127.0.0.1:0
tls:
  cert: cert.pem
  key: key.pem
providers:
  hydra:
    issuer: {issuer}
    ca_file: {ca}
    introspection:
      endpoint: {url}
      client_id: gateway
      client_secret_env: PORTCULLIS_TEST_INTROSPECTION_SECRET
upstreams:
  app:
    targets: [{upstream}]
routes:
  - name: orders
    match: {{ path: /orders }}
    upstream: app
    auth: {{ scopes: [orders:read], resource_metadata: true }}
"#,
        issuer = ep.issuer(),
        ca = ca.display(),
        url = ep.url(),
        upstream = up.url(),
    );
    let env = [("PORTCULLIS_TEST_INTROSPECTION_SECRET", SECRET), ("RUST_LOG", "debug")];
    let gw = child::Gateway::start_with_env(&yaml, None, &env);
    let good = "opaque-good-Zm9vYmFy";
    let bad = "opaque-unknown-YmF6cXV4";
    ep.answer(good, active("nia", "orders:read", &ep.issuer()));
    let send = |token: &'static str| {
        let gw = &gw;
        async move {
            let mut c = gw.client(Proto::H1).await;
            c.send(req(
                "GET",
                "/orders",
                &[("authorization", &format!("Bearer {token}"))],
                "",
            ))
            .await
        }
    };
    assert_eq!(send(good).await.status, 200);
    send(bad).await.assert_error(401, "invalid_token");
    ep.set(|s| s.trouble = Trouble::Status(500));
    send("opaque-during-error-cXV1eA")
        .await
        .assert_error(503, "temporarily_unavailable");
    gw.wait_log("token introspection failed").await;

    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .current_dir(gw.dir.path())
            .env("PORTCULLIS_TEST_INTROSPECTION_SECRET", SECRET)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let calls = ep.calls();
    let (code, text) = run(&["check", "-c", "gateway.yaml"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("introspect=hydra"), "{text}");
    assert!(
        text.contains("metadata=/.well-known/oauth-protected-resource/orders"),
        "{text}"
    );
    assert_eq!(ep.calls(), calls, "check never calls the endpoint");

    ep.set(|s| s.trouble = Trouble::None);
    let url = "https://localhost/orders";
    let (code, explained) = run(&["explain", "-c", "gateway.yaml", "GET", url, "--token", good]);
    assert_eq!(code, Some(0), "{explained}");
    assert!(explained.contains("opaque (not a JWT)"), "{explained}");
    assert!(explained.contains("introspect pass     active: iss="), "{explained}");
    assert!(explained.contains(" sub=nia "), "{explained}");
    let (code, refused) = run(&["explain", "-c", "gateway.yaml", "GET", url, "--token", bad, "--json"]);
    assert_eq!(code, Some(1), "{refused}");
    assert!(refused.contains("\"reason\": \"inactive\""), "{refused}");

    let logs = gw.logs().join("\n");
    for output in [&logs, &text, &explained, &refused] {
        for secret in [good, bad, "opaque-during-error-cXV1eA", SECRET] {
            assert!(!output.contains(secret), "{secret:?} shown in:\n{output}");
        }
    }
}

async fn post_admin(gw: &TestGateway, path: &str, body: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(gw.admin_addr.unwrap()).await.unwrap();
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    status_and_body(&exchange(&mut tcp, raw.as_bytes()).await)
}

/// The gateway's own revocation list and a tunnel's expiry hold for
/// introspected tokens as for JWTs: by `jti`, and at the answer's `exp`.
#[tokio::test(flavor = "multi_thread")]
async fn revocation_and_tunnel_expiry_apply_to_introspected_tokens() {
    if !require("redis-server", "redis-server") {
        return;
    }
    let redis = support::redis::RedisServer::start().await;
    let ws_up = support::ws::WsUpstream::start().await;
    let ep = Endpoint::start("gateway", "ws-secret").await;
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("idp-ca.pem"), &ep.ca_pem).unwrap();
    std::fs::write(dir.path().join("client-secret"), "ws-secret").unwrap();
    let provider = unique("revocable");
    let yaml = format!(
        r#"{}providers:
  {provider}:
    issuer: {}
    ca_file: idp-ca.pem
    leeway: 1s
    introspection:
      endpoint: {}
      client_id: gateway
      client_secret_file: client-secret
store:
  redis: {}
revocation: {{ store: redis }}
upstreams:
  app:
    targets: [{}]
  ws:
    targets: [{}]
routes:
  - name: revocable-api
    match: {{ path: /api }}
    upstream: app
    auth: {{}}
  - name: revocable-chat
    match: {{ path: /chat }}
    upstream: ws
    auth: {{}}
    websocket: {{ close_at_token_expiry: true }}
"#,
        header_with_admin(),
        ep.issuer(),
        ep.url(),
        redis.url(),
        up.url(),
        ws_up.url()
    );
    let gw = dir.start(&yaml).await;
    wait_for_async("/readyz to answer 200", Duration::from_secs(10), || async {
        gw.admin("/readyz").await.0 == 200
    })
    .await;

    let mut leaked = active("olga", "", &ep.issuer());
    leaked["jti"] = json!("opaque-jti-1");
    ep.answer("opaque-leaked", leaked);
    assert_eq!(call(&gw, "/api", "opaque-leaked").await.status, 200);
    let (status, body) = post_admin(
        &gw,
        "/revoke",
        &format!(r#"{{"jti":"opaque-jti-1","exp":{}}}"#, now() + 600),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_for_async("the token to be refused (401)", Duration::from_secs(5), || async {
        call(&gw, "/api", "opaque-leaked").await.status == 401
    })
    .await;
    assert_eq!(
        call(&gw, "/api", "opaque-leaked").await.json()["error_description"],
        "The token has been revoked."
    );
    assert_eq!(
        ep.calls(),
        1,
        "refused from the cached answer: the revocation is the gateway's"
    );

    // A tunnel opened with an introspected token closes at the answer's exp (plus leeway).
    let mut short = active("pat", "", &ep.issuer());
    short["exp"] = json!(now() + 2);
    ep.answer("opaque-short", short);
    let (mut tunnel, _) = support::ws::connect(gw.addr, &gw.cert, "/chat", &[("authorization", "Bearer opaque-short")])
        .await
        .expect("upgraded");
    assert!(support::ws::round_trip(&mut tunnel, "hello").await.is_some());
    tokio::time::timeout(Duration::from_secs(8), support::ws::closed(&mut tunnel))
        .await
        .expect("the tunnel outlived the introspected token");
    wait_for_async(
        "the tunnel to be counted closed at token expiry",
        Duration::from_secs(5),
        || async {
            gw.admin("/metrics")
                .await
                .1
                .lines()
                .any(|l| l == r#"portcullis_websocket_closed_total{route="revocable-chat",reason="token_expired"} 1"#)
        },
    )
    .await;
}
