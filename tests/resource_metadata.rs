//! RFC 9728 protected-resource metadata, and the validation of the
//! `introspection` and `resource_metadata` settings (`file:line:column`
//! errors that never quote a secret).

mod support;

use portcullis::config::Config;
use support::*;

const ISSUER: &str = "https://auth.example.com/";

fn routes_yaml(up: &RecordingUpstream) -> String {
    format!(
        r#"{}providers:
  corp:
    issuer: {ISSUER}
    audiences: [api]
    secret_file: secret
  partner:
    issuer: https://partner.example.com/
    secret_file: secret
upstreams:
  app:
    targets: [{}]
routes:
  - name: mcp
    match: {{ path: /mcp }}
    upstream: app
    auth: {{ providers: [corp, partner], scopes: [mcp:tools], any_scopes: [mcp:read, mcp:tools], token_sources: [header, "query:access_token", "cookie:session"], resource_metadata: true }}
  - name: tenant-api
    match: {{ path: /api/, host: api.example.com }}
    upstream: app
    auth: {{ providers: [corp], resource_metadata: true }}
  - name: plain
    match: {{ path: /plain }}
    upstream: app
    auth: {{ providers: [corp] }}
"#,
        header(""),
        up.url()
    )
}

async fn start() -> (TestGateway, RecordingUpstream) {
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("secret"), "a-shared-secret-of-more-than-32-bytes").unwrap();
    let gw = dir.start(&routes_yaml(&up)).await;
    (gw, up)
}

