//! OpenTelemetry traces, read by a collector stand-in that decodes the OTLP
//! protobuf the gateway posts: span names, kinds and parentage, attributes
//! per kind of route and refusal, W3C trace context to HTTP/1.1 and HTTP/2
//! upstreams (trusted and not), sampling, nothing secret in any exported
//! byte, and a collector that is down or stalled costing requests nothing.

mod support;

use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::grpc::{GrpcClient, GrpcUpstream};
use support::otlp::{Collector, Span, CLIENT, INTERNAL, SERVER};
use support::tokens::*;
use support::ws::WsUpstream;
use support::*;

const INCOMING_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const INCOMING_SPAN: &str = "b7ad6b7169203331";

fn token(sub: &str, scope: &str) -> String {
    support::tokens::token(json!({"sub": sub, "scope": scope, "email": "secret-claim@example.com"}))
}

struct Setup {
    gw: TestGateway,
    up: RecordingUpstream,
    h2: RecordingUpstream,
    ws: WsUpstream,
    _grpc: GrpcUpstream,
}

async fn setup(telemetry: &str) -> Setup {
    let up = RecordingUpstream::start("app").await;
    let h2 = RecordingUpstream::start_h2c("h2").await;
    let ws = WsUpstream::start().await;
    let grpc = GrpcUpstream::start(None).await;
    let dir = GatewayDir::new();
    let yaml = format!(
        r#"{header}providers:
  app:
    secret_file: app.secret
    algorithms: [HS256]
upstreams:
  app:
    targets: [{up}]
  h2:
    targets: [{h2}]
    protocol: h2c
  ws:
    targets: [{ws}]
  grpc:
    targets: [http://{grpc}]
    protocol: h2c
cors:
  web: {{ allow_origins: [https://app.example.com], allow_credentials: true }}
rate_limits:
  once: {{ key: route, rate: 1/h, burst: 1 }}
routes:
  - name: tenant
    match: {{ path_template: "/orgs/{{org}}" }}
    upstream: app
    auth: {{ claims: [{{ claim: org, equals: "{{path.org}}" }}] }}
  - name: office
    match: {{ path: /office }}
    upstream: app
    public: true
    source_ips: [10.0.0.0/8]
  - name: limited
    match: {{ path: /limited }}
    upstream: app
    public: true
    rate_limits: [once]
  - name: browser
    match: {{ path: /browser }}
    upstream: app
    auth: {{ token_sources: ["cookie:session"] }}
    cors: web
  - name: public
    match: {{ path: /pub }}
    upstream: app
    public: true
  - name: orders
    match: {{ path_template: "/orders/{{id}}" }}
    upstream: app
    auth: {{ scopes: [orders:read], token_sources: [header, "query:access_token", "cookie:session"] }}
  - name: h2
    match: {{ path: /h2 }}
    upstream: h2
    public: true
  - name: chat
    match: {{ path: /ws }}
    upstream: ws
    public: true
    websocket: true
  - name: echo
    match: {{ path: /echo.v1.Echo }}
    upstream: grpc
    auth: {{ scopes: [echo] }}
{telemetry}"#,
        header = header_with_admin(),
        up = up.url(),
        h2 = h2.url(),
        ws = ws.url(),
        grpc = grpc.addr,
    );
    let gw = dir.start(&yaml).await;
    Setup {
        gw,
        up,
        h2,
        ws,
        _grpc: grpc,
    }
}

fn telemetry(c: &Collector, ratio: f64, trust: bool) -> String {
    format!(
        "telemetry:\n  otlp_endpoint: {}\n  service_name: edge-test\n  sample_ratio: {ratio}\n  trust_incoming_traceparent: {trust}\n",
        c.endpoint()
    )
}

/// The SERVER span of the request that got `reply`, waiting for its export.
async fn server_span(c: &Collector, reply: &Reply) -> Span {
    let id = reply.header("x-request-id").expect("a request id").to_string();
    let find = || {
        c.spans()
            .into_iter()
            .find(|s| s.kind == SERVER && s.attr("portcullis.request_id") == Some(id.as_str()))
    };
    wait_for(
        "the request's SERVER span to be exported",
        Duration::from_secs(10),
        || find().is_some(),
    )
    .await;
    find().unwrap()
}

fn children(c: &Collector, parent: &Span) -> Vec<Span> {
    c.spans()
        .into_iter()
        .filter(|s| s.parent == parent.span_id && s.trace_id == parent.trace_id)
        .collect()
}

/// `traceparent`'s trace id and parent id.
fn parse_traceparent(v: &str) -> (String, String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_has_a_server_span_with_its_children() {
    let c = Collector::start(support::otlp::ANSWER).await;
    let s = setup(&telemetry(&c, 1.0, true)).await;
    let mut client = s.gw.client(Proto::H1).await;
    let good = token("alice", "orders:read");
    let bearer = format!("Bearer {good}");

    // A public route: the SERVER span and the upstream exchange's CLIENT span.
    let r = client.send(req("GET", "/pub/x?q=1", &[], "")).await;
    assert_eq!(r.status, 200);
    let server = server_span(&c, &r).await;
    assert_eq!(server.name, "GET public");
    assert_eq!(server.service, "edge-test");
    assert_eq!(server.parent, "", "no incoming context: a root span");
    assert_eq!(server.attr("http.request.method"), Some("GET"));
    assert_eq!(server.attr("url.path"), Some("/pub/x"));
    assert_eq!(server.attr("http.route"), Some("/pub/*"));
    assert_eq!(server.attr("portcullis.route"), Some("public"));
    assert_eq!(server.attr("http.response.status_code"), Some("200"));
    assert_eq!(server.attr("client.address"), Some("127.0.0.1"));
    assert_eq!(server.attr("server.address"), Some("localhost"));
    assert_eq!(server.attr("url.scheme"), Some("https"));
    assert_eq!(server.attr("enduser.id"), None);
    let kids = children(&c, &server);
    assert_eq!(kids.len(), 1, "{kids:?}");
    let upstream = &kids[0];
    assert_eq!((upstream.kind, upstream.name.as_str()), (CLIENT, "GET"));
    assert_eq!(upstream.attr("portcullis.upstream"), Some("app"));
    assert_eq!(upstream.attr("http.response.status_code"), Some("200"));
    // The upstream's parent is the CLIENT span, in the same trace.
    let seen = s.up.last();
    let (trace, parent, flags) = parse_traceparent(seen.headers["traceparent"].to_str().unwrap());
    assert_eq!(
        (trace.as_str(), parent.as_str(), flags.as_str()),
        (server.trace_id.as_str(), upstream.span_id.as_str(), "01")
    );

    // A protected route: the subject, and a verification span the first time only.
    let r = client
        .send(req("GET", "/orders/7", &[("authorization", &bearer)], ""))
        .await;
    assert_eq!(r.status, 200);
    let first = server_span(&c, &r).await;
    assert_eq!(first.name, "GET orders");
    assert_eq!(first.attr("http.route"), Some("/orders/{id}"));
    assert_eq!(first.attr("enduser.id"), Some("alice"));
    let kinds: Vec<(i32, String)> = children(&c, &first).into_iter().map(|k| (k.kind, k.name)).collect();
    assert!(kinds.contains(&(INTERNAL, "verify token".into())), "{kinds:?}");
    assert!(kinds.contains(&(CLIENT, "GET".into())), "{kinds:?}");
    let r = client
        .send(req("GET", "/orders/7", &[("authorization", &bearer)], ""))
        .await;
    assert_eq!(r.status, 200);
    let cached = server_span(&c, &r).await;
    let kinds: Vec<String> = children(&c, &cached).into_iter().map(|k| k.name).collect();
    assert_eq!(kinds, ["GET"], "a cached token is not verified again");

    // Refusals carry their reason code and send nothing upstream.
    let cases = [
        (None, 401, "no_token"),
        (Some(format!("Bearer {}", token("bob", "other"))), 403, "missing_scope"),
        (
            Some(format!("Bearer {}x", &good[..good.len() - 1])),
            401,
            "bad_signature",
        ),
    ];
    for (authorization, status, reason) in cases {
        let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = client.send(req("GET", "/orders/8", &headers, "")).await;
        assert_eq!(r.status, status, "{reason}");
        let span = server_span(&c, &r).await;
        assert_eq!(span.attr("portcullis.reason"), Some(reason));
        assert_eq!(span.attr("error.type"), Some(reason));
        assert_eq!(
            span.attr("http.response.status_code"),
            Some(status.to_string().as_str())
        );
        let kids = children(&c, &span);
        assert!(
            kids.iter().all(|k| k.kind != CLIENT),
            "refused, yet an upstream span: {kids:?}"
        );
        if reason == "bad_signature" {
            let verify = kids
                .iter()
                .find(|k| k.name == "verify token")
                .expect("a verification span");
            assert_eq!(verify.attr("error.type"), Some("bad_signature"));
            assert_eq!(verify.status, 2, "an error status");
        }
    }

    // Every other kind of refusal carries its reason code too.
    let org_token = hs_sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "olga", "org": "acme", "exp": now() + 600}),
    );
    let org_bearer = format!("Bearer {org_token}");
    let cookie = format!("session={org_token}");
    assert_eq!(client.send(req("GET", "/limited", &[], "")).await.status, 200);
    type Refusal<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let more: [Refusal; 5] = [
        (
            "/orgs/globex",
            vec![("authorization", org_bearer.as_str())],
            403,
            "claims",
        ),
        ("/office", vec![], 403, "source_ip"),
        ("/limited", vec![], 429, "rate_limited"),
        (
            "/browser",
            vec![("cookie", cookie.as_str()), ("origin", "https://evil.example")],
            403,
            "cors_rejected",
        ),
        (
            "/orders/1",
            vec![("authorization", "Bearer not-a-jwt")],
            401,
            "malformed_token",
        ),
    ];
    for (path, headers, status, reason) in more {
        let r = client.send(req("GET", path, &headers, "")).await;
        assert_eq!(r.status, status, "{path}");
        let span = server_span(&c, &r).await;
        assert_eq!(span.attr("portcullis.reason"), Some(reason), "{path}");
        assert!(
            children(&c, &span).iter().all(|k| k.kind != CLIENT),
            "{path}: nothing upstream"
        );
    }
    assert_eq!(
        client
            .send(req("GET", "/orgs/acme", &[("authorization", &org_bearer)], ""))
            .await
            .status,
        200
    );

    // No route: the span is named by the method alone.
    let r = client.send(req("GET", "/nowhere", &[], "")).await;
    assert_eq!(r.status, 404);
    let span = server_span(&c, &r).await;
    assert_eq!(span.name, "GET");
    assert_eq!(span.attr("http.route"), None);

    // Tokens from the query string and a cookie: used, and never exported.
    let in_query = token("carol", "orders:read");
    let in_cookie = token("dave", "orders:read");
    let r = client
        .send(req(
            "GET",
            &format!("/orders/9?access_token={in_query}&page=2"),
            &[],
            "",
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(server_span(&c, &r).await.attr("url.path"), Some("/orders/9"));
    let cookie = format!("session={in_cookie}; theme=dark-cookie-value");
    let r = client.send(req("GET", "/orders/9", &[("cookie", &cookie)], "")).await;
    assert_eq!(r.status, 200);
    assert_eq!(server_span(&c, &r).await.attr("enduser.id"), Some("dave"));

    let raw = String::from_utf8_lossy(&c.raw()).into_owned();
    for secret in [
        good.as_str(),
        &in_query,
        &in_cookie,
        SECRET,
        "dark-cookie-value",
        "secret-claim@example.com",
        "access_token",
        "page=2",
    ] {
        assert!(!raw.contains(secret), "{secret:?} was exported");
    }
    // The signature alone is enough to replay nothing, but it is a token part too.
    let signature = good.rsplit('.').next().unwrap();
    assert!(!raw.contains(signature));
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_and_grpc_requests_are_traced() {
    let c = Collector::start(support::otlp::ANSWER).await;
    let s = setup(&telemetry(&c, 1.0, true)).await;

    // A WebSocket tunnel is one CLIENT span from the upgrade to the close.
    let (mut ws, _) = support::ws::connect(s.gw.addr, &s.gw.cert, "/ws", &[]).await.unwrap();
    assert_eq!(
        support::ws::round_trip(&mut ws, "hi").await.as_deref(),
        Some("echo: hi")
    );
    let handshake = s.ws.last();
    let (trace, parent, _) = parse_traceparent(handshake.headers["traceparent"].to_str().unwrap());
    ws.close(None).await.unwrap();
    support::ws::closed(&mut ws).await;
    let find = || {
        c.spans()
            .into_iter()
            .find(|s| s.name == "WebSocket" && s.span_id == parent)
    };
    wait_for(
        "the WebSocket tunnel's span to be exported",
        Duration::from_secs(10),
        || find().is_some(),
    )
    .await;
    let tunnel = find().unwrap();
    assert_eq!(tunnel.kind, CLIENT);
    assert_eq!(tunnel.trace_id, trace);
    assert_eq!(tunnel.attr("portcullis.close_reason"), Some("client"));
    assert_eq!(tunnel.attr("http.response.status_code"), Some("101"));
    let server = c
        .spans()
        .into_iter()
        .find(|s| s.span_id == tunnel.parent)
        .expect("the upgrade's SERVER span");
    assert_eq!((server.kind, server.name.as_str()), (SERVER, "GET chat"));
    assert_eq!(server.attr("http.response.status_code"), Some("101"));

    // gRPC over HTTP/2 both ways: the call's SERVER span and its upstream stream.
    let mut grpc = GrpcClient::connect(s.gw.addr, &s.gw.cert).await;
    grpc.token = Some(token("erin", "echo"));
    assert_eq!(grpc.unary("Unary", "hi").await.unwrap(), "sub=erin;msg=hi");
    let find = || {
        c.spans()
            .into_iter()
            .find(|s| s.kind == SERVER && s.name == "POST echo")
    };
    wait_for(
        "the gRPC call's SERVER span to be exported",
        Duration::from_secs(10),
        || find().is_some(),
    )
    .await;
    let server = find().unwrap();
    assert_eq!(server.attr("network.protocol.version"), Some("2"));
    assert_eq!(server.attr("enduser.id"), Some("erin"));
    assert_eq!(server.attr("url.path"), Some("/echo.v1.Echo/Unary"));
    let kids = children(&c, &server);
    assert!(
        kids.iter()
            .any(|k| k.kind == CLIENT && k.attr("portcullis.upstream") == Some("grpc")),
        "{kids:?}"
    );

    // A gRPC refusal (HTTP 200 with grpc-status) is traced with the gateway's view.
    grpc.token = None;
    assert!(grpc.unary("Unary", "hi").await.is_err());
    let find = || {
        c.spans()
            .into_iter()
            .find(|s| s.kind == SERVER && s.name == "POST echo" && s.attr("portcullis.reason") == Some("no_token"))
    };
    wait_for(
        "the refused gRPC call's span to be exported",
        Duration::from_secs(10),
        || find().is_some(),
    )
    .await;
    assert_eq!(find().unwrap().attr("http.response.status_code"), Some("401"));
}

/// Send `path` with an incoming trace context; return the upstream's view.
async fn with_incoming(s: &Setup, proto: Proto, path: &str, up: &RecordingUpstream) -> (Reply, http::HeaderMap) {
    let before = up.requests().len();
    let traceparent = format!("00-{INCOMING_TRACE}-{INCOMING_SPAN}-01");
    let r =
        s.gw.client(proto)
            .await
            .send(req(
                "GET",
                path,
                &[("traceparent", &traceparent), ("tracestate", "vendor=opaque")],
                "",
            ))
            .await;
    assert_eq!(r.status, 200);
    let requests = up.requests();
    assert_eq!(requests.len(), before + 1);
    (r, requests[before].headers.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incoming_trace_is_continued_only_when_trusted() {
    let c = Collector::start(support::otlp::ANSWER).await;
    let trusted = setup(&telemetry(&c, 1.0, true)).await;
    let untrusted = setup(&telemetry(&c, 1.0, false)).await;
    for (s, path, proto) in [
        (&trusted, "/pub/a", Proto::H1),
        (&trusted, "/h2/a", Proto::H2),
        (&untrusted, "/pub/b", Proto::H1),
        (&untrusted, "/h2/b", Proto::H2),
    ] {
        let up = if path.starts_with("/h2") { &s.h2 } else { &s.up };
        let (r, seen) = with_incoming(s, proto, path, up).await;
        let server = server_span(&c, &r).await;
        let (trace, parent, flags) = parse_traceparent(seen["traceparent"].to_str().unwrap());
        assert_eq!(
            seen.get_all("traceparent").iter().count(),
            1,
            "exactly one traceparent upstream"
        );
        assert_ne!(
            parent, INCOMING_SPAN,
            "{path}: the gateway's span is the upstream's parent"
        );
        assert_eq!(flags, "01");
        assert_eq!(trace, server.trace_id, "{path}");
        let client_span = children(&c, &server)
            .into_iter()
            .find(|k| k.kind == CLIENT)
            .expect("a CLIENT span");
        assert_eq!(parent, client_span.span_id, "{path}");
        if std::ptr::eq(s, &trusted) {
            assert_eq!(trace, INCOMING_TRACE, "{path}: a trusted trace is continued");
            assert_eq!(server.parent, INCOMING_SPAN, "{path}");
            assert_eq!(seen["tracestate"], "vendor=opaque", "{path}");
        } else {
            assert_ne!(trace, INCOMING_TRACE, "{path}: an untrusted trace is replaced");
            assert_eq!(server.parent, "", "{path}");
            assert!(
                seen.get("tracestate").is_none(),
                "{path}: an untrusted tracestate is dropped"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ratio_zero_exports_nothing_but_honours_a_sampled_parent() {
    let c = Collector::start(support::otlp::ANSWER).await;
    let s = setup(&telemetry(&c, 0.0, true)).await;
    let mut client = s.gw.client(Proto::H1).await;
    let mut traces = std::collections::HashSet::new();
    for _ in 0..5 {
        assert_eq!(client.send(req("GET", "/pub/z", &[], "")).await.status, 200);
        let (trace, _, flags) = parse_traceparent(s.up.last().headers["traceparent"].to_str().unwrap());
        assert_eq!(flags, "00", "unsampled, and the upstream is told so");
        traces.insert(trace);
    }
    assert_eq!(traces.len(), 5, "a new trace per request");
    // A sampled parent from a trusted client is recorded even at ratio 0.
    let (r, _) = with_incoming(&s, Proto::H1, "/pub/sampled", &s.up).await;
    let server = server_span(&c, &r).await;
    assert_eq!(server.trace_id, INCOMING_TRACE);
    // One more export interval: still nothing from the unsampled requests.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let spans = c.spans();
    assert!(spans.iter().all(|s| s.trace_id == INCOMING_TRACE), "{spans:?}");
    assert_eq!(
        spans.len(),
        2,
        "the sampled request's SERVER and CLIENT spans: {spans:?}"
    );
}

async fn dropped(gw: &TestGateway) -> f64 {
    let (status, body) = gw.admin("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| {
            l.strip_prefix("portcullis_trace_spans_dropped_total ")?
                .trim()
                .parse()
                .ok()
        })
        .expect("the dropped-spans counter exists from the start")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_collector_costs_requests_nothing_and_drops_are_counted() {
    let c = Collector::start(support::otlp::STALL).await;
    let s = setup(&telemetry(&c, 1.0, true)).await;
    let before = dropped(&s.gw).await;
    // Two spans a request: more than a stalled batch plus the queue hold.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut client = s.gw.client(Proto::H1).await;
        tasks.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for _ in 0..400 {
                let started = Instant::now();
                assert_eq!(client.send(req("GET", "/pub/load", &[], "")).await.status, 200);
                slowest = slowest.max(started.elapsed());
            }
            slowest
        }));
    }
    for t in tasks {
        let slowest = t.await.unwrap();
        // A debug build on a busy machine: far below the 10 s export timeout.
        assert!(slowest < Duration::from_secs(2), "a request took {slowest:?}");
    }
    // 3,200 spans, of which the queue and the stalled batch hold at most
    // 2,560: the rest are dropped (more than any other test here drops).
    let gw = &s.gw;
    wait_for_async(
        "the stalled export's spans to be counted as dropped",
        Duration::from_secs(10),
        || async { dropped(gw).await >= before + 600.0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absent_collector_is_counted_not_felt() {
    let down = closed_port().await;
    let yaml = format!("telemetry:\n  otlp_endpoint: http://{down}\n");
    let s = setup(&yaml).await;
    let before = dropped(&s.gw).await;
    let mut client = s.gw.client(Proto::H1).await;
    for _ in 0..10 {
        assert_eq!(client.send(req("GET", "/pub/down", &[], "")).await.status, 200);
    }
    // Each failed export drops its whole batch: 10 SERVER and 10 CLIENT spans.
    let gw = &s.gw;
    wait_for_async(
        "the failed exports' spans to be counted as dropped",
        Duration::from_secs(10),
        || async { dropped(gw).await >= before + 20.0 },
    )
    .await;
}

/// The binary: `check` and `explain` on a config with `telemetry` (neither
/// exports anything), and the access-log line of a traced request names its trace.
#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_line_leads_to_its_trace() {
    let c = Collector::start(support::otlp::ANSWER).await;
    let up = RecordingUpstream::start("app").await;
    let yaml = format!(
        r#"listen:
  https: 127.0.0.1:0
  admin: 127.0.0.1:0
tls:
  cert: cert.pem
  key: key.pem
upstreams:
  app:
    targets: [{}]
routes:
  - name: open
    match: {{ path: /open }}
    upstream: app
    public: true
{}"#,
        up.url(),
        telemetry(&c, 1.0, false)
    );
    let gw = support::child::Gateway::start(&yaml, None);
    let dir = gw.dir.path();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c", "gateway.yaml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let printed = String::from_utf8_lossy(&check.stdout);
    let expected = format!(
        "traces: {}/v1/traces (sample_ratio 1, incoming traceparent replaced)",
        c.endpoint()
    );
    assert!(printed.contains(&expected), "{printed}");
    let explain = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["explain", "-c", "gateway.yaml", "GET", "https://localhost/open"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(explain.status.success(), "{}", String::from_utf8_lossy(&explain.stdout));

    let r = gw
        .client(Proto::H1)
        .await
        .send(req("GET", "/open/1", &[("x-request-id", "traced-1")], ""))
        .await;
    assert_eq!(r.status, 200);
    let line = gw.wait_log("\"request_id\":\"traced-1\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let trace_id = v["trace_id"]
        .as_str()
        .expect("a trace_id in the access log")
        .to_string();
    let server = server_span(&c, &r).await;
    assert_eq!(server.trace_id, trace_id);
    assert_eq!(
        c.spans().iter().filter(|s| s.kind == SERVER).count(),
        1,
        "check and explain export nothing"
    );

    // The last request's spans are exported during shutdown, not lost with the queue.
    let r = gw
        .client(Proto::H1)
        .await
        .send(req("GET", "/open/2", &[("x-request-id", "last-one")], ""))
        .await;
    assert_eq!(r.status, 200);
    gw.signal("TERM");
    let last = server_span(&c, &r).await;
    assert_eq!(last.attr("url.path"), Some("/open/2"));
}

/// What a request waits on beyond the upstream has a span of its own: a key
/// refetch for a `kid` the gateway has not seen, an introspection call, a
/// Redis command; the introspection client's secret and the opaque token are
/// never exported.
#[tokio::test(flavor = "multi_thread")]
async fn key_fetches_introspection_and_redis_have_child_spans() {
    let c = Collector::start(support::otlp::ANSWER).await;
    let old = KeyPair::generate(Algorithm::RS256);
    let idp = support::idp::Idp::start(vec![old.jwk("old")]).await;
    let ep = support::introspect::Endpoint::start("gateway", "introspection-client-secret").await;
    let redis = require("redis-server", "redis-server").then_some(support::redis::RedisServer::start().await);
    let up = RecordingUpstream::start("app").await;
    let dir = GatewayDir::new();
    std::fs::write(dir.path().join("idp-ca.pem"), &idp.ca_pem).unwrap();
    std::fs::write(dir.path().join("ep-ca.pem"), &ep.ca_pem).unwrap();
    std::fs::write(dir.path().join("client-secret"), "introspection-client-secret").unwrap();
    let (store, limited) = match &redis {
        Some(r) => (
            format!(
                "store:\n  redis: {}\n  timeout: 2s\nrate_limits:\n  shared:\n    key: route\n    rate: 100/s\n    burst: 100\n    store: redis\n",
                r.url()
            ),
            "    rate_limits: [shared]\n",
        ),
        None => (String::new(), ""),
    };
    let yaml = format!(
        r#"{header}providers:
  idp:
    issuer: {idp_issuer}
    jwks_uri: {jwks}
    ca_file: idp-ca.pem
  opaque:
    issuer: {ep_issuer}
    audiences: [orders-api]
    ca_file: ep-ca.pem
    introspection:
      endpoint: {ep_url}
      client_id: gateway
      client_secret_file: client-secret
{store}upstreams:
  app:
    targets: [{up}]
routes:
  - name: jwt
    match: {{ path: /jwt }}
    upstream: app
    auth: {{ providers: [idp] }}
{limited}  - name: opaque
    match: {{ path: /opaque }}
    upstream: app
    auth: {{ providers: [opaque] }}
{telemetry}"#,
        header = header_with_admin(),
        idp_issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        ep_issuer = ep.issuer(),
        ep_url = ep.url(),
        up = up.url(),
        telemetry = telemetry(&c, 1.0, true),
    );
    let gw = dir.start(&yaml).await;
    let ready = || async { gw.admin("/readyz").await.0 == 200 };
    wait_for_async("/readyz to answer 200", Duration::from_secs(10), ready).await;

    // A key rotated in after the gateway fetched the set: refetched inside the request.
    let new = KeyPair::generate(Algorithm::RS256);
    idp.set(|s| s.keys = vec![old.jwk("old"), new.jwk("new")]);
    let claims = json!({"iss": idp.issuer(), "sub": "frank", "exp": now() + 600});
    let jwt = new.sign(&claims, Some("new"));
    let mut client = gw.client(Proto::H1).await;
    let r = client
        .send(req("GET", "/jwt", &[("authorization", &format!("Bearer {jwt}"))], ""))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let server = server_span(&c, &r).await;
    let verify = children(&c, &server)
        .into_iter()
        .find(|k| k.name == "verify token")
        .expect("a verification span");
    let fetch = children(&c, &verify);
    assert_eq!(fetch.len(), 1, "{fetch:?}");
    assert_eq!((fetch[0].kind, fetch[0].name.as_str()), (CLIENT, "fetch keys"));
    assert_eq!(fetch[0].attr("portcullis.provider"), Some("idp"));
    if redis.is_some() {
        let redis_spans: Vec<Span> = c
            .spans()
            .into_iter()
            .filter(|s| s.name == "redis" && s.trace_id == server.trace_id)
            .collect();
        assert!(!redis_spans.is_empty(), "the shared rate limit's command is traced");
        assert!(redis_spans
            .iter()
            .all(|s| s.kind == CLIENT && s.attr("db.system.name") == Some("redis")));
    }

    // An opaque token: one introspection call, then the cache (no call, no span).
    let opaque = "opaque-token-value-never-exported";
    ep.answer(
        opaque,
        json!({"active": true, "sub": "gina", "iss": ep.issuer(), "aud": ["orders-api"], "exp": now() + 600}),
    );
    for round in 0..2 {
        let r = client
            .send(req(
                "GET",
                "/opaque",
                &[("authorization", &format!("Bearer {opaque}"))],
                "",
            ))
            .await;
        assert_eq!(r.status, 200);
        let server = server_span(&c, &r).await;
        assert_eq!(server.attr("enduser.id"), Some("gina"));
        let calls: Vec<Span> = c
            .spans()
            .into_iter()
            .filter(|s| s.name == "introspect token" && s.trace_id == server.trace_id)
            .collect();
        if round == 0 {
            assert_eq!(calls.len(), 1, "{calls:?}");
            assert_eq!(calls[0].kind, CLIENT);
            assert_eq!(calls[0].attr("portcullis.result"), Some("active"));
        } else {
            assert!(calls.is_empty(), "a cached answer makes no call");
        }
    }
    assert_eq!(ep.calls(), 1);
    let raw = String::from_utf8_lossy(&c.raw()).into_owned();
    for secret in [opaque, "introspection-client-secret", jwt.as_str()] {
        assert!(!raw.contains(secret), "{secret:?} was exported");
    }
}

/// A graceful shutdown exports the spans still queued before it returns
/// (they would otherwise wait up to half a second for their batch, and be
/// lost with the process).
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_flushes_the_queued_spans() {
    let c = Collector::start(support::otlp::ANSWER).await;
    let s = setup(&telemetry(&c, 1.0, true)).await;
    let r = {
        let mut client = s.gw.client(Proto::H1).await;
        client.send(req("GET", "/pub/last", &[], "")).await
    };
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").unwrap().to_string();
    // Held past the shutdown, as a process's own runtime would be: the
    // exporter must not depend on being dropped to send its last batch.
    let _configuration = s.gw.running.as_ref().unwrap().gateway.snapshot.load_full();
    s.gw.shutdown().await;
    // No waiting here: shutdown has returned, so the export has happened.
    let spans = c.spans();
    assert!(
        spans
            .iter()
            .any(|s| s.attr("portcullis.request_id") == Some(id.as_str())),
        "{spans:?}"
    );
}
