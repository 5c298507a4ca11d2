//! Test harness: a recording upstream, a gateway started in-process on
//! ephemeral loopback ports with a freshly generated certificate, and HTTP/1.1,
//! HTTP/2 and raw-TLS clients that trust that certificate.
#![allow(dead_code)]

pub mod child;
pub mod grpc;
pub mod idp;
pub mod introspect;
pub mod otlp;
pub mod redis;
pub mod tokens;
pub mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use portcullis::server::Running;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target's authority (HTTP/2 `:authority`), if any.
    pub authority: Option<String>,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    /// Body bytes received, also when the body ended in an error.
    pub body_len: usize,
    /// Whether the body ended in an error (cut off) rather than at its end.
    pub body_cut: bool,
    pub trailers: Option<HeaderMap>,
    pub conn_id: usize,
}

/// A plain-HTTP/1.1 upstream on loopback that records every request and answers
/// `200` with `upstream: <name>`. The request header `x-test` selects other
/// behaviour: `slow` (sleep 3 s), `reset` (close without answering),
/// `stream:N` (a chunked body of N bytes), `drip:N` (the same with a 1 s pause
/// after the first chunk), `status:NNN`.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a test upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpProto {
    H1,
    /// HTTP/2 with prior knowledge (plain TCP).
    H2c,
}

impl RecordingUpstream {
    pub async fn start(name: &str) -> RecordingUpstream {
        Self::serve(name, None, UpProto::H1).await
    }

    /// The same upstream behind TLS; returns it and its certificate (PEM) to trust.
    pub async fn start_tls(name: &str) -> (RecordingUpstream, String) {
        let (acceptor, cert_pem) = tls_acceptor_alpn(&[b"http/1.1"]);
        let up = Self::serve(name, Some(acceptor), UpProto::H1).await;
        (up, cert_pem)
    }

    /// [`RecordingUpstream::start_tls`] whose TLS handshakes each take `delay` to start.
    pub async fn start_tls_slow_handshake(name: &str, delay: Duration) -> (RecordingUpstream, String) {
        let (acceptor, cert_pem) = tls_acceptor_alpn(&[b"http/1.1"]);
        let up = Self::serve_with(name, Some(acceptor), UpProto::H1, delay).await;
        (up, cert_pem)
    }

    /// An HTTP/2-only upstream over plain TCP (prior knowledge).
    pub async fn start_h2c(name: &str) -> RecordingUpstream {
        Self::serve(name, None, UpProto::H2c).await
    }

    /// An HTTP/2-only upstream behind TLS (ALPN h2); returns its certificate too.
    pub async fn start_h2_tls(name: &str) -> (RecordingUpstream, String) {
        let (acceptor, cert_pem) = tls_acceptor_alpn(&[b"h2"]);
        let up = Self::serve(name, Some(acceptor), UpProto::H2c).await;
        (up, cert_pem)
    }

    async fn serve(name: &str, tls: Option<tokio_rustls::TlsAcceptor>, proto: UpProto) -> RecordingUpstream {
        Self::serve_with(name, tls, proto, Duration::ZERO).await
    }

    async fn serve_with(
        name: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
        proto: UpProto,
        handshake_delay: Duration,
    ) -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, c, n) = (seen.clone(), connections.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn_id = c.fetch_add(1, Ordering::SeqCst) + 1;
                let (s, n, tls) = (s.clone(), n.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| upstream_answer(req, s.clone(), n.clone(), conn_id));
                    match tls {
                        None => serve_upstream_conn(TokioIo::new(stream), service, proto).await,
                        Some(acceptor) => {
                            tokio::time::sleep(handshake_delay).await;
                            if let Ok(tls) = acceptor.accept(stream).await {
                                serve_upstream_conn(TokioIo::new(tls), service, proto).await;
                            }
                        }
                    }
                });
            }
        });
        RecordingUpstream {
            addr,
            name: name.to_string(),
            seen,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream received no request")
    }
}

