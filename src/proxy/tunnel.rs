//! WebSocket tunnels (RFC 6455 over HTTP/1.1 upgrades). The upgrade request
//! has been through the whole pipeline (normalised, stripped, routed,
//! authenticated, authorised) before it gets here; it goes upstream on a
//! connection of its own, and when the upstream answers `101` both upgraded
//! connections are joined and bytes copied both ways. The gateway does not
//! parse WebSocket frames: it only decides how long a tunnel may live.
//!
//! A tunnel closes when either side closes, after `idle_timeout` without a
//! byte either way, when the token that opened it expires (`exp` + leeway, so
//! a connection never outlives its credential) or is revoked, and at the end
//! of `shutdown_grace` on SIGTERM. A reload leaves open tunnels alone.
//!
//! A tunnel keeps its client connection's place in `limits.max_connections`
//! and holds one of its target's `max_tunnels` (and `max_connections`), so
//! long-lived tunnels can never starve plain requests of upstream connections.
//! Only a `101` that completes this very WebSocket handshake is relayed.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::auth::Caller;
use crate::clock::{self, sleep_until_some};
use crate::config::WebSocketPolicy;
use crate::error::GatewayError;
use crate::metrics::CloseReason;
use crate::proxy::forward::{UpstreamFailure, UpstreamPool};
use crate::proxy::pool::{DedicatedPermit, Lease, ResponseBody, UpstreamBody};
use crate::store::revocation::Revocations;

/// A bound on tunnels open at once, for the drain at shutdown to wait on
/// (the real bound is `limits.max_connections`, whose places tunnels keep).
pub(crate) const MAX_TUNNELS: usize = 1 << 20;

