//! A stand-in for an OpenTelemetry Collector: accepts OTLP/HTTP protobuf on
//! `/v1/traces`, keeps every request body as received (to search for what
//! must never be exported) and decodes the spans. It can also stall (accept
//! and never answer) or fail (answer 500).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::net::TcpListener;

pub const ANSWER: u8 = 0;
pub const STALL: u8 = 1;
pub const FAIL: u8 = 2;

/// One exported span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    /// OTLP `SpanKind`: 2 server, 3 client, 1 internal.
    pub kind: i32,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent: String,
    pub attrs: HashMap<String, String>,
    pub events: Vec<String>,
    /// OTLP status code: 2 is error.
    pub status: i32,
    pub service: String,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }
}

pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
pub const INTERNAL: i32 = 1;

pub struct Collector {
    pub addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    pub async fn start(mode: u8) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(AtomicU8::new(mode));
        let (b, m) = (bodies.clone(), mode.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (b, m) = (b.clone(), m.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (b, m) = (b.clone(), m.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            match m.load(Ordering::SeqCst) {
                                STALL => std::future::pending::<()>().await,
                                FAIL => {
                                    let mut r = Response::new(Full::new(Bytes::new()));
                                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                                    return Ok::<_, hyper::Error>(r);
                                }
                                _ => {}
                            }
                            assert_eq!(path, "/v1/traces");
                            b.lock().unwrap().push(body);
                            Ok(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            bodies,
            mode,
            task,
        }
    }

    pub fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every byte received, all requests together.
    pub fn raw(&self) -> Vec<u8> {
        self.bodies.lock().unwrap().iter().flat_map(|b| b.to_vec()).collect()
    }

    pub fn spans(&self) -> Vec<Span> {
        let mut out = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            let req = ExportTraceServiceRequest::decode(body.clone()).expect("an OTLP trace export");
            for rs in req.resource_spans {
                let resource: HashMap<String, String> = rs
                    .resource
                    .map(|r| r.attributes.into_iter().map(|kv| (kv.key, text(kv.value))).collect())
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        out.push(Span {
                            name: s.name,
                            kind: s.kind,
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent: hex(&s.parent_span_id),
                            attrs: s.attributes.into_iter().map(|kv| (kv.key, text(kv.value))).collect(),
                            events: s.events.into_iter().map(|e| e.name).collect(),
                            status: s.status.map_or(0, |st| st.code),
                            service: resource.get("service.name").cloned().unwrap_or_default(),
                        });
                    }
                }
            }
        }
        out
    }
}

fn text(v: Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value) {
        Some(Value::StringValue(s)) => s,
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
