//! Moving an app's checks into the gateway: path templates, monitor mode,
//! `import-openapi` and `explain`, over real sockets and the real binary.

mod support;

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::tokens::*;
use support::*;

const SECRET: &str = "a-migration-test-secret-of-good-length-01";

fn token(scope: &str) -> String {
    hs_sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "alice", "scope": scope, "exp": now() + 600}),
    )
}

async fn gateway(up: &Upstream, routes: &str) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    std::fs::write(dir.path().join("app.secret"), SECRET).unwrap();
    let yaml = format!(
        "{}providers:\n  app:\n    secret_file: app.secret\n    algorithms: [HS256]\nupstreams:\n  app:\n    targets: [{}]\nroutes:\n{routes}",
        header_with_admin(),
        up.url()
    );
    TestGateway::start_in(dir, cert, &yaml).await
}

#[tokio::test(flavor = "multi_thread")]
async fn path_templates_match_one_segment_per_parameter() {
    let up = Upstream::start("app").await;
    let routes = "  - name: item-owner\n    match: { path_template: \"/items/{item_id}/owner\" }\n    upstream: app\n    auth: { scopes: [items:admin] }\n  - name: items\n    match: { path: /items }\n    upstream: app\n    public: true\n";
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
    let up = Upstream::start("app").await;
    let routes = "  - name: monitored\n    match: { path: /orders }\n    upstream: app\n    auth: { scopes: [orders:read], mode: monitor }\n";
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
    for (reason, n) in [("missing_token", 1), ("malformed", 1), ("insufficient_scope", 1)] {
        let line = format!(r#"portcullis_auth_monitor_denials_total{{route="monitored",reason="{reason}"}} {n}"#);
        assert!(metrics.contains(&line), "{line}\n{metrics}");
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
    let dir = tempfile::tempdir().unwrap();
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
    // Template-free paths come before templates.
    assert!(
        routes.find("/users/me").unwrap() < routes.find("/users/{user_id}").unwrap(),
        "{routes}"
    );

    let up = Upstream::start("app").await;
    let cert = write_cert(dir.path());
    std::fs::write(dir.path().join("app.secret"), SECRET).unwrap();
    let yaml = format!(
        "{}providers:\n  app:\n    secret_file: app.secret\n    algorithms: [HS256]\nupstreams:\n  app:\n    targets: [{}]\n{routes}",
        header(""),
        up.url()
    );
    std::fs::write(dir.path().join("gateway.yaml"), &yaml).unwrap();
    let (code, out, err) = portcullis(&["check", "-c", "gateway.yaml"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/users/{user_id} (template)"), "{out}");

    let gw = TestGateway::start_in(dir, cert, &yaml).await;
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
        ("POST", "/token", None, 200),
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
