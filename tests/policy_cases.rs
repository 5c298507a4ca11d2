//! `portcullis test` (docs/policy-tests.md): the binary on a configuration with
//! every kind of route, its output, exit codes and `--json`; that it stays
//! offline (a listener standing in for every remote URL sees no connection);
//! and that its decisions agree with a live gateway's on the same cases.

mod support;

use std::process::Command;

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::tokens::*;
use support::*;

const HS_SECRET: &str = "policy-cases-hmac-secret-0123456789abcdef";

fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

/// A directory with a configuration naming `remote` (host:port) for every
/// remote key source and the introspection endpoint.
fn config_dir(remote: &str) -> tempfile::TempDir {
    let d = GatewayDir::new();
    std::fs::write(d.path().join("hs.secret"), HS_SECRET).unwrap();
    std::fs::write(d.path().join("client.secret"), "introspection-secret").unwrap();
    let rsa = KeyPair::generate(Algorithm::RS256);
    std::fs::write(d.path().join("rs.pem"), &rsa.public_pem).unwrap();
    let yaml = format!(
        r#"listen: {{ https: 127.0.0.1:0 }}
tls: {{ cert: cert.pem, key: key.pem }}
identity:
  claims:
    X-Auth-Org: org
providers:
  hs:
    issuer: https://hs.example/
    audiences: [api]
    secret_file: hs.secret
  rs:
    issuer: https://rs.example/
    public_key_file: rs.pem
    algorithms: [RS256]
  es:
    issuer: https://es.example/
    jwks_uri: http://{remote}/jwks
    algorithms: [ES256]
  ed:
    issuer: http://{remote}/ed
    discovery: true
    algorithms: [EdDSA]
  opaque:
    issuer: https://opaque.example/
    introspection:
      endpoint: http://{remote}/introspect
      client_id: gw
      client_secret_file: client.secret
upstreams:
  app: {{ targets: ["http://127.0.0.1:9"] }}
  other: {{ targets: ["http://127.0.0.1:9"] }}
routes:
  - {{ name: health, match: {{ path_exact: /health }}, upstream: app, public: true }}
  - {{ name: orders, match: {{ path: /orders }}, upstream: app, auth: {{ providers: [hs], scopes: [orders:read] }} }}
  - {{ name: any, match: {{ path: /any }}, upstream: app, auth: {{ providers: [hs], any_scopes: [a, b] }} }}
  - name: tenant
    match: {{ path_template: "/orgs/{{org}}/data" }}
    upstream: app
    auth: {{ providers: [hs], claims: [{{ claim: /org, equals: "{{path.org}}" }}] }}
  - {{ name: hosted, match: {{ path: /hosted, host: api.example.com }}, upstream: other, auth: {{ providers: [hs] }} }}
  - {{ name: stripped, match: {{ path: /svc }}, upstream: other, strip_prefix: /svc, public: true }}
  - {{ name: cookie, match: {{ path: /cookie }}, upstream: app, auth: {{ providers: [hs], token_sources: ["cookie:session"] }} }}
  - {{ name: query, match: {{ path: /query }}, upstream: app, auth: {{ providers: [hs], token_sources: ["query:access_token"] }} }}
  - {{ name: opaque, match: {{ path: /opaque }}, upstream: app, auth: {{ providers: [opaque], scopes: [read] }} }}
  - {{ name: monitored, match: {{ path: /monitored }}, upstream: app, auth: {{ providers: [hs], scopes: [x], mode: monitor }} }}
  - {{ name: rs, match: {{ path: /rs }}, upstream: app, auth: {{ providers: [rs] }} }}
  - {{ name: es, match: {{ path: /es }}, upstream: app, auth: {{ providers: [es] }} }}
  - {{ name: ed, match: {{ path: /ed }}, upstream: app, auth: {{ providers: [ed] }} }}
  - {{ name: never, match: {{ path: /never }}, upstream: app, public: true }}
"#
    );
    std::fs::write(d.path().join("gateway.yaml"), yaml).unwrap();
    d.dir
}

