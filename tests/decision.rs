//! The decision API (`listen.decision`): both header conventions (Traefik's
//! `X-Forwarded-*`, nginx's `X-Original-*`), every refusal in both modes,
//! identity headers and the assertion in the 200, a decision-only gateway,
//! metrics by listener, and a real nginx in front with `auth_request`.

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::tokens::*;
use support::*;

/// The routes, with `upstream` in front of each route line when `with_upstream`.
fn config(listen: &str, up: Option<&str>, assertion_key: bool) -> String {
    let upstream = |name: &str| up.map_or(String::new(), |_| format!(" upstream: {name},"));
    let upstreams = up.map_or(String::new(), |u| {
        format!("upstreams:\n  app: {{ targets: [\"{u}\"] }}\n")
    });
    let assertion = if assertion_key {
        "  assertion: { key_files: [assert.pem], issuer: https://gw.example }\n"
    } else {
        ""
    };
    format!(
        r#"{listen}providers:
  app:
    issuer: https://id.example.com/
    secret_file: app.secret
  down:
    issuer: https://down.example.com/
    jwks_uri: http://127.0.0.1:9/jwks
identity:
  claims:
    X-Auth-Email: email
{assertion}rate_limits:
  tight: {{ key: client_ip, rate: 1/m, burst: 1, store: local }}
{upstreams}routes:
  - {{ name: d-orders, match: {{ path: /orders, methods: [GET] }},{} auth: {{ providers: [app], scopes: [orders:read] }} }}
  - {{ name: d-limited, match: {{ path: /limited }},{} public: true, rate_limits: [tight] }}
  - {{ name: d-down, match: {{ path: /down }},{} auth: {{ providers: [down] }} }}
  - {{ name: d-public, match: {{ path: /public }},{} public: true }}
"#,
        upstream("app"),
        upstream("app"),
        upstream("app"),
        upstream("app"),
    )
}

fn token(scope: &str) -> String {
    support::tokens::token(json!({"iss": "https://id.example.com/", "scope": scope, "email": "alice@example.com"}))
}

