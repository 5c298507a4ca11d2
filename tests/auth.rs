//! Authentication and authorisation over real sockets (docs/request-lifecycle.md, docs/errors.md):
//! tokens signed in the test with freshly generated keys.

mod support;

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};
use support::tokens::*;
use support::*;

const FASTAPI_SECRET: &str = "fastapi-app-secret-key-0123456789abcdef";
const HS_SECRET: &str = "a-shared-secret-of-decent-length-0123456789";

struct Setup {
    gw: TestGateway,
    up: RecordingUpstream,
    rsa: KeyPair,
    ec: KeyPair,
    ec384: KeyPair,
    ed: KeyPair,
    rsa2: KeyPair,
}

fn claims(iss: &str, scope: &str) -> Value {
    json!({ "iss": iss, "aud": "api", "sub": "alice", "scope": scope, "exp": now() + 300, "email": "alice@example.com" })
}

async fn setup() -> Setup {
    setup_with("").await
}

async fn setup_with(identity_extra: &str) -> Setup {
    let up = RecordingUpstream::start("app").await;
    let (rsa, ec, ec384, ed, rsa2) = (
        KeyPair::generate(Algorithm::RS256),
        KeyPair::generate(Algorithm::ES256),
        KeyPair::generate(Algorithm::ES384),
        KeyPair::generate(Algorithm::EdDSA),
        KeyPair::generate(Algorithm::RS256),
    );
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("rsa.pub.pem"), &rsa.public_pem).unwrap();
    std::fs::write(dir.path().join("ec.pub.pem"), &ec.public_pem).unwrap();
    std::fs::write(dir.path().join("hs.secret"), format!("{HS_SECRET}\n")).unwrap();
    std::fs::write(dir.path().join("fastapi.secret"), FASTAPI_SECRET).unwrap();
    let set = jwks(&[ec.jwk("ec1"), ec384.jwk("ec384"), ed.jwk("ed1"), rsa2.jwk("rsa2")]);
    std::fs::write(dir.path().join("jwks.json"), set).unwrap();
    let yaml = format!(
        r#"{header}providers:
  rsa:
    issuer: https://rsa.test/
    audiences: [api]
    public_key_file: rsa.pub.pem
  jwks:
    issuer: https://jwks.test/
    audiences: [api, other]
    jwks_file: jwks.json
  hs:
    issuer: https://hs.test/
    audiences: [api]
    secret_file: hs.secret
    algorithms: [HS256, HS384, HS512]
    leeway: 0s
  fastapi:
    secret_file: fastapi.secret
    algorithms: [HS256]
  typed:
    issuer: https://typed.test/
    audiences: [api]
    public_key_file: ec.pub.pem
    typ: at+jwt
    scope_claims: [permissions]
    subject_claim: client_id
  remote:
    issuer: https://remote.test/
    audiences: [api]
    jwks_uri: http://127.0.0.1:1/jwks.json
identity:
  claims:
    X-Auth-Email: email
    X-Auth-Groups: groups
{identity_extra}upstreams:
  app:
    targets: [{up}]
routes:
  - name: orders
    match: {{ path: /orders }}
    upstream: app
    auth: {{ scopes: [orders:read] }}
  - name: admin
    match: {{ path: /admin }}
    upstream: app
    auth: {{ scopes: [orders:read], any_scopes: [admin, ops] }}
  - name: rsa-only
    match: {{ path: /rsa-only }}
    upstream: app
    auth: {{ providers: [rsa] }}
  - name: typed
    match: {{ path: /typed }}
    upstream: app
    auth: {{ providers: [typed], scopes: [read:orders] }}
  - name: remote
    match: {{ path: /remote }}
    upstream: app
    auth: {{ providers: [remote] }}
  - name: public
    match: {{ path: /public }}
    upstream: app
    public: true
"#,
        header = header(""),
        up = up.url()
    );
    let gw = dir.start(&yaml).await;
    Setup {
        gw,
        up,
        rsa,
        ec,
        ec384,
        ed,
        rsa2,
    }
}