async fn serve_upstream_conn<I, S>(io: I, service: S, proto: UpProto)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = UpBody> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match proto {
        UpProto::H1 => {
            // Room for the gateway's forwarding headers on top of a client's 100.
            let _ = hyper::server::conn::http1::Builder::new()
                .max_headers(200)
                .serve_connection(io, service)
                .await;
        }
        UpProto::H2c => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await;
        }
    }
}

type UpBody = http_body_util::Either<Full<Bytes>, Chunks>;

async fn upstream_answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    name: String,
    conn_id: usize,
) -> Result<Response<UpBody>, std::io::Error> {
    let behaviour = req
        .headers()
        .get("x-test")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let method = req.method().to_string();
    let authority = req.uri().authority().map(|a| a.to_string());
    let path_and_query = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let version = req.version();
    let headers = req.headers().clone();
    // Frame by frame, so a body cut off midway still says how much arrived.
    let mut incoming = req.into_body();
    let (mut body_len, mut trailers, mut body_cut) = (0, None, false);
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => body_len += data.len(),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Err(_) => {
                body_cut = true;
                break;
            }
        }
    }
    seen.lock().unwrap().push(Seen {
        method,
        authority,
        path_and_query,
        version,
        headers,
        body_len,
        body_cut,
        trailers,
        conn_id,
    });
    if behaviour == "slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if let Some(ms) = behaviour.strip_prefix("sleep:") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    if behaviour == "reset" {
        return Err(std::io::Error::other("reset on purpose"));
    }
    if let Some(n) = behaviour.strip_prefix("stream:") {
        let n: usize = n.parse().unwrap();
        return Ok(Response::new(http_body_util::Either::Right(Chunks {
            left: n,
            trailers: None,
            cut: None,
            pause: None,
        })));
    }
    if let Some(n) = behaviour.strip_prefix("drip:") {
        return Ok(Response::new(http_body_util::Either::Right(Chunks {
            left: n.parse().unwrap(),
            trailers: None,
            cut: None,
            pause: Some((Duration::from_secs(1), None)),
        })));
    }
    if let Some(n) = behaviour.strip_prefix("cut:") {
        // The head and `n` bytes, then the upstream fails mid-body.
        return Ok(Response::new(http_body_util::Either::Right(Chunks {
            left: n.parse().unwrap(),
            trailers: None,
            cut: Some(Box::pin(tokio::time::sleep(Duration::from_millis(100)))),
            pause: None,
        })));
    }
    if behaviour == "trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", "end".parse().unwrap());
        return Ok(Response::new(http_body_util::Either::Right(Chunks {
            left: 5,
            trailers: Some(trailers),
            cut: None,
            pause: None,
        })));
    }
    let mut resp = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(format!(
        "upstream: {name}"
    )))));
    if let Some(code) = behaviour.strip_prefix("status:") {
        *resp.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
    }
    if behaviour == "cors" {
        let h = resp.headers_mut();
        h.insert(
            "access-control-allow-origin",
            "https://upstream.example".parse().unwrap(),
        );
        h.insert("access-control-allow-credentials", "true".parse().unwrap());
        h.insert("access-control-max-age", "86400".parse().unwrap());
    }
    if behaviour == "hop-by-hop" {
        // Every connection-specific header an HTTP/1.1 upstream might send.
        let h = resp.headers_mut();
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("proxy-authenticate", "Basic realm=x".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-also-private", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        resp.headers_mut()
            .insert("connection", "x-upstream-private, x-also-private".parse().unwrap());
    } else {
        resp.headers_mut()
            .insert("connection", "x-upstream-private".parse().unwrap());
    }
    resp.headers_mut().insert("x-upstream-private", "1".parse().unwrap());
    resp.headers_mut()
        .insert("strict-transport-security", "max-age=1".parse().unwrap());
    Ok(resp)
}

