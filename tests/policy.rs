//! Authorisation beyond scopes over real sockets with real signed tokens:
//! claims conditions (Keycloak roles, Auth0's URL-named claims, tenants bound
//! to the URL), `source_ips` on IPv4 and IPv6 listeners, monitor mode, and
//! cache hits that meet a reloaded policy.

mod support;

use serde_json::{json, Value};
use support::tokens::*;
use support::*;

/// A token with `scope: orders:read` unless `claims` says otherwise.
fn token(claims: Value) -> String {
    let mut all = json!({"scope": "orders:read"});
    all.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
    support::tokens::token(all)
}

const ROUTES: &str = r#"  - name: keycloak
    match: { path: /kc }
    upstream: app
    auth:
      scopes: [orders:read]
      claims:
        - { claim: /realm_access/roles, contains: orders-reader }
        - { claim: /resource_access/orders-api/roles, contains_any: [viewer, editor] }
  - name: auth0
    match: { path: /a0 }
    upstream: app
    auth:
      claims:
        - { claim: "https://example.com/org", equals: acme }
        - { claim: "/https:~1~1example.com~1roles", contains: admin }
  - name: tenant
    match: { path_template: "/orgs/{org}/orders" }
    upstream: app
    auth:
      claims:
        - { claim: org, equals: "{path.org}" }
  - name: combined
    match: { path: /combined }
    upstream: app
    auth:
      claims:
        - any_of:
            - { claim: /email_verified, equals: true }
            - { claim: /amr, contains_any: [mfa, hwk] }
        - not: { claim: /act, exists: true }
  - name: office-only
    match: { path: /office }
    upstream: app
    public: true
    source_ips: [10.0.0.0/8, "2001:db8::/32"]
  - name: loopback-only
    match: { path: /loopback }
    upstream: app
    auth: {}
    source_ips: [127.0.0.0/8, "::1"]
  - name: policy-monitored
    match: { path: /monitored }
    upstream: app
    auth:
      mode: monitor
      claims:
        - { claim: /org, equals: nobody }
"#;

fn config(up: &RecordingUpstream, listen: &str, routes: &str) -> String {
    format!(
        r#"listen:
  https: "{listen}"
  admin: 127.0.0.1:0
tls:
  cert: cert.pem
  key: key.pem
providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
upstreams:
  app:
    targets: [{}]
routes:
{routes}"#,
        up.url()
    )
}

async fn start(up: &RecordingUpstream, listen: &str) -> TestGateway {
    let dir = GatewayDir::new();
    dir.start(&config(up, listen, ROUTES)).await
}

