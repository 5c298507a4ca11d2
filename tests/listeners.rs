//! TLS settings, the redirect listener and connection limits (`listen`,
//! `tls`, `limits`; docs/configuration.md).

mod support;

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn simple(up: &RecordingUpstream, tls_extra: &str, extra: &str) -> String {
    format!(
        r#"{}{extra}upstreams:
  app:
    targets: [{}]
routes:
  - match: {{ path: / }}
    upstream: app
    public: true
"#,
        header(tls_extra),
        up.url()
    )
}

async fn handshake(
    gw: &TestGateway,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(), std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(gw.cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(portcullis::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn min_version_is_enforced() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(&up, "", "")).await;
    handshake(&gw, &[&rustls::version::TLS12])
        .await
        .expect("TLS 1.2 allowed by default");
    handshake(&gw, &[&rustls::version::TLS13])
        .await
        .expect("TLS 1.3 allowed");

    let gw13 = TestGateway::start(&simple(&up, "  min_version: \"1.3\"\n", "")).await;
    assert!(
        handshake(&gw13, &[&rustls::version::TLS12]).await.is_err(),
        "TLS 1.2 refused with min_version 1.3"
    );
    handshake(&gw13, &[&rustls::version::TLS13])
        .await
        .expect("TLS 1.3 allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn hsts_can_be_customised_or_turned_off() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(&up, "  hsts: \"max-age=60; includeSubDomains\"\n", "")).await;
    assert_eq!(
        gw.get("/").await.header("strict-transport-security"),
        Some("max-age=60; includeSubDomains")
    );
    let gw = TestGateway::start(&simple(&up, "  hsts: \"\"\n", "")).await;
    let r = gw.get("/").await;
    assert_eq!(r.status, 200);
    // Off means off, even when the upstream sends its own.
    assert_eq!(r.header("strict-transport-security"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn self_signed_if_missing_creates_a_certificate() {
    let up = RecordingUpstream::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"listen:
  https: 127.0.0.1:0
tls:
  cert: made/gw.crt
  key: made/gw.key
  self_signed_if_missing: true
upstreams:
  app:
    targets: [{}]
routes:
  - match: {{ path: / }}
    upstream: app
    public: true
"#,
        up.url()
    );
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let loaded = portcullis::config::Config::load(&path).unwrap();
    assert!(portcullis::tls::ensure_self_signed(loaded.config.tls.as_ref().unwrap()).unwrap());
    let cert_pem = std::fs::read(dir.path().join("made/gw.crt")).unwrap();
    let key_meta = std::fs::metadata(dir.path().join("made/gw.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_meta.permissions()) & 0o077,
        0,
        "key is private"
    );
    // A second run keeps what is there.
    assert!(!portcullis::tls::ensure_self_signed(loaded.config.tls.as_ref().unwrap()).unwrap());
    use rustls_pki_types::pem::PemObject;
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(&cert_pem).unwrap();
    let gw = TestGateway::start_in(dir, cert, &yaml).await;
    assert_eq!(
        gw.get("/").await.status,
        200,
        "the created certificate is served and verifies for localhost"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_listener_redirects_to_https() {
    let up = RecordingUpstream::start("app").await;
    let yaml = simple(&up, "", "").replace(
        "  https: 127.0.0.1:0\n",
        r#"  https: 127.0.0.1:0
  http: 127.0.0.1:0
"#,
    );
    let gw = TestGateway::start(&yaml).await;
    let http = gw.http_addr.expect("http listener");
    let mut tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let out = exchange(
        &mut tcp,
        b"POST /a/b?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let want = format!("location: https://example.com:{}/a/b?x=1&y=%20\r\n", gw.addr.port());
    assert!(out.to_ascii_lowercase().contains(&want), "{out}");
    assert!(
        !out.to_ascii_lowercase().contains("strict-transport-security"),
        "never HSTS over plain HTTP"
    );
    assert!(up.requests().is_empty(), "the redirect listener never proxies");
}

/// `header_read_timeout` and `idle_timeout` for the slow-head tests.
const SLOW_HEAD_LIMITS: &str = "limits:\n  header_read_timeout: 500ms\n  idle_timeout: 30s\n";

/// Send half a request head: the connection must be closed well within the
/// 30 s idle timeout.
async fn assert_half_head_cut_off(s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: local").await.unwrap();
    let started = std::time::Instant::now();
    let (_, closed) = read_to_close(s, Duration::from_secs(10)).await;
    assert!(closed, "a half-sent head must not hold the connection");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_request_heads_are_cut_off() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(&up, "", SLOW_HEAD_LIMITS)).await;
    let mut s = gw.raw().await;
    assert_half_head_cut_off(&mut s).await;
    assert!(up.requests().is_empty());
}

/// The same on a keep-alive connection that has already served a request:
/// the next head is timed from its first byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_second_head_is_cut_off() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(&up, "", SLOW_HEAD_LIMITS)).await;
    let mut s = gw.raw().await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut first = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&first).contains("\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first response");
        first.extend_from_slice(&buf[..n]);
    }
    assert!(first.starts_with(b"HTTP/1.1 200"));
    // Past the first head's deadline, so that nothing armed for it is left.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_half_head_cut_off(&mut s).await;
    assert_eq!(up.requests().len(), 1);
}

/// An HTTP/2 frame: its 9-byte header, then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The HPACK block of `GET /` (or `POST /`) for `localhost`, from the static table.
fn h2_head(post: bool) -> Vec<u8> {
    let mut block = vec![if post { 0x83 } else { 0x82 }, 0x87, 0x84, 0x41, 9];
    block.extend_from_slice(b"localhost");
    block
}

const H2_HEADERS: u8 = 0x1;
const H2_END_STREAM: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;

/// Read frames until one of `kind` arrives with `flags` set; its payload.
async fn h2_await_frame(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    kind: u8,
    flags: u8,
) -> Vec<u8> {
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
        s.read_exact(&mut payload).await.unwrap();
        if head[3] == kind && head[4] & flags == flags {
            return payload;
        }
    }
}

/// An HTTP/2 connection that has served one request and then been quiet for
/// longer than the head deadline (of the slow-head tests' limits).
async fn h2_after_one_request(gw: &TestGateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut s = raw_tls(gw.addr, &gw.cert, &[b"h2"]).await;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    hello.extend(h2_frame(H2_HEADERS, H2_END_HEADERS | H2_END_STREAM, 1, &h2_head(false)));
    s.write_all(&hello).await.unwrap();
    let status = h2_await_frame(&mut s, H2_HEADERS, 0).await;
    assert_eq!(status[0], 0x88, "HPACK :status 200");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Quiet is not a late head: the connection still answers a PING.
    s.write_all(&h2_frame(0x6, 0, 0, &[7; 8])).await.unwrap();
    h2_await_frame(&mut s, 0x6, 0x1).await;
    s
}

/// HTTP/2 heads after the first are timed too: a header block that never
/// ends (HEADERS without END_HEADERS), and a frame header cut short.
#[tokio::test(flavor = "multi_thread")]
async fn slow_http2_heads_are_cut_off() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(&up, "", SLOW_HEAD_LIMITS)).await;
    let unfinished_block = h2_frame(H2_HEADERS, H2_END_STREAM, 3, &h2_head(false));
    let half_frame_header = h2_frame(H2_HEADERS, H2_END_HEADERS | H2_END_STREAM, 3, &h2_head(false))[..5].to_vec();
    for partial in [unfinished_block, half_frame_header] {
        let mut s = h2_after_one_request(&gw).await;
        s.write_all(&partial).await.unwrap();
        let started = std::time::Instant::now();
        let (_, closed) = read_to_close(&mut s, Duration::from_secs(10)).await;
        assert!(closed, "a half-sent HTTP/2 head must not hold the connection");
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    }
    assert_eq!(up.requests().len(), 2);
}