/// A body of `left` bytes sent in 16 KiB chunks with no Content-Length,
/// then `trailers` if any, or (with `cut`) an error that aborts the response
/// once the timer has given the head and the bytes time to leave.
pub struct Chunks {
    pub left: usize,
    pub trailers: Option<HeaderMap>,
    pub cut: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Waited for after the first chunk (armed when that chunk is sent).
    pub pause: Option<(Duration, Option<std::pin::Pin<Box<tokio::time::Sleep>>>)>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some((_, Some(timer))) = &mut self.pause {
            std::task::ready!(std::future::Future::poll(timer.as_mut(), cx));
            self.pause = None;
        }
        if let Some((wait, armed @ None)) = &mut self.pause {
            // Armed now: the first chunk goes out before the pause.
            *armed = Some(Box::pin(tokio::time::sleep(*wait)));
        }
        if self.left == 0 {
            if let Some(timer) = &mut self.cut {
                std::task::ready!(std::future::Future::poll(timer.as_mut(), cx));
                return std::task::Poll::Ready(Some(Err(std::io::Error::other("cut on purpose"))));
            }
        }
        if self.left == 0 {
            return std::task::Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let n = self.left.min(16 * 1024);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }
}

/// A TLS acceptor for 127.0.0.1 / localhost with a fresh self-signed
/// certificate, and that certificate as PEM (to trust through `ca_file`).
pub fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    tls_acceptor_alpn(&[])
}