/// Send `path` with `claims` in the token; returns the status, and checks
/// that a refusal is `access_denied`, reached nothing upstream and names
/// neither the condition nor any value.
async fn call(c: &mut Client, up: &RecordingUpstream, path: &str, claims: Option<Value>) -> u16 {
    let before = up.requests().len();
    let auth = claims.map(|c| format!("Bearer {}", token(c)));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let r = c.send(req("GET", path, &headers, "")).await;
    if r.status == 403 {
        r.assert_error(403, "access_denied");
        let body = r.text();
        for secret in [
            "acme",
            "globex",
            "orders-reader",
            "viewer",
            "realm",
            "claim",
            "mfa",
            "10.0.0.0",
        ] {
            assert!(!body.contains(secret), "the refusal says too much: {body}");
        }
        assert_eq!(
            up.requests().len(),
            before,
            "{path}: a refused request reached the upstream"
        );
    }
    r.status.as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_conditions_decide_over_both_protocols() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up, "127.0.0.1:0").await;
    let keycloak = json!({
        "realm_access": {"roles": ["offline_access", "orders-reader"]},
        "resource_access": {"orders-api": {"roles": ["viewer"]}, "account": {"roles": ["editor"]}}
    });
    let auth0 = json!({"https://example.com/org": "acme", "https://example.com/roles": ["admin"]});
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let cases: Vec<(&str, Option<Value>, u16)> = vec![
            ("/kc", Some(keycloak.clone()), 200),
            // The role under another client does not count.
            (
                "/kc",
                Some(json!({
                    "realm_access": {"roles": ["orders-reader"]},
                    "resource_access": {"account": {"roles": ["viewer"]}}
                })),
                403,
            ),
            ("/kc", Some(json!({"realm_access": {"roles": "orders-reader"}})), 403),
            ("/kc", Some(json!({})), 403),
            ("/kc", None, 401),
            ("/a0", Some(auth0.clone()), 200),
            (
                "/a0",
                Some(json!({"https://example.com/org": "acme", "https://example.com/roles": ["user"]})),
                403,
            ),
            ("/a0", Some(json!({"org": "acme", "roles": ["admin"]})), 403),
            // Tenants bound to the URL, percent-encoding decoded first.
            ("/orgs/acme/orders", Some(json!({"org": "acme"})), 200),
            ("/orgs/acme/orders", Some(json!({"org": "globex"})), 403),
            ("/orgs/globex/orders", Some(json!({"org": "acme"})), 403),
            ("/orgs/a%20b/orders", Some(json!({"org": "a b"})), 200),
            ("/orgs/ac%6De/orders", Some(json!({"org": "acme"})), 200),
            ("/orgs/acme/orders", Some(json!({"org": ["acme"]})), 403),
            ("/combined", Some(json!({"email_verified": true})), 200),
            (
                "/combined",
                Some(json!({"email_verified": "true", "amr": ["pwd", "hwk"]})),
                200,
            ),
            ("/combined", Some(json!({"email_verified": false, "amr": ["pwd"]})), 403),
            (
                "/combined",
                Some(json!({"email_verified": true, "act": {"sub": "bot"}})),
                403,
            ),
            ("/office", None, 403),
            ("/loopback", Some(json!({})), 200),
            ("/loopback", None, 401),
        ];
        for (path, claims, want) in cases {
            let got = call(&mut c, &up, path, claims.clone()).await;
            assert_eq!(got, want, "{proto:?} {path} with {claims:?}");
        }
        // Scopes come first: a token without them is insufficient_scope.
        let r = c
            .send(req(
                "GET",
                "/kc",
                &[("authorization", &format!("Bearer {}", token(json!({"scope": "x"}))))],
                "",
            ))
            .await;
        r.assert_error(403, "insufficient_scope");
    }
    // Counted under one reason each.
    let (_, metrics) = gw.admin("/metrics").await;
    for reason in ["claims", "source_ip"] {
        let n: f64 = metrics
            .lines()
            .find(|l| l.starts_with(&format!("portcullis_auth_failures_total{{reason=\"{reason}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{reason}: {metrics}"));
        assert!(n >= 2.0, "{reason}: {n}");
    }
}

/// `source_ips` compares the TCP peer, IPv6 included; forwarding headers
/// never count.
#[tokio::test(flavor = "multi_thread")]
async fn source_ips_compare_the_peer_over_ipv6_too() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up, "[::1]:0").await;
    assert!(gw.addr.is_ipv6());
    let mut c = gw.client(Proto::H1).await;
    assert_eq!(call(&mut c, &up, "/loopback", Some(json!({}))).await, 200);
    let r = c
        .send(req(
            "GET",
            "/office",
            &[("x-forwarded-for", "10.1.2.3"), ("x-real-ip", "10.1.2.3")],
            "",
        ))
        .await;
    r.assert_error(403, "access_denied");
}

/// Monitor mode covers claims: forwarded with the verified identity, the
/// decision in the log and the monitor metric.
#[tokio::test(flavor = "multi_thread")]
async fn monitor_mode_records_failed_conditions() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up, "127.0.0.1:0").await;
    let mut c = gw.client(Proto::H1).await;
    assert_eq!(call(&mut c, &up, "/monitored", Some(json!({"org": "acme"}))).await, 200);
    assert_eq!(up.last().headers["x-auth-subject"], "alice");
    let (_, metrics) = gw.admin("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"portcullis_auth_monitor_denials_total{route="policy-monitored",reason="claims"} 1"#),
        "{metrics}"
    );
}

/// The verified-token cache holds claims, never a decision: after a reload
/// that tightens a route's conditions, a token served from the cache meets
/// the new ones. One kept-alive connection, so the second request is a hit
/// whatever the core count.
#[tokio::test(flavor = "multi_thread")]
async fn cache_hits_meet_the_reloaded_policy() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(&up, "127.0.0.1:0").await;
    let mut c = gw.client(Proto::H1).await;
    let claims = json!({"org": "acme"});
    assert_eq!(call(&mut c, &up, "/orgs/acme/orders", Some(claims.clone())).await, 200);
    // The same token, now a cache hit, on another tenant's path.
    assert_eq!(
        call(&mut c, &up, "/orgs/globex/orders", Some(claims.clone())).await,
        403
    );
    let stricter = ROUTES.replace(
        "        - { claim: org, equals: \"{path.org}\" }\n",
        "        - { claim: org, equals: \"{path.org}\" }\n        - { claim: /tier, equals: gold }\n",
    );
    assert_ne!(stricter, ROUTES);
    std::fs::write(&gw.config_path, config(&up, "127.0.0.1:0", &stricter)).unwrap();
    gw.reload().expect("reload");
    assert_eq!(call(&mut c, &up, "/orgs/acme/orders", Some(claims)).await, 403);
    assert_eq!(
        call(
            &mut c,
            &up,
            "/orgs/acme/orders",
            Some(json!({"org": "acme", "tier": "gold"}))
        )
        .await,
        200
    );
}

