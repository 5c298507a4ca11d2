//! Remote keys (`discovery` / `jwks_uri` in docs/configuration.md): fetching a JWKS, directly or
//! through OpenID Connect discovery, refreshing it in the background, and the
//! one shared refetch a token with an unknown `kid` may trigger.
//!
//! Failure never loses keys: a failed fetch keeps the keys already held, and
//! the next attempt comes with backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::keys::{self, KeySet, MAX_JWKS_BYTES};
use super::ProviderState;
use crate::config::{ConfigError, KeySource, Provider};

/// A token with an unknown `kid` triggers at most one refetch per this period.
pub(crate) const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// How long a request waits for that refetch.
const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(5);
/// Per HTTP request to the identity provider.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff after a failed fetch: from the first value, doubling, to the cap.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Never refresh more often than this, whatever `Cache-Control` says.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The fetching side of a remote provider.
pub struct RemoteKeys {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// What the provider's `ca_file` held when the client was built.
    pub ca_digest: Option<[u8; 32]>,
    /// Held while an unknown-`kid` refetch runs, so concurrent requests share it.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    refresher_started: AtomicBool,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys").finish_non_exhaustive()
    }
}

/// Why a fetch failed; says what to fix, never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("discovery document at {url}: {reason}")]
    Discovery { url: String, reason: String },
    #[error("JWKS at {url}: {reason}")]
    Jwks { url: String, reason: String },
}

/// A fetched key set and how long the provider said it may be cached.
pub struct Fetched {
    pub keys: KeySet,
    pub max_age: Option<Duration>,
    /// The discovery document's `introspection_endpoint`, when it has one.
    pub introspection_endpoint: Option<String>,
}

impl RemoteKeys {
    pub fn new(provider: &Provider) -> Result<Self, ConfigError> {
        Ok(RemoteKeys {
            client: https_client(provider, FETCH_TIMEOUT)?,
            ca_digest: crate::tls::ca_digest(provider.ca_file.as_deref()),
            refetch: tokio::sync::Mutex::new(None),
            refresher_started: AtomicBool::new(false),
        })
    }

    async fn get(&self, url: &str) -> Result<(HeaderMap, Bytes), FetchError> {
        let fail = |reason: String| FetchError::Http {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| fail("not a valid URL".into()))?;
        let req = Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let fetch = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| fail(format!("request failed: {e}")))?;
            if resp.status() != StatusCode::OK {
                return Err(fail(format!("answered {} (expected 200)", resp.status())));
            }
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the body failed: {e} (limit {MAX_JWKS_BYTES} bytes)")))?;
            Ok((parts.headers, body.to_bytes()))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| fail(format!("no answer within {FETCH_TIMEOUT:?}")))?
    }

    /// Fetch the provider's current keys (through discovery when configured).
    pub async fn fetch(&self, provider: &Provider) -> Result<Fetched, FetchError> {
        let (jwks_uri, introspection_endpoint) = match &provider.keys {
            KeySource::JwksUri(uri) => (uri.clone(), None),
            KeySource::Discovery => self.discover(provider).await?,
            _ => {
                let reason = "not a remote key source".to_string();
                return Err(FetchError::Http {
                    url: String::new(),
                    reason,
                });
            }
        };
        let (headers, body) = self.get(&jwks_uri).await?;
        let keys = keys::parse_jwks(&body, &keys::allowlist(provider)).map_err(|reason| FetchError::Jwks {
            url: jwks_uri.clone(),
            reason,
        })?;
        Ok(Fetched {
            keys,
            max_age: max_age(&headers),
            introspection_endpoint,
        })
    }

    /// OpenID Connect discovery: the document's `issuer` must equal ours
    /// exactly (OpenID Connect Discovery §4.3); its `jwks_uri` and
    /// `introspection_endpoint` must be https (or http on loopback, as for
    /// configured URLs).
    async fn discover(&self, provider: &Provider) -> Result<(String, Option<String>), FetchError> {
        let issuer = provider.issuer.as_deref().unwrap_or_default();
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let fail = |reason: String| FetchError::Discovery {
            url: url.clone(),
            reason,
        };
        let (_, body) = self.get(&url).await?;
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| fail(format!("not valid JSON: {e}")))?;
        let found = doc
            .get("issuer")
            .and_then(|v| v.as_str())
            .ok_or_else(|| fail("no `issuer`".into()))?;
        if found != issuer {
            return Err(fail(format!(
                "its issuer {found:?} is not the configured issuer {issuer:?}"
            )));
        }
        let fetchable = |name: &str| -> Result<Option<String>, FetchError> {
            let Some(value) = doc.get(name) else { return Ok(None) };
            let url = value
                .as_str()
                .ok_or_else(|| fail(format!("`{name}` is not a string")))?;
            let uri: Uri = url.parse().map_err(|_| fail(format!("{name} {url:?} is not a URL")))?;
            let loopback = uri.host().is_some_and(crate::config::is_loopback_host);
            match uri.scheme_str() {
                Some("https") => Ok(Some(url.to_string())),
                Some("http") if loopback => Ok(Some(url.to_string())),
                _ => Err(fail(format!("{name} {url:?} must be https"))),
            }
        };
        let jwks_uri = fetchable("jwks_uri")?.ok_or_else(|| fail("no `jwks_uri`".into()))?;
        Ok((jwks_uri, fetchable("introspection_endpoint")?))
    }
}