/// [`tls_acceptor`] offering these ALPN protocols.
pub fn tls_acceptor_alpn(alpn: &[&[u8]]) -> (tokio_rustls::TlsAcceptor, String) {
    let (cert_pem, key_pem) = portcullis::tls::self_signed(&["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(portcullis::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert_pem)
}

/// A gateway running in this test process on ephemeral loopback ports.
pub struct TestGateway {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub decision_addr: Option<SocketAddr>,
    pub cert: CertificateDer<'static>,
    pub config_path: PathBuf,
}

/// The `listen` and `tls` sections every test config starts with.
pub fn header(extra_tls: &str) -> String {
    format!(
        r#"listen:
  https: 127.0.0.1:0
tls:
  cert: cert.pem
  key: key.pem
{extra_tls}"#
    )
}

/// Like [`header`], with an admin listener on an ephemeral port.
pub fn header_with_admin() -> String {
    header("").replacen(
        "  https: 127.0.0.1:0\n",
        r#"  https: 127.0.0.1:0
  admin: 127.0.0.1:0
"#,
        1,
    )
}

/// Write a fresh self-signed certificate for localhost / 127.0.0.1 into `dir`.
pub fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let (cert, key) = portcullis::tls::self_signed(&hosts).unwrap();
    std::fs::write(dir.join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.join("key.pem"), &key).unwrap();
    CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()
}

/// A gateway's directory before it starts: a fresh temp dir holding
/// `cert.pem` / `key.pem` for localhost and 127.0.0.1 and `app.secret`
/// holding [`tokens::SECRET`]. Relative paths in the YAML resolve here; a
/// test adds its own files with [`GatewayDir::file`].
pub struct GatewayDir {
    pub dir: tempfile::TempDir,
    pub cert: CertificateDer<'static>,
}

impl GatewayDir {
    pub fn new() -> GatewayDir {
        let dir = tempfile::tempdir().unwrap();
        let cert = write_cert(dir.path());
        std::fs::write(dir.path().join("app.secret"), tokens::SECRET).unwrap();
        GatewayDir { dir, cert }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `name` (relative to the directory) before the gateway starts.
    pub fn file(self, name: &str, contents: impl AsRef<[u8]>) -> GatewayDir {
        std::fs::write(self.dir.path().join(name), contents).unwrap();
        self
    }

    /// Write `yaml` as `gateway.yaml` and start the gateway on it.
    pub async fn start(self, yaml: &str) -> TestGateway {
        TestGateway::start_in(self.dir, self.cert, yaml).await
    }
}

impl TestGateway {
    /// Start a gateway from full YAML text in a fresh [`GatewayDir`].
    pub async fn start(yaml: &str) -> TestGateway {
        GatewayDir::new().start(yaml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, cert: CertificateDer<'static>, yaml: &str) -> TestGateway {
        let config_path = dir.path().join("gateway.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let (snapshot, _warnings) =
            portcullis::load_config(&config_path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let running = portcullis::server::start(snapshot).await.unwrap();
        let (http_addr, admin_addr, decision_addr) = (running.http_addr, running.admin_addr, running.decision_addr);
        // A decision-only gateway has no HTTPS listener: `addr` is then the decision one.
        let addr = running.https_addr.or(decision_addr).expect("a listener");
        TestGateway {
            dir,
            running: Some(running),
            addr,
            http_addr,
            admin_addr,
            decision_addr,
            cert,
            config_path,
        }
    }

    pub async fn client(&self, proto: Proto) -> Client {
        Client::connect(self.addr, &self.cert, proto).await
    }

    /// Revocation entries this gateway holds (the `portcullis_revocations`
    /// gauge is process-wide, shared by every gateway a test binary runs).
    pub fn revocations_held(&self) -> usize {
        let snap = self.running.as_ref().unwrap().gateway.snapshot.load();
        snap.store
            .as_ref()
            .and_then(|s| s.revocations.as_ref())
            .map_or(0, |r| r.len())
    }

    /// One request on a fresh HTTP/1.1 connection.
    pub async fn get(&self, path: &str) -> Reply {
        self.client(Proto::H1)
            .await
            .send(Request::get(path).body(Full::default()).unwrap())
            .await
    }

    pub async fn raw(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        raw_tls(self.addr, &self.cert, &[b"http/1.1"]).await
    }

    /// GET a path on the admin listener: (status, body).
    pub async fn admin(&self, path: &str) -> (u16, String) {
        status_and_body(&self.admin_raw(path, "").await)
    }

    pub async fn admin_raw(&self, path: &str, headers: &str) -> String {
        admin_get(self.admin_addr.expect("admin listener configured"), path, headers).await
    }

    pub fn reload(&self) -> Result<Vec<String>, portcullis::config::ConfigError> {
        self.running.as_ref().unwrap().reload(&self.config_path)
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(5)).await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            // Not awaited: closing the listeners is enough for a test that ends.
            tokio::spawn(r.shutdown(Duration::from_millis(10)));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub fn tls_client_config(cert: &CertificateDer<'static>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(portcullis::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

pub async fn raw_tls(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(cert, alpn)));
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Write `bytes`, then read until the peer closes (or 5 s pass).
pub async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> String {
    stream.write_all(bytes).await.unwrap();
    read_to_close(stream, Duration::from_secs(5)).await.0
}

/// Read until EOF; returns what was read and whether EOF came before `limit`.
pub async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

/// A response with its body read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    pub version: http::Version,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Assert a gateway-made JSON error (docs/errors.md).
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["error"], code, "body: {}", self.text());
        assert!(v["error_description"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One client connection to the gateway, HTTP/1.1 or HTTP/2 by ALPN.
pub struct Client {
    sender: Sender,
    pub closed: tokio::sync::oneshot::Receiver<()>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, cert: &CertificateDer<'static>, proto: Proto) -> Client {
        let alpn: &[&[u8]] = match proto {
            Proto::H1 => &[b"http/1.1"],
            Proto::H2 => &[b"h2"],
        };
        let tls = raw_tls(addr, cert, alpn).await;
        let io = TokioIo::new(tls);
        let (tx, closed) = tokio::sync::oneshot::channel();
        let sender = match proto {
            Proto::H1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(async move {
                    let _ = conn.await;
                    let _ = tx.send(());
                });
                Sender::H1(sender)
            }
            Proto::H2 => {
                let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                tokio::spawn(async move {
                    let _ = conn.await;
                    let _ = tx.send(());
                });
                Sender::H2(sender)
            }
        };
        Client { sender, closed }
    }

    /// Another handle on the same HTTP/2 connection, for concurrent streams.
    pub fn h2_stream(&self) -> Client {
        let Sender::H2(s) = &self.sender else {
            panic!("h2_stream needs an HTTP/2 client");
        };
        let (_, closed) = tokio::sync::oneshot::channel();
        Client {
            sender: Sender::H2(s.clone()),
            closed,
        }
    }

    /// Send a request whose URI is a path; Host / :authority is `localhost`
    /// unless the request sets its own.
    pub async fn send(&mut self, mut req: Request<Full<Bytes>>) -> Reply {
        self.try_send(&mut req).await.unwrap()
    }

    pub async fn try_send(&mut self, req: &mut Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        let req = std::mem::take(req);
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                let mut req = req;
                if !req.headers().contains_key("host") {
                    req.headers_mut().insert("host", "localhost".parse().unwrap());
                }
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                let (mut parts, body) = req.into_parts();
                if parts.uri.authority().is_none() {
                    let pq = parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                        .to_string();
                    parts.uri = format!("https://localhost{pq}").parse().unwrap();
                }
                s.ready().await?;
                s.send_request(Request::from_parts(parts, body)).await?
            }
        };
        let (parts, body) = resp.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            trailers,
            version: parts.version,
        })
    }
}

/// A request builder shortcut: `req("GET", "/x", &[("h", "v")], "")`.
pub fn req(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// Whether a system program a test needs is installed. When it is not, the
/// run says so once per test binary, loudly and outside libtest's capture,
/// with the install line, and the test passes over without asserting —
/// unless `PORTCULLIS_TEST_REQUIRE=all` (set by `.ci/run` after installing
/// everything), which makes a missing program a failure.
pub fn require(program: &str, package: &str) -> bool {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};
    static TOLD: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if found {
        return true;
    }
    if std::env::var("PORTCULLIS_TEST_REQUIRE").as_deref() == Ok("all") {
        panic!("{program} is required (PORTCULLIS_TEST_REQUIRE=all) but not installed: apt-get install {package}");
    }
    let mut told = TOLD.get_or_init(Default::default).lock().unwrap();
    if !told.iter().any(|p| p == program) {
        told.push(program.to_string());
        let _ = writeln!(
            std::io::stderr(),
            "\n*** {program} is not installed: the tests that need it are SKIPPED (they pass without asserting).\n*** Install it with `apt-get install {package}`, or set PORTCULLIS_TEST_REQUIRE=all to make this an error.\n"
        );
    }
    false
}

/// Wait until `condition` holds, checking every 10 ms; fail the test when it
/// still does not after `limit`, saying `what` was awaited and naming the
/// line that waited. Use it wherever a test waits for an event. (Not an
/// `async fn`: `#[track_caller]` needs a plain one, which returns the waiting future.)
#[track_caller]
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> impl std::future::Future<Output = ()> {
    let at = std::panic::Location::caller();
    let what = what.to_string();
    async move {
        let deadline = tokio::time::Instant::now() + limit;
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {limit:?} at {at} for {what}, in vain"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// [`wait_for`] with a condition that has to await (an admin scrape, a request).
#[track_caller]
pub fn wait_for_async<F, Fut>(what: &str, limit: Duration, mut condition: F) -> impl std::future::Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let at = std::panic::Location::caller();
    let what = what.to_string();
    async move {
        let deadline = tokio::time::Instant::now() + limit;
        while !condition().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {limit:?} at {at} for {what}, in vain"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A loopback address that refuses connections, for as long as the test
/// process lives: the port is bound by a socket that never listens, so no
/// other test (or server) can take it meanwhile.
pub async fn closed_port() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Kept bound (and not listening) until the process ends.
    std::mem::forget(socket);
    addr
}

/// A loopback port free now, for a server a test starts on it later (bound,
/// then released: another process could take it in between, so use it at once).
pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// The whole response (head and body) to a GET on an admin listener;
/// `headers` are extra request header lines, each ending in `\r\n`.
pub async fn admin_get(addr: SocketAddr, path: &str, headers: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    exchange(
        &mut tcp,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// The status code and body of a raw HTTP/1.1 response.
pub fn status_and_body(response: &str) -> (u16, String) {
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
