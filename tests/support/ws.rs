//! A real WebSocket upstream for tests (tokio-tungstenite): it records each
//! handshake's request headers, picks the subprotocol `chat.v2` when offered,
//! echoes every message back as `echo: <text>`, and closes when told `bye`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// What the upstream saw of one WebSocket handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub path_and_query: String,
    pub headers: HeaderMap,
}

pub struct WsUpstream {
    pub addr: SocketAddr,
    pub handshakes: Arc<Mutex<Vec<Handshake>>>,
    /// Tunnels the upstream has seen end (its side of the socket closed).
    pub closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsUpstream {
    pub async fn start() -> WsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(AtomicUsize::new(0));
        let (seen, done) = (handshakes.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (seen, done) = (seen.clone(), done.clone());
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
                    let record = |req: &Request, mut resp: Response| {
                        seen.lock().unwrap().push(Handshake {
                            path_and_query: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                            headers: req.headers().clone(),
                        });
                        let offered = req
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if offered.split(',').any(|p| p.trim() == "chat.v2") {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", "chat.v2".parse().unwrap());
                        }
                        Ok(resp)
                    };
                    if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, record).await {
                        while let Some(Ok(msg)) = ws.next().await {
                            let answer = match msg {
                                Message::Text(t) if t.as_str() == "bye" => {
                                    let _ = ws.close(None).await;
                                    break;
                                }
                                Message::Text(t) => Message::text(format!("echo: {t}")),
                                Message::Binary(b) => Message::Binary(b),
                                Message::Close(_) => break,
                                _ => continue,
                            };
                            if ws.send(answer).await.is_err() {
                                break;
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        WsUpstream {
            addr,
            handshakes,
            closed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Handshake {
        self.handshakes
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no WebSocket handshake")
    }

    pub fn count(&self) -> usize {
        self.handshakes.lock().unwrap().len()
    }
}

pub type WsClient = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Open a WebSocket through the gateway over TLS. `Err` carries the HTTP
/// answer when the gateway (or upstream) did not switch protocols.
pub async fn connect(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(WsClient, HeaderMap), (u16, String)> {
    let config = Arc::new(super::tls_client_config(cert, &[b"http/1.1"]));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("wss://localhost{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, resp)) => Ok((ws, resp.headers().clone())),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

/// Send a text message and read the answer.
pub async fn round_trip(ws: &mut WsClient, text: &str) -> Option<String> {
    ws.send(Message::text(text)).await.ok()?;
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// Wait until the tunnel is gone from the client's side: end of stream, an
/// error, or a close frame.
pub async fn closed(ws: &mut WsClient) {
    loop {
        match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
            Some(Ok(_)) => continue,
        }
    }
}