/// Identity headers from any claim: pointers, arrays joined, JSON with
/// non-ASCII escaped; a value with CR, LF or non-ASCII is left out and
/// counted, and nothing a claim holds can add a header line.
#[tokio::test(flavor = "multi_thread")]
async fn identity_headers_from_any_claim_are_header_safe() {
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    let yaml = config(
        &up,
        "127.0.0.1:0",
        "  - { name: who, match: { path: /who }, upstream: app, auth: {} }\n",
    )
    .replace(
        "upstreams:",
        r#"identity:
  claims:
    X-Auth-Email: email
    X-Auth-Roles: { claim: /realm_access/roles, join: "," }
    X-Auth-Groups: { claim: /groups, format: json }
    X-Auth-Org: "https://example.com/org"
upstreams:"#,
    );
    let gw = dir.start(&yaml).await;
    for proto in [Proto::H1, Proto::H2] {
        let mut c = gw.client(proto).await;
        let send = |claims: Value| {
            let auth = format!("Bearer {}", token(claims));
            req(
                "GET",
                "/who",
                &[
                    ("authorization", &auth),
                    ("x-auth-roles", "spoofed"),
                    ("x_auth_groups", "spoofed"),
                ],
                "",
            )
        };
        let r = c
            .send(send(json!({
                "email": "alice@example.com",
                "realm_access": {"roles": ["reader", "writer"]},
                "groups": ["Zoë", {"id": 7}],
                "https://example.com/org": "acme"
            })))
            .await;
        assert_eq!(r.status, 200);
        let seen = up.last();
        assert_eq!(seen.headers["x-auth-email"], "alice@example.com");
        assert_eq!(seen.headers["x-auth-roles"], "reader,writer");
        assert_eq!(seen.headers["x-auth-groups"], r#"["Zo\u00eb",{"id":7}]"#);
        assert_eq!(seen.headers["x-auth-org"], "acme");
        // Unsafe values: left out, and the spoofed copies are gone too.
        let r = c
            .send(send(json!({
                "email": "alice@example.com\r\nX-Auth-Subject: root",
                "realm_access": {"roles": ["reader", "a,b"]},
                "groups": "line\nbreak",
                "https://example.com/org": "Zoë"
            })))
            .await;
        assert_eq!(r.status, 200);
        let seen = up.last();
        for name in ["x-auth-email", "x-auth-roles", "x-auth-org"] {
            assert!(
                !seen.headers.contains_key(name),
                "{proto:?}: {name} {:?}",
                seen.headers.get(name)
            );
        }
        assert_eq!(seen.headers["x-auth-groups"], r#""line\nbreak""#, "JSON is always safe");
        assert_eq!(seen.headers.get_all("x-auth-subject").iter().count(), 1);
        assert_eq!(seen.headers["x-auth-subject"], "alice");
    }
    let (_, metrics) = gw.admin("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"portcullis_identity_headers_omitted_total{header="x-auth-email"} 2"#),
        "{metrics}"
    );
}

/// One vocabulary of reason codes: every refusal by a route's policy is
/// counted in `portcullis_denials_total{route,reason}` under its code (and
/// authentication failures in `portcullis_auth_failures_total{reason}`).
#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_has_its_reason_code() {
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    let routes = r#"  - name: codes
    match: { path: /codes }
    upstream: app
    auth:
      scopes: [orders:read]
      token_sources: [header, "cookie:session"]
      claims: [{ claim: /org, equals: acme }]
  - name: codes-limited
    match: { path: /limited }
    upstream: app
    public: true
    rate_limits: [once]
  - name: codes-office
    match: { path: /office }
    upstream: app
    public: true
    source_ips: [10.0.0.0/8]
"#;
    let yaml = config(&up, "127.0.0.1:0", routes).replace(
        "upstreams:",
        "rate_limits:\n  once: { key: route, rate: 1/h, burst: 1 }\nupstreams:",
    );
    let gw = dir.start(&yaml).await;
    let mut c = gw.client(Proto::H1).await;
    let bearer = |claims: Value| format!("Bearer {}", token(claims));
    let forged = {
        let t = token(json!({"org": "acme"}));
        format!("Bearer {}x", &t[..t.len() - 1])
    };
    let expired = bearer(json!({"org": "acme", "exp": now() - 3600}));
    let foreign = bearer(json!({"org": "acme", "iss": "https://elsewhere.example/"}));
    let no_scope = bearer(json!({"org": "acme", "scope": "other"}));
    let wrong_org = bearer(json!({"org": "globex"}));
    let cookie = format!("session={}", token(json!({"org": "acme"})));
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("/codes", vec![], "no_token"),
        ("/codes", vec![("authorization", "Bearer not-a-jwt")], "malformed_token"),
        ("/codes", vec![("authorization", &forged)], "bad_signature"),
        ("/codes", vec![("authorization", &expired)], "expired"),
        ("/codes", vec![("authorization", &foreign)], "wrong_issuer"),
        ("/codes", vec![("authorization", &no_scope)], "missing_scope"),
        ("/codes", vec![("authorization", &wrong_org)], "claims"),
        (
            "/codes",
            vec![("cookie", &cookie), ("origin", "https://evil.example")],
            "cors_rejected",
        ),
        ("/office", vec![], "source_ip"),
    ];
    for (path, headers, _) in &cases {
        let r = c.send(req("GET", path, headers, "")).await;
        assert!(r.status == 401 || r.status == 403, "{path} {headers:?}: {}", r.status);
    }
    assert_eq!(c.send(req("GET", "/limited", &[], "")).await.status, 200);
    assert_eq!(c.send(req("GET", "/limited", &[], "")).await.status, 429);
    let (_, metrics) = gw.admin("/metrics").await;
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    for (path, _, reason) in &cases {
        let route = if *path == "/office" { "codes-office" } else { "codes" };
        let name = format!(r#"portcullis_denials_total{{route="{route}",reason="{reason}"}}"#);
        assert_eq!(sample(&name), 1.0, "{name}\n{metrics}");
    }
    assert_eq!(
        sample(r#"portcullis_denials_total{route="codes-limited",reason="rate_limited"}"#),
        1.0
    );
    assert!(sample(r#"portcullis_auth_failures_total{reason="bad_signature"}"#) >= 1.0);
}

/// Rate limits come after authorisation and in the route's order: a request
/// the policy refuses consumes nothing, and one the first limit refuses
/// consumes nothing of the second.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_count_only_what_got_that_far() {
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    let routes = r#"  - name: ordered-limits
    match: { path: /ordered }
    upstream: app
    auth: { scopes: [orders:read] }
    rate_limits: [per-user, per-route]
  - name: ordered-other
    match: { path: /other }
    upstream: app
    auth: { scopes: [orders:read] }
    rate_limits: [per-route-other]
"#;
    let yaml = config(&up, "127.0.0.1:0", routes).replace(
        "upstreams:",
        "rate_limits:\n  per-user: { key: subject, rate: 1/h, burst: 2 }\n  per-route: { key: route, rate: 1/h, burst: 3 }\n  per-route-other: { key: route, rate: 1/h, burst: 1 }\nupstreams:",
    );
    let gw = dir.start(&yaml).await;
    let gw = &gw;
    let call = |path: &'static str, sub: &str, scope: &str| {
        let auth = format!("Bearer {}", token(json!({"sub": sub, "scope": scope})));
        async move {
            let mut c = gw.client(Proto::H1).await;
            c.send(req("GET", path, &[("authorization", &auth)], ""))
                .await
                .status
                .as_u16()
        }
    };
    // Refused by authorisation, many times over: nothing is consumed.
    for _ in 0..5 {
        assert_eq!(call("/other", "mallory", "other").await, 403);
    }
    assert_eq!(
        call("/other", "alice", "orders:read").await,
        200,
        "the one request /other allows is still there"
    );
    assert_eq!(call("/other", "alice", "orders:read").await, 429);

    // alice spends her two; her third is refused by per-user and takes
    // nothing of per-route, which still has one left for bob.
    assert_eq!(call("/ordered", "alice", "orders:read").await, 200);
    assert_eq!(call("/ordered", "alice", "orders:read").await, 200);
    for _ in 0..3 {
        assert_eq!(call("/ordered", "alice", "orders:read").await, 429);
    }
    assert_eq!(
        call("/ordered", "bob", "orders:read").await,
        200,
        "per-route kept its third"
    );
    assert_eq!(
        call("/ordered", "carol", "orders:read").await,
        429,
        "per-route is spent now"
    );
}
