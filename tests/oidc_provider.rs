//! Interoperability with a real identity provider: panva's `oidc-provider`
//! (npm, run with Node from Debian) issuing opaque and JWT access tokens by
//! client credentials, with RFC 7662 introspection and RFC 7009 revocation.
//! The gateway finds both endpoints through discovery, introspects the opaque
//! tokens with its own client, and verifies the provider's JWTs locally.
//!
//! `.ci/run` installs Node and runs `npm ci` in tests/interop/oidc-provider;
//! elsewhere the test says what is missing and passes over (see
//! `support::require`).

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;

const INTEROP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/oidc-provider");

/// Node, and the provider's npm packages, or the test passes over (loudly).
fn have_oidc_provider() -> bool {
    if !require("node", "nodejs npm") {
        return false;
    }
    if Path::new(INTEROP_DIR).join("node_modules/oidc-provider").is_dir() {
        return true;
    }
    let fix = format!("run `npm ci` in {INTEROP_DIR}");
    if std::env::var("PORTCULLIS_TEST_REQUIRE").as_deref() == Ok("all") {
        panic!("the npm package oidc-provider is required (PORTCULLIS_TEST_REQUIRE=all) but not installed: {fix}");
    }
    eprintln!("\n*** oidc-provider is not installed: the interop test is SKIPPED. To run it, {fix}.\n");
    false
}

struct IdentityProvider {
    child: Child,
    port: u16,
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl IdentityProvider {
    fn start() -> IdentityProvider {
        use std::io::BufRead;
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(INTEROP_DIR)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.parse::<u16>().unwrap());
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(30)).expect("oidc-provider listens");
        IdentityProvider { child, port }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// POST a form to the provider as the `shop` client; the JSON answer.
    async fn post(&self, path: &str, form: &str) -> (u16, Value) {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::post(path)
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/x-www-form-urlencoded")
            // base64("shop:shop-secret")
            .header("authorization", "Basic c2hvcDpzaG9wLXNlY3JldA==")
            .body(Full::new(Bytes::from(form.to_string())))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn token(&self, form: &str) -> String {
        let (status, answer) = self.post("/token", form).await;
        assert_eq!(status, 200, "{answer}");
        answer["access_token"].as_str().unwrap().to_string()
    }
}

fn sample(series: &str) -> f64 {
    portcullis::metrics::render(false)
        .lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn opaque_tokens_from_oidc_provider_are_introspected_and_its_jwts_verified_locally() {
    if !have_oidc_provider() {
        return;
    }
    let idp = IdentityProvider::start();
    let up = RecordingUpstream::start("orders").await;
    let dir = GatewayDir::new();
    std::fs::write(
        dir.path().join("introspection-secret"),
        "portcullis-introspection-secret",
    )
    .unwrap();
    let yaml = format!(
        r#"{}providers:
  node-oidc:
    issuer: {}
    discovery: true
    audiences: [orders-api]
    subject_claim: client_id
    introspection:
      client_id: portcullis
      client_secret_file: introspection-secret
      cache_ttl: 2s
upstreams:
  orders:
    targets: [{}]
routes:
  - name: interop-orders
    match: {{ path: /orders }}
    upstream: orders
    auth: {{ scopes: [orders:read] }}
  - name: interop-admin
    match: {{ path: /admin }}
    upstream: orders
    auth: {{ scopes: [admin] }}
"#,
        header(""),
        idp.issuer(),
        up.url()
    );
    let gw = dir.start(&yaml).await;
    let call = |token: String, path: &'static str| {
        let gw = &gw;
        async move {
            let auth = format!("Bearer {token}");
            gw.client(Proto::H1)
                .await
                .send(req("GET", path, &[("authorization", &auth)], ""))
                .await
        }
    };

    // An opaque token (the provider's default format for this resource).
    let opaque = idp.token("grant_type=client_credentials&scope=orders:read").await;
    assert_eq!(opaque.split('.').count(), 1, "opaque, not a JWT: {opaque}");
    // The gateway learns the introspection endpoint through discovery.
    wait_for_async(
        "the request to be let through (200)",
        Duration::from_secs(10),
        || async { call(opaque.clone(), "/orders").await.status == 200 },
    )
    .await;
    let seen = up.last();
    assert_eq!(seen.headers["x-auth-subject"], "shop");
    assert_eq!(seen.headers["x-auth-scopes"], "orders:read");
    call(opaque.clone(), "/admin")
        .await
        .assert_error(403, "insufficient_scope");
    let calls = |result: &str| {
        sample(&format!(
            r#"portcullis_introspection_requests_total{{provider="node-oidc",result="{result}"}}"#
        ))
    };
    let active_calls = calls("active");
    assert!(active_calls >= 1.0);

    // A JWT from the same provider is verified with its JWKS, never introspected.
    let jwt = idp
        .token("grant_type=client_credentials&scope=orders:read&resource=https://jwt.orders.example.com")
        .await;
    assert_eq!(jwt.split('.').count(), 3, "a JWT: {jwt}");
    assert_eq!(call(jwt, "/orders").await.status, 200);
    assert_eq!(calls("active") + calls("inactive"), active_calls, "no call for a JWT");

    // Revoked at the provider: served from the cache until it expires (2 s),
    // then the provider's "inactive" refuses it.
    let (status, _) = idp.post("/token/revocation", &format!("token={opaque}")).await;
    assert_eq!(status, 200);
    let revoked_at = std::time::Instant::now();
    wait_for_async("the token to be refused (401)", Duration::from_secs(10), || async {
        call(opaque.clone(), "/orders").await.status == 401
    })
    .await;
    assert!(
        revoked_at.elapsed() <= Duration::from_secs(5),
        "{:?}",
        revoked_at.elapsed()
    );
    let r = call(opaque.clone(), "/orders").await;
    r.assert_error(401, "invalid_token");
    assert!(calls("inactive") >= 1.0);
    // A token the provider never issued.
    call("NotATokenTheProviderIssued".into(), "/orders")
        .await
        .assert_error(401, "invalid_token");
}
