//! A real gRPC service and client for tests, on tonic, without code
//! generation: messages are raw bytes (a codec that copies them), and the
//! service `echo.v1.Echo` has one method of each kind.
//!
//! - `Unary`: answers `sub=<x-auth-subject>;msg=<message>`; the message
//!   `fail` answers FAILED_PRECONDITION "déjà vu: 100% wrong"; `sleep`
//!   answers after 2 s.
//! - `Admin`: unary, answers `admin`.
//! - `ServerStream`: a message `N:MS` streams N messages `0`..`N-1`, MS apart.
//! - `ClientStream`: answers the messages joined with `+`.
//! - `Bidi`: answers each message upper-cased, as it arrives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Response, Status, Streaming};

/// Messages as raw bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn unary(req: Request<Bytes>) -> Result<Response<Bytes>, Status> {
    let sub = req
        .metadata()
        .get("x-auth-subject")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let msg = text(req.get_ref());
    match msg.as_str() {
        "fail" => Err(Status::new(Code::FailedPrecondition, "déjà vu: 100% wrong")),
        "sleep" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(Response::new(Bytes::from("slept")))
        }
        _ => Ok(Response::new(Bytes::from(format!("sub={sub};msg={msg}")))),
    }
}

async fn server_stream(req: Request<Bytes>) -> Result<Response<MessageStream>, Status> {
    let spec = text(req.get_ref());
    let (n, ms) = spec.split_once(':').unwrap_or((&spec, "0"));
    let (n, ms): (u64, u64) = (n.parse().unwrap_or(0), ms.parse().unwrap_or(0));
    let stream = tokio_stream::iter(0..n).then(move |i| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Bytes::from(i.to_string()))
    });
    Ok(Response::new(Box::pin(stream) as MessageStream))
}

async fn client_stream(req: Request<Streaming<Bytes>>) -> Result<Response<Bytes>, Status> {
    let mut stream = req.into_inner();
    let mut parts = Vec::new();
    while let Some(m) = stream.message().await? {
        parts.push(text(&m));
    }
    Ok(Response::new(Bytes::from(parts.join("+"))))
}

async fn bidi(req: Request<Streaming<Bytes>>) -> Result<Response<MessageStream>, Status> {
    let stream = req
        .into_inner()
        .map(|m| m.map(|b| Bytes::from(text(&b).to_uppercase())));
    Ok(Response::new(Box::pin(stream) as MessageStream))
}

async fn route(req: http::Request<Incoming>) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(RawCodec);
    let resp = match req.uri().path() {
        "/echo.v1.Echo/Unary" => grpc.unary(tower::service_fn(unary), req).await,
        "/echo.v1.Echo/Admin" => {
            let admin = |_: Request<Bytes>| async { Ok::<_, Status>(Response::new(Bytes::from("admin"))) };
            grpc.unary(tower::service_fn(admin), req).await
        }
        "/echo.v1.Echo/ServerStream" => grpc.server_streaming(tower::service_fn(server_stream), req).await,
        "/echo.v1.Echo/ClientStream" => grpc.client_streaming(tower::service_fn(client_stream), req).await,
        "/echo.v1.Echo/Bidi" => grpc.streaming(tower::service_fn(bidi), req).await,
        other => Status::unimplemented(format!("no method {other}")).into_http(),
    };
    Ok(resp)
}

/// The echo service on loopback over h2c, or over TLS (ALPN h2) with the
/// acceptor given. Dropping it stops the listener.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcUpstream {
    pub async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let tls = tls.clone();
                tokio::spawn(async move {
                    let http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    let service = hyper::service::service_fn(route);
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                    }
                });
            }
        });
        GrpcUpstream { addr, task }
    }
}

/// A gRPC client for the gateway: TLS with ALPN h2, trusting `cert`, every
/// call carrying `authorization` when a token is set. Clones share the
/// connection (each call its own stream).
#[derive(Clone)]
pub struct GrpcClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
    pub token: Option<String>,
}

impl GrpcClient {
    pub async fn connect(addr: SocketAddr, cert: &CertificateDer<'static>) -> GrpcClient {
        Self::connect_as(addr, cert, "localhost").await
    }

    /// Calls with `authority` as `:authority` (the host routes match on).
    pub async fn connect_as(addr: SocketAddr, cert: &CertificateDer<'static>, authority: &str) -> GrpcClient {
        let config = Arc::new(super::tls_client_config(cert, &[b"h2"]));
        let connector = tower::service_fn(move |_: http::Uri| {
            let config = config.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        // The connector does TLS itself; the endpoint's scheme only names the origin.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
            .unwrap()
            .connect_with_connector(connector)
            .await
            .unwrap();
        GrpcClient {
            grpc: tonic::client::Grpc::new(channel),
            token: None,
        }
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Some(t) = &self.token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    }

    pub async fn unary(&mut self, method: &str, message: &str) -> Result<String, Status> {
        let req = self.request(Bytes::from(message.to_string()));
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let path = PathAndQuery::try_from(format!("/echo.v1.Echo/{method}")).unwrap();
        let resp = self.grpc.unary(req, path, RawCodec).await?;
        Ok(text(resp.get_ref()))
    }

    /// A unary call to any path (for unknown services and methods).
    pub async fn call_path(&mut self, path: &str) -> Result<String, Status> {
        let req = self.request(Bytes::from_static(b"x"));
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let resp = self
            .grpc
            .unary(req, PathAndQuery::try_from(path).unwrap(), RawCodec)
            .await?;
        Ok(text(resp.get_ref()))
    }

    pub async fn server_stream(&mut self, spec: &str) -> Result<Vec<String>, Status> {
        let req = self.request(Bytes::from(spec.to_string()));
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let path = PathAndQuery::from_static("/echo.v1.Echo/ServerStream");
        let mut stream = self.grpc.server_streaming(req, path, RawCodec).await?.into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream.message().await? {
            out.push(text(&m));
        }
        Ok(out)
    }

    pub async fn client_stream(&mut self, messages: &[&str]) -> Result<String, Status> {
        let items: Vec<Bytes> = messages.iter().map(|m| Bytes::from(m.to_string())).collect();
        let req = self.request(tokio_stream::iter(items));
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let path = PathAndQuery::from_static("/echo.v1.Echo/ClientStream");
        let resp = self.grpc.client_streaming(req, path, RawCodec).await?;
        Ok(text(resp.get_ref()))
    }

    /// Send each message and read its answer before sending the next: proof
    /// that both directions stream through the gateway, message by message.
    pub async fn bidi(&mut self, messages: &[&str]) -> Result<Vec<String>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let req = self.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        self.grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let path = PathAndQuery::from_static("/echo.v1.Echo/Bidi");
        let first = Bytes::from(messages[0].to_string());
        tx.send(first).await.unwrap();
        let mut answers = self.grpc.streaming(req, path, RawCodec).await?.into_inner();
        let mut out = Vec::new();
        for (i, _) in messages.iter().enumerate() {
            let answer = answers.message().await?.expect("an answer per message");
            out.push(text(&answer));
            if let Some(next) = messages.get(i + 1) {
                tx.send(Bytes::from(next.to_string())).await.unwrap();
            }
        }
        drop(tx);
        assert!(answers.message().await?.is_none());
        Ok(out)
    }
}
