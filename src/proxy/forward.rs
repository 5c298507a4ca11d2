//! Sending a request to an upstream: round-robin over its targets, the next
//! target tried when one refuses the connection, and the upstream timeouts and
//! connection limits. Connections themselves live in [`super::pool`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};

use crate::config::{ConfigError, Upstream};
use crate::error::GatewayError;
use crate::proxy::body::ReplayableBody;
use crate::proxy::pool::{self, ConnectError, SendError, TargetPool, UpstreamBody};

/// How often one request is put on another connection when the one it got
/// closed before the request went out (a keep-alive race, not a failure).
const NOT_SENT_RETRIES: usize = 3;

/// One upstream's targets and their connections. Shared across reloads while
/// the upstream's configuration is unchanged, so warm connections survive.
pub struct UpstreamPool {
    pub config: Upstream,
    /// What `config.ca_file` held when the pool was built.
    pub ca_digest: Option<[u8; 32]>,
    targets: Vec<Arc<TargetPool>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// What a forwarded request failed on, for logs and metrics.
#[derive(Debug)]
pub enum UpstreamFailure {
    Connect,
    Busy,
    /// The target has `max_tunnels` WebSocket tunnels open.
    TunnelsFull,
    Timeout,
    /// A `101` that does not complete the WebSocket handshake it answers.
    NotAWebSocket,
    /// The request cannot be written for the upstream's protocol (an
    /// HTTP/2 URI that does not build): nothing was sent.
    Unsendable,
    Failed(hyper::Error),
}

impl UpstreamFailure {
    /// Every `kind` label of `portcullis_upstream_errors_total`, for creating
    /// the series at zero.
    pub(crate) const KINDS: &'static [&'static str] = &["connect", "busy", "timeout", "reset", "protocol"];

    /// The metric label (one of [`UpstreamFailure::KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Busy | UpstreamFailure::TunnelsFull => "busy",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Failed(_) => "reset",
            UpstreamFailure::NotAWebSocket | UpstreamFailure::Unsendable => "protocol",
        }
    }

    /// Counted under `upstream` in `portcullis_upstream_errors_total`, and
    /// made into the client's answer.
    pub(crate) fn counted(self, upstream: &str) -> GatewayError {
        crate::metrics::upstream_error(upstream, self.kind());
        self.into_gateway_error()
    }

    pub(crate) fn into_gateway_error(self) -> GatewayError {
        match self {
            UpstreamFailure::Connect => GatewayError::UpstreamConnect,
            UpstreamFailure::Busy => GatewayError::UpstreamBusy,
            UpstreamFailure::TunnelsFull => GatewayError::TunnelsFull,
            UpstreamFailure::Timeout => GatewayError::UpstreamTimeout,
            UpstreamFailure::NotAWebSocket => GatewayError::NotAWebSocket,
            UpstreamFailure::Unsendable => GatewayError::BadRequest("The request target cannot be forwarded."),
            UpstreamFailure::Failed(e) => GatewayError::UpstreamFailed(e),
        }
    }
}