/// What a tunnel needs from the gateway around it.
#[derive(Debug, Clone)]
pub struct Tunnels {
    /// One permit per open tunnel; the drain at shutdown waits for all.
    pub open: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

impl Tunnels {
    pub fn new(shutdown: watch::Receiver<bool>) -> Self {
        Tunnels {
            open: Arc::new(Semaphore::new(MAX_TUNNELS)),
            shutdown,
        }
    }
}

/// Whether the request asks for a WebSocket: HTTP/1.1 `GET` with
/// `Connection: upgrade` and `Upgrade: websocket` (other upgrades are never
/// performed; their headers are dropped as hop-by-hop).
pub(crate) fn is_websocket_upgrade(parts: &Parts) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        parts.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// Whether an upgrade request carries a body (`Content-Length` above zero or
/// any `Transfer-Encoding`): the bytes after its head would be read by the
/// upstream as the first WebSocket frames, or as a request of their own.
pub(crate) fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|b| *b != b'0'))
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2):
/// base64 of SHA-1 over the key and the protocol's GUID.
pub(crate) fn accept_value(key: &[u8]) -> String {
    use base64::Engine;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Whether the upstream's `101` completes this handshake: `Upgrade:
/// websocket` and the `Sec-WebSocket-Accept` the client's key calls for.
/// Anything else would turn the connection into a raw pipe to whatever the
/// upstream is, with bytes the gateway never checked.
fn is_websocket_answer(client_key: Option<&HeaderValue>, answer: &HeaderMap) -> bool {
    let upgrade = answer.get_all(header::UPGRADE).iter().count() == 1
        && answer
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let mut accepts = answer.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    let accept = match (client_key, accepts.next(), accepts.next()) {
        (Some(key), Some(got), None) => got.as_bytes() == accept_value(key.as_bytes()).as_bytes(),
        _ => false,
    };
    upgrade && accept
}

/// How one tunnel is bounded.
#[derive(Debug, Clone)]
pub struct TunnelLimits {
    pub route: Arc<str>,
    pub idle_timeout: Duration,
    /// Unix seconds after which the tunnel is closed (the token's expiry).
    pub close_at: Option<f64>,
    pub shutdown_grace: Duration,
    /// The caller whose revocation closes the tunnel, and the list to watch.
    pub revocation: Option<(Arc<Caller>, Arc<Revocations>)>,
    /// The tunnel's span (with `telemetry`): from the upgrade to the close.
    pub(crate) span: Option<Arc<crate::telemetry::ChildSpan>>,
}

impl TunnelLimits {
    pub fn new(route: Arc<str>, policy: &WebSocketPolicy, token_valid_until: Option<f64>, grace: Duration) -> Self {
        TunnelLimits {
            route,
            idle_timeout: policy.idle_timeout,
            close_at: token_valid_until.filter(|_| policy.close_at_token_expiry),
            shutdown_grace: grace,
            revocation: None,
            span: None,
        }
    }
}

/// When the tunnel must close for its token's expiry, as a monotonic
/// instant; `None` when that is so far ahead it cannot be written (a token
/// with an enormous `exp`), which is the same as never.
fn expiry_instant(close_at: f64, now_unix: f64, now: Instant) -> Option<Instant> {
    let left = Duration::try_from_secs_f64((close_at - now_unix).max(0.0)).ok()?;
    now.checked_add(left)
}

/// Wait for the revocation list to change; forever when there is none.
async fn revocations_changed(watch: &mut Option<watch::Receiver<u64>>) {
    match watch {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Send the upgrade upstream on a connection of its own. `place` is the
/// client connection's place in `max_connections`, kept by the tunnel once the
/// connection itself has handed its socket over. A `101` is relayed
/// and the tunnel started; any other answer is relayed as a response.
/// `headers` have been rewritten for the upstream already; the upgrade's own
/// hop-by-hop headers are put back here.
pub async fn open(
    upstream: &UpstreamPool,
    client_upgrade: OnUpgrade,
    path_and_query: PathAndQuery,
    mut headers: HeaderMap,
    limits: TunnelLimits,
    (tunnels, place): (&Tunnels, Option<Arc<OwnedSemaphorePermit>>),
) -> Result<Response<ResponseBody>, GatewayError> {
    let slot = tunnels
        .open
        .clone()
        .try_acquire_owned()
        .map_err(|_| GatewayError::UpstreamBusy)?;
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let (target, mut sender, permit) = upstream
        .connect_dedicated()
        .await
        .map_err(|f| f.counted(&upstream.config.name))?;
    if !headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(target.as_str()) {
            headers.insert(header::HOST, v);
        }
    }
    let client_key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let mut req = Request::new(http_body_util::Empty::<Bytes>::new());
    *req.uri_mut() = path_and_query.into();
    *req.headers_mut() = headers;
    let sent = tokio::time::timeout(upstream.config.request_timeout, sender.send_request(req)).await;
    let failed = |failure: UpstreamFailure| {
        if let Some(span) = &limits.span {
            span.fail(failure.kind());
        }
        failure.counted(&upstream.config.name)
    };
    let mut resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(failed(UpstreamFailure::Failed(e))),
        Err(_) => return Err(failed(UpstreamFailure::Timeout)),
    };
    if let Some(span) = &limits.span {
        span.set("http.response.status_code", i64::from(resp.status().as_u16()));
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Declined: relay the answer; the connection closes with its body.
        return Ok(resp.map(|b| Either::Left(UpstreamBody::new(b, Lease::Dedicated(permit)))));
    }
    if !is_websocket_answer(client_key.as_ref(), resp.headers()) {
        tracing::warn!(upstream = %upstream.config.name, "upstream answered a WebSocket upgrade with a 101 that does not complete the handshake");
        return Err(failed(UpstreamFailure::NotAWebSocket));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let mut answer = Response::new(Either::Right(Full::new(Bytes::new())));
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for name in [
        header::SEC_WEBSOCKET_ACCEPT,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            answer.headers_mut().insert(name, v.clone());
        }
    }
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    answer
        .headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let shutdown = tunnels.shutdown.clone();
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(
                    client = c.is_ok(),
                    upstream = u.is_ok(),
                    "WebSocket upgrade did not complete"
                );
                return;
            }
        };
        run(client, upstream, limits, shutdown, (permit, slot, place)).await;
    });
    Ok(answer)
}