const PASSING: &str = r#"cases:
  - name: public
    request: { url: https://x.example/health }
    expect: { status: 200, route: health, upstream: app, path: /health, headers: { X-Auth-Subject: null } }
  - name: scopes held
    request: { url: https://x.example/orders/7?full=1 }
    token: { provider: hs, claims: { sub: alice, scope: "orders:read", org: acme } }
    expect: { status: 200, route: orders, path: /orders/7, headers: { X-Auth-Subject: alice, X-Auth-Org: acme, Authorization: null } }
  - name: with the query
    request: { url: https://x.example/orders/7?full=1 }
    token: { provider: hs, claims: { sub: alice, scope: "orders:read" } }
    expect: { status: 200, path: "/orders/7?full=1" }
  - name: scope missing
    request: { method: DELETE, url: https://x.example/orders/7 }
    token: { provider: hs, claims: { sub: alice, scope: "orders:write" } }
    expect: { status: 403, error: insufficient_scope, reason: missing_scope, route: orders }
  - name: one of any_scopes
    request: { url: https://x.example/any }
    token: { provider: hs, claims: { scope: "b" } }
    expect: { status: 200, route: any }
  - name: none of any_scopes
    request: { url: https://x.example/any }
    token: { provider: hs, claims: { scope: "c" } }
    expect: { status: 403, reason: missing_scope }
  - name: own tenant
    request: { url: https://x.example/orgs/acme/data }
    token: { provider: hs, claims: { org: acme } }
    expect: { status: 200, route: tenant }
  - name: other tenant
    request: { url: https://x.example/orgs/globex/data }
    token: { provider: hs, claims: { org: acme } }
    expect: { status: 403, error: access_denied, reason: claims, route: tenant }
  - name: on its host
    request: { url: https://API.example.com/hosted }
    token: { provider: hs, claims: {} }
    expect: { status: 200, route: hosted, upstream: other }
  - name: another host
    request: { url: https://else.example.com/hosted }
    token: { provider: hs, claims: {} }
    expect: { status: 404, error: not_found }
  - name: prefix stripped
    request: { url: https://x.example/svc/items/3 }
    expect: { status: 200, route: stripped, path: /items/3 }
  - name: cookie token
    request: { url: https://x.example/cookie, headers: { Cookie: "theme=dark; session={token}" } }
    token: { provider: hs, claims: { sub: carol } }
    expect: { status: 200, route: cookie, headers: { X-Auth-Subject: carol, Cookie: "theme=dark" } }
  - name: cookie token from a foreign origin
    request: { url: https://x.example/cookie, headers: { Cookie: "session={token}", Origin: "https://evil.example" } }
    token: { provider: hs, claims: { sub: carol } }
    expect: { status: 403, error: cors_rejected }
  - name: query token
    request: { url: "https://x.example/query?access_token={token}&page=2" }
    token: { provider: hs, claims: { sub: dan } }
    expect: { status: 200, route: query, path: "/query?page=2", headers: { X-Auth-Subject: dan } }
  - name: an active opaque token
    request: { url: https://x.example/opaque }
    token: { raw: "2YotnFZFEjr1zCsicMWpAA" }
    introspection: { active: true, sub: erin, scope: "read write" }
    expect: { status: 200, route: opaque, headers: { X-Auth-Subject: erin } }
  - name: an inactive opaque token
    request: { url: https://x.example/opaque }
    token: { raw: "2YotnFZFEjr1zCsicMWpAA" }
    introspection: { active: false }
    expect: { status: 401, error: invalid_token, reason: inactive }
  - name: an opaque token without its answer
    request: { url: https://x.example/opaque }
    token: { raw: "2YotnFZFEjr1zCsicMWpAA" }
    expect: { status: 503, error: temporarily_unavailable, reason: introspection_unavailable }
  - name: monitor mode forwards and says why
    request: { url: https://x.example/monitored }
    token: { provider: hs, claims: { sub: fay, scope: "y" } }
    expect: { status: 200, route: monitored, reason: missing_scope, headers: { X-Auth-Subject: fay } }
  - name: RS256
    request: { url: https://x.example/rs }
    token: { provider: rs, claims: { sub: gus } }
    expect: { status: 200, route: rs, headers: { X-Auth-Subject: gus } }
  - name: ES256 from a JWKS URL
    request: { url: https://x.example/es }
    token: { provider: es, claims: { sub: hal } }
    expect: { status: 200, route: es }
  - name: EdDSA by discovery
    request: { url: https://x.example/ed }
    token: { provider: ed, claims: { sub: ida } }
    expect: { status: 200, route: ed }
  - name: a token for the wrong provider
    request: { url: https://x.example/rs }
    token: { provider: es, claims: { sub: hal } }
    expect: { status: 401, reason: wrong_issuer }
  - name: expired by its exp
    request: { url: https://x.example/orders }
    token: { provider: hs, claims: { scope: "orders:read", exp: 1600000000 } }
    expect: { status: 401, error: invalid_token, reason: expired }
"#;

/// A listener standing in for every remote URL of the configuration; counts
/// the connections it gets.
async fn remote() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    (addr, seen)
}

fn run(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = portcullis().args(args).current_dir(dir).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_route_passes_offline() {
    let (addr, seen) = remote().await;
    let d = config_dir(&addr.to_string());
    let raw_expired = hs_sign(
        Algorithm::HS256,
        HS_SECRET.as_bytes(),
        &json!({"iss": "https://hs.example/", "aud": "api", "exp": now() - 600, "scope": "orders:read"}),
    );
    let raw_good = hs_sign(
        Algorithm::HS256,
        HS_SECRET.as_bytes(),
        &json!({"iss": "https://hs.example/", "aud": "api", "exp": now() + 600, "scope": "orders:read", "sub": "raw"}),
    );
    let cases = format!(
        "{PASSING}  - name: a raw expired token\n    request: {{ url: https://x.example/orders }}\n    token: {{ raw: \"{raw_expired}\" }}\n    expect: {{ status: 401, reason: expired }}\n  - name: a raw token signed with the real secret\n    request: {{ url: https://x.example/orders }}\n    token: {{ raw: \"{raw_good}\" }}\n    expect: {{ status: 200, headers: {{ X-Auth-Subject: raw }} }}\n"
    );
    std::fs::write(d.path().join("cases.yaml"), cases).unwrap();
    let (code, out, err) = run(d.path(), &["test", "-c", "gateway.yaml", "cases.yaml"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.iter().filter(|l| l.starts_with("PASS ")).count(), 25, "{out}");
    assert!(lines.contains(&"PASS cookie token"), "{out}");
    assert!(lines.contains(&"25 passed, 0 failed"), "{out}");
    assert!(lines.contains(&"routes no case reached: never"), "{out}");
    assert!(lines.contains(&"not evaluated: rate limits, revocation"), "{out}");
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no key fetch, no introspection call"
    );
    assert!(!out.contains(&raw_good), "a token in the output");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_expectation_can_fail_and_says_why() {
    let (addr, seen) = remote().await;
    let d = config_dir(&addr.to_string());
    let cases = r#"cases:
  - name: wrong status
    request: { url: https://x.example/orders }
    expect: { status: 200 }
  - name: wrong error
    request: { url: https://x.example/orders }
    expect: { status: 401, error: invalid_token }
  - name: wrong reason
    request: { url: https://x.example/orders }
    token: { provider: hs, claims: { scope: "orders:write" } }
    expect: { status: 403, reason: claims }
  - name: wrong route
    request: { url: https://x.example/health }
    expect: { status: 200, route: orders }
  - name: wrong upstream
    request: { url: https://x.example/health }
    expect: { status: 200, upstream: other }
  - name: wrong path
    request: { url: https://x.example/svc/a }
    expect: { status: 200, path: /svc/a }
  - name: wrong header
    request: { url: https://x.example/orders }
    token: { provider: hs, claims: { sub: alice, scope: "orders:read" } }
    expect: { status: 200, headers: { X-Auth-Subject: bob } }
  - name: a header that should be absent
    request: { url: https://x.example/orders }
    token: { provider: hs, claims: { sub: alice, scope: "orders:read" } }
    expect: { status: 200, headers: { X-Auth-Scopes: null } }
  - name: a passing one
    request: { url: https://x.example/health }
    expect: { status: 200 }
"#;
    std::fs::write(d.path().join("cases.yaml"), cases).unwrap();
    let (code, out, err) = run(d.path(), &["test", "-c", "gateway.yaml", "cases.yaml"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let expected = [
        "FAIL wrong status (cases.yaml:2): status: expected 200, got 401 (reason no_token)",
        "FAIL wrong error (cases.yaml:5): error: expected invalid_token, got unauthorized (reason no_token)",
        "FAIL wrong reason (cases.yaml:8): reason: expected claims, got missing_scope (reason missing_scope)",
        "FAIL wrong route (cases.yaml:12): route: expected orders, got health (reason -)",
        "FAIL wrong upstream (cases.yaml:15): upstream: expected other, got app (reason -)",
        "FAIL wrong path (cases.yaml:18): path: expected /svc/a, got /a (reason -)",
        r#"FAIL wrong header (cases.yaml:21): header X-Auth-Subject: expected "bob", got "alice" (reason -)"#,
        r#"FAIL a header that should be absent (cases.yaml:25): header X-Auth-Scopes: expected absent, got "orders:read" (reason -)"#,
        "PASS a passing one",
        "1 passed, 8 failed",
    ];
    for line in expected {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }

    // --json: the same, for CI.
    let (code, out, _) = run(d.path(), &["test", "-c", "gateway.yaml", "cases.yaml", "--json"]);
    assert_eq!(code, Some(1));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["passed"], 1);
    assert_eq!(report["failed"], 8);
    assert_eq!(report["not_evaluated"], json!(["rate_limits", "revocation"]));
    let first = &report["cases"][0];
    assert_eq!(first["name"], "wrong status");
    assert_eq!(first["passed"], false);
    assert_eq!(first["failures"], json!(["status: expected 200, got 401"]));
    assert_eq!(
        first["got"],
        json!({"status": 401, "error": "unauthorized", "reason": "no_token", "route": "orders", "upstream": null, "path": null})
    );
    assert!(report["unreached_routes"]
        .as_array()
        .unwrap()
        .contains(&json!("tenant")));
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn case_file_and_usage_errors_exit_2_at_their_place() {
    let (addr, _) = remote().await;
    let d = config_dir(&addr.to_string());
    let bad = [
        (
            "cases:\n  - name: x\n    request: { url: https://x.example/ }\n    expect: { status: 200, stauts: 1 }\n",
            "cases.yaml:4:28: cases[0].expect: unknown field `stauts`",
        ),
        (
            "cases:\n  - name: x\n    request: { url: https://x.example/ }\n    token: { provider: nobody }\n    expect: { status: 200 }\n",
            "cases.yaml:4:24: cases[0].token.provider: no provider named \"nobody\"",
        ),
        (
            "cases:\n  - name: x\n    request: { url: https://x.example/ }\n    token: { provider: opaque }\n    expect: { status: 200 }\n",
            "opaque only introspects opaque tokens",
        ),
        (
            "cases:\n  - name: x\n    request: { url: \"not a url\" }\n    expect: { status: 200 }\n",
            "cases.yaml:3:14: cases[0].request: \"not a url\" is not a URL",
        ),
        ("cases: [\n", "cases.yaml:"),
    ];
    for (text, said) in bad {
        std::fs::write(d.path().join("cases.yaml"), text).unwrap();
        let (code, out, err) = run(d.path(), &["test", "-c", "gateway.yaml", "cases.yaml"]);
        assert_eq!(code, Some(2), "{text}\n{out}{err}");
        assert!(err.contains(said), "{text}\nstderr: {err}\nshould say: {said}");
    }
    // A broken configuration, a missing case file, no case file at all.
    std::fs::write(d.path().join("broken.yaml"), "listen: {}\n").unwrap();
    assert_eq!(run(d.path(), &["test", "-c", "broken.yaml", "cases.yaml"]).0, Some(2));
    assert_eq!(
        run(d.path(), &["test", "-c", "gateway.yaml", "missing.yaml"]).0,
        Some(2)
    );
    assert_eq!(run(d.path(), &["test", "-c", "gateway.yaml"]).0, Some(2));
}

/// The same cases through `portcullis test` and through a live gateway (real
/// keys, a real introspection endpoint answering what the cases say, a
/// recording upstream): the two agree on every case.
#[tokio::test(flavor = "multi_thread")]
async fn the_runner_agrees_with_a_live_gateway() {
    let up = RecordingUpstream::start("app").await;
    let ep = support::introspect::Endpoint::start("gw", "agreement-secret").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("hs.secret"), HS_SECRET).unwrap();
    std::fs::write(dir.path().join("client.secret"), "agreement-secret").unwrap();
    std::fs::write(dir.path().join("idp-ca.pem"), &ep.ca_pem).unwrap();
    let yaml = format!(
        r#"{}identity:
  claims:
    X-Auth-Org: org
providers:
  hs:
    issuer: https://hs.example/
    audiences: [api]
    secret_file: hs.secret
  opaque:
    issuer: {issuer}
    ca_file: idp-ca.pem
    introspection: {{ endpoint: "{url}", client_id: gw, client_secret_file: client.secret }}
upstreams:
  app: {{ targets: ["{upstream}"] }}
routes:
  - {{ name: health, match: {{ path_exact: /health }}, upstream: app, public: true }}
  - {{ name: orders, match: {{ path: /orders }}, upstream: app, strip_prefix: /orders, auth: {{ providers: [hs], scopes: [orders:read] }} }}
  - name: tenant
    match: {{ path_template: "/orgs/{{org}}/data" }}
    upstream: app
    auth: {{ providers: [hs], claims: [{{ claim: /org, equals: "{{path.org}}" }}] }}
  - {{ name: query, match: {{ path: /query }}, upstream: app, auth: {{ providers: [hs], token_sources: ["query:access_token"] }} }}
  - {{ name: opaque, match: {{ path: /opaque }}, upstream: app, auth: {{ providers: [opaque], scopes: [read] }} }}
  - {{ name: monitored, match: {{ path: /monitored }}, upstream: app, auth: {{ providers: [hs], scopes: [x], mode: monitor }} }}
"#,
        header(""),
        issuer = ep.issuer(),
        url = ep.url(),
        upstream = up.url(),
    );
    let gw = dir.start(&yaml).await;
    let sign = |claims: serde_json::Value| {
        let mut c = json!({"iss": "https://hs.example/", "aud": "api", "exp": now() + 600});
        c.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
        hs_sign(Algorithm::HS256, HS_SECRET.as_bytes(), &c)
    };
    let reader = sign(json!({"sub": "alice", "scope": "orders:read", "org": "acme"}));
    let writer = sign(json!({"sub": "bob", "scope": "orders:write"}));
    let expired = hs_sign(
        Algorithm::HS256,
        HS_SECRET.as_bytes(),
        &json!({"iss": "https://hs.example/", "aud": "api", "exp": now() - 600}),
    );
    ep.answer(
        "opaque-active",
        json!({"active": true, "sub": "carol", "scope": "read", "iss": ep.issuer()}),
    );
    // (method, path, token, introspection answer the endpoint also gives)
    let cases: Vec<(&str, String, Option<String>, Option<serde_json::Value>)> = vec![
        ("GET", "/health".into(), None, None),
        ("GET", "/orders/7?x=1".into(), Some(reader.clone()), None),
        ("GET", "/orders/7".into(), Some(writer.clone()), None),
        ("GET", "/orders/7".into(), Some(expired.clone()), None),
        ("GET", "/orders/7".into(), None, None),
        ("GET", "/orders/7".into(), Some("not-a-jwt".into()), None),
        ("GET", "/orgs/acme/data".into(), Some(reader.clone()), None),
        ("GET", "/orgs/globex/data".into(), Some(reader.clone()), None),
        ("GET", format!("/query?access_token={reader}&page=2"), None, None),
        (
            "GET",
            "/opaque".into(),
            Some("opaque-active".into()),
            Some(json!({"active": true, "sub": "carol", "scope": "read", "iss": ep.issuer()})),
        ),
        (
            "GET",
            "/opaque".into(),
            Some("opaque-unknown".into()),
            Some(json!({"active": false})),
        ),
        ("GET", "/monitored".into(), Some(writer.clone()), None),
        ("POST", "/nowhere".into(), None, None),
        ("GET", "/%2e%2e/orders".into(), Some(reader.clone()), None),
    ];
    let mut file = String::from("cases:\n");
    for (i, (method, path, token, answer)) in cases.iter().enumerate() {
        file.push_str(&format!(
            "  - name: case {i}\n    request: {{ method: {method}, url: \"https://localhost{path}\" }}\n"
        ));
        if let Some(t) = token {
            file.push_str(&format!("    token: {{ raw: \"{t}\" }}\n"));
        }
        if let Some(a) = answer {
            file.push_str(&format!("    introspection: {a}\n"));
        }
        file.push_str("    expect: { status: 0 }\n");
    }
    let cases_path = gw.dir.path().join("cases.yaml");
    std::fs::write(&cases_path, file).unwrap();
    let (snapshot, _) = portcullis::load_config(&gw.config_path).unwrap();
    let report = portcullis::cases::run(&snapshot, &[cases_path]).await.unwrap();

    for (i, (method, path, token, _)) in cases.iter().enumerate() {
        let got = &report.cases[i].got;
        let mut headers = vec![];
        let auth = token.as_ref().map(|t| format!("Bearer {t}"));
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let before = up.requests().len();
        let live = gw.client(Proto::H1).await.send(req(method, path, &headers, "")).await;
        let forwarded = up.requests().len() > before;
        let what = format!(
            "case {i}: {method} {path}: runner {got:?}, live {} {}",
            live.status,
            live.text()
        );
        if forwarded {
            let seen = up.last();
            assert_eq!(got.status, 200, "{what}");
            assert_eq!(got.path.as_deref(), Some(seen.path_and_query.as_str()), "{what}");
            for name in ["x-auth-subject", "x-auth-scopes", "x-auth-org"] {
                let runner = got
                    .identity_headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str());
                let live = seen.headers.get(name).map(|v| v.to_str().unwrap());
                assert_eq!(runner, live, "{name}: {what}");
            }
        } else {
            assert_eq!(got.status, live.status.as_u16(), "{what}");
            assert_eq!(got.error, live.json()["error"].as_str(), "{what}");
        }
    }
}
