//! gRPC through the gateway with a real tonic client and server: every kind
//! of call over h2c and h2 upstreams, identity as metadata, upstream statuses
//! passed through, and each gateway refusal as the gRPC status clients expect.

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::grpc::{GrpcClient, GrpcUpstream};
use support::tokens::*;
use support::*;
use tonic::Code;

fn token(scope: &str) -> String {
    support::tokens::token(json!({ "scope": scope }))
}

struct Setup {
    gw: TestGateway,
    _upstreams: Vec<GrpcUpstream>,
}

/// The echo service behind an h2c upstream and (same service) an h2 one, a
/// per-method route that needs `admin`, and an upstream that is down.
async fn setup() -> Setup {
    let h2c = GrpcUpstream::start(None).await;
    let (acceptor, ca_pem) = tls_acceptor_alpn(&[b"h2"]);
    let h2 = GrpcUpstream::start(Some(acceptor)).await;
    let down = closed_port().await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("upstream-ca.pem"), ca_pem).unwrap();
    let yaml = format!(
        r#"{header}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
upstreams:
  echo:
    targets: [http://{h2c}]
    protocol: h2c
    request_timeout: 500ms
  echo-tls:
    targets: [https://localhost:{h2_port}]
    protocol: h2
    ca_file: upstream-ca.pem
  down:
    targets: [http://{down}]
    protocol: h2c
routes:
  - name: echo-admin
    match: {{ path_exact: /echo.v1.Echo/Admin }}
    upstream: echo
    auth: {{ scopes: [echo, admin] }}
  - name: echo
    match: {{ path: /echo.v1.Echo, host: localhost }}
    upstream: echo
    auth: {{ scopes: [echo] }}
  - name: echo-tls
    match: {{ path: /echo.v1.Echo, host: tls.localhost }}
    upstream: echo-tls
    auth: {{ scopes: [echo] }}
  - name: grpc-logged
    match: {{ path: /logged.v1.Logged }}
    upstream: echo
    auth: {{}}
  - name: down
    match: {{ path: /down.v1.Down }}
    upstream: down
    public: true
"#,
        header = header(""),
        h2c = h2c.addr,
        h2_port = h2.addr.port(),
    );
    let gw = dir.start(&yaml).await;
    Setup {
        gw,
        _upstreams: vec![h2c, h2],
    }
}

async fn client(s: &Setup, scope: Option<&str>) -> GrpcClient {
    let mut c = GrpcClient::connect(s.gw.addr, &s.gw.cert).await;
    c.token = scope.map(token);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_call_streams_through() {
    let s = setup().await;
    let mut c = client(&s, Some("echo")).await;
    // Identity headers reach the service as request metadata.
    assert_eq!(c.unary("Unary", "hi").await.unwrap(), "sub=alice;msg=hi");
    assert_eq!(c.server_stream("4:0").await.unwrap(), ["0", "1", "2", "3"]);
    assert_eq!(c.client_stream(&["a", "b", "c"]).await.unwrap(), "a+b+c");
    assert_eq!(c.bidi(&["x", "yz", "w"]).await.unwrap(), ["X", "YZ", "W"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_status_passes_through_unchanged() {
    let s = setup().await;
    let mut c = client(&s, Some("echo")).await;
    let status = c.unary("Unary", "fail").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "déjà vu: 100% wrong");
    // The service's own UNIMPLEMENTED for a method under a routed prefix.
    let status = c.call_path("/echo.v1.Echo/Nope").await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("no method"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_arrive_as_grpc_statuses() {
    let s = setup().await;
    let mut anonymous = client(&s, None).await;
    let status = anonymous.unary("Unary", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "A bearer token is required.");
    assert_eq!(
        status.metadata().get("www-authenticate").unwrap(),
        r#"Bearer realm="portcullis""#
    );

    let mut bad = client(&s, None).await;
    bad.token = Some("not.a.token".into());
    let status = bad.unary("Unary", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status
        .metadata()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .contains(r#"error="invalid_token""#));

    // A token without the method's extra scope.
    let mut user = client(&s, Some("echo")).await;
    let status = user.unary("Admin", "hi").await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status
        .metadata()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .contains(r#"error="insufficient_scope""#));
    let mut admin = client(&s, Some("echo admin")).await;
    assert_eq!(admin.unary("Admin", "hi").await.unwrap(), "admin");

    // No route for the service: UNIMPLEMENTED.
    let status = user.call_path("/other.v1.Other/Call").await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // The upstream is down: UNAVAILABLE.
    let status = user.call_path("/down.v1.Down/Call").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    // The upstream does not answer within request_timeout: DEADLINE_EXCEEDED.
    let status = user.unary("Unary", "sleep").await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_counted_with_the_gateway_status() {
    let s = setup().await;
    let mut anonymous = client(&s, None).await;
    let status = anonymous.call_path("/logged.v1.Logged/Call").await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // The metric counts the 401 the gateway decided, not the HTTP 200 it sent.
    let metrics = portcullis::metrics::render(false);
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"portcullis_requests_total{route="grpc-logged",listener="https",status="401"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"portcullis_requests_total{route="grpc-logged",listener="https",status="200"}"#));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_stream_outlives_request_timeout() {
    let s = setup().await;
    let mut c = client(&s, Some("echo")).await;
    // Six messages 250 ms apart: 1.5 s in all, three times request_timeout.
    let started = std::time::Instant::now();
    let got = c.server_stream("6:250").await.unwrap();
    assert_eq!(got.len(), 6);
    assert!(started.elapsed() > Duration::from_millis(1000));
}

#[tokio::test(flavor = "multi_thread")]
async fn many_concurrent_calls_on_one_connection() {
    let s = setup().await;
    let c = client(&s, Some("echo")).await;
    let mut calls = Vec::new();
    for i in 0..50 {
        let mut c = c.clone();
        calls.push(tokio::spawn(async move { c.unary("Unary", &format!("m{i}")).await }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap().unwrap(), format!("sub=alice;msg=m{i}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_service_behind_an_h2_upstream() {
    let s = setup().await;
    let mut c = GrpcClient::connect_as(s.gw.addr, &s.gw.cert, "tls.localhost").await;
    c.token = Some(token("echo"));
    assert_eq!(c.unary("Unary", "over tls").await.unwrap(), "sub=alice;msg=over tls");
    assert_eq!(c.server_stream("3:0").await.unwrap(), ["0", "1", "2"]);
    assert_eq!(c.bidi(&["a", "b"]).await.unwrap(), ["A", "B"]);
}

/// The rest of the Trailers-Only table, each row end to end with tonic: a
/// path the gateway cannot read (400), a method the route does not allow
/// (405), a body over `max_body_bytes` (413), a rate limit (429), headers
/// over `max_header_bytes` (431), keys the provider has not fetched (503).
#[tokio::test(flavor = "multi_thread")]
async fn every_trailers_only_row_reaches_a_tonic_client() {
    let echo = GrpcUpstream::start(None).await;
    let nowhere = closed_port().await;
    let dir = GatewayDir::new();
    let yaml = format!(
        r#"{header}limits:
  max_body_bytes: 64
  max_header_bytes: 2048
providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
  unfetched:
    issuer: https://unfetched.example.com/
    jwks_uri: http://{nowhere}/jwks
upstreams:
  echo:
    targets: [http://{echo}]
    protocol: h2c
rate_limits:
  once:
    key: route
    rate: 1/h
    burst: 1
routes:
  - name: get-only
    match: {{ path: /get.v1.Only, methods: [GET] }}
    upstream: echo
    public: true
  - name: limited
    match: {{ path_exact: /echo.v1.Echo/Admin }}
    upstream: echo
    public: true
    rate_limits: [once]
  - name: unfetched
    match: {{ path: /unfetched.v1.Unfetched }}
    upstream: echo
    auth: {{ providers: [unfetched] }}
  - name: echo
    match: {{ path: /echo.v1.Echo }}
    upstream: echo
    public: true
"#,
        header = header(""),
        echo = echo.addr,
    );
    let gw = dir.start(&yaml).await;
    let mut c = GrpcClient::connect(gw.addr, &gw.cert).await;
    assert_eq!(c.unary("Unary", "small").await.unwrap(), "sub=-;msg=small");

    let status = c.call_path("/echo.v1.Echo/%zz").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "400: {status:?}");
    let status = c.call_path("/get.v1.Only/Call").await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "405: {status:?}");
    let status = c.unary("Unary", &"x".repeat(200)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "413: {status:?}");
    assert_eq!(c.call_path("/echo.v1.Echo/Admin").await.unwrap(), "admin");
    let status = c.call_path("/echo.v1.Echo/Admin").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "429: {status:?}");
    let mut big = GrpcClient::connect(gw.addr, &gw.cert).await;
    big.token = Some("a".repeat(3000));
    let status = big.call_path("/echo.v1.Echo/Unary").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "431: {status:?}");
    let mut unfetched = GrpcClient::connect(gw.addr, &gw.cert).await;
    unfetched.token = Some(hs_sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"iss": "https://unfetched.example.com/", "sub": "x", "exp": now() + 60}),
    ));
    let status = unfetched.call_path("/unfetched.v1.Unfetched/Call").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "503: {status:?}");
}