/// A request body is not a head: HTTP/2 DATA may come slowly.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_http2_body_is_not_a_slow_head() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(&up, "", SLOW_HEAD_LIMITS)).await;
    let mut s = h2_after_one_request(&gw).await;
    s.write_all(&h2_frame(H2_HEADERS, H2_END_HEADERS, 3, &h2_head(true)))
        .await
        .unwrap();
    let data = h2_frame(0x0, H2_END_STREAM, 3, b"a slow body");
    s.write_all(&data[..12]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    s.write_all(&data[12..]).await.unwrap();
    let status = h2_await_frame(&mut s, H2_HEADERS, 0).await;
    assert_eq!(status[0], 0x88, "HPACK :status 200");
    assert_eq!(up.requests().len(), 2);
    assert_eq!(up.requests()[1].body_len, b"a slow body".len());
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_outlives_header_timeout_but_not_idle_timeout() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(
        &up,
        "",
        r#"limits:
  header_read_timeout: 300ms
  idle_timeout: 1500ms
"#,
    ))
    .await;
    let mut c = gw.client(Proto::H1).await;
    assert_eq!(c.send(req("GET", "/", &[], "")).await.status, 200);
    // Idle for longer than header_read_timeout: still usable.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(c.send(req("GET", "/", &[], "")).await.status, 200);
    // Idle past idle_timeout: the gateway closes it.
    let closed = tokio::time::timeout(Duration::from_secs(5), &mut c.closed).await;
    assert!(closed.is_ok(), "idle connection not closed");

    let mut c = gw.client(Proto::H2).await;
    assert_eq!(c.send(req("GET", "/", &[], "")).await.status, 200);
    let closed = tokio::time::timeout(Duration::from_secs(5), &mut c.closed).await;
    assert!(closed.is_ok(), "idle HTTP/2 connection not closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_holds_back_extra_clients() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(
        &up,
        "",
        r#"limits:
  max_connections: 1
"#,
    ))
    .await;
    let mut first = gw.client(Proto::H1).await;
    assert_eq!(first.send(req("GET", "/", &[], "")).await.status, 200);
    // A second client: its TCP connection completes (the kernel queues it),
    // but its TLS handshake must wait until the first connection closes.
    let second = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(&gw.cert, &[b"http/1.1"])));
    let mut handshake = tokio::spawn(async move {
        let name = ServerName::try_from("localhost").unwrap();
        connector.connect(name, second).await
    });
    // While it waits, the first connection keeps being served: each of these
    // round trips is a chance for a broken gateway to accept the second.
    for _ in 0..20 {
        assert_eq!(first.send(req("GET", "/", &[], "")).await.status, 200);
        assert!(
            !handshake.is_finished(),
            "a second connection was accepted beyond max_connections"
        );
    }
    assert_eq!(up.requests().len(), 21, "only the first client reached the upstream");
    drop(first);
    let mut tls = tokio::time::timeout(Duration::from_secs(5), &mut handshake)
        .await
        .expect("accepted once the first closed")
        .unwrap()
        .expect("TLS handshake");
    let out = exchange(
        &mut tls,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// TLS session resumption: a client that comes back with its ticket resumes
/// (no certificate signature, the costliest step of a handshake), over TLS
/// 1.3 and 1.2, and a reload keeps the tickets valid.
#[tokio::test(flavor = "multi_thread")]
async fn tls_sessions_resume_and_survive_a_reload() {
    use rustls::HandshakeKind;
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(&up, "", "")).await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(gw.cert.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(portcullis::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let handshake = |connector: tokio_rustls::TlsConnector| async move {
            let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let kind = tls.get_ref().1.handshake_kind();
            // A TLS 1.3 ticket arrives after the handshake: read the answer.
            let out = exchange(
                &mut tls,
                b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            kind
        };
        assert_eq!(
            handshake(connector.clone()).await,
            Some(HandshakeKind::Full),
            "{version:?}"
        );
        assert_eq!(
            handshake(connector.clone()).await,
            Some(HandshakeKind::Resumed),
            "{version:?}"
        );
        gw.reload().unwrap();
        assert_eq!(
            handshake(connector.clone()).await,
            Some(HandshakeKind::Resumed),
            "{version:?}: after a reload"
        );
    }
}

/// An `idle_timeout` longer than hyper's own 30-second head timer is honoured:
/// a keep-alive connection idle for 31 s (and later requests' heads, bounded
/// by `header_read_timeout` alone) is still served.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_timeout_beyond_thirty_seconds_is_honoured() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&simple(
        &up,
        "",
        r#"limits:
  idle_timeout: 50s
"#,
    ))
    .await;
    let mut c = gw.client(Proto::H1).await;
    assert_eq!(c.send(req("GET", "/", &[], "")).await.status, 200);
    // Passing time is the point here: nothing happens for 31 s.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let mut again = req("GET", "/", &[], "");
    let r = c
        .try_send(&mut again)
        .await
        .expect("the idle connection was closed early");
    assert_eq!(r.status, 200);
}