async fn start(listen: &str, up: Option<&str>) -> TestGateway {
    let dir = GatewayDir::new();
    std::fs::write(
        dir.path().join("assert.pem"),
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    dir.start(&config(listen, up, true)).await
}

/// A plain HTTP/1.1 request to the decision listener, as a proxy sends it.
async fn ask(gw: &TestGateway, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    let tcp = tokio::net::TcpStream::connect(gw.decision_addr.unwrap()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get("/auth").header("host", "decision.internal");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

const WITH_HTTPS: &str = "listen: { https: 127.0.0.1:0, decision: 127.0.0.1:0, admin: 127.0.0.1:0 }\ntls: { cert: cert.pem, key: key.pem }\n";

#[tokio::test(flavor = "multi_thread")]
async fn traefik_gets_the_decision_and_the_answer_the_gateway_would_give() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(WITH_HTTPS, Some(&up.url())).await;
    let good = format!("Bearer {}", token("orders:read"));
    let lacking = format!("Bearer {}", token("x"));
    let unfetchable = format!(
        "Bearer {}",
        hs_sign(
            Algorithm::HS256,
            b"whatever-secret-whatever-secret!",
            &json!({"iss": "https://down.example.com/", "exp": now() + 60})
        )
    );
    let traefik = |method: &'static str, uri: &'static str| {
        vec![
            ("x-forwarded-method", method),
            ("x-forwarded-uri", uri),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "198.51.100.7"),
        ]
    };
    // Allowed: 200, empty, the identity headers and the assertion.
    let mut h = traefik("GET", "/orders/7?full=1");
    h.push(("authorization", &good));
    h.push(("x-auth-subject", "spoofed"));
    let (status, headers, body) = ask(&gw, &h).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "");
    assert_eq!(headers["x-auth-subject"], "alice");
    assert_eq!(headers["x-auth-scopes"], "orders:read");
    assert_eq!(headers["x-auth-email"], "alice@example.com");
    let assertion = headers["x-portcullis-assertion"].to_str().unwrap();
    let payload = assertion.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "app");
    assert_eq!(claims["sub"], "alice");
    assert!(up.requests().is_empty(), "nothing is forwarded");

    // Every refusal, as the gateway would answer it.
    // (the proxy's headers, the status, the JSON error)
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (traefik("GET", "/orders/7"), 401, "unauthorized"),
        (
            [traefik("GET", "/orders/7"), vec![("authorization", "Bearer not.a.jwt")]].concat(),
            401,
            "invalid_token",
        ),
        (
            [traefik("GET", "/orders/7"), vec![("authorization", lacking.as_str())]].concat(),
            403,
            "insufficient_scope",
        ),
        (traefik("GET", "/nowhere"), 404, "not_found"),
        (traefik("POST", "/orders/7"), 405, "method_not_allowed"),
        (
            [traefik("GET", "/down"), vec![("authorization", unfetchable.as_str())]].concat(),
            503,
            "temporarily_unavailable",
        ),
        (traefik("GET", "/%2e%2e/%2e%2e/etc"), 400, "invalid_request"),
    ];
    for (headers, want, code) in cases {
        let (status, h, body) = ask(&gw, &headers).await;
        assert_eq!(status, want, "{headers:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], code, "{body}");
        assert!(h.get("x-portcullis-status").is_none(), "Traefik gets the real status");
        if want == 401 {
            assert!(h["www-authenticate"].to_str().unwrap().starts_with("Bearer realm="));
        }
        if want == 405 {
            assert_eq!(h["allow"], "GET");
        }
    }
    // 429, with Retry-After; the rate limit keys on the forwarded client.
    let limited = traefik("GET", "/limited");
    assert_eq!(ask(&gw, &limited).await.0, 200);
    let (status, h, _) = ask(&gw, &limited).await;
    assert_eq!(status, 429);
    assert!(h.contains_key("retry-after"));
    let other_client = [("x-forwarded-uri", "/limited"), ("x-forwarded-for", "198.51.100.8")];
    assert_eq!(
        ask(&gw, &other_client).await.0,
        200,
        "another client has its own bucket"
    );

    // Counted and logged as the decision listener's.
    let (_, metrics) = gw.admin("/metrics").await;
    // (Other tests in this binary use the same route names: at least these.)
    for series in [
        r#"portcullis_requests_total{route="d-orders",listener="decision",status="200"}"#,
        r#"portcullis_requests_total{route="d-limited",listener="decision",status="429"}"#,
        r#"portcullis_requests_total{route="-",listener="decision",status="405"}"#,
    ] {
        let n = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{series}\n{metrics}");
    }
    // The HTTPS listener still proxies the same routes.
    let r = gw
        .client(Proto::H1)
        .await
        .send(req("GET", "/orders/1", &[("authorization", &good)], ""))
        .await;
    assert_eq!(r.status, 200);
    assert!(metrics.contains(r#"route="d-orders",listener="https""#));
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_gets_401_or_403_only_with_the_real_status_beside() {
    let up = RecordingUpstream::start("app").await;
    let gw = start(WITH_HTTPS, Some(&up.url())).await;
    let nginx = |method: &'static str, uri: &'static str| {
        vec![
            ("x-original-method", method),
            ("x-original-uri", uri),
            ("x-forwarded-for", "203.0.113.9"),
        ]
    };
    let good = format!("Bearer {}", token("orders:read"));
    let (status, headers, _) = ask(
        &gw,
        &[nginx("GET", "/orders/7"), vec![("authorization", &good)]].concat(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-auth-subject"], "alice");
    let wrong = format!("Bearer {}", token("x"));
    let unfetchable = format!(
        "Bearer {}",
        hs_sign(
            Algorithm::HS256,
            b"whatever-secret-whatever-secret!",
            &json!({"iss": "https://down.example.com/", "exp": now() + 60})
        )
    );
    for (headers, want, real) in [
        (
            [nginx("GET", "/down"), vec![("authorization", unfetchable.as_str())]].concat(),
            403,
            503,
        ),
        (nginx("GET", "/orders/7"), 401, 401),
        (
            [nginx("GET", "/orders/7"), vec![("authorization", wrong.as_str())]].concat(),
            403,
            403,
        ),
        (nginx("GET", "/nowhere"), 403, 404),
        (nginx("DELETE", "/orders/7"), 403, 405),
        (nginx("GET", "/limited"), 200, 200),
        (nginx("GET", "/limited"), 403, 429),
    ] {
        let (status, h, body) = ask(&gw, &headers).await;
        assert_eq!(status, want, "{headers:?}: {body}");
        if status != 200 {
            assert_eq!(h["x-portcullis-status"], real.to_string().as_str(), "{headers:?}");
            serde_json::from_str::<serde_json::Value>(&body).expect("the gateway's JSON");
        }
        if real == 429 {
            assert!(h.contains_key("retry-after"), "Retry-After is kept");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_decision_only_gateway_needs_no_https_listener_nor_upstreams() {
    let dir = GatewayDir::new();
    std::fs::write(
        dir.path().join("assert.pem"),
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    let yaml = config("listen: { decision: 127.0.0.1:0 }\n", None, true);
    std::fs::write(dir.path().join("gateway.yaml"), &yaml).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c", "gateway.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("d-orders\tGET\t*\t/orders (prefix)\t-\t"), "{text}");

    let (snapshot, _) = portcullis::load_config(&dir.path().join("gateway.yaml")).unwrap();
    let running = portcullis::server::start(snapshot).await.unwrap();
    assert!(running.https_addr.is_none());
    let GatewayDir { dir, cert } = dir;
    let gw = TestGateway {
        dir,
        cert,
        addr: running.decision_addr.unwrap(),
        http_addr: None,
        admin_addr: None,
        decision_addr: running.decision_addr,
        running: Some(running),
        config_path: std::path::PathBuf::new(),
    };
    let good = format!("Bearer {}", token("orders:read"));
    let (status, headers, _) = ask(&gw, &[("x-forwarded-uri", "/orders"), ("authorization", &good)]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-auth-subject"], "alice");
    // The assertion's audience is the route when it has no upstream.
    let payload = headers["x-portcullis-assertion"]
        .to_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "d-orders");
    assert_eq!(ask(&gw, &[("x-forwarded-uri", "/orders")]).await.0, 401);

    // Without listen.decision, routes need an upstream and listen.https is required.
    for (yaml, said) in [
        (
            config("listen: { admin: 127.0.0.1:0 }\n", None, false),
            "listen.https: missing",
        ),
        (
            config(
                "listen: { https: 127.0.0.1:0 }\ntls: { cert: c.pem, key: k.pem }\n",
                None,
                false,
            ),
            "upstream: missing",
        ),
        (
            config("listen: { https: 127.0.0.1:0 }\n", Some("http://127.0.0.1:9"), false),
            "tls: missing",
        ),
    ] {
        let d = GatewayDir::new();
        std::fs::write(
            d.path().join("c.pem"),
            std::fs::read(d.path().join("cert.pem")).unwrap(),
        )
        .unwrap();
        std::fs::write(d.path().join("k.pem"), std::fs::read(d.path().join("key.pem")).unwrap()).unwrap();
        std::fs::write(d.path().join("app.secret"), SECRET).unwrap();
        let e = portcullis::config::Config::from_yaml(&yaml, &d.path().join("gateway.yaml")).expect_err(said);
        assert!(e.to_string().contains(said), "{e}");
    }
}

/// A real nginx in front with `auth_request` to the decision listener,
/// proxying to a recording upstream: what is allowed arrives with the
/// identity headers nginx copied; what is refused never arrives, and the
/// client gets 401/403 with the gateway's JSON.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_real_nginx_with_auth_request() {
    if !require("nginx", "nginx") {
        return;
    }
    let up = RecordingUpstream::start("app").await;
    let gw = start(WITH_HTTPS, Some(&up.url())).await;
    let port = free_port().await;
    let dir = tempfile::tempdir().unwrap();
    let decision = gw.decision_addr.unwrap();
    let upstream = up.url().trim_start_matches("http://").to_string();
    // The server block of docs/behind-a-proxy.md, with these addresses.
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/nginx-auth-request.conf"
    ))
    .unwrap()
    .replace("127.0.0.1:9902", &decision.to_string())
    .replace("127.0.0.1:8000", &upstream)
    .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
    let p = dir.path().display();
    let nginx_conf = format!(
        "daemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}; proxy_temp_path {p}; fastcgi_temp_path {p}; uwsgi_temp_path {p}; scgi_temp_path {p};\n{conf}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), nginx_conf).unwrap();
    let mut nginx = std::process::Command::new("nginx")
        .args(["-p", &p.to_string(), "-c", &format!("{p}/nginx.conf")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &'static str, auth: Option<String>| async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header("host", "api.example.com");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = send
            .send_request(req.body(http_body_util::Full::new(bytes::Bytes::new())).unwrap())
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?
            .to_bytes();
        Some((status, headers, String::from_utf8_lossy(&body).into_owned()))
    };
    wait_for_async("the decision listener to answer", Duration::from_secs(10), || async {
        get("/public", None).await.is_some()
    })
    .await;

    let (status, _, body) = get("/orders/7?x=1", Some(format!("Bearer {}", token("orders:read"))))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let seen = up.last();
    assert_eq!(seen.path_and_query, "/orders/7?x=1");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-email"], "alice@example.com");
    assert!(seen.headers.get("x-portcullis-assertion").is_some());
    assert!(
        seen.headers.get("authorization").is_none(),
        "nginx drops the token as configured"
    );
    let forwarded = up.requests().len();

    let (status, headers, body) = get("/orders/7", None).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "unauthorized"
    );
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer realm="));
    let (status, _, body) = get("/orders/7", Some(format!("Bearer {}", token("x")))).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"],
        "insufficient_scope"
    );
    let (status, _, body) = get("/nowhere", None).await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        up.requests().len(),
        forwarded,
        "refused requests never reach the upstream"
    );
    let _ = nginx.kill();
    let _ = nginx.wait();
}

/// With `telemetry`, a decision is a SERVER span of its own, and the 200
/// carries that span's `traceparent` for the proxy in front to pass on (a
/// refusal carries none: nothing is forwarded to join the trace).
#[tokio::test(flavor = "multi_thread")]
async fn a_traced_decision_returns_its_traceparent() {
    let collector = support::otlp::Collector::start(support::otlp::ANSWER).await;
    let yaml = config("listen: { decision: 127.0.0.1:0 }\n", None, false)
        + &format!("telemetry: {{ otlp_endpoint: \"{}\" }}\n", collector.endpoint());
    let gw = GatewayDir::new().start(&yaml).await;
    let good = format!("Bearer {}", token("orders:read"));
    let headers = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/orders"),
        ("x-forwarded-host", "api.example.com"),
        ("x-forwarded-proto", "https"),
        ("authorization", good.as_str()),
    ];
    let (status, answer, body) = ask(&gw, &headers).await;
    assert_eq!(status, 200, "{body}");
    let parent = answer["traceparent"].to_str().unwrap().to_owned();
    let parts: Vec<&str> = parent.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"), "{parent}");
    let request_id = answer["x-request-id"].to_str().unwrap().to_owned();
    let span = || {
        collector
            .spans()
            .into_iter()
            .find(|s| s.attr("portcullis.request_id") == Some(request_id.as_str()))
    };
    wait_for("the decision's span to be exported", Duration::from_secs(10), || {
        span().is_some()
    })
    .await;
    let span = span().unwrap();
    assert_eq!((span.kind, span.name.as_str()), (2, "GET d-orders"));
    assert_eq!((span.trace_id.as_str(), span.span_id.as_str()), (parts[1], parts[2]));

    let (status, refused, _) = ask(&gw, &headers[..4]).await;
    assert_eq!(status, 401);
    assert!(refused.get("traceparent").is_none(), "{refused:?}");
}
