//! Reload, shutdown, systemd notifications, admin endpoints and logs, with the
//! built binary run as a child process and real signals (docs/operations.md).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::json;
use support::child::{Gateway, SECRET};
use support::tokens::*;
use support::*;

fn config(up: &RecordingUpstream, routes: &str, extra_limits: &str) -> String {
    format!(
        r#"listen:
  https: 127.0.0.1:0
  admin: 127.0.0.1:0
tls:
  cert: cert.pem
  key: key.pem
limits:
  shutdown_grace: 10s
{extra_limits}providers:
  app:
    secret_file: secret
    algorithms: [HS256]
upstreams:
  app:
    targets: [{}]
    request_timeout: 10s
routes:
{routes}"#,
        up.url()
    )
}

const ROUTE_A: &str = r#"  - name: a
    match: { path: /a }
    upstream: app
    public: true
  - name: secure
    match: { path: /secure }
    upstream: app
    auth: { scopes: [read] }
"#;
const ROUTE_B: &str = r#"  - name: b
    match: { path: /b }
    upstream: app
    public: true
"#;

fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_good_config_and_keeps_serving_through_a_bad_one() {
    let up = RecordingUpstream::start("app").await;
    let gw = Gateway::start(&config(&up, ROUTE_A, ""), None);
    assert_eq!(gw.get("/a").await, 200);
    assert_eq!(gw.get("/b").await, 404);

    gw.write_config(&config(&up, &format!("{ROUTE_A}{ROUTE_B}"), ""));
    gw.signal("HUP");
    gw.wait_log("configuration reloaded").await;
    assert_eq!(gw.get("/b").await, 200, "the new route is live");

    // Broken YAML: one ERROR line with file:line, and nothing changes.
    gw.write_config(&config(&up, ROUTE_A, "").replace(
        "routes:",
        r#"routes:
  - name: [broken"#,
    ));
    gw.signal("HUP");
    let line = gw.wait_log("reload failed").await;
    assert!(line.contains("\"ERROR\""), "{line}");
    assert!(line.contains("gateway.yaml:"), "file:line in the reason: {line}");
    assert_eq!(gw.get("/a").await, 200);
    assert_eq!(gw.get("/b").await, 200, "the previous configuration keeps serving");

    // A semantic error is refused the same way.
    gw.write_config(&config(
        &up,
        r#"  - match: { path: /c }
    upstream: nowhere
    public: true
"#,
        "",
    ));
    gw.signal("HUP");
    wait_for("two failed reloads to be logged", Duration::from_secs(5), || {
        gw.logs().iter().filter(|l| l.contains("reload failed")).count() == 2
    })
    .await;
    assert_eq!(gw.get("/b").await, 200);

    let (status, body) = gw.admin("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric(&body, r#"portcullis_config_reloads_total{result="success"}"#),
        1.0,
        "{body}"
    );
    assert_eq!(
        metric(&body, r#"portcullis_config_reloads_total{result="failure"}"#),
        2.0,
        "{body}"
    );
    assert!(
        metric(
            &body,
            r#"portcullis_requests_total{route="b",listener="https",status="200"}"#
        ) >= 2.0,
        "{body}"
    );
    assert!(body.contains("portcullis_request_duration_seconds_bucket{"), "{body}");
    assert!(body.contains("portcullis_open_connections"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_the_certificate_for_new_handshakes() {
    let up = RecordingUpstream::start("app").await;
    let gw = Gateway::start(&config(&up, ROUTE_A, ""), None);
    let old = gw.cert.clone();
    let (cert_pem, key_pem) = portcullis::tls::self_signed(&["localhost".into()]).unwrap();
    std::fs::write(gw.dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(gw.dir.path().join("key.pem"), &key_pem).unwrap();
    let new = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    gw.signal("HUP");
    gw.wait_log("configuration reloaded").await;
    let mut c = Client::connect(gw.https, &new, Proto::H1).await;
    assert_eq!(
        c.send(req("GET", "/a", &[], "")).await.status,
        200,
        "the new certificate is presented"
    );
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&old, &[b"http/1.1"])));
    let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    assert!(
        connector.connect(name, tcp).await.is_err(),
        "the old certificate is gone"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_drop_nothing() {
    let up = RecordingUpstream::start("app").await;
    let gw = Gateway::start(&config(&up, ROUTE_A, ""), None);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for proto in [Proto::H1, Proto::H2, Proto::H1] {
        let mut c = gw.client(proto).await;
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut r = req("GET", "/a", &[], "");
                match c.try_send(&mut r).await {
                    Ok(reply) if reply.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let reloads = |gw: &Gateway| {
        gw.logs()
            .iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count()
    };
    for i in 0..10 {
        let routes = if i % 2 == 0 {
            format!("{ROUTE_A}{ROUTE_B}")
        } else {
            ROUTE_A.to_string()
        };
        let before = reloads(&gw);
        gw.write_config(&config(&up, &routes, ""));
        gw.signal("HUP");
        // The reload was applied while the load runs, before the next one.
        wait_for("the reload to be counted", Duration::from_secs(5), || {
            reloads(&gw) > before
        })
        .await;
    }
    assert_eq!(reloads(&gw), 10, "every reload happened during the load");
    let (_, metrics) = gw.admin("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"portcullis_config_reloads_total{result="success"} 10"#),
        "{metrics}"
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during reloads");
    assert!(
        ok.load(Ordering::Relaxed) > 30,
        "the load actually ran: {}",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let up = RecordingUpstream::start("app").await;
    let mut gw = Gateway::start(&config(&up, ROUTE_A, ""), None);
    let mut c = gw.client(Proto::H1).await;
    let mut c2 = gw.client(Proto::H2).await;
    let slow = tokio::spawn(async move { c.send(req("GET", "/a", &[("x-test", "slow")], "")).await.status });
    let slow2 = tokio::spawn(async move { c2.send(req("GET", "/a", &[("x-test", "slow")], "")).await.status });
    wait_for("the upstream to receive both requests", Duration::from_secs(5), || {
        up.requests().len() == 2
    })
    .await;
    gw.signal("TERM");
    gw.wait_log("shutting down").await;
    // No new connections once draining.
    assert!(
        tokio::net::TcpStream::connect(gw.https).await.is_err(),
        "still accepting after SIGTERM"
    );
    assert_eq!(slow.await.unwrap(), 200, "the in-flight HTTP/1.1 request completed");
    assert_eq!(slow2.await.unwrap(), 200, "the in-flight HTTP/2 request completed");
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exited after draining");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    let up = RecordingUpstream::start("app").await;
    let mut gw = Gateway::start(&config(&up, ROUTE_A, ""), None);
    let mut c = gw.client(Proto::H1).await;
    let _slow = tokio::spawn(async move { c.send(req("GET", "/a", &[("x-test", "slow")], "")).await });
    // The slow request is in flight (the upstream has it) before the signals.
    wait_for("the upstream to receive the request", Duration::from_secs(5), || {
        !up.requests().is_empty()
    })
    .await;
    gw.signal("TERM");
    gw.wait_log("shutting down").await;
    gw.signal("INT");
    let status = gw
        .wait_exit(Duration::from_millis(1500))
        .await
        .expect("exited without waiting for the drain");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_is_told_ready_reloading_and_stopping() {
    let up = RecordingUpstream::start("app").await;
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut gw = Gateway::start(&config(&up, ROUTE_A, ""), Some(&sock_path));
    let recv = |sock: &std::os::unix::net::UnixDatagram| {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(&sock).trim(), "READY=1");
    gw.signal("HUP");
    let reloading = recv(&sock);
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert_eq!(recv(&sock).trim(), "READY=1");
    gw.signal("TERM");
    assert_eq!(recv(&sock).trim(), "STOPPING=1");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10)).await.and_then(|s| s.code()),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_logs_are_structured_and_never_contain_the_token() {
    let up = RecordingUpstream::start("app").await;
    let gw = Gateway::start(&config(&up, ROUTE_A, ""), None);
    let good = hs_sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "carol", "scope": "read", "exp": now() + 60}),
    );
    let bad = hs_sign(
        Algorithm::HS256,
        b"wrong",
        &json!({"sub": "mallory", "scope": "read", "exp": now() + 60}),
    );
    let mut c = gw.client(Proto::H1).await;
    for (token, status) in [(&good, 200), (&bad, 401)] {
        let r = c
            .send(req(
                "GET",
                "/secure/x?q=1",
                &[
                    ("authorization", &format!("Bearer {token}")),
                    ("x-request-id", "trace-42"),
                ],
                "",
            ))
            .await;
        assert_eq!(r.status.as_u16(), status);
    }
    let line = gw.wait_log("\"subject\":\"carol\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request_id"], "trace-42");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/secure/x");
    assert_eq!(v["route"], "secure");
    assert_eq!(v["status"], 200);
    assert_eq!(v["upstream_status"], 200);
    assert!(v["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(v["duration_ms"].is_number());
    gw.wait_log("\"status\":401").await;

    let (_, metrics) = gw.admin("/metrics").await;
    assert!(
        metric(&metrics, r#"portcullis_auth_failures_total{reason="bad_signature"}"#) >= 1.0,
        "{metrics}"
    );
    for l in gw.logs() {
        for t in [&good, &bad] {
            let signature = t.rsplit('.').next().unwrap();
            assert!(
                !l.contains(t.as_str()) && !l.contains(signature),
                "a log line contains a token: {l}"
            );
        }
        assert!(!l.contains(SECRET), "a log line contains the secret: {l}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints() {
    let up = RecordingUpstream::start("app").await;
    let gw = Gateway::start(&config(&up, ROUTE_A, ""), None);
    assert_eq!(gw.admin("/healthz").await.0, 200);
    let (status, body) = gw.admin("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.admin("/nope").await.0, 404);
    // (portcullis_jwks_refresh_total appears for remote providers: see remote_keys.rs.)
    // Every name is there from the first scrape, except the per-status request
    // counter, which needs one request to have a series.
    let (_, before) = gw.admin("/metrics").await;
    assert!(
        before
            .lines()
            .any(|l| l == r#"portcullis_config_reloads_total{result="failure"} 0"#),
        "{before}"
    );
    assert!(
        before
            .lines()
            .any(|l| l == r#"portcullis_upstream_errors_total{upstream="app",kind="connect"} 0"#),
        "{before}"
    );
    assert_eq!(gw.get("/a").await, 200);
    let (status, body) = gw.admin("/metrics").await;
    assert_eq!(status, 200);
    // The classic Prometheus text format by default: counters are typed under
    // their `_total` name, and there is no OpenMetrics `# EOF`.
    for (name, kind) in [
        ("portcullis_open_connections", "gauge"),
        ("portcullis_config_reloads_total", "counter"),
        ("portcullis_requests_total", "counter"),
        ("portcullis_request_duration_seconds", "histogram"),
        ("portcullis_auth_failures_total", "counter"),
        ("portcullis_upstream_errors_total", "counter"),
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} {kind}\n")),
            r#"{name} missing:
{body}"#
        );
    }
    assert!(!body.contains("# EOF"), "{body}");
    assert!(
        body.lines()
            .any(|l| l == r#"portcullis_requests_total{route="a",listener="https",status="200"} 1"#),
        "{body}"
    );
    let plain = gw.admin_raw("/metrics", "").await;
    assert!(plain.contains("content-type: text/plain; version=0.0.4"), "{plain}");
    // A scraper that asks for OpenMetrics gets it.
    let om = gw
        .admin_raw(
            "/metrics",
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n",
        )
        .await;
    assert!(om.contains("content-type: application/openmetrics-text"), "{om}");
    assert!(
        om.contains("# TYPE portcullis_requests counter\n") && om.ends_with("# EOF\n"),
        "{om}"
    );
}

/// Monitor mode writes its decision into the access-log line; a token from a
/// query parameter is never logged.
#[tokio::test(flavor = "multi_thread")]
async fn monitor_decisions_are_in_the_access_log() {
    let up = RecordingUpstream::start("app").await;
    let routes = r#"  - name: watched
    match: { path: /watched }
    upstream: app
    auth: { scopes: [write], mode: monitor, token_sources: [header, "query:access_token"] }
"#;
    let gw = Gateway::start(&config(&up, routes, ""), None);
    let token = hs_sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "dave", "scope": "read", "exp": now() + 60}),
    );
    let mut c = gw.client(Proto::H1).await;
    let path = format!("/watched/x?access_token={token}&page=2");
    let r = c.send(req("GET", &path, &[("x-request-id", "monitor-1")], "")).await;
    assert_eq!(r.status, 200, "forwarded in monitor mode");
    assert_eq!(
        up.last().path_and_query,
        "/watched/x?page=2",
        "the query token went no further"
    );
    let line = gw.wait_log("\"request_id\":\"monitor-1\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["auth"], "monitor_denied", "{line}");
    assert_eq!(v["reason"], "missing_scope", "{line}");
    assert_eq!(v["subject"], "dave");
    assert_eq!(v["status"], 200);
    for l in gw.logs() {
        assert!(!l.contains(&token), "a token reached the logs: {l}");
    }
}

/// A reload whose certificate, key, JWKS file or secret file is broken is
/// refused and the running configuration goes on with what it read before:
/// the old certificate on new handshakes, the old keys for tokens.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_file_keeps_the_files_already_read() {
    let up = RecordingUpstream::start("app").await;
    let gw = Gateway::start(&config(&up, ROUTE_A, ""), None);
    let dir = gw.dir.path().to_path_buf();
    let rsa = KeyPair::generate(Algorithm::RS256);
    std::fs::write(dir.join("keys.json"), jwks(&[rsa.jwk("k1")])).unwrap();
    let with_jwks = config(&up, ROUTE_A, "").replace(
        "providers:\n",
        "providers:\n  files:\n    issuer: https://files.example.com/\n    jwks_file: keys.json\n",
    );
    gw.write_config(&with_jwks);
    gw.signal("HUP");
    gw.wait_log("configuration reloaded").await;

    let hs = hs_sign(
        Algorithm::HS256,
        SECRET.as_bytes(),
        &json!({"sub": "carol", "scope": "read", "exp": now() + 600}),
    );
    let rs = rsa.sign(
        &json!({"iss": "https://files.example.com/", "sub": "dan", "scope": "read", "exp": now() + 600}),
        Some("k1"),
    );
    let secure = |token: String| {
        let gw = &gw;
        async move {
            let mut c = gw.client(Proto::H1).await; // a new handshake each time
            let auth = format!("Bearer {token}");
            c.send(req("GET", "/secure", &[("authorization", &auth)], ""))
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(secure(hs.clone()).await, 200);
    assert_eq!(secure(rs.clone()).await, 200);

    let breakages: [(&str, &[u8]); 4] = [
        (
            "cert.pem",
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        ),
        ("key.pem", b"no key here"),
        ("keys.json", b"{\"keys\": 7}"),
        ("secret", b""),
    ];
    for (n, (file, garbage)) in breakages.iter().enumerate() {
        let path = dir.join(file);
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, garbage).unwrap();
        gw.signal("HUP");
        wait_for(
            &format!("reload failure {} ({file})", n + 1),
            Duration::from_secs(5),
            || gw.logs().iter().filter(|l| l.contains("reload failed")).count() == n + 1,
        )
        .await;
        let failure = gw
            .logs()
            .into_iter()
            .filter(|l| l.contains("reload failed"))
            .nth(n)
            .unwrap();
        assert!(failure.contains(file), "the failure names {file}: {failure}");
        assert_eq!(secure(hs.clone()).await, 200, "after a broken {file}");
        assert_eq!(secure(rs.clone()).await, 200, "after a broken {file}");
        std::fs::write(&path, good).unwrap();
    }
    let (_, metrics) = gw.admin("/metrics").await;
    assert_eq!(
        metric(&metrics, r#"portcullis_config_reloads_total{result="failure"}"#),
        4.0
    );
}

/// A client that goes away before the answer leaves an access-log line with
/// status 499 (the binary, its JSON log read from stderr).
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_request_is_logged_with_499() {
    let up = RecordingUpstream::start("app").await;
    let gw = Gateway::start(&config(&up, ROUTE_A, ""), None);
    let mut c = gw.client(Proto::H1).await;
    let call = tokio::spawn(async move {
        c.send(req(
            "GET",
            "/a/slow",
            &[("x-test", "slow"), ("x-request-id", "walked-away")],
            "",
        ))
        .await
    });
    wait_for("the upstream to receive the request", Duration::from_secs(5), || {
        !up.requests().is_empty()
    })
    .await;
    call.abort();
    let line = gw.wait_log("\"request_id\":\"walked-away\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 499, "{line}");
    assert_eq!(v["route"], "a");
    assert_eq!(v["path"], "/a/slow");
}

/// `PORTCULLIS_WORKERS` sets how many worker threads serve HTTPS, and the
/// `listening` line says how many there are.
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_count_can_be_set_and_is_logged() {
    let up = RecordingUpstream::start("app").await;
    let gw = Gateway::start_with_env(&config(&up, ROUTE_A, ""), None, &[("PORTCULLIS_WORKERS", "3")]);
    let line = gw.wait_log("\"listening\"").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["workers"], 3, "{line}");
    assert_eq!(gw.get("/a").await, 200);
}
