//! The connection layer against clients that never let go: a response never
//! read (HTTP/1.1, also after many quick ones, and an HTTP/2 window of 0),
//! idle clients at shutdown that do not answer a GOAWAY, HTTP/2 rapid reset,
//! and the stream limit.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::*;

fn config(up: &RecordingUpstream, limits: &str) -> String {
    format!(
        r#"{}limits:
{limits}upstreams:
  app:
    targets: [{}]
    request_timeout: 20s
routes:
  - name: all
    match: {{ path: / }}
    upstream: app
    public: true
"#,
        header(""),
        up.url()
    )
}

/// `send_timeout` and `idle_timeout` for the stall tests.
const STALL_LIMITS: &str = "  send_timeout: 500ms\n  idle_timeout: 30s\n";

/// Ask for a large body on `tls` and read nothing for a while (socket
/// buffers fill and the gateway stalls): the gateway must close the
/// connection before it has sent the whole body.
async fn assert_cut_off_when_not_reading(mut tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
    let total = 200_000_000;
    tls.write_all(format!("GET /big HTTP/1.1\r\nHost: localhost\r\nx-test: stream:{total}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (out, closed) = read_to_close(&mut tls, Duration::from_secs(10)).await;
    assert!(closed, "the connection stayed open");
    assert!(out.starts_with("HTTP/1.1 200"), "{}", &out[..out.len().min(200)]);
    assert!(
        out.len() < total,
        "the whole body was sent: the client was never cut off"
    );
}

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_with_a_zero_window_is_cut_off() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, STALL_LIMITS)).await;
    let tls = raw_tls(gw.addr, &gw.cert, &[b"h2"]).await;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
        .await
        .unwrap();
    let (tx, closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = tx.send(());
    });
    // Any answer with a body will do: the gateway cannot send a byte of it.
    let req = http::Request::get("https://localhost/x?big")
        .header("x-test", "stream:1000000")
        .body(Full::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("a client that takes no data must not hold its connection")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    drop(resp);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http1_client_that_stops_reading_is_cut_off() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, STALL_LIMITS)).await;
    assert_cut_off_when_not_reading(gw.raw().await).await;
}

/// The stall check is armed ahead of time on a connection in use (so that
/// short responses cost no wake-up): a response that stalls after many quick
/// ones must still be cut off after `send_timeout`, not later.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_response_after_quick_ones_is_cut_off_in_time() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, STALL_LIMITS)).await;
    let tls = gw.raw().await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn.without_shutdown());
    for _ in 0..50 {
        sender.ready().await.unwrap();
        let req = http::Request::get("/x")
            .header("host", "localhost")
            .header("x-test", "stream:100")
            .body(Full::default())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    }
    drop(sender);
    // The same connection, back from the client: now a response it never reads.
    assert_cut_off_when_not_reading(conn.await.unwrap().unwrap().io.into_inner()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_clients_never_delay_shutdown() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "  shutdown_grace: 20s\n")).await;
    // An HTTP/2 client that says hello and then never reads again: it cannot
    // answer the GOAWAY's PING.
    let mut silent = raw_tls(gw.addr, &gw.cert, &[b"h2"]).await;
    silent.write_all(H2_PREFACE).await.unwrap();
    // A well-behaved HTTP/2 and an HTTP/1.1 keep-alive client, both idle.
    let mut h2 = gw.client(Proto::H2).await;
    assert_eq!(h2.send(req("GET", "/", &[], "")).await.status, 200);
    let mut h1 = gw.client(Proto::H1).await;
    assert_eq!(h1.send(req("GET", "/", &[], "")).await.status, 200);
    let mut gw = gw;
    let running = gw.running.take().unwrap();
    let started = Instant::now();
    running.shutdown(Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for idle connections",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the silent client's connection is closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn rapid_reset_gets_a_goaway() {
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "")).await;
    let mut client = gw.client(Proto::H2).await;
    let mut resets = 0;
    let mut closed = false;
    while resets < 300 {
        if client.closed.try_recv().is_ok() {
            closed = true;
            break;
        }
        let mut stream = client.h2_stream();
        let before = up.requests().len();
        let call = tokio::spawn(async move {
            let mut r = req("GET", "/reset", &[("x-test", "sleep:20000")], "");
            let _ = stream.try_send(&mut r).await;
        });
        // Reset only once the gateway has acted on the stream: forwarded it,
        // or refused it (the call ends without the upstream seeing it). A
        // slow machine only makes this wait longer; it never ends the loop.
        let acted = tokio::time::timeout(Duration::from_secs(30), async {
            while up.requests().len() == before && !call.is_finished() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(
            acted.is_ok(),
            "stream {resets}: neither forwarded nor refused within 30 s"
        );
        call.abort();
        if up.requests().len() == before {
            break; // the connection refused the stream: it is going away
        }
        resets += 1;
        if resets == 150 {
            // Well under the cap, the connection still serves.
            let r = client.h2_stream().send(req("GET", "/fine", &[], "")).await;
            assert_eq!(r.status, 200);
        }
    }
    assert!(resets > 150 && resets <= 210, "GOAWAY after {resets} resets");
    if !closed {
        let end = tokio::time::timeout(Duration::from_secs(5), &mut client.closed).await;
        assert!(end.is_ok(), "the connection was closed after {resets} resets");
    }
}

/// The server's SETTINGS frame, as (identifier, value) pairs.
async fn server_settings(gw: &TestGateway) -> Vec<(u16, u32)> {
    let mut tls = raw_tls(gw.addr, &gw.cert, &[b"h2"]).await;
    tls.write_all(H2_PREFACE).await.unwrap();
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 0x4, "the server speaks first with SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).await.unwrap();
    payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_stream_limit_is_advertised() {
    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
    let up = RecordingUpstream::start("app").await;
    let gw = TestGateway::start(&config(&up, "  max_header_bytes: 16384\n")).await;
    let settings = server_settings(&gw).await;
    assert!(settings.contains(&(MAX_CONCURRENT_STREAMS, 100)), "{settings:?}");
    // WebSockets over HTTP/2 are not offered, so browsers use HTTP/1.1 for them.
    assert!(!settings.iter().any(|(id, v)| *id == ENABLE_CONNECT_PROTOCOL && *v != 0));
    let gw = TestGateway::start(&config(&up, "  max_concurrent_streams: 7\n")).await;
    assert!(server_settings(&gw).await.contains(&(MAX_CONCURRENT_STREAMS, 7)));
}