async fn run(
    client: Upgraded,
    upstream: Upgraded,
    limits: TunnelLimits,
    mut shutdown: watch::Receiver<bool>,
    _held: (DedicatedPermit, OwnedSemaphorePermit, Option<Arc<OwnedSemaphorePermit>>),
) {
    crate::metrics::websocket_opened(&limits.route);
    // The last byte either way, as `clock::millis`.
    let activity = AtomicU64::new(clock::millis());
    let first_close = AtomicU8::new(NO_CLOSE);
    let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
    let (mut upstream_read, mut upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let from_client = pump(
        &mut client_read,
        &mut upstream_write,
        &activity,
        (&first_close, FROM_CLIENT),
    );
    let from_upstream = pump(
        &mut upstream_read,
        &mut client_write,
        &activity,
        (&first_close, FROM_UPSTREAM),
    );
    tokio::pin!(from_client, from_upstream);

    let now_unix = clock::unix_now();
    let expiry = limits
        .close_at
        .and_then(|at| expiry_instant(at, now_unix, Instant::now()));
    let mut revocation_watch = limits.revocation.as_ref().map(|(_, list)| list.watch());
    let revoked = || {
        limits
            .revocation
            .as_ref()
            .is_some_and(|(caller, list)| list.is_revoked(caller))
    };
    let mut grace_end: Option<Instant> = (*shutdown.borrow()).then(|| Instant::now() + limits.shutdown_grace);
    let ended = loop {
        // Also checked before the first wait: a revocation may have come in
        // between the request's check and the upgrade.
        if revoked() {
            break CloseReason::Revoked;
        }
        let idle_deadline = clock::at_millis(activity.load(Ordering::Relaxed)) + limits.idle_timeout;
        tokio::select! {
            _ = &mut from_client => break CloseReason::Client,
            _ = &mut from_upstream => break CloseReason::Upstream,
            _ = tokio::time::sleep_until(idle_deadline) => {
                let last = clock::at_millis(activity.load(Ordering::Relaxed));
                if last + limits.idle_timeout <= Instant::now() {
                    break CloseReason::Idle;
                }
            }
            _ = sleep_until_some(expiry) => break CloseReason::TokenExpired,
            _ = revocations_changed(&mut revocation_watch) => {}
            _ = shutdown.changed(), if grace_end.is_none() => {
                grace_end = Some(Instant::now() + limits.shutdown_grace);
            }
            _ = sleep_until_some(grace_end) => break CloseReason::Shutdown,
        }
    };
    // One side closed: give the other a moment to finish (a WebSocket close
    // frame answering the one that went the other way).
    let linger = Duration::from_secs(1);
    match ended {
        CloseReason::Client => drop(tokio::time::timeout(linger, &mut from_upstream).await),
        CloseReason::Upstream => drop(tokio::time::timeout(linger, &mut from_client).await),
        _ => {}
    }
    // Whoever sent the first Close frame closed the tunnel, whichever socket
    // happened to end first.
    let reason = match (ended, first_close.load(Ordering::Acquire)) {
        (CloseReason::Client | CloseReason::Upstream, FROM_CLIENT) => CloseReason::Client,
        (CloseReason::Client | CloseReason::Upstream, FROM_UPSTREAM) => CloseReason::Upstream,
        (other, _) => other,
    };
    tracing::debug!(route = %limits.route, reason = reason.as_str(), "WebSocket tunnel closed");
    crate::metrics::websocket_closed(&limits.route, reason);
    if let Some(span) = &limits.span {
        span.set("portcullis.close_reason", reason.as_str());
    }
}

const NO_CLOSE: u8 = 0;
const FROM_CLIENT: u8 = 1;
const FROM_UPSTREAM: u8 = 2;

/// Copy bytes one way until EOF or an error, stamping activity and noting
/// whether this side sent the first Close frame; then close the writing side
/// so the peer sees the end too.
async fn pump<R, W>(from: &mut R, to: &mut W, activity: &AtomicU64, close: (&AtomicU8, u8))
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut frames = Frames::default();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        activity.store(clock::millis(), Ordering::Relaxed);
        if frames.feed(&buf[..n]) {
            let _ = close
                .0
                .compare_exchange(NO_CLOSE, close.1, Ordering::AcqRel, Ordering::Acquire);
        }
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Follows WebSocket frame boundaries in one direction (RFC 6455 §5.2), only
/// to see a Close frame (opcode 8) go by: headers are read, payloads skipped.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    header: [u8; 14],
    have: usize,
    skip: u64,
}