async fn get(gw: &TestGateway, path: &str, host: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    gw.client(Proto::H1).await.send(req("GET", path, &all, "")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metadata_document_describes_the_route_for_the_requests_host() {
    let (gw, up) = start().await;
    let r = get(
        &gw,
        "/.well-known/oauth-protected-resource/mcp",
        "Gateway.Example.com:8443",
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        r.json(),
        serde_json::json!({
            "resource": "https://gateway.example.com:8443/mcp",
            "authorization_servers": [ISSUER, "https://partner.example.com/"],
            "scopes_supported": ["mcp:tools", "mcp:read"],
            "bearer_methods_supported": ["header", "query"],
        })
    );
    // Port 443 is the default: left out.
    let r = get(
        &gw,
        "/.well-known/oauth-protected-resource/mcp",
        "gateway.example.com:443",
        &[],
    )
    .await;
    assert_eq!(r.json()["resource"], "https://gateway.example.com/mcp");
    // Over HTTP/2 the authority is the host.
    let mut h2 = gw.client(Proto::H2).await;
    let r = h2
        .send(req(
            "GET",
            "https://h2.example.com/.well-known/oauth-protected-resource/mcp",
            &[],
            "",
        ))
        .await;
    assert_eq!(r.json()["resource"], "https://h2.example.com/mcp");

    // A route bound to a host answers for that host only.
    let r = get(&gw, "/.well-known/oauth-protected-resource/api", "api.example.com", &[]).await;
    assert_eq!(r.json()["resource"], "https://api.example.com/api");
    assert_eq!(r.json()["scopes_supported"], serde_json::json!([]));
    get(
        &gw,
        "/.well-known/oauth-protected-resource/api",
        "other.example.com",
        &[],
    )
    .await
    .assert_error(404, "not_found");
    // No metadata for a route without it, nor for paths below a route's.
    get(&gw, "/.well-known/oauth-protected-resource/plain", "localhost", &[])
        .await
        .assert_error(404, "not_found");
    get(&gw, "/.well-known/oauth-protected-resource/mcp/x", "localhost", &[])
        .await
        .assert_error(404, "not_found");
    assert!(up.requests().is_empty(), "metadata is answered by the gateway itself");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_401_of_such_a_route_points_at_its_metadata() {
    let (gw, _up) = start().await;
    let url = r#"resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#;
    // No token: the bare challenge, with the attribute.
    let r = get(&gw, "/mcp", "mcp.example.com", &[]).await;
    r.assert_error(401, "unauthorized");
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!(r#"Bearer realm="portcullis", {url}"#)
    );
    // A bad token: the invalid_token form, with the attribute.
    let r = get(&gw, "/mcp", "mcp.example.com", &[("authorization", "Bearer not.a.jwt")]).await;
    r.assert_error(401, "invalid_token");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with(r#"Bearer realm="portcullis", error="invalid_token""#),
        "{challenge}"
    );
    assert!(challenge.ends_with(&format!(", {url}")), "{challenge}");
    // Routes without metadata keep the plain challenge.
    let r = get(&gw, "/plain", "mcp.example.com", &[]).await;
    assert_eq!(r.header("www-authenticate").unwrap(), r#"Bearer realm="portcullis""#);
}

mod validation {
    use super::*;

    fn dir() -> tempfile::TempDir {
        let d = GatewayDir::new();
        std::fs::write(d.path().join("client-secret"), "hunter2-the-client-secret\n").unwrap();
        std::fs::write(d.path().join("empty"), "").unwrap();
        d.dir
    }

    fn config(providers: &str, routes: &str) -> String {
        format!(
            r#"listen:
  https: 127.0.0.1:8443
tls:
  cert: cert.pem
  key: key.pem
providers:
{providers}upstreams:
  app:
    targets: [http://127.0.0.1:9000]
routes:
{routes}"#
        )
    }

    const ROUTE: &str = "  - name: r\n    match: { path: /r }\n    upstream: app\n    auth: {}\n";

    fn introspecting(name: &str, block: &str) -> String {
        format!("  {name}:\n    issuer: https://{name}.example.com/\n    introspection:\n{block}")
    }

    const GOOD: &str = "      endpoint: https://idp.example.com/introspect\n      client_id: gw\n      client_secret_file: client-secret\n";

    /// The one line `check` would print.
    fn refused(providers: &str, routes: &str) -> String {
        let d = dir();
        let e = Config::from_yaml(&config(providers, routes), &d.path().join("gateway.yaml"))
            .expect_err("should be refused");
        let line = e.to_string();
        assert!(!line.contains("hunter2"), "a secret in an error: {line}");
        line
    }

    #[test]
    fn a_good_block_loads_and_its_secret_never_shows() {
        let d = dir();
        let loaded = Config::from_yaml(
            &config(&introspecting("hydra", GOOD), ROUTE),
            &d.path().join("gateway.yaml"),
        )
        .unwrap();
        let p = &loaded.config.providers[0];
        let i = p.introspection.as_ref().unwrap();
        assert_eq!(i.client_id, "gw");
        assert_eq!(i.timeout, std::time::Duration::from_secs(2));
        assert_eq!(i.cache_ttl, std::time::Duration::from_secs(300));
        assert_eq!(i.negative_cache_ttl, std::time::Duration::from_secs(10));
        assert_eq!(p.keys, portcullis::config::KeySource::IntrospectionOnly);
        assert!(!format!("{:?}", loaded.config).contains("hunter2"));
    }

    #[test]
    fn each_mistake_is_one_line_at_its_place() {
        let cases = [
            (
                introspecting("a", "      client_id: gw\n      client_secret_file: client-secret\n"),
                "providers.a.introspection.endpoint: missing",
            ),
            (
                introspecting("b", "      endpoint: http://idp.example.com/introspect\n      client_id: gw\n      client_secret_file: client-secret\n"),
                "plain http",
            ),
            (
                introspecting("c", "      endpoint: https://idp.example.com/i\n      client_id: gw\n"),
                "set exactly one of client_secret_file and client_secret_env",
            ),
            (
                introspecting("d", &format!("{GOOD}      client_secret_env: HOME\n")),
                "set exactly one of client_secret_file and client_secret_env",
            ),
            (
                introspecting("e", "      endpoint: https://idp.example.com/i\n      client_id: gw\n      client_secret_file: empty\n"),
                "the client secret is empty",
            ),
            (
                introspecting("f", &format!("{GOOD}      auth_method: private_key_jwt\n")),
                "unknown variant `private_key_jwt`",
            ),
            (
                introspecting("g", &format!("{GOOD}      cache_tll: 5m\n")),
                "unknown field `cache_tll`",
            ),
            (
                introspecting("h", &format!("{GOOD}      timeout: 0s\n")),
                "timeout: must be more than 0s",
            ),
            (
                introspecting("i", "      endpoint: https://idp.example.com/i\n      client_id: gw\n      client_secret_env: PORTCULLIS_SURELY_UNSET_VARIABLE\n"),
                "PORTCULLIS_SURELY_UNSET_VARIABLE is not set",
            ),
        ];
        for (providers, expected) in cases {
            let line = refused(&providers, ROUTE);
            assert!(line.contains(expected), "{line}\n  should say: {expected}");
            assert!(line.contains("gateway.yaml:"), "placed in the file: {line}");
        }
    }

    #[test]
    fn a_route_may_send_opaque_tokens_to_one_provider_only() {
        let two = format!("{}{}", introspecting("one", GOOD), introspecting("two", GOOD));
        let line = refused(&two, ROUTE);
        assert!(line.contains("routes[0] (r).auth.providers"), "{line}");
        assert!(
            line.contains("more than one provider with `introspection` (one, two)"),
            "{line}"
        );
        // Naming one of them is fine.
        let d = dir();
        let named = ROUTE.replace("auth: {}", "auth: { providers: [two] }");
        assert!(Config::from_yaml(&config(&two, &named), &d.path().join("gateway.yaml")).is_ok());
    }

    #[test]
    fn metadata_needs_one_url_per_route() {
        let p = introspecting("corp", GOOD);
        let template = "  - name: t\n    match: { path_template: \"/orgs/{org}\" }\n    upstream: app\n    auth: { resource_metadata: true }\n";
        let line = refused(&p, template);
        assert!(
            line.contains("routes[0] (t).auth.resource_metadata: a path_template route"),
            "{line}"
        );
        let twice = "  - name: a\n    match: { path: /mcp }\n    upstream: app\n    auth: { resource_metadata: true }\n  - name: b\n    match: { path_exact: /mcp, methods: [POST] }\n    upstream: app\n    auth: { resource_metadata: true }\n";
        let line = refused(&p, twice);
        assert!(line.contains("routes[1] (b).auth.resource_metadata"), "{line}");
        assert!(line.contains("also routes[0] (a)'s"), "{line}");
        // Different hosts do not meet.
        let hosts = twice
            .replace("{ path: /mcp }", "{ path: /mcp, host: a.example.com }")
            .replace(
                "{ path_exact: /mcp, methods: [POST] }",
                "{ path_exact: /mcp, host: b.example.com }",
            );
        let d = dir();
        assert!(Config::from_yaml(&config(&p, &hosts), &d.path().join("gateway.yaml")).is_ok());
    }
}
