//! An RFC 7662 introspection endpoint on loopback over HTTPS (trusted through
//! `ca_file`), with a discovery document naming it. It checks the client's
//! credentials as a real provider does, answers from a table of tokens the
//! test fills, and counts calls; the test can make it slow, failing or
//! answer something that is not JSON.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// How the endpoint misbehaves, when it does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trouble {
    None,
    /// Answer with this status.
    Status(u16),
    /// Answer 200 with a body that is not JSON.
    NotJson,
}

pub struct EndpointState {
    /// Answers by token; any other token is `{"active": false}`.
    pub answers: HashMap<String, Value>,
    pub trouble: Trouble,
    pub delay: Duration,
    /// The forms received (token, hint, client credentials), in order.
    pub forms: Vec<HashMap<String, String>>,
    /// The `Authorization` headers received, in order.
    pub authorizations: Vec<Option<String>>,
}

pub struct Endpoint {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub state: Arc<Mutex<EndpointState>>,
    calls: Arc<AtomicUsize>,
    client_id: String,
    secret: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    /// An endpoint that accepts `client_id` / `secret` by Basic or in the form.
    pub async fn start(client_id: &str, secret: &str) -> Endpoint {
        let (acceptor, ca_pem) = super::tls_acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(EndpointState {
            answers: HashMap::new(),
            trouble: Trouble::None,
            delay: Duration::ZERO,
            forms: Vec::new(),
            authorizations: Vec::new(),
        }));
        let calls = Arc::new(AtomicUsize::new(0));
        let credentials = Arc::new((client_id.to_string(), secret.to_string()));
        let (s, c) = (state.clone(), calls.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, s, c, creds) = (acceptor.clone(), s.clone(), c.clone(), credentials.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = service_fn(move |req| answer(req, addr, s.clone(), c.clone(), creds.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Endpoint {
            addr,
            ca_pem,
            state,
            calls,
            client_id: client_id.to_string(),
            secret: secret.to_string(),
            task,
        }
    }

    pub fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}/idp", self.addr.port())
    }

    pub fn url(&self) -> String {
        format!("{}/introspect", self.issuer())
    }

    /// Introspection calls received so far (discovery fetches not counted).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn answer(&self, token: &str, answer: Value) {
        self.state.lock().unwrap().answers.insert(token.to_string(), answer);
    }

    pub fn set(&self, f: impl FnOnce(&mut EndpointState)) {
        f(&mut self.state.lock().unwrap());
    }

    pub fn credentials(&self) -> (&str, &str) {
        (&self.client_id, &self.secret)
    }
}

fn form_of(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

async fn answer(
    req: Request<Incoming>,
    addr: SocketAddr,
    state: Arc<Mutex<EndpointState>>,
    calls: Arc<AtomicUsize>,
    credentials: Arc<(String, String)>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let json_response = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        Ok(r)
    };
    let issuer = format!("https://127.0.0.1:{}/idp", addr.port());
    if req.uri().path() == "/idp/.well-known/openid-configuration" {
        let doc = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "introspection_endpoint": format!("{issuer}/introspect"),
        });
        return json_response(StatusCode::OK, doc.to_string());
    }
    if req.uri().path() == "/idp/jwks" {
        let key = super::tokens::KeyPair::generate(jsonwebtoken::Algorithm::ES256).jwk("k1");
        return json_response(StatusCode::OK, json!({ "keys": [key] }).to_string());
    }
    if req.uri().path() != "/idp/introspect" || req.method() != http::Method::POST {
        return json_response(StatusCode::NOT_FOUND, "{}".into());
    }
    calls.fetch_add(1, Ordering::SeqCst);
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    let form_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let form = form_of(&body);
    let (delay, trouble) = {
        let mut s = state.lock().unwrap();
        s.forms.push(form.clone());
        s.authorizations.push(authorization.clone());
        (s.delay, s.trouble)
    };
    tokio::time::sleep(delay).await;
    // Client authentication, as RFC 6749 §2.3.1 defines both methods.
    let (id, secret) = (&credentials.0, &credentials.1);
    let by_basic = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .is_some_and(|b| {
            let decoded = base64::engine::general_purpose::STANDARD.decode(b).unwrap_or_default();
            let decoded = String::from_utf8(decoded).unwrap_or_default();
            let Some((i, s)) = decoded.split_once(':') else {
                return false;
            };
            let dec = |v: &str| form_of(format!("v={v}").as_bytes()).remove("v").unwrap_or_default();
            dec(i) == *id && dec(s) == *secret
        });
    let by_post = form.get("client_id") == Some(id) && form.get("client_secret") == Some(secret);
    if !(by_basic || by_post) || form_type.as_deref() != Some("application/x-www-form-urlencoded") {
        return json_response(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#.into());
    }
    match trouble {
        Trouble::Status(code) => return json_response(StatusCode::from_u16(code).unwrap(), "{}".into()),
        Trouble::NotJson => return json_response(StatusCode::OK, "<html>oops</html>".into()),
        Trouble::None => {}
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let found = state.lock().unwrap().answers.get(&token).cloned();
    json_response(
        StatusCode::OK,
        found.unwrap_or_else(|| json!({"active": false})).to_string(),
    )
}
