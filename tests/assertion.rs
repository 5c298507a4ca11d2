//! The signed identity assertion (`identity.assertion`): verified here
//! independently with jsonwebtoken against the JWKS the gateway publishes on
//! both listeners, claim by claim; rotation across a reload; the incoming
//! header stripped; reuse that never crosses tokens or upstreams; and
//! `bind_request` over HTTP/1.1 and HTTP/2.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use support::tokens::*;
use support::*;

const ISSUER: &str = "https://gateway.example.com";

fn key_pem(alg: &'static rcgen::SignatureAlgorithm) -> String {
    rcgen::KeyPair::generate_for(alg).unwrap().serialize_pem()
}

fn config(up_a: &str, up_b: &str, keys: &[&str], extra: &str) -> String {
    format!(
        r#"{}providers:
  app:
    issuer: https://id.example.com/
    secret_file: app.secret
identity:
  claims:
    X-Auth-Email: email
  assertion:
    key_files: [{}]
    issuer: {ISSUER}
    ttl: 60s
    claims: [email, /realm_access/roles]
{extra}upstreams:
  orders: {{ targets: ["{up_a}"] }}
  billing: {{ targets: ["{up_b}"] }}
routes:
  - {{ name: orders, match: {{ path: /orders }}, upstream: orders, strip_prefix: /orders, auth: {{ scopes: [orders:read] }} }}
  - {{ name: billing, match: {{ path: /billing }}, upstream: billing, auth: {{}} }}
  - {{ name: watched, match: {{ path: /watched }}, upstream: orders, auth: {{ scopes: [admin], mode: monitor }} }}
  - {{ name: open, match: {{ path: /open }}, upstream: orders, public: true }}
"#,
        header_with_admin(),
        keys.join(", ")
    )
}

struct Setup {
    gw: TestGateway,
    orders: RecordingUpstream,
    billing: RecordingUpstream,
}

async fn setup(keys: &[(&str, String)], extra: &str) -> Setup {
    let orders = RecordingUpstream::start("orders").await;
    let billing = RecordingUpstream::start("billing").await;
    let dir = GatewayDir::new();
    for (name, pem) in keys {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
    let yaml = config(&orders.url(), &billing.url(), &names, extra);
    let gw = dir.start(&yaml).await;
    Setup { gw, orders, billing }
}

fn token(claims: Value) -> String {
    let mut all = json!({"iss": "https://id.example.com/", "scope": "orders:read",
        "email": "alice@example.com", "realm_access": {"roles": ["reader", "auditor"]}});
    all.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
    support::tokens::token(all)
}

async fn call(gw: &TestGateway, proto: Proto, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    gw.client(proto).await.send(req("GET", path, &headers, "")).await
}

async fn jwks(gw: &TestGateway) -> Value {
    let r = gw.get("/.well-known/portcullis/jwks.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    let (status, admin) = gw.admin("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    let admin: Value = serde_json::from_str(&admin).unwrap();
    assert_eq!(admin, r.json(), "both listeners publish the same keys");
    admin
}

/// The RFC 7638 thumbprint, computed here from the JWK's public members.
fn thumbprint(jwk: &Value) -> String {
    let canonical = match jwk["kty"].as_str().unwrap() {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["crv"].as_str().unwrap(),
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        ),
        _ => format!(
            r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
            jwk["crv"].as_str().unwrap(),
            jwk["x"].as_str().unwrap()
        ),
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Verify an assertion against the published keys, as an upstream would.
fn verify(assertion: &str, keys: &Value, audience: &str) -> (jsonwebtoken::Header, Value) {
    let header = jsonwebtoken::decode_header(assertion).unwrap();
    let kid = header.kid.clone().expect("a kid");
    let jwk = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} is not published: {keys}"));
    assert_eq!(thumbprint(jwk), kid, "kid is the RFC 7638 thumbprint");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    let mut v = Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[ISSUER]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(assertion, &DecodingKey::from_jwk(&jwk).unwrap(), &v)
        .unwrap_or_else(|e| panic!("the assertion does not verify: {e}"));
    (data.header, data.claims)
}

fn assertion_of(up: &RecordingUpstream) -> Option<String> {
    up.last()
        .headers
        .get("x-portcullis-assertion")
        .map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_forwarded_identity_carries_a_verifiable_assertion() {
    let s = setup(&[("sign.pem", key_pem(&rcgen::PKCS_ECDSA_P256_SHA256))], "").await;
    let keys = jwks(&s.gw).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    assert_eq!(keys["keys"][0]["alg"], "ES256");
    assert_eq!(keys["keys"][0]["use"], "sig");
    assert!(keys["keys"][0].get("d").is_none(), "no private part is published");

    let t = token(json!({"exp": now() + 600}));
    let before = now();
    let r = call(&s.gw, Proto::H1, "/orders/7", Some(&t), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let assertion = assertion_of(&s.orders).expect("an assertion");
    let (header, claims) = verify(&assertion, &keys, "orders");
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], "orders");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["roles"], json!(["reader", "auditor"]));
    let iat = claims["iat"].as_u64().unwrap();
    assert!(iat >= before && iat <= now(), "{claims}");
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 60, "{claims}");
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16), "{claims}");
    assert!(
        claims.get("htm").is_none() && claims.get("realm_access").is_none(),
        "{claims}"
    );

    // Never past the token's own exp.
    let short = token(json!({"exp": now() + 20}));
    call(&s.gw, Proto::H1, "/orders/8", Some(&short), &[]).await;
    let (_, claims) = verify(&assertion_of(&s.orders).unwrap(), &keys, "orders");
    assert_eq!(claims["exp"].as_u64().unwrap(), now_exp(&short));

    // A public route carries none, and a client's own is never forwarded.
    call(&s.gw, Proto::H1, "/open", None, &[("x-portcullis-assertion", "forged")]).await;
    assert!(s.orders.last().headers.get("x-portcullis-assertion").is_none());
    call(
        &s.gw,
        Proto::H1,
        "/open",
        Some(&t),
        &[("X-Portcullis-Assertion", "forged")],
    )
    .await;
    assert!(s.orders.last().headers.get("x-portcullis-assertion").is_none());
    // A monitor-mode denial is forwarded without one; what the route allows has one.
    call(&s.gw, Proto::H1, "/watched", Some(&t), &[]).await;
    assert!(s.orders.last().headers.get("x-portcullis-assertion").is_none());
    let admin = token(json!({"scope": "admin"}));
    call(
        &s.gw,
        Proto::H1,
        "/watched",
        Some(&admin),
        &[("x-portcullis-assertion", "forged")],
    )
    .await;
    let (_, claims) = verify(&assertion_of(&s.orders).unwrap(), &keys, "orders");
    assert_eq!(claims["scope"], "admin");
}