/// A client for calls to the provider (keys, discovery, introspection):
/// https with the provider's `ca_file` or the web PKI roots, plain http only
/// where the configuration allowed it (loopback).
pub(crate) fn https_client<B>(
    provider: &Provider,
    connect_timeout: Duration,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, ConfigError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let field = crate::config::Field::key("providers")
        .at(provider.name.as_str())
        .at("ca_file");
    client_with_roots(&field, provider.ca_file.as_deref(), connect_timeout)
}

/// An http/https client trusting `ca_file` (`field` names it in errors) or,
/// without one, the web PKI roots.
pub(crate) fn client_with_roots<B>(
    field: &crate::config::Field,
    ca_file: Option<&std::path::Path>,
    connect_timeout: Duration,
) -> Result<Client<HttpsConnector<HttpConnector>, B>, ConfigError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let roots = match ca_file {
        Some(path) => crate::tls::load_roots(path).map_err(|e| ConfigError::new(field, e))?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new(field, "TLS client setup failed").because(e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// `Cache-Control: max-age=N` of a JWKS response.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| d.trim().strip_prefix("max-age=")?.trim_matches('"').parse().ok())
        .map(Duration::from_secs)
}

impl ProviderState {
    /// Fetch and install the keys; on failure the keys already held stay.
    pub async fn refresh(&self) -> Result<Option<Duration>, FetchError> {
        let Some(remote) = &self.remote else { return Ok(None) };
        // Only a refetch a request waits for (an unknown `kid`) has a trace.
        let span = crate::telemetry::child("fetch keys", crate::telemetry::Kind::Client);
        if let Some(span) = &span {
            span.set("portcullis.provider", self.config.name.clone());
        }
        let fetched = remote.fetch(&self.config).await;
        if let (Some(span), Err(e)) = (&span, &fetched) {
            span.fail(e.to_string());
        }
        match fetched {
            Ok(fetched) => {
                tracing::info!(provider = %self.config.name, keys = fetched.keys.keys.len(), "provider keys refreshed");
                if let Some(introspector) = &self.introspection {
                    introspector.discovered(&self.config, fetched.introspection_endpoint);
                }
                self.install(fetched.keys);
                crate::metrics::jwks_refresh(&self.config.name, true);
                Ok(fetched.max_age)
            }
            Err(e) => {
                tracing::warn!(provider = %self.config.name, error = %e, "fetching provider keys failed; keeping the keys already held");
                crate::metrics::jwks_refresh(&self.config.name, false);
                Err(e)
            }
        }
    }

    /// Start the background refresh loop once per provider state. It ends when
    /// the state is dropped (its provider removed or changed by a reload).
    pub(crate) fn start_refresher(self: &Arc<Self>) {
        let Some(remote) = &self.remote else { return };
        if remote.refresher_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(refresh_loop(weak));
    }

    /// A token named a `kid` we do not have: refetch once, shared by every
    /// request that arrives meanwhile, at most once per
    /// [`UNKNOWN_KID_REFETCH_INTERVAL`]. Returns whether the keys changed.
    pub(crate) async fn refetch_for_unknown_kid(&self) -> bool {
        let Some(remote) = &self.remote else { return false };
        let seen = self.generation();
        let attempt = async {
            let mut last = remote.refetch.lock().await;
            if self.generation() != seen {
                return; // another request's refetch already brought new keys
            }
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFETCH_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
            let _ = self.refresh().await;
        };
        let _ = tokio::time::timeout(UNKNOWN_KID_WAIT, attempt).await;
        self.generation() != seen
    }
}

async fn refresh_loop(provider: Weak<ProviderState>) {
    let mut backoff = BACKOFF_START;
    loop {
        let Some(state) = provider.upgrade() else { return };
        let period = state.config.jwks_refresh;
        let wait = match state.refresh().await {
            Ok(max_age) => {
                backoff = BACKOFF_START;
                max_age.map_or(period, |age| age.clamp(MIN_REFRESH, period))
            }
            Err(_) => {
                let wait = backoff.min(period);
                backoff = (backoff * 2).min(BACKOFF_CAP);
                wait
            }
        };
        drop(state);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        let mut h = HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=300, must-revalidate".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(300)));
        h.insert(http::header::CACHE_CONTROL, "no-cache".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }
}