impl UpstreamPool {
    pub fn new(config: &Upstream) -> Result<Self, ConfigError> {
        let at = crate::config::Field::key("upstreams").at(config.name.as_str());
        let field = |f: &'static str| at.then(f);
        let ca_digest = crate::tls::ca_digest(config.ca_file.as_deref());
        let tls = if config.targets.iter().any(|t| t.https) {
            let roots = match &config.ca_file {
                Some(path) => crate::tls::load_roots(path).map_err(|e| ConfigError::new(field(".ca_file"), e))?,
                None => rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                },
            };
            let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| ConfigError::new(field(""), "TLS client setup failed").because(e))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(Arc::new(tls))
        } else {
            None
        };
        let mut targets = Vec::with_capacity(config.targets.len());
        for t in &config.targets {
            let target = TargetPool::new(
                t.authority.clone(),
                t.https,
                config.protocol,
                tls.as_ref(),
                config.connect_timeout,
                (config.max_connections, config.max_tunnels),
            )
            .map_err(|e| ConfigError::new(field(".targets"), e))?;
            targets.push(Arc::new(target));
        }
        Ok(UpstreamPool {
            config: config.clone(),
            ca_digest,
            targets,
            next: AtomicUsize::new(0),
        })
    }

    /// Send one request, trying each target at most once, starting with the
    /// next one in round-robin order. Only connection failures move on to the
    /// next target: the request has not been sent then, so retrying is safe.
    /// `request_timeout` bounds everything up to the response headers; the
    /// body then streams for as long as it takes.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: PathAndQuery,
        headers: HeaderMap,
        body: ReplayableBody,
    ) -> Result<Response<UpstreamBody>, UpstreamFailure> {
        // Boxed so that the timeout wraps a pointer, not the attempt's whole
        // state (which would be copied into it).
        let attempt = Box::pin(async {
            let n = self.targets.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let mut headers = Some(headers);
            for i in 0..n {
                let target = &self.targets[(start + i) % n];
                let last = i + 1 == n;
                let h = if last {
                    headers.take().unwrap_or_default()
                } else {
                    headers.clone().unwrap_or_default()
                };
                let req = self.request(target, &method, &path_and_query, h, body.again())?;
                match send_to(target, req).await {
                    Err(UpstreamFailure::Connect) if !body.consumed() && !last => continue,
                    other => return other,
                }
            }
            Err(UpstreamFailure::Connect)
        });
        match tokio::time::timeout(self.config.request_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamFailure::Timeout),
        }
    }

    /// A connection of its own to the next target that accepts one, for a
    /// request that may switch protocols (WebSocket).
    pub(crate) async fn connect_dedicated(
        &self,
    ) -> Result<(http::uri::Authority, pool::UpgradeSender, pool::DedicatedPermit), UpstreamFailure> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let target = &self.targets[(start + i) % n];
            match target.connect_dedicated().await {
                Ok((sender, permit)) => return Ok((target.authority.clone(), sender, permit)),
                Err(ConnectError::Busy) => return Err(UpstreamFailure::Busy),
                Err(ConnectError::TunnelsFull) => return Err(UpstreamFailure::TunnelsFull),
                Err(ConnectError::Refused(why)) => {
                    tracing::warn!(target_addr = %target.authority, error = %why, "upstream target refused the connection");
                }
            }
        }
        Err(UpstreamFailure::Connect)
    }

    /// The request as this target's protocol carries it: origin-form with a
    /// `Host` header for HTTP/1.1; for HTTP/2 the host travels as
    /// `:authority` and no `Host` header goes with it (RFC 9113 §8.3.1).
    fn request(
        &self,
        target: &TargetPool,
        method: &Method,
        path_and_query: &PathAndQuery,
        mut headers: HeaderMap,
        body: ReplayableBody,
    ) -> Result<Request<ReplayableBody>, UpstreamFailure> {
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        if self.config.protocol.is_http2() {
            let host = headers.remove(header::HOST);
            let authority = host
                .and_then(|h| h.to_str().ok().and_then(|s| s.parse().ok()))
                .unwrap_or_else(|| target.authority.clone());
            let scheme = if target.is_https() { Scheme::HTTPS } else { Scheme::HTTP };
            let uri = Uri::builder()
                .scheme(scheme)
                .authority(authority)
                .path_and_query(path_and_query.clone())
                .build();
            // Never a default URI: the upstream gets exactly what was authorised.
            *req.uri_mut() = uri.map_err(|_| UpstreamFailure::Unsendable)?;
            *req.version_mut() = Version::HTTP_2;
        } else {
            if !headers.contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(target.authority.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
            *req.uri_mut() = Uri::from(path_and_query.clone());
            *req.version_mut() = Version::HTTP_11;
        }
        *req.headers_mut() = headers;
        Ok(req)
    }
}

/// One target: a connection, then the request on it.
async fn send_to(
    target: &Arc<TargetPool>,
    mut req: Request<ReplayableBody>,
) -> Result<Response<UpstreamBody>, UpstreamFailure> {
    for _ in 0..NOT_SENT_RETRIES {
        let conn = match target.checkout().await {
            Ok(conn) => conn,
            Err(ConnectError::Busy | ConnectError::TunnelsFull) => {
                tracing::warn!(target_addr = %target.authority, "no upstream connection free within connect_timeout");
                return Err(UpstreamFailure::Busy);
            }
            Err(ConnectError::Refused(why)) => {
                tracing::warn!(target_addr = %target.authority, error = %why, "upstream target refused the connection");
                return Err(UpstreamFailure::Connect);
            }
        };
        match pool::send(target, conn, req).await {
            Ok(resp) => return Ok(resp),
            Err(SendError::NotSent(back)) => req = *back,
            Err(SendError::Failed(e)) => return Err(UpstreamFailure::Failed(e)),
        }
    }
    Err(UpstreamFailure::Connect)
}

pub(crate) type SharedPool = Arc<UpstreamPool>;
