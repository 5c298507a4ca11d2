//! Remote keys (`discovery` / `jwks_uri`, and the 503 before keys arrive): a real OpenID
//! Connect provider on loopback over HTTPS, trusted through `ca_file`.

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::idp::Idp;
use support::tokens::*;
use support::*;

struct Setup {
    gw: TestGateway,
    idp: Idp,
    up: RecordingUpstream,
    /// The provider's name, unique to the test: the metrics registry is process-wide.
    provider: String,
}

async fn setup(idp: Idp, source: &str, refresh: &str) -> Setup {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let provider = format!("idp{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("idp-ca.pem"), &idp.ca_pem).unwrap();
    let source = match source {
        "discovery" => "discovery: true".to_string(),
        _ => format!("jwks_uri: {}", idp.jwks_uri()),
    };
    let yaml = format!(
        r#"{}providers:
  {provider}:
    issuer: {}
    audiences: [api]
    {source}
    ca_file: idp-ca.pem
    jwks_refresh: {refresh}
upstreams:
  app:
    targets: [{}]
routes:
  - name: orders
    match: {{ path: /orders }}
    upstream: app
    auth: {{ scopes: [orders:read] }}
"#,
        header_with_admin(),
        idp.issuer(),
        up.url()
    );
    let gw = dir.start(&yaml).await;
    Setup { gw, idp, up, provider }
}

fn token(kp: &KeyPair, kid: &str, iss: &str) -> String {
    kp.sign(
        &json!({"iss": iss, "aud": "api", "sub": "u1", "scope": "orders:read", "exp": now() + 300}),
        Some(kid),
    )
}

impl Setup {
    /// How many key fetches of this provider have ended with `result`.
    async fn refreshes(&self, result: &str) -> u64 {
        let (_, metrics) = self.gw.admin("/metrics").await;
        let prefix = format!(
            r#"portcullis_jwks_refresh_total{{provider="{}",result="{result}"}} "#,
            self.provider
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    async fn call(&self, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.gw
            .client(Proto::H1)
            .await
            .send(req("GET", "/orders", &[("authorization", &auth)], ""))
            .await
    }

    /// Poll until the gateway answers `status` (or give up after `limit`).
    /// Call until the answer is `status`; fail the test when it is not within `limit`.
    async fn call_until(&self, token: &str, status: u16, limit: Duration) -> Reply {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let r = self.call(token).await;
            if r.status.as_u16() == status {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {} (not {status}) after {limit:?}: {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_happy_path_and_readiness() {
    let kp = KeyPair::generate(Algorithm::RS256);
    let idp = Idp::start(vec![kp.jwk("k1")]).await;
    let s = setup(idp, "discovery", "10m").await;
    let t = token(&kp, "k1", &s.idp.issuer());
    let r = s.call_until(&t, 200, Duration::from_secs(5)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.last().headers["x-auth-subject"], "u1");
    assert!(s.idp.discovery_hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let (status, body) = s.gw.admin("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = s.gw.admin("/metrics").await;
    assert!(
        metrics.contains(&format!(
            r#"portcullis_jwks_refresh_total{{provider="{}",result="success"}}"#,
            s.provider
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_issuer_mismatch_is_refused() {
    let kp = KeyPair::generate(Algorithm::RS256);
    let idp = Idp::start(vec![kp.jwk("k1")]).await;
    idp.set(|s| s.claimed_issuer = Some("https://evil.example/".into()));
    let s = setup(idp, "discovery", "10m").await;
    // The discovery document was fetched and refused.
    wait_for_async("a failed key fetch to be counted", Duration::from_secs(5), || async {
        s.refreshes("failure").await >= 1
    })
    .await;
    assert!(s.idp.discovery_hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let t = token(&kp, "k1", &s.idp.issuer());
    s.call(&t).await.assert_error(503, "temporarily_unavailable");
    assert_eq!(
        s.idp.jwks_fetches(),
        0,
        "the JWKS of a mismatched issuer is never fetched"
    );
    let (status, body) = s.gw.admin("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains(&format!("providers.{}", s.provider)), "{body}");
    assert!(s.up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kid_triggers_one_shared_refetch() {
    let old = KeyPair::generate(Algorithm::ES256);
    let new = KeyPair::generate(Algorithm::ES256);
    let idp = Idp::start(vec![old.jwk("old")]).await;
    let s = setup(idp, "jwks_uri", "10m").await;
    assert_eq!(
        s.call_until(&token(&old, "old", &s.idp.issuer()), 200, Duration::from_secs(5))
            .await
            .status,
        200
    );
    let before = s.idp.jwks_fetches();

    // The provider rotates a key in; tokens with its kid arrive all at once.
    s.idp.set(|st| {
        st.keys.push(new.jwk("new"));
        st.delay = Duration::from_millis(300);
    });
    let t = token(&new, "new", &s.idp.issuer());
    let mut calls = Vec::new();
    for _ in 0..20 {
        let (addr, cert, t) = (s.gw.addr, s.gw.cert.clone(), t.clone());
        calls.push(tokio::spawn(async move {
            let auth = format!("Bearer {t}");
            Client::connect(addr, &cert, Proto::H1)
                .await
                .send(req("GET", "/orders", &[("authorization", &auth)], ""))
                .await
                .status
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    assert_eq!(
        s.idp.jwks_fetches() - before,
        1,
        "exactly one refetch for all concurrent requests"
    );

    // A kid that does not exist refetches at most once per 30 s.
    s.idp.set(|st| st.delay = Duration::ZERO);
    let ghost = KeyPair::generate(Algorithm::ES256);
    let before = s.idp.jwks_fetches();
    for _ in 0..5 {
        let t = token(&ghost, "ghost", &s.idp.issuer());
        s.call(&t).await.assert_error(401, "invalid_token");
    }
    assert!(
        s.idp.jwks_fetches() - before <= 1,
        "unknown kids must not hammer the provider"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_down_at_startup_then_up() {
    let kp = KeyPair::generate(Algorithm::RS256);
    let idp = Idp::start(vec![kp.jwk("k1")]).await;
    idp.set(|s| s.up = false);
    let s = setup(idp, "discovery", "10m").await;
    let t = token(&kp, "k1", &s.idp.issuer());
    let r = s.call(&t).await;
    r.assert_error(503, "temporarily_unavailable");
    assert_eq!(s.gw.admin("/readyz").await.0, 503);
    s.idp.set(|st| st.up = true);
    let r = s.call_until(&t, 200, Duration::from_secs(10)).await;
    assert_eq!(r.status, 200, "keys arrive once the provider is back: {}", r.text());
    assert_eq!(s.gw.admin("/readyz").await.0, 200);
    let (_, metrics) = s.gw.admin("/metrics").await;
    assert!(
        metrics.contains(&format!(
            r#"portcullis_jwks_refresh_total{{provider="{}",result="failure"}}"#,
            s.provider
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_keys_keep_working_while_the_provider_is_down() {
    let kp = KeyPair::generate(Algorithm::RS256);
    let idp = Idp::start(vec![kp.jwk("k1")]).await;
    let s = setup(idp, "jwks_uri", "1s").await;
    let t = token(&kp, "k1", &s.idp.issuer());
    assert_eq!(s.call_until(&t, 200, Duration::from_secs(5)).await.status, 200);
    s.idp.set(|st| st.up = false);
    let before = s.idp.jwks_fetches();
    // The refresher keeps trying (twice more, with jwks_refresh 1s).
    wait_for("two more key fetches", Duration::from_secs(10), || {
        s.idp.jwks_fetches() >= before + 2
    })
    .await;
    assert_eq!(s.call(&t).await.status, 200, "keys already held keep working");
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_key_is_rejected_after_refresh() {
    let a = KeyPair::generate(Algorithm::RS256);
    let b = KeyPair::generate(Algorithm::RS256);
    let idp = Idp::start(vec![a.jwk("a"), b.jwk("b")]).await;
    let s = setup(idp, "jwks_uri", "1s").await;
    let ta = token(&a, "a", &s.idp.issuer());
    assert_eq!(s.call_until(&ta, 200, Duration::from_secs(5)).await.status, 200);
    s.idp.set(|st| st.keys = vec![b.jwk("b")]);
    let r = s.call_until(&ta, 401, Duration::from_secs(5)).await;
    r.assert_error(401, "invalid_token");
    assert_eq!(s.call(&token(&b, "b", &s.idp.issuer())).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_control_max_age_shortens_the_refresh() {
    let a = KeyPair::generate(Algorithm::ES256);
    let idp = Idp::start(vec![a.jwk("a")]).await;
    idp.set(|st| st.cache_control = Some("public, max-age=1".into()));
    let s = setup(idp, "jwks_uri", "10m").await;
    let ta = token(&a, "a", &s.idp.issuer());
    assert_eq!(s.call_until(&ta, 200, Duration::from_secs(5)).await.status, 200);
    s.idp.set(|st| st.keys = vec![]);
    s.idp.set(|st| st.raw_jwks = Some(r#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"other"}]}"#.into()));
    let r = s.call_until(&ta, 401, Duration::from_secs(5)).await;
    assert_eq!(
        r.status, 401,
        "max-age=1 means the removal is seen within seconds, not after 10m"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_or_oversize_jwks_keeps_the_old_keys() {
    let kp = KeyPair::generate(Algorithm::RS256);
    let idp = Idp::start(vec![kp.jwk("k1")]).await;
    let s = setup(idp, "jwks_uri", "1s").await;
    let t = token(&kp, "k1", &s.idp.issuer());
    assert_eq!(s.call_until(&t, 200, Duration::from_secs(5)).await.status, 200);
    for bad in [
        "{not json".to_string(),
        r#"{"keys": "nope"}"#.to_string(),
        r#"{"keys": []}"#.to_string(),
        format!(r#"{{"keys": [], "pad": "{}"}}"#, "x".repeat(300 * 1024)),
    ] {
        let failures = s.refreshes("failure").await;
        s.idp.set(|st| st.raw_jwks = Some(bad.clone()));
        // Wait until the bad document has been processed (refused), not just served.
        wait_for_async("a failed key fetch to be counted", Duration::from_secs(5), || async {
            s.refreshes("failure").await > failures
        })
        .await;
        assert_eq!(
            s.call(&t).await.status,
            200,
            "old keys kept after a bad document ({} bytes)",
            bad.len()
        );
    }
}

/// Keys fetched for a provider whose configuration did not change survive a
/// reload: no refetch, and tokens keep working even if the provider is down.
#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_fetched_keys() {
    let kp = KeyPair::generate(Algorithm::RS256);
    let idp = Idp::start(vec![kp.jwk("k1")]).await;
    let s = setup(idp, "jwks_uri", "10m").await;
    let t = token(&kp, "k1", &s.idp.issuer());
    assert_eq!(s.call_until(&t, 200, Duration::from_secs(5)).await.status, 200);
    s.idp.set(|st| st.up = false);
    let fetches = s.idp.jwks_fetches();
    let yaml = std::fs::read_to_string(&s.gw.config_path).unwrap();
    std::fs::write(&s.gw.config_path, yaml.replace("name: orders", "name: orders-renamed")).unwrap();
    s.gw.reload().expect("reload");
    assert_eq!(s.call(&t).await.status, 200, "keys carried over the reload");
    assert_eq!(s.idp.jwks_fetches(), fetches, "no refetch caused by the reload");
}

/// Changing a remote provider's other settings (here `audiences`) on reload
/// keeps the keys it holds: a reload while the IdP is down must not turn
/// every protected route into a 503.
#[tokio::test(flavor = "multi_thread")]
async fn reload_of_other_provider_settings_keeps_fetched_keys() {
    let kp = KeyPair::generate(Algorithm::RS256);
    let idp = Idp::start(vec![kp.jwk("k1")]).await;
    let s = setup(idp, "jwks_uri", "10m").await;
    let t = token(&kp, "k1", &s.idp.issuer());
    assert_eq!(s.call_until(&t, 200, Duration::from_secs(5)).await.status, 200);
    s.idp.set(|st| st.up = false);
    let yaml = std::fs::read_to_string(&s.gw.config_path).unwrap();
    let changed = yaml.replace("audiences: [api]", "audiences: [other]");
    assert_ne!(changed, yaml);
    std::fs::write(&s.gw.config_path, changed).unwrap();
    s.gw.reload().expect("reload");
    // The new audience applies at once, with the keys held before the reload.
    s.call(&t).await.assert_error(401, "invalid_token");
    let other = kp.sign(
        &json!({"iss": s.idp.issuer(), "aud": "other", "sub": "u1", "scope": "orders:read", "exp": now() + 300}),
        Some("k1"),
    );
    let r = s.call(&other).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A reload reads the provider's CA file again, even when the configuration is
/// unchanged; the keys already fetched keep working meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn reload_uses_a_changed_ca_file_and_keeps_the_keys() {
    let (k1, k2) = (KeyPair::generate(Algorithm::RS256), KeyPair::generate(Algorithm::RS256));
    let idp = Idp::start(vec![k1.jwk("k1")]).await;
    let s = setup(idp, "jwks_uri", "10m").await;
    let (t1, t2) = (token(&k1, "k1", &s.idp.issuer()), token(&k2, "k2", &s.idp.issuer()));
    assert_eq!(s.call_until(&t1, 200, Duration::from_secs(5)).await.status, 200);
    s.idp.set(|st| st.keys.push(k2.jwk("k2")));

    // A CA that does not sign the IdP's certificate: fetching fails from now on.
    let ca_path = s.gw.config_path.parent().unwrap().join("idp-ca.pem");
    std::fs::write(&ca_path, tls_acceptor().1).unwrap();
    s.gw.reload().expect("reload");
    assert_eq!(s.call(&t1).await.status, 200, "the keys already held are kept");
    assert_eq!(
        s.call(&t2).await.status,
        401,
        "the unknown kid's refetch goes through the new CA, which refuses the IdP"
    );

    std::fs::write(&ca_path, &s.idp.ca_pem).unwrap();
    s.gw.reload().expect("reload");
    assert_eq!(s.call_until(&t2, 200, Duration::from_secs(5)).await.status, 200);
}
