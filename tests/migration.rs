//! Moving an app's checks into the gateway: path templates, monitor mode,
//! `import-openapi` and `explain`, over real sockets and the real binary.

mod support;

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::tokens::*;
use support::*;

fn token(scope: &str) -> String {
    support::tokens::token(json!({ "scope": scope }))
}

async fn gateway(up: &RecordingUpstream, routes: &str) -> TestGateway {
    let dir = GatewayDir::new();
    let yaml = format!(
        r#"{}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
upstreams:
  app:
    targets: [{}]
routes:
{routes}"#,
        header_with_admin(),
        up.url()
    );
    dir.start(&yaml).await
}

#[tokio::test(flavor = "multi_thread")]
async fn path_templates_match_one_segment_per_parameter() {
    let up = RecordingUpstream::start("app").await;
    let routes = r#"  - name: item-owner
    match: { path_template: "/items/{item_id}/owner" }
    upstream: app
    auth: { scopes: [items:admin] }
  - name: items
    match: { path: /items }
    upstream: app
    public: true
"#;
    let gw = gateway(&up, routes).await;
    let admin = format!("Bearer {}", token("items:admin"));
    let mut c = gw.client(Proto::H1).await;
    // The template is protected...
    for path in [
        "/items/7/owner",
        "/items/abc/owner",
        "/items/%37/owner",
        "/items/x/./owner",
        "/items//7/owner",
    ] {
        let r = c.send(req("GET", path, &[], "")).await;
        r.assert_error(401, "unauthorized");
        let r = c.send(req("GET", path, &[("authorization", &admin)], "")).await;
        assert_eq!(r.status, 200, "{path}");
    }
    assert_eq!(up.last().headers["x-auth-subject"], "alice");
    // ...and only what it names: other shapes fall to the public prefix.
    for path in ["/items/7/owner/", "/items/7/8/owner", "/items/owner", "/items/7"] {
        let r = c.send(req("GET", path, &[], "")).await;
        assert_eq!(r.status, 200, "{path} is not the template");
    }
    // Normalisation runs first: a climb that lands on the template is the template.
    c.send(req("GET", "/items/7/x/../owner", &[], ""))
        .await
        .assert_error(401, "unauthorized");
    c.send(req("GET", "/items/7/%2e%2e/7/owner", &[], ""))
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_mode_forwards_and_records_what_enforce_would_refuse() {
    let up = RecordingUpstream::start("app").await;
    let routes = r#"  - name: monitored
    match: { path: /orders }
    upstream: app
    auth: { scopes: [orders:read], mode: monitor }
"#;
    let gw = gateway(&up, routes).await;
    let mut c = gw.client(Proto::H1).await;
    // No token: forwarded, without identity.
    let r = c.send(req("GET", "/orders", &[("x-auth-subject", "spoof")], "")).await;
    assert_eq!(r.status, 200);
    assert!(
        up.last().headers.get("x-auth-subject").is_none(),
        "spoofed identity still stripped"
    );
    // A bad token: forwarded, without identity.
    let r = c
        .send(req("GET", "/orders", &[("authorization", "Bearer a.b.c")], ""))
        .await;
    assert_eq!(r.status, 200);
    assert!(up.last().headers.get("x-auth-subject").is_none());
    // A valid token without the scope: forwarded with its (verified) identity.
    let wrong = format!("Bearer {}", token("profile"));
    assert_eq!(
        c.send(req("GET", "/orders", &[("authorization", &wrong)], ""))
            .await
            .status,
        200
    );
    assert_eq!(up.last().headers["x-auth-subject"], "alice");
    assert_eq!(up.last().headers["x-auth-scopes"], "profile");
    // A good token: as under enforce.
    let good = format!("Bearer {}", token("orders:read"));
    assert_eq!(
        c.send(req("GET", "/orders", &[("authorization", &good)], ""))
            .await
            .status,
        200
    );
    let (_, metrics) = gw.admin("/metrics").await;
    for (reason, n) in [("no_token", 1), ("malformed_token", 1), ("missing_scope", 1)] {
        let line = format!(r#"portcullis_auth_monitor_denials_total{{route="monitored",reason="{reason}"}} {n}"#);
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    assert_eq!(up.requests().len(), 4);
}

fn portcullis(args: &[&str], dir: &std::path::Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The FastAPI-shaped document in tests/data: imported, checked, served.
#[tokio::test(flavor = "multi_thread")]
async fn an_imported_openapi_route_table_checks_and_serves() {
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fastapi-openapi.json");
    let dir = GatewayDir::new();
    let (code, routes, notes) = portcullis(
        &[
            "import-openapi",
            doc.to_str().unwrap(),
            "--upstream",
            "app",
            "--provider",
            "app",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{notes}");
    // What it could not express is said, and made protected.
    assert!(
        notes.contains("note: GET /reports (reports_reports_get): 2 alternative security requirements"),
        "{notes}"
    );
    assert!(
        notes.contains("note: GET /internal/metrics (metrics_internal_metrics_get): the \"apiKey\" scheme"),
        "{notes}"
    );
    // An operation without any `security` (FastAPI's token endpoint; also
    // every route an app protects in its own code) is protected and named.
    assert!(
        notes.contains("note: POST /token (login_for_access_token_token_post): no security requirement"),
        "{notes}"
    );
    let (code, opted, _) = portcullis(
        &["import-openapi", doc.to_str().unwrap(), "--public-when-unsecured"],
        dir.path(),
    );
    assert_eq!(code, 0);
    let token_route = &opted[opted.find("login_for_access_token_token_post").unwrap()..];
    assert!(
        token_route.lines().take(4).any(|l| l.contains("public: true")),
        "{opted}"
    );
    // Template-free paths come before templates.
    assert!(
        routes.find("/users/me").unwrap() < routes.find("/users/{user_id}").unwrap(),
        "{routes}"
    );

    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"{}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
upstreams:
  app:
    targets: [{}]
{routes}"#,
        header(""),
        up.url()
    );
    std::fs::write(dir.path().join("gateway.yaml"), &yaml).unwrap();
    let (code, out, err) = portcullis(&["check", "-c", "gateway.yaml"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/users/{user_id} (template)"), "{out}");

    // --cases: a starting suite for `portcullis test`, which passes as written
    // and reaches every imported route.
    let (code, _, err) = portcullis(
        &[
            "import-openapi",
            doc.to_str().unwrap(),
            "--upstream",
            "app",
            "--provider",
            "app",
            "--cases",
            "cases.yaml",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let cases = std::fs::read_to_string(dir.path().join("cases.yaml")).unwrap();
    assert!(
        cases.contains("name: \"delete_user_users__user_id__delete with its scopes\""),
        "{cases}"
    );
    assert!(cases.contains("url: \"https://localhost/users/1\""), "{cases}");
    assert!(cases.contains("expect: { status: 401, reason: no_token"), "{cases}");
    let (code, out, err) = portcullis(&["test", "-c", "gateway.yaml", "cases.yaml"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("routes no case reached"), "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
    // Without --provider there is nothing to mint tokens for.
    let (code, _, err) = portcullis(
        &["import-openapi", doc.to_str().unwrap(), "--cases", "x.yaml"],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");

    let gw = dir.start(&yaml).await;
    let mut c = gw.client(Proto::H1).await;
    let call = |method: &'static str, path: &'static str, scope: Option<&str>| {
        let auth = scope.map(|s| format!("Bearer {}", token(s)));
        let mut r = req(method, path, &[], "");
        if let Some(a) = auth {
            r.headers_mut().insert("authorization", a.parse().unwrap());
        }
        r
    };
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("GET", "/health", None, 200),
        ("POST", "/token", None, 401),
        ("POST", "/token", Some("items:read"), 403),
        ("GET", "/users/me", None, 401),
        ("GET", "/users/me", Some("items:read"), 403),
        ("GET", "/users/me", Some("me"), 200),
        ("GET", "/users/42", Some("users:read"), 200),
        ("DELETE", "/users/42", Some("users:read"), 403),
        ("DELETE", "/users/42", Some("users:admin"), 200),
        ("GET", "/items/", Some("items:read"), 200),
        ("POST", "/items/", Some("items:read"), 403),
        ("PUT", "/items/7", Some("items:write"), 200),
        ("GET", "/internal/metrics", None, 401),
        ("GET", "/reports", Some("reports"), 200),
        ("GET", "/reports", None, 401),
        ("PATCH", "/items/7", Some("items:write"), 405),
    ];
    for (method, path, scope, want) in cases {
        let r = c.send(call(method, path, scope)).await;
        assert_eq!(r.status.as_u16(), want, "{method} {path} with {scope:?}: {}", r.text());
    }
}

/// `explain` against each outcome of the gateway: exit code, the reason in the
/// output, `--json`, and never the token.
#[test]
fn explain_tells_what_the_gateway_would_do() {
    let dir = GatewayDir::new();
    let down = "http://127.0.0.1:9";
    let yaml = format!(
        r#"listen: {{ https: 127.0.0.1:0 }}
tls: {{ cert: cert.pem, key: key.pem }}
providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
  remote:
    issuer: http://127.0.0.1:9/
    jwks_uri: http://127.0.0.1:9/jwks.json
upstreams:
  app:
    targets: [{down}]
routes:
  - name: owner
    match: {{ path_template: "/items/{{id}}/owner", methods: [GET] }}
    upstream: app
    auth: {{ providers: [app], scopes: [items:admin] }}
  - name: remote-only
    match: {{ path: /remote }}
    upstream: app
    auth: {{ providers: [remote] }}
  - name: health
    match: {{ path_exact: /health }}
    upstream: app
    public: true
"#
    );
    std::fs::write(dir.path().join("gateway.yaml"), &yaml).unwrap();
    let admin = token("items:admin");
    let reader = token("items:read");
    let expired = support::tokens::token(json!({"scope": "items:admin", "exp": now() - 3600}));
    let forged = hs_sign(
        Algorithm::HS256,
        b"another-secret-that-is-long-enough-000000",
        &json!({"sub": "alice", "scope": "items:admin", "exp": now() + 600}),
    );
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec![
                "GET".into(),
                "https://api.test/items/7/./owner".into(),
                "--token".into(),
                admin.clone(),
            ],
            0,
            "forward to app as GET /items/7/owner",
        ),
        (
            vec![
                "GET".into(),
                "https://api.test/items/7/owner".into(),
                "--token".into(),
                reader.clone(),
            ],
            1,
            "missing items:admin",
        ),
        (
            vec!["GET".into(), "https://api.test/items/7/owner".into()],
            1,
            "401 unauthorized",
        ),
        (
            vec![
                "GET".into(),
                "https://api.test/items/7/owner".into(),
                "--token".into(),
                expired.clone(),
            ],
            1,
            "exp present and not passed (with leeway): The token has expired.",
        ),
        (
            vec![
                "GET".into(),
                "https://api.test/items/7/owner".into(),
                "--token".into(),
                forged.clone(),
            ],
            1,
            "signature: The token signature is invalid.",
        ),
        (
            vec![
                "GET".into(),
                "https://api.test/items/7/owner".into(),
                "-H".into(),
                "Authorization: Bearer".into(),
            ],
            1,
            "400 invalid_request",
        ),
        (
            vec!["GET".into(), "https://api.test/items/%2f/owner".into()],
            1,
            "400 invalid_request",
        ),
        (
            vec!["GET".into(), "https://api.test/nothing".into()],
            1,
            "404 not_found",
        ),
        (
            vec!["POST".into(), "https://api.test/items/7/owner".into()],
            1,
            "405 method_not_allowed",
        ),
        (
            vec![
                "GET".into(),
                "https://api.test/remote".into(),
                "--token".into(),
                hs_sign(
                    Algorithm::HS256,
                    b"x",
                    &json!({"iss": "http://127.0.0.1:9/", "exp": now() + 60}),
                ),
            ],
            1,
            "503 temporarily_unavailable",
        ),
        (
            vec!["GET".into(), "https://api.test/health".into()],
            0,
            "forward to app as GET /health",
        ),
        (
            vec!["get".into(), "https://api.test/health".into()],
            1,
            "must be written in upper case",
        ),
    ];
    for (args, code, says) in cases {
        let mut argv = vec!["explain".to_string()];
        argv.extend(args.iter().cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (got, out, err) = portcullis(&argv, dir.path());
        assert_eq!(got, code, "{args:?}\n{out}{err}");
        assert!(
            out.contains(says),
            r#"{args:?} should say {says:?}:
{out}{err}"#
        );
        for secret in [
            admin.as_str(),
            reader.as_str(),
            expired.as_str(),
            forged.as_str(),
            SECRET,
        ] {
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "explain printed a token or secret"
            );
        }
    }
    // The route and where it is written.
    let (_, out, _) = portcullis(&["explain", "GET", "https://api.test/health"], dir.path());
    assert!(out.contains("health (gateway.yaml:22) -> upstream app"), "{out}");
    // --json: one object with the same decision.
    let (code, out, _) = portcullis(
        &[
            "explain",
            "GET",
            "https://api.test/items/7/owner",
            "--token",
            &reader,
            "--json",
        ],
        dir.path(),
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "refuse");
    assert_eq!(v["status"], 403);
    assert_eq!(v["error"], "insufficient_scope");
    assert!(v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["step"] == "scopes" && s["result"] == "fail"));
    // Usage and configuration errors exit 2.
    let (code, _, err) = portcullis(&["explain", "GET", "not a url"], dir.path());
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = portcullis(&["explain", "-c", "missing.yaml", "GET", "https://x/"], dir.path());
    assert_eq!(code, 2);
}

/// `explain` removes from the forwarded query every parameter the route reads
/// a token from, as the gateway does, and prints no credential in any field,
/// whichever source carried it and on public routes too.
#[test]
fn explain_strips_every_token_source_and_prints_no_token() {
    let dir = GatewayDir::new();
    let yaml = r#"listen: { https: 127.0.0.1:0 }
tls: { cert: cert.pem, key: key.pem }
providers:
  app: { secret_file: app.secret, algorithms: [HS256] }
upstreams:
  app: { targets: ["http://127.0.0.1:9"] }
routes:
  - name: live
    match: { path: /live }
    upstream: app
    auth: { token_sources: [header, "query:access_token", "cookie:session"] }
  - name: open
    match: { path: /open }
    upstream: app
    public: true
"#;
    std::fs::write(dir.path().join("gateway.yaml"), yaml).unwrap();
    let t = token("any");
    let run = |args: &[&str]| {
        let mut argv = vec!["explain"];
        argv.extend_from_slice(args);
        let (code, out, err) = portcullis(&argv, dir.path());
        let mut json_args = argv.clone();
        json_args.push("--json");
        let (_, json, _) = portcullis(&json_args, dir.path());
        for text in [&out, &err, &json] {
            assert!(!text.contains(&t), "explain printed the token for {args:?}: {text}");
            assert!(
                !text.contains(&t[t.len() - 20..]),
                "explain printed part of the token: {text}"
            );
        }
        (code, out)
    };
    // From the query: removed.
    let url = format!("https://api.test/live?room=1&access_token={t}");
    let (code, out) = run(&["GET", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("forward to app as GET /live?room=1\n"), "{out}");
    // From the header: the route's query source is emptied as well.
    let (code, out) = run(&["GET", "https://api.test/live?room=1&access_token=other", "--token", &t]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("forward to app as GET /live?room=1\n"), "{out}");
    // A parameter whose name decodes to the source's is the source.
    let url = format!("https://api.test/live?access%5Ftoken={t}&room=2");
    let (code, out) = run(&["GET", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("forward to app as GET /live?room=2\n"), "{out}");
    // From a cookie, and on a public route (where the query goes upstream as sent).
    let cookie = format!("Cookie: session={t}");
    let (code, out) = run(&["GET", "https://api.test/live", "-H", &cookie]);
    assert_eq!(code, 0, "{out}");
    let url = format!("https://api.test/open?access_token={t}&x=1");
    let (code, out) = run(&["GET", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("forward to app as GET /open?access_token=<token>&x=1\n"),
        "{out}"
    );
    let auth = format!("Authorization: Bearer {t}");
    let (code, _) = run(&["GET", "https://api.test/open", "-H", &auth]);
    assert_eq!(code, 0);
    // Refused requests too.
    let (code, out) = run(&["GET", "https://api.test/live", "--token", &format!("{t}x")]);
    assert_eq!(code, 1, "{out}");
}

/// `explain` sequences the pipeline's functions itself: the same requests
/// sent to it and to a live gateway must get the same decision (status and
/// error code, and for a forwarded request the same path upstream), so the
/// two cannot drift apart unnoticed.
#[tokio::test(flavor = "multi_thread")]
async fn explain_and_the_gateway_decide_alike() {
    let up = RecordingUpstream::start("app").await;
    let routes = r#"  - name: explain-health
    match: { path_exact: /health }
    upstream: app
    public: true
  - name: explain-owner
    match: { path_template: "/items/{id}/owner", methods: [GET] }
    upstream: app
    auth: { scopes: [items:admin] }
  - name: explain-orders
    match: { path: /api/orders, methods: [GET, POST] }
    upstream: app
    strip_prefix: /api
    auth: { scopes: [orders:read], token_sources: [header, "query:access_token", "cookie:session"] }
  - name: explain-admin-host
    match: { path: /, host: admin.example.com }
    upstream: app
    auth: { any_scopes: [admin, ops] }
  - name: explain-monitored
    match: { path: /monitored }
    upstream: app
    auth: { scopes: [never], mode: monitor }
"#;
    // Route names are this test's own: metrics are process-wide, and another
    // test counts its `monitored` route's denials.
    let gw = gateway(&up, routes).await;
    let snap = gw.running.as_ref().unwrap().gateway.snapshot.load_full();
    let (read, admin, other) = (token("orders:read"), token("items:admin admin"), token("unrelated"));
    let bearer = |t: &str| format!("Bearer {t}");
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>);
    let cases: Vec<Case> = vec![
        ("GET", "/health".into(), vec![]),
        ("GET", "/health/".into(), vec![]),
        ("GET", "/nope".into(), vec![]),
        ("DELETE", "/api/orders/1".into(), vec![]),
        ("GET", "/api/orders/1".into(), vec![]),
        (
            "GET",
            "/api/orders/1?x=1".into(),
            vec![("authorization", bearer(&read))],
        ),
        ("GET", "/api/orders/1".into(), vec![("authorization", bearer(&other))]),
        (
            "GET",
            "/api/orders/1".into(),
            vec![("authorization", "Bearer not.a.jwt".into())],
        ),
        (
            "GET",
            "/api/orders/1".into(),
            vec![("authorization", "Basic dTpw".into())],
        ),
        ("GET", format!("/api/orders?access_token={read}&y=2"), vec![]),
        ("GET", "/api/orders".into(), vec![("cookie", format!("session={read}"))]),
        (
            "POST",
            "/api/orders".into(),
            vec![
                ("cookie", format!("session={read}")),
                ("origin", "https://evil.example".into()),
            ],
        ),
        ("GET", "/items/7/owner".into(), vec![("authorization", bearer(&admin))]),
        ("GET", "/items/7/owner".into(), vec![("authorization", bearer(&read))]),
        ("GET", "/items//owner".into(), vec![("authorization", bearer(&admin))]),
        ("GET", "/a/../../etc".into(), vec![]),
        ("GET", "/a/%2e%2e/health".into(), vec![]),
        ("GET", "/x;y".into(), vec![]),
        ("GET", "/monitored".into(), vec![]),
        ("GET", "/monitored".into(), vec![("authorization", bearer(&read))]),
        ("get", "/health".into(), vec![]),
    ];
    let mut c = gw.client(Proto::H1).await;
    for (method, path, headers) in &cases {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(http::HeaderName::from_static(k), v.parse().unwrap());
        }
        let explained = portcullis::explain::explain(&snap, method, &format!("https://localhost{path}"), map)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let before = up.requests().len();
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let live = c.send(req(method, path, &h, "")).await;
        let forwarded = up.requests().len() > before;
        let what = format!(
            "{method} {path} {headers:?}: explain {explained:?}\nlive {} {}",
            live.status,
            live.text()
        );
        assert_eq!(explained.forwards(), forwarded, "{what}");
        if forwarded {
            let seen = up.last();
            let told = explained.forwarded_as.as_deref().unwrap_or_default();
            assert_eq!(told, format!("{} {}", seen.method, seen.path_and_query), "{what}");
        } else {
            assert_eq!(explained.status, live.status.as_u16(), "{what}");
            assert_eq!(explained.error, live.json()["error"].as_str(), "{what}");
        }
    }
    // Another host's routes are another table.
    let explained = portcullis::explain::explain(&snap, "GET", "https://admin.example.com/x", http::HeaderMap::new())
        .await
        .unwrap();
    let live = c.send(req("GET", "/x", &[("host", "admin.example.com")], "")).await;
    assert_eq!(explained.status, live.status.as_u16());
    assert_eq!(explained.error, live.json()["error"].as_str());
}

/// Decision drift (docs/migration.md): where the gateway and the app behind
/// it disagree, counted by route and kind and written on the access-log line.
#[tokio::test(flavor = "multi_thread")]
async fn drift_between_the_gateway_and_the_upstream_is_counted_and_logged() {
    use support::child::Gateway;
    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"listen: {{ https: 127.0.0.1:0, admin: 127.0.0.1:0 }}
tls: {{ cert: cert.pem, key: key.pem }}
providers:
  app: {{ secret_file: secret }}
upstreams:
  app: {{ targets: ["{}"] }}
routes:
  - {{ name: drift-enforced, match: {{ path: /enforced }}, upstream: app, auth: {{ scopes: [read] }} }}
  - {{ name: drift-monitored, match: {{ path: /monitored }}, upstream: app, auth: {{ scopes: [read], mode: monitor }} }}
  - {{ name: drift-public, match: {{ path: /public }}, upstream: app, public: true }}
"#,
        up.url()
    );
    let gw = Gateway::start(&yaml, None);
    let token = |scope: &str| support::tokens::token(serde_json::json!({"sub": "u", "scope": scope}));
    let (reader, other) = (token("read"), token("other"));
    // (path, token, what the upstream answers, the drift expected)
    let cases = [
        ("/enforced", &reader, "status:401", Some("upstream_denied")),
        ("/enforced", &reader, "status:403", Some("upstream_denied")),
        ("/enforced", &reader, "status:200", None),
        ("/monitored", &other, "status:200", Some("gateway_denied")),
        ("/monitored", &other, "status:302", Some("gateway_denied")),
        ("/monitored", &other, "status:403", None),
        ("/monitored", &reader, "status:401", Some("upstream_denied")),
        ("/public", &reader, "status:401", None),
    ];
    for (i, (path, token, answer, _)) in cases.iter().enumerate() {
        let auth = format!("Bearer {token}");
        let id = format!("drift-{i}");
        let r = gw
            .client(Proto::H1)
            .await
            .send(req(
                "GET",
                path,
                &[("authorization", &auth), ("x-test", answer), ("x-request-id", &id)],
                "",
            ))
            .await;
        assert_eq!(
            format!("status:{}", r.status.as_u16()),
            *answer,
            "the upstream's answer is relayed"
        );
    }
    for (i, (path, _, answer, drift)) in cases.iter().enumerate() {
        let line = gw.wait_log(&format!("\"request_id\":\"drift-{i}\"")).await;
        let logged: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(logged["drift"].as_str(), *drift, "{path} {answer}: {line}");
    }
    let (_, metrics) = gw.admin("/metrics").await;
    let sample = |series: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    assert_eq!(
        sample(r#"portcullis_auth_drift_total{route="drift-enforced",kind="upstream_denied"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(r#"portcullis_auth_drift_total{route="drift-enforced",kind="gateway_denied"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(r#"portcullis_auth_drift_total{route="drift-monitored",kind="gateway_denied"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(r#"portcullis_auth_drift_total{route="drift-monitored",kind="upstream_denied"}"#),
        Some(1.0)
    );
    assert!(
        !metrics.contains(r#"route="drift-public",kind"#),
        "public routes have no drift series"
    );
}