fn now_exp(token: &str) -> u64 {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["exp"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_assertion_is_reused_for_one_token_and_one_upstream_only() {
    let s = setup(&[("sign.pem", key_pem(&rcgen::PKCS_ECDSA_P256_SHA256))], "").await;
    let keys = jwks(&s.gw).await;
    let alice = token(json!({}));
    let bob = token(json!({"sub": "bob"}));
    let mut seen = Vec::new();
    for (path, t, up) in [
        ("/orders/1", &alice, &s.orders),
        ("/orders/2", &alice, &s.orders),
        ("/orders/3", &bob, &s.orders),
        ("/billing", &alice, &s.billing),
    ] {
        // One kept-alive connection each time: reuse does not depend on it.
        assert_eq!(call(&s.gw, Proto::H1, path, Some(t), &[]).await.status, 200);
        seen.push(assertion_of(up).unwrap());
    }
    assert_eq!(seen[0], seen[1], "the same token and upstream: reused");
    assert_ne!(seen[0], seen[2], "another token: another assertion");
    assert_ne!(seen[0], seen[3], "another upstream: another assertion");
    assert_eq!(verify(&seen[2], &keys, "orders").1["sub"], "bob");
    assert_eq!(verify(&seen[3], &keys, "billing").1["aud"], "billing");
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_request_adds_the_method_and_url_over_h1_and_h2() {
    let s = setup(&[("ed.pem", key_pem(&rcgen::PKCS_ED25519))], "    bind_request: true\n").await;
    let keys = jwks(&s.gw).await;
    assert_eq!(keys["keys"][0]["alg"], "EdDSA");
    let t = token(json!({}));
    let mut jtis = Vec::new();
    for proto in [Proto::H1, Proto::H2] {
        let r = call(&s.gw, proto, "/orders/7?page=2", Some(&t), &[]).await;
        assert_eq!(r.status, 200);
        let (header, claims) = verify(&assertion_of(&s.orders).unwrap(), &keys, "orders");
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(claims["htm"], "GET");
        // As forwarded: after strip_prefix, without the query.
        assert_eq!(claims["htu"], "https://localhost/7", "{proto:?}");
        jtis.push(claims["jti"].as_str().unwrap().to_string());
    }
    assert_ne!(jtis[0], jtis[1], "bound assertions are never reused");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_by_reload_publishes_both_keys_and_signs_with_the_first() {
    let old = key_pem(&rcgen::PKCS_ECDSA_P256_SHA256);
    let new = key_pem(&rcgen::PKCS_ED25519);
    let s = setup(&[("old.pem", old), ("new.pem", new)], "").await;
    let t = token(json!({}));
    let keys = jwks(&s.gw).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    call(&s.gw, Proto::H1, "/orders/1", Some(&t), &[]).await;
    let (header, _) = verify(&assertion_of(&s.orders).unwrap(), &keys, "orders");
    let old_kid = header.kid.unwrap();
    assert_eq!(keys["keys"][0]["kid"], old_kid.as_str(), "the first key signs");

    // Put the new key first and reload: it signs, the old one stays published.
    let text = std::fs::read_to_string(&s.gw.config_path)
        .unwrap()
        .replace("key_files: [old.pem, new.pem]", "key_files: [new.pem, old.pem]");
    std::fs::write(&s.gw.config_path, text).unwrap();
    s.gw.reload().unwrap();
    let keys = jwks(&s.gw).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    call(&s.gw, Proto::H1, "/orders/2", Some(&t), &[]).await;
    let (header, _) = verify(&assertion_of(&s.orders).unwrap(), &keys, "orders");
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_ne!(header.kid.unwrap(), old_kid);
    // Once unlisted, the old key is no longer published.
    let text = std::fs::read_to_string(&s.gw.config_path)
        .unwrap()
        .replace("key_files: [new.pem, old.pem]", "key_files: [new.pem]");
    std::fs::write(&s.gw.config_path, text).unwrap();
    s.gw.reload().unwrap();
    let keys = jwks(&s.gw).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    assert_ne!(keys["keys"][0]["kid"], old_kid.as_str());
}

#[test]
fn bad_assertion_settings_are_one_line_each() {
    let d = GatewayDir::new();
    std::fs::write(d.path().join("ec.pem"), key_pem(&rcgen::PKCS_ECDSA_P256_SHA256)).unwrap();
    std::fs::write(d.path().join("p384.pem"), key_pem(&rcgen::PKCS_ECDSA_P384_SHA384)).unwrap();
    std::fs::write(
        d.path().join("cert-as-key.pem"),
        std::fs::read(d.path().join("cert.pem")).unwrap(),
    )
    .unwrap();
    let cases = [
        ("key_files: []", "identity.assertion.key_files: the list is empty"),
        (
            "key_files: [missing.pem]",
            "identity.assertion.key_files[0]: cannot read",
        ),
        ("key_files: [ec.pem, p384.pem]", "identity.assertion.key_files[1]: "),
        ("key_files: [cert-as-key.pem]", "not a PKCS#8 PEM private key"),
        (
            "key_files: [ec.pem]\n    ttl: 2h",
            "identity.assertion.ttl: must be between 1s and 1h",
        ),
        (
            "key_files: [ec.pem]\n    claims: [/a/sub]",
            "\"sub\" is a claim the gateway sets itself",
        ),
        (
            "key_files: [ec.pem]\n    header: Authorization",
            "a header the gateway or HTTP itself controls",
        ),
        ("key_files: [ec.pem]\n    header: X-Auth-Subject", "used twice"),
        ("key_files: [ec.pem]\n    sign_with: rsa", "unknown field `sign_with`"),
    ];
    for (block, said) in cases {
        let yaml = format!(
            "listen: {{ https: 127.0.0.1:0 }}\ntls: {{ cert: cert.pem, key: key.pem }}\nproviders:\n  app: {{ secret_file: app.secret }}\nidentity:\n  assertion:\n    issuer: {ISSUER}\n    {block}\nupstreams:\n  app: {{ targets: [\"http://127.0.0.1:9\"] }}\nroutes:\n  - {{ name: r, match: {{ path: / }}, upstream: app, auth: {{}} }}\n"
        );
        std::fs::write(d.path().join("gateway.yaml"), &yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "-c", "gateway.yaml"])
            .current_dir(d.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{block}: {err}");
        assert!(err.contains(said), "{block}\nsaid: {err}\nshould say: {said}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            !err.contains("-----BEGIN") && !err.contains("MII"),
            "key material in an error: {err}"
        );
    }
}