impl Frames {
    /// Feed the next bytes; true when a Close frame starts in them.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut close = false;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = data.len().min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                data = &data[n..];
                self.skip -= n as u64;
                continue;
            }
            self.header[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some((opcode, payload)) = self.parse() {
                close |= opcode == 0x8;
                self.skip = payload;
                self.have = 0;
            }
        }
        close
    }

    /// The opcode and payload length once the whole header is in.
    fn parse(&self) -> Option<(u8, u64)> {
        let h = &self.header[..self.have];
        if h.len() < 2 {
            return None;
        }
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        let (extended, len) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if h.len() < 2 + extended + mask {
            return None;
        }
        let len = len.unwrap_or_else(|| h[2..2 + extended].iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)));
        Some((h[0] & 0x0f, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_value_is_rfc_6455s() {
        // RFC 6455 §1.3's example.
        assert_eq!(
            accept_value(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let mut answer = HeaderMap::new();
        answer.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(!is_websocket_answer(Some(&key), &answer), "no accept");
        answer.insert(
            header::SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert!(is_websocket_answer(Some(&key), &answer));
        assert!(!is_websocket_answer(None, &answer), "no key sent");
        let other = HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA==");
        assert!(
            !is_websocket_answer(Some(&other), &answer),
            "another handshake's accept"
        );
        answer.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_answer(Some(&key), &answer), "not websocket");
    }

    #[test]
    fn enormous_expiry_never_panics() {
        let now = Instant::now();
        assert_eq!(expiry_instant(f64::MAX, 0.0, now), None);
        assert_eq!(expiry_instant(f64::INFINITY, 0.0, now), None);
        assert_eq!(
            expiry_instant(f64::NAN, 0.0, now),
            Some(now),
            "NaN: max(0.0) makes it now"
        );
        assert_eq!(expiry_instant(1e300, 1.7e9, now), None);
        assert_eq!(expiry_instant(10.0, 20.0, now), Some(now), "already past");
        assert_eq!(expiry_instant(30.0, 20.0, now), Some(now + Duration::from_secs(10)));
    }

    #[test]
    fn upgrade_bodies() {
        let mut h = HeaderMap::new();
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(!has_body(&h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(has_body(&h));
        h.remove(header::CONTENT_LENGTH);
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(has_body(&h));
    }

    #[test]
    fn close_frames_are_spotted_across_reads() {
        // A masked text frame "hi", then a masked Close frame with code 1000.
        let text = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        let close = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2];
        let mut f = Frames::default();
        assert!(!f.feed(&text));
        assert!(f.feed(&close));
        // The same bytes split at every point.
        let all: Vec<u8> = text.iter().chain(&close).copied().collect();
        for cut in 0..all.len() {
            let mut f = Frames::default();
            let seen = f.feed(&all[..cut]) | f.feed(&all[cut..]);
            assert!(seen, "cut at {cut}");
        }
        // A long unmasked binary frame (16-bit length) whose payload holds 0x88.
        let mut long = vec![0x82, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(0x88, 256));
        let mut f = Frames::default();
        assert!(!f.feed(&long));
        assert!(f.feed(&[0x88, 0x00]));
    }
}