impl Setup {
    async fn call(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.gw
            .client(Proto::H1)
            .await
            .send(req("GET", path, headers, ""))
            .await
    }

    async fn with_token(&self, path: &str, token: &str) -> Reply {
        self.call(path, &[("authorization", &format!("Bearer {token}"))]).await
    }
}

fn assert_invalid_token(r: &Reply, token: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    r.assert_error(401, "invalid_token");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with(r#"Bearer realm="portcullis", error="invalid_token", error_description=""#),
        "{what}: {challenge}"
    );
    assert!(
        !r.text().contains(token) && !challenge.contains(token),
        "{what}: the token is echoed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_algorithm_family_is_accepted() {
    let s = setup().await;
    let mut cases: Vec<(&str, String)> = vec![
        (
            "RS256 PEM",
            s.rsa.sign(&claims("https://rsa.test/", "orders:read"), None),
        ),
        (
            // IdPs put a `kid` in every token; a PEM key has none, so it fits any.
            "RS256 PEM, token with a kid",
            s.rsa
                .sign(&claims("https://rsa.test/", "orders:read"), Some("idp-key-7")),
        ),
        (
            "ES256 JWKS",
            s.ec.sign(&claims("https://jwks.test/", "orders:read"), Some("ec1")),
        ),
        (
            "ES384 JWKS",
            s.ec384
                .sign(&claims("https://jwks.test/", "orders:read"), Some("ec384")),
        ),
        (
            "EdDSA JWKS",
            s.ed.sign(&claims("https://jwks.test/", "orders:read"), Some("ed1")),
        ),
        (
            "RS256 JWKS",
            s.rsa2.sign(&claims("https://jwks.test/", "orders:read"), Some("rsa2")),
        ),
    ];
    for alg in [Algorithm::PS256, Algorithm::RS512, Algorithm::PS512] {
        let mut h = Header::new(alg);
        h.kid = None;
        let t = jsonwebtoken::encode(&h, &claims("https://rsa.test/", "orders:read"), &s.rsa.signing).unwrap();
        cases.push(("RSA variants", t));
    }
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        cases.push((
            "HMAC",
            hs_sign(alg, HS_SECRET.as_bytes(), &claims("https://hs.test/", "orders:read")),
        ));
    }
    for (what, token) in cases {
        let r = s.with_token("/orders/1", &token).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let seen = s.up.last();
        assert_eq!(seen.headers["x-auth-subject"], "alice", "{what}");
        assert_eq!(seen.headers["x-auth-scopes"], "orders:read", "{what}");
        assert_eq!(seen.headers["x-auth-email"], "alice@example.com", "{what}");
        assert!(
            !seen.headers.contains_key("authorization"),
            "{what}: Authorization is dropped by default"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_and_malformed_credentials() {
    let s = setup().await;
    let r = s.call("/orders", &[]).await;
    r.assert_error(401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some(r#"Bearer realm="portcullis""#));
    // Other schemes and tokens elsewhere carry no bearer token.
    let token = s.rsa.sign(&claims("https://rsa.test/", "orders:read"), None);
    for headers in [
        vec![("authorization", "Basic dXNlcjpwYXNz".to_string())],
        vec![("cookie", format!("access_token={token}"))],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.call("/orders", &h).await.assert_error(401, "unauthorized");
    }
    s.call(&format!("/orders?access_token={token}"), &[])
        .await
        .assert_error(401, "unauthorized");
    // Bearer with nothing usable, or two Authorization headers: 400.
    for bad in ["Bearer", "Bearer ", "Bearer two words", "Bearer \"quoted\""] {
        s.call("/orders", &[("authorization", bad)])
            .await
            .assert_error(400, "invalid_request");
    }
    let auth = format!("Bearer {token}");
    s.call("/orders", &[("authorization", &auth), ("authorization", &auth)])
        .await
        .assert_error(400, "invalid_request");
    // Scheme is case-insensitive.
    assert_eq!(
        s.call("/orders", &[("authorization", &format!("bEaReR {token}"))])
            .await
            .status,
        200
    );
    assert!(s.up.requests().iter().all(|r| r.path_and_query == "/orders"));
    assert_eq!(s.up.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn claim_checks() {
    let s = setup().await;
    let iss = "https://rsa.test/";
    let n = now();
    let base = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = claims(iss, "orders:read");
        f(c.as_object_mut().unwrap());
        c
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            "expired beyond leeway",
            base(&|c| {
                c.insert("exp".into(), json!(n - 60));
            }),
        ),
        (
            "no exp",
            base(&|c| {
                c.remove("exp");
            }),
        ),
        (
            "exp as a string",
            base(&|c| {
                c.insert("exp".into(), json!("9999999999"));
            }),
        ),
        (
            "nbf in the future",
            base(&|c| {
                c.insert("nbf".into(), json!(n + 600));
            }),
        ),
        (
            "iat in the future (it would escape a revocation of everything issued before now)",
            base(&|c| {
                c.insert("iat".into(), json!(n + 600));
            }),
        ),
        (
            "nbf as a string",
            base(&|c| {
                c.insert("nbf".into(), json!("0"));
            }),
        ),
        (
            "wrong audience",
            base(&|c| {
                c.insert("aud".into(), json!("someone-else"));
            }),
        ),
        (
            "no audience",
            base(&|c| {
                c.remove("aud");
            }),
        ),
        (
            "iss as an array",
            base(&|c| {
                c.insert("iss".into(), json!([iss]));
            }),
        ),
        (
            "unknown issuer",
            base(&|c| {
                c.insert("iss".into(), json!("https://evil.test/"));
            }),
        ),
        (
            "issuer without trailing slash",
            base(&|c| {
                c.insert("iss".into(), json!("https://rsa.test"));
            }),
        ),
    ];
    for (what, c) in cases {
        let token = s.rsa.sign(&c, None);
        assert_invalid_token(&s.with_token("/orders", &token).await, &token, what);
    }
    // Within leeway is fine.
    let token = s.rsa.sign(
        &base(&|c| {
            c.insert("exp".into(), json!(n - 10));
            c.insert("nbf".into(), json!(n + 10));
        }),
        None,
    );
    assert_eq!(s.with_token("/orders", &token).await.status, 200);
    // aud as an array that contains one accepted audience.
    let token = s.rsa.sign(
        &base(&|c| {
            c.insert("aud".into(), json!(["x", "api"]));
        }),
        None,
    );
    assert_eq!(s.with_token("/orders", &token).await.status, 200);
    assert_eq!(s.up.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn attacks_are_rejected() {
    let s = setup().await;
    let iss = "https://rsa.test/";
    let c = claims(iss, "orders:read admin");
    let attacker = KeyPair::generate(Algorithm::RS256);
    let mut attacks: Vec<(String, String)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        attacks.push((
            format!("alg {alg}"),
            raw_token(&json!({"alg": alg, "typ": "JWT"}), &c, b""),
        ));
    }
    // A valid RS256 token with its signature removed.
    let good = s.rsa.sign(&c, None);
    let unsigned = format!("{}.", good.rsplit_once('.').unwrap().0);
    attacks.push(("empty signature".into(), unsigned));
    // HS256 signed with the RSA public key PEM as the HMAC secret (key confusion).
    attacks.push((
        "HS256 with the public key as secret".into(),
        hs_sign(Algorithm::HS256, s.rsa.public_pem.as_bytes(), &c),
    ));
    // ECDSA signature of zeros (CVE-2022-21449 "psychic signatures").
    attacks.push((
        "ES256 zero signature".into(),
        raw_token(
            &json!({"alg": "ES256", "kid": "ec1"}),
            &claims("https://jwks.test/", "orders:read"),
            &[0u8; 64],
        ),
    ));
    // Headers that try to supply the key.
    let mut h = Header::new(Algorithm::RS256);
    h.jwk = Some(serde_json::from_value(attacker.jwk("attacker")).unwrap());
    attacks.push(("embedded jwk".into(), attacker.sign_with_header(&h, &c)));
    let mut h = Header::new(Algorithm::RS256);
    h.jku = Some("https://evil.test/jwks.json".into());
    h.kid = Some("attacker".into());
    attacks.push(("jku".into(), attacker.sign_with_header(&h, &c)));
    let mut h = Header::new(Algorithm::RS256);
    h.x5u = Some("https://evil.test/cert.pem".into());
    attacks.push(("x5u".into(), attacker.sign_with_header(&h, &c)));
    // kid path traversal and unknown kids.
    attacks.push((
        "kid traversal".into(),
        attacker.sign(&claims("https://jwks.test/", "orders:read"), Some("../../dev/null")),
    ));
    attacks.push((
        "unknown kid".into(),
        s.ec.sign(&claims("https://jwks.test/", "orders:read"), Some("nope")),
    ));
    // A known kid with another key's signature.
    attacks.push((
        "wrong key for kid".into(),
        attacker.sign(&claims("https://jwks.test/", "orders:read"), Some("rsa2")),
    ));
    attacks.push(("signature from another key".into(), attacker.sign(&c, None)));
    // crit names an extension.
    let mut h = Header::new(Algorithm::RS256);
    h.crit = Some(vec!["x".into()]);
    h.extras.insert("x", true);
    attacks.push(("crit".into(), s.rsa.sign_with_header(&h, &c)));
    // An algorithm the key was not published for (ES384 token on the P-256 kid).
    attacks.push((
        "alg/kid mismatch".into(),
        s.ec384.sign(&claims("https://jwks.test/", "orders:read"), Some("ec1")),
    ));
    // Not a JWT at all.
    attacks.push(("garbage".into(), "not-a-jwt".into()));
    attacks.push(("garbage parts".into(), "a.b.c".into()));
    // The HS provider with a token signed by the wrong secret.
    attacks.push((
        "wrong HMAC secret".into(),
        hs_sign(Algorithm::HS256, b"guess", &claims("https://hs.test/", "orders:read")),
    ));
    // A RS256 token for the HS provider (algorithms pinned to HS*).
    attacks.push((
        "RS256 for an HMAC provider".into(),
        s.rsa.sign(&claims("https://hs.test/", "orders:read"), None),
    ));

    for (what, token) in &attacks {
        let r = s.with_token("/admin", token).await;
        assert_invalid_token(&r, token, what);
    }
    assert!(s.up.requests().is_empty(), "an attack reached the upstream");
    // Sanity: the same claims with a genuine signature pass.
    assert_eq!(s.with_token("/admin", &good).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_and_any_scopes() {
    let s = setup().await;
    let iss = "https://rsa.test/";
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (json!({"scope": "orders:read admin"}), 200, None),
        (json!({"scp": ["orders:read", "ops"]}), 200, None),
        (json!({"scopes": ["ops"], "scope": "orders:read"}), 200, None),
        (json!({"scope": "orders:write admin"}), 403, Some("orders:read")),
        (json!({"scope": "orders:read"}), 403, Some("admin ops")),
        (json!({}), 403, Some("orders:read")),
        (
            json!({"scope": ["orders:read", "admin"], "permissions": "x"}),
            200,
            None,
        ),
    ];
    for (extra, status, scope) in cases {
        let mut c = json!({"iss": iss, "aud": "api", "sub": "bob", "exp": now() + 60});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        let token = s.rsa.sign(&c, None);
        let before = s.up.requests().len();
        let r = s.with_token("/admin", &token).await;
        assert_eq!(r.status.as_u16(), status, "{extra}: {}", r.text());
        let forwarded = usize::from(status == 200);
        assert_eq!(s.up.requests().len(), before + forwarded, "{extra}: upstream calls");
        if let Some(scope) = scope {
            r.assert_error(403, "insufficient_scope");
            let want = format!(r#"Bearer realm="portcullis", error="insufficient_scope", scope="{scope}""#);
            assert_eq!(r.header("www-authenticate"), Some(want.as_str()), "{extra}");
        }
    }
    let seen = s.up.last();
    assert_eq!(
        seen.headers["x-auth-scopes"], "admin orders:read",
        "normalised: sorted, de-duplicated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_are_restricted_per_route_and_typ_is_enforced() {
    let s = setup().await;
    // A valid token from the jwks provider on a route that allows only rsa.
    let token = s.ec.sign(&claims("https://jwks.test/", "orders:read"), Some("ec1"));
    assert_eq!(s.with_token("/orders", &token).await.status, 200);
    assert_invalid_token(&s.with_token("/rsa-only", &token).await, &token, "provider not allowed");
    assert_eq!(
        s.up.requests().len(),
        1,
        "the refused request never reached the upstream"
    );

    // typ at+jwt, permissions as the scope claim, client_id as the subject.
    let c = json!({"iss": "https://typed.test/", "aud": "api", "client_id": "svc-7", "permissions": ["read:orders"], "exp": now() + 60});
    let plain = s.ec.sign(&c, None);
    assert_invalid_token(&s.with_token("/typed", &plain).await, &plain, "typ missing");
    assert_eq!(
        s.up.requests().len(),
        1,
        "the refused request never reached the upstream"
    );
    let mut h = Header::new(Algorithm::ES256);
    h.typ = Some("at+jwt".into());
    let typed = s.ec.sign_with_header(&h, &c);
    let r = s.with_token("/typed", &typed).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.last().headers["x-auth-subject"], "svc-7");
    assert_eq!(s.up.last().headers["x-auth-scopes"], "read:orders");
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_without_keys_answers_503() {
    let s = setup().await;
    let token = s.rsa.sign(&claims("https://remote.test/", ""), None);
    let r = s.with_token("/remote", &token).await;
    r.assert_error(503, "temporarily_unavailable");
    assert!(s.up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_headers_and_spoofing() {
    let s = setup().await;
    let spoof = [
        ("x-auth-subject", "root"),
        ("x_auth_scopes", "admin"),
        ("x-auth-email", "root@example.com"),
        ("x-auth-groups", "wheel"),
    ];
    // Public route: spoofed identity headers are stripped, none are added.
    let r = s.call("/public", &spoof).await;
    assert_eq!(r.status, 200);
    let h = s.up.last().headers;
    for (name, _) in spoof {
        assert!(!h.contains_key(name), "{name} reached a public route");
    }
    // Protected route: ours replace theirs; an absent claim leaves its header out;
    // non-string claims are compact JSON; control characters are never forwarded.
    let mut c = claims("https://rsa.test/", "orders:read");
    c["groups"] = json!(["a", {"b": 1}]);
    let token = s.rsa.sign(&c, None);
    let mut headers = spoof.to_vec();
    let auth = format!("Bearer {token}");
    headers.push(("authorization", &auth));
    headers.push(("connection", "x-auth-subject"));
    let r = s.call("/orders", &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = s.up.last().headers;
    assert_eq!(
        h["x-auth-subject"], "alice",
        "Connection cannot remove what the gateway adds"
    );
    assert_eq!(h.get_all("x-auth-subject").iter().count(), 1);
    assert_eq!(h["x-auth-scopes"], "orders:read");
    assert_eq!(h["x-auth-email"], "alice@example.com");
    assert_eq!(h["x-auth-groups"], r#"["a",{"b":1}]"#);
    assert!(!h.contains_key("x_auth_scopes"));

    let mut c = claims("https://rsa.test/", "orders:read");
    c["email"] = json!("evil@example.com\r\nX-Injected: 1");
    c.as_object_mut().unwrap().remove("sub");
    let token = s.rsa.sign(&c, None);
    assert_eq!(s.with_token("/orders", &token).await.status, 200);
    let h = s.up.last().headers;
    assert!(!h.contains_key("x-auth-email"), "a value with CR/LF is never forwarded");
    assert!(!h.contains_key("x-injected"));
    assert!(!h.contains_key("x-auth-subject"), "no sub claim, no subject header");
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_authorization_keeps_the_header() {
    let s = setup_with("  forward_authorization: true\n").await;
    let token = s.rsa.sign(&claims("https://rsa.test/", "orders:read"), None);
    assert_eq!(s.with_token("/orders", &token).await.status, 200);
    assert_eq!(s.up.last().headers["authorization"], format!("Bearer {token}").as_str());
}

/// A FastAPI app's own tokens: HS256 with a shared secret, `sub`, `scopes` as a
/// list, `exp`, and no `iss` / `aud` (OAuth2PasswordBearer + python-jose).
#[tokio::test(flavor = "multi_thread")]
async fn fastapi_tokens_are_accepted() {
    let s = setup().await;
    let c = json!({"sub": "johndoe", "scopes": ["orders:read", "me"], "exp": now() + 1800});
    let token = hs_sign(Algorithm::HS256, FASTAPI_SECRET.as_bytes(), &c);
    let r = s.with_token("/orders", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.up.last().headers["x-auth-subject"], "johndoe");
    assert_eq!(s.up.last().headers["x-auth-scopes"], "me orders:read");
    // The same secret with an `iss` goes looking for that issuer instead, and fails.
    let mut c2 = c.clone();
    c2["iss"] = json!("https://somewhere/");
    let token = hs_sign(Algorithm::HS256, FASTAPI_SECRET.as_bytes(), &c2);
    assert_invalid_token(&s.with_token("/orders", &token).await, &token, "unknown iss");
    // HS512 is outside this provider's allowlist.
    let token = hs_sign(Algorithm::HS512, FASTAPI_SECRET.as_bytes(), &c);
    assert_invalid_token(&s.with_token("/orders", &token).await, &token, "alg outside allowlist");
    assert_eq!(s.up.requests().len(), 1);

    // A token without `iss` goes to the issuer-less provider only: a route
    // that does not list that provider refuses it, whichever key signed it,
    // and a cached copy (from /orders above) is refused there too.
    let token = hs_sign(Algorithm::HS256, FASTAPI_SECRET.as_bytes(), &c);
    assert_eq!(s.with_token("/orders", &token).await.status, 200);
    assert_invalid_token(
        &s.with_token("/rsa-only", &token).await,
        &token,
        "issuer-less provider excluded",
    );
    let mut c3 = c.clone();
    c3["aud"] = json!("api");
    let rsa_signed = s.rsa.sign(&c3, None);
    assert_invalid_token(
        &s.with_token("/rsa-only", &rsa_signed).await,
        &rsa_signed,
        "no iss, rsa key",
    );
    assert_invalid_token(
        &s.with_token("/orders", &rsa_signed).await,
        &rsa_signed,
        "no iss, wrong key",
    );
    assert_eq!(s.up.requests().len(), 2, "refused tokens never reach the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_are_authenticated_too() {
    let s = setup().await;
    let token = s.rsa.sign(&claims("https://rsa.test/", "orders:read"), None);
    let mut c = s.gw.client(Proto::H2).await;
    let r = c
        .send(req(
            "GET",
            "/orders",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    c.send(req("GET", "/orders", &[], ""))
        .await
        .assert_error(401, "unauthorized");
    c.send(req("GET", "/orders", &[("authorization", "Bearer not.a.jwt")], ""))
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(s.up.requests().len(), 1, "only the authenticated request was forwarded");
}

/// A cached token skips only the signature check: every hit still checks the
/// route's providers, the route's scopes and the token's expiry.
#[tokio::test(flavor = "multi_thread")]
async fn cached_tokens_still_get_every_route_check() {
    let s = setup().await;
    // One kept-alive connection: one worker, so every repeat is a cache hit
    // whatever the machine's core count (the cache is per worker).
    let conn = tokio::sync::Mutex::new(s.gw.client(Proto::H1).await);
    let with_token = |path: &'static str, token: String| {
        let conn = &conn;
        async move {
            let auth = format!("Bearer {token}");
            conn.lock()
                .await
                .send(req("GET", path, &[("authorization", &auth)], ""))
                .await
        }
    };
    let token = s.ec.sign(&claims("https://jwks.test/", "orders:read"), Some("ec1"));
    for _ in 0..3 {
        assert_eq!(with_token("/orders", token.clone()).await.status, 200);
    }
    with_token("/admin", token.clone())
        .await
        .assert_error(403, "insufficient_scope");
    assert_invalid_token(
        &with_token("/rsa-only", token.clone()).await,
        &token,
        "provider not allowed on a cache hit",
    );
    assert_eq!(s.up.requests().len(), 3, "refused cache hits never reach the upstream");
    assert_eq!(with_token("/orders", token.clone()).await.status, 200);

    // Expiry is checked on every hit (this provider has leeway 0s): the token
    // is cached by its first use, then refused once its `exp` has passed.
    let exp = now() + 5;
    let c = json!({"iss": "https://hs.test/", "aud": "api", "sub": "x", "scope": "orders:read", "exp": exp});
    let short = hs_sign(Algorithm::HS256, HS_SECRET.as_bytes(), &c);
    assert_eq!(with_token("/orders", short.clone()).await.status, 200);
    assert_eq!(with_token("/orders", short.clone()).await.status, 200);
    let exp = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
    let wait = exp.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(100)).await;
    assert_invalid_token(
        &with_token("/orders", short.clone()).await,
        &short,
        "expired while cached",
    );
    assert_eq!(s.up.requests().len(), 6, "the expired token never reached the upstream");
}

/// A JWKS that also holds an `oct` key (whose secret anyone reading the JWKS
/// knows) and an encryption key never yields keys for them; headers naming a
/// key location (`jku`, `x5u`) or carrying a key (`jwk`, `x5c`) are never
/// used: the URLs, served by the test, are never fetched.
#[tokio::test(flavor = "multi_thread")]
async fn jwks_oct_and_enc_keys_are_skipped_and_key_urls_never_fetched() {
    use base64::Engine;
    let up = RecordingUpstream::start("app").await;
    let signing = KeyPair::generate(Algorithm::RS256);
    let encryption = KeyPair::generate(Algorithm::RS256);
    let oct_secret = b"a-symmetric-key-published-in-the-jwks";
    let mut enc = encryption.jwk("enc");
    enc["use"] = json!("enc");
    let oct =
        json!({"kty": "oct", "kid": "oct", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(oct_secret)});
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("jwks.json"), jwks(&[signing.jwk("sig"), enc, oct])).unwrap();
    let yaml = format!(
        r#"{}providers:
  idp:
    issuer: https://idp.test/
    audiences: [api]
    jwks_file: jwks.json
upstreams:
  app:
    targets: [{}]
routes:
  - name: api
    match: {{ path: /api }}
    upstream: app
    auth: {{}}
"#,
        header(""),
        up.url()
    );
    let gw = dir.start(&yaml).await;
    // A listener that counts every connection, for the key URLs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let key_server = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = hits.clone();
    let server = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let c = claims("https://idp.test/", "");
    let call = |t: String| {
        let gw = &gw;
        async move {
            gw.client(Proto::H1)
                .await
                .send(req("GET", "/api", &[("authorization", &format!("Bearer {t}"))], ""))
                .await
        }
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("oct".into());
    let oct_token = jsonwebtoken::encode(&header, &c, &jsonwebtoken::EncodingKey::from_secret(oct_secret)).unwrap();
    call(oct_token).await.assert_error(401, "invalid_token");
    call(encryption.sign(&c, Some("enc")))
        .await
        .assert_error(401, "invalid_token");
    let attacker = KeyPair::generate(Algorithm::RS256);
    for field in ["jku", "x5u"] {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("attacker".into());
        let url = format!("http://{key_server}/keys");
        if field == "jku" {
            h.jku = Some(url);
        } else {
            h.x5u = Some(url);
        }
        call(attacker.sign_with_header(&h, &c))
            .await
            .assert_error(401, "invalid_token");
    }
    let mut h = Header::new(Algorithm::RS256);
    h.x5c = Some(vec!["MIIBAAAA".into()]);
    call(attacker.sign_with_header(&h, &c))
        .await
        .assert_error(401, "invalid_token");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a key URL was fetched"
    );
    assert!(up.requests().is_empty());
    // The genuine signing key still works.
    assert_eq!(call(signing.sign(&c, Some("sig"))).await.status, 200);
    server.abort();
}

/// A reload that rotates a secret or drops a provider refuses the tokens the
/// old configuration accepted, cached ones included.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_rotates_keys_refuses_cached_tokens() {
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    let old_secret = "the-old-secret-of-this-gateway-000000000";
    std::fs::write(dir.path().join("app.secret"), old_secret).unwrap();
    let yaml = format!(
        r#"{}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
  other:
    issuer: https://other.test/
    secret_file: app.secret
    algorithms: [HS256]
upstreams:
  app:
    targets: [{}]
routes:
  - name: api
    match: {{ path: /api }}
    upstream: app
    auth: {{}}
"#,
        header(""),
        up.url()
    );
    let gw = dir.start(&yaml).await;
    let token = hs_sign(
        Algorithm::HS256,
        old_secret.as_bytes(),
        &json!({"sub": "a", "exp": now() + 600}),
    );
    let other = hs_sign(
        Algorithm::HS256,
        old_secret.as_bytes(),
        &json!({"iss": "https://other.test/", "sub": "b", "exp": now() + 600}),
    );
    // One kept-alive connection: every repeat is a cache hit on any core count.
    let conn = tokio::sync::Mutex::new(gw.client(Proto::H1).await);
    let call = |t: &str| {
        let auth = format!("Bearer {t}");
        let conn = &conn;
        async move {
            conn.lock()
                .await
                .send(req("GET", "/api", &[("authorization", &auth)], ""))
                .await
        }
    };
    for t in [&token, &other] {
        assert_eq!(call(t).await.status, 200);
        assert_eq!(call(t).await.status, 200, "now from the cache");
    }
    // Rotate the secret file, and remove the other provider.
    let dir = gw.config_path.parent().unwrap().to_path_buf();
    std::fs::write(dir.join("app.secret"), "a-brand-new-secret-after-rotation-00000").unwrap();
    let yaml = std::fs::read_to_string(&gw.config_path).unwrap();
    let start = yaml.find("  other:").unwrap();
    let end = yaml.find("upstreams:").unwrap();
    std::fs::write(&gw.config_path, format!("{}{}", &yaml[..start], &yaml[end..])).unwrap();
    gw.reload().expect("reload");
    call(&token).await.assert_error(401, "invalid_token");
    call(&other).await.assert_error(401, "invalid_token");
    assert_eq!(
        up.requests().len(),
        4,
        "nothing after the rotation reached the upstream"
    );
}

/// A JWK that names its algorithm verifies only that one: the same RSA key
/// cannot be used with PS256 when the key set says RS256.
#[tokio::test(flavor = "multi_thread")]
async fn a_jwk_with_alg_verifies_only_that_algorithm() {
    let s = setup().await;
    assert_eq!(
        s.rsa2.jwk("rsa2")["alg"],
        "RS256",
        "the premise: the published key names RS256"
    );
    let claims = claims("https://jwks.test/", "orders:read");
    let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
    header.kid = Some("rsa2".into());
    let rs = s.rsa2.sign_with_header(&header, &claims);
    assert_eq!(s.with_token("/orders", &rs).await.status, 200);
    header.alg = Algorithm::PS256;
    let ps = s.rsa2.sign_with_header(&header, &claims);
    s.with_token("/orders", &ps).await.assert_error(401, "invalid_token");
}
