//! Sending a request to an upstream: one keep-alive HTTP/1.1 connection pool
//! per upstream, round-robin over its targets, the next target tried when one
//! refuses the connection, and the upstream timeouts of SPEC §4.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Upstream;
use crate::error::GatewayError;
use crate::proxy::body::ReplayableBody;

/// One upstream's targets and connection pool. Shared across reloads while
/// the upstream's configuration is unchanged, so warm connections survive.
pub struct UpstreamPool {
    pub config: Upstream,
    /// What `config.ca_file` held when the pool was built.
    pub ca_digest: Option<[u8; 32]>,
    client: Client<HttpsConnector<HttpConnector>, ReplayableBody>,
    targets: Vec<(Scheme, http::uri::Authority)>,
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
    Timeout,
    Failed(hyper_util::client::legacy::Error),
}

impl UpstreamFailure {
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Failed(_) => "reset",
        }
    }

    pub fn into_gateway_error(self) -> GatewayError {
        match self {
            UpstreamFailure::Connect => GatewayError::UpstreamConnect,
            UpstreamFailure::Timeout => GatewayError::UpstreamTimeout,
            UpstreamFailure::Failed(e) => GatewayError::UpstreamFailed(e),
        }
    }
}

impl UpstreamPool {
    pub fn new(config: &Upstream) -> Result<Self, String> {
        let ca_digest = crate::tls::ca_digest(config.ca_file.as_deref());
        let roots = match &config.ca_file {
            Some(path) => crate::tls::load_roots(path)?,
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client setup failed: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let targets = config
            .targets
            .iter()
            .map(|t| (if t.https { Scheme::HTTPS } else { Scheme::HTTP }, t.authority.clone()))
            .collect();
        Ok(UpstreamPool {
            config: config.clone(),
            ca_digest,
            client,
            targets,
            next: AtomicUsize::new(0),
        })
    }

    /// Send one request, trying each target at most once, starting with the
    /// next one in round-robin order. Only connection failures move on to the
    /// next target: the request has not been sent then, so retrying is safe.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: PathAndQuery,
        headers: HeaderMap,
        body: ReplayableBody,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        let attempt = async {
            let n = self.targets.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            let mut headers = Some(headers);
            for i in 0..n {
                let (scheme, authority) = &self.targets[(start + i) % n];
                let last = i + 1 == n;
                let h = if last {
                    headers.take().unwrap_or_default()
                } else {
                    headers.clone().unwrap_or_default()
                };
                let uri = Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query(path_and_query.clone())
                    .build();
                let Ok(uri) = uri else {
                    return Err(UpstreamFailure::Connect);
                };
                let mut req = Request::new(body.again());
                *req.method_mut() = method.clone();
                *req.uri_mut() = uri;
                *req.version_mut() = Version::HTTP_11;
                *req.headers_mut() = h;
                match self.client.request(req).await {
                    Ok(resp) => return Ok(resp),
                    Err(e) if e.is_connect() && !body.consumed() => {
                        tracing::warn!(upstream = %self.config.name, target = %authority, error = %e, "upstream target refused the connection");
                        continue;
                    }
                    Err(e) => return Err(UpstreamFailure::Failed(e)),
                }
            }
            Err(UpstreamFailure::Connect)
        };
        match tokio::time::timeout(self.config.request_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamFailure::Timeout),
        }
    }
}

pub type SharedPool = Arc<UpstreamPool>;
