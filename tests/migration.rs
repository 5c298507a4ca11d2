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
