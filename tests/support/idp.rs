//! A small OpenID Connect provider on loopback, over HTTPS with its own
//! certificate (for `ca_file`), serving a discovery document and a JWKS that
//! the test controls, and counting how often each is fetched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub struct IdpState {
    /// Keys served at /realm/jwks.
    pub keys: Vec<Value>,
    /// A raw body to serve instead of the keys (malformed or oversize documents).
    pub raw_jwks: Option<String>,
    /// Answer 503 to everything while false.
    pub up: bool,
    /// The `issuer` the discovery document claims (default: the real one).
    pub claimed_issuer: Option<String>,
    pub cache_control: Option<String>,
    pub delay: Duration,
}

pub struct Idp {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub state: Arc<Mutex<IdpState>>,
    pub jwks_hits: Arc<AtomicUsize>,
    pub discovery_hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Idp {
    pub async fn start(keys: Vec<Value>) -> Idp {
        let (acceptor, cert_pem) = super::tls_acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(IdpState {
            keys,
            raw_jwks: None,
            up: true,
            claimed_issuer: None,
            cache_control: None,
            delay: Duration::ZERO,
        }));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let discovery_hits = Arc::new(AtomicUsize::new(0));
        let (s, j, d) = (state.clone(), jwks_hits.clone(), discovery_hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, s, j, d) = (acceptor.clone(), s.clone(), j.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = service_fn(move |req| answer(req, addr, s.clone(), j.clone(), d.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Idp {
            addr,
            ca_pem: cert_pem,
            state,
            jwks_hits,
            discovery_hits,
            task,
        }
    }

    pub fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}/realm", self.addr.port())
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    pub fn set(&self, f: impl FnOnce(&mut IdpState)) {
        f(&mut self.state.lock().unwrap());
    }

    pub fn jwks_fetches(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
    addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let issuer = format!("https://127.0.0.1:{}/realm", addr.port());
    let (up, delay) = {
        let s = state.lock().unwrap();
        (s.up, s.delay)
    };
    tokio::time::sleep(delay).await;
    let path = req.uri().path().to_string();
    if path.ends_with("/jwks") {
        jwks_hits.fetch_add(1, Ordering::SeqCst);
    } else if path.ends_with("/openid-configuration") {
        discovery_hits.fetch_add(1, Ordering::SeqCst);
    }
    if !up {
        let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(r);
    }
    let s = state.lock().unwrap();
    let mut resp = match path.as_str() {
        "/realm/.well-known/openid-configuration" => {
            let claimed = s.claimed_issuer.clone().unwrap_or(issuer.clone());
            let doc = serde_json::json!({ "issuer": claimed, "jwks_uri": format!("{issuer}/jwks") });
            Response::new(Full::new(Bytes::from(doc.to_string())))
        }
        "/realm/jwks" => {
            let body = s
                .raw_jwks
                .clone()
                .unwrap_or_else(|| serde_json::json!({ "keys": s.keys }).to_string());
            let mut r = Response::new(Full::new(Bytes::from(body)));
            if let Some(cc) = &s.cache_control {
                r.headers_mut().insert("cache-control", cc.parse().unwrap());
            }
            r
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}
