//! OpenTelemetry traces (docs/operations.md, "Traces"): one SERVER span per
//! request, child spans for what a request waits on (token verification,
//! introspection, key fetches, Redis, the upstream), and the W3C trace
//! context to the upstream, exported over OTLP/HTTP.
//!
//! The gateway records its spans itself ([`span`]) and writes OTLP's
//! protobuf directly ([`otlp`]): the OpenTelemetry SDK and its exporter
//! cost 39k instructions per traced request, 80 % of the proxy path.
//! The request's span is the task's current span while its work runs
//! ([`within`]), so the code that makes a child span (deep in `auth` or
//! `store`) needs no extra argument. Without `telemetry` nothing is current
//! and [`child`] returns `None` at once. Nothing here ever records a token,
//! a secret, a query string or a cookie; the only claim recorded is the
//! subject.

mod export;
mod ids;
mod otlp;
mod span;
pub(crate) mod w3c;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use tokio::sync::mpsc;

use crate::config::ConfigError;
use span::{Finished, Live, CURRENT};
use w3c::{TRACEPARENT, TRACESTATE};

pub(crate) use span::{Kind, Value};

/// The tracer of one `telemetry` configuration, kept across reloads that leave it unchanged.
#[derive(Debug)]
pub struct Telemetry {
    pub config: crate::config::Telemetry,
    /// The CA file's content digest when it was read.
    pub ca_digest: Option<[u8; 32]>,
    /// Where ended spans go; the export task ends once every sender is gone.
    queue: mpsc::Sender<Finished>,
    exporter: export::Exporter,
}

impl Telemetry {
    pub fn new(config: &crate::config::Telemetry) -> Result<Self, ConfigError> {
        let resource = [
            ("service.name", Value::from(config.service_name.clone())),
            ("service.version", Value::from(env!("CARGO_PKG_VERSION"))),
        ];
        let (queue, exporter) = export::Exporter::new(&config.traces_url, config.ca_file.as_deref(), &resource)?;
        Ok(Telemetry {
            config: config.clone(),
            ca_digest: crate::tls::ca_digest(config.ca_file.as_deref()),
            queue,
            exporter,
        })
    }

    /// Start exporting (inside the runtime; once).
    pub(crate) fn start(&self) {
        self.exporter.start();
    }

    /// Send the spans still queued (at shutdown, after the drain), within `limit`.
    pub async fn flush(&self, limit: std::time::Duration) {
        self.exporter.flush(limit).await;
    }

    /// The SERVER span of a request, continuing the client's trace when
    /// it is trusted (parent-based sampling: a trusted parent's decision
    /// stands, a new trace is recorded at `sample_ratio`). An unsampled
    /// request gets ids for its upstream and nothing else.
    pub(crate) fn start_request(
        &self,
        headers: &HeaderMap,
        method: &Method,
        version: http::Version,
        client: &HeaderValue,
        request_id: &HeaderValue,
    ) -> RequestTrace {
        let parent = self
            .config
            .trust_incoming_traceparent
            .then(|| w3c::parent(headers))
            .flatten();
        let sampled = match &parent {
            Some(p) => p.sampled,
            None => ids::sample(self.config.sample_ratio),
        };
        let (trace, remote_parent) = match parent {
            Some(p) => ((p.trace_id, p.state), Some((p.span_id, true))),
            None => ((ids::trace_id(), None), None),
        };
        if !sampled {
            let (trace_id, state) = trace;
            return RequestTrace(Trace::Unsampled {
                trace_id,
                span_id: ids::span_id(),
                state,
            });
        }
        let protocol = match version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        let mut attributes = Vec::with_capacity(16);
        attributes.extend([
            ("http.request.method", Value::Str(method_name(method))),
            ("url.scheme", Value::from("https")),
            ("network.protocol.version", Value::from(protocol)),
            ("client.address", Value::from(text(client))),
            ("portcullis.request_id", Value::from(text(request_id))),
        ]);
        let live = Live::start(
            &self.queue,
            trace,
            remote_parent,
            Kind::Server,
            method_name(method),
            attributes,
        );
        RequestTrace(Trace::Sampled(Arc::new(live)))
    }
}

/// A header value (always visible ASCII here) as an attribute value.
fn text(v: &HeaderValue) -> String {
    v.to_str().unwrap_or("").to_owned()
}

/// `Method::as_str` without an allocation for the standard methods.
fn method_name(m: &Method) -> Cow<'static, str> {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    match KNOWN.iter().find(|(k, _)| k == m) {
        Some((_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(m.as_str().to_owned()),
    }
}

/// Run `work` as part of `span`, so that spans started inside are its
/// children. (Callers await `work` directly when there is no span: wrapping
/// it anyway would move a request's large future once more.)
pub(crate) fn within<F: Future>(span: Arc<Live>, work: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(span, work)
}

/// What a span records of a route.
#[derive(Debug)]
pub struct RouteNames {
    name: Arc<str>,
    /// `http.route`: the path pattern, a prefix as `/api/*`.
    pattern: Arc<str>,
}

impl RouteNames {
    pub fn new(route: &crate::config::Route) -> Self {
        RouteNames {
            name: route.name.as_str().into(),
            pattern: route.path_pattern().into(),
        }
    }
}

/// One request's trace.
#[derive(Debug)]
pub(crate) struct RequestTrace(Trace);

#[derive(Debug)]
enum Trace {
    /// Recorded: the SERVER span.
    Sampled(Arc<Live>),
    /// Not recorded: only the ids the upstream is told about.
    Unsampled {
        trace_id: u128,
        span_id: u64,
        state: Option<HeaderValue>,
    },
}

/// A trace id as the access log writes it (hex, only when the line is written).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TraceId(u128);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl RequestTrace {
    /// The span to run the pipeline in, when it records.
    pub(crate) fn span(&self) -> Option<Arc<Live>> {
        match &self.0 {
            Trace::Sampled(live) => Some(live.clone()),
            Trace::Unsampled { .. } => None,
        }
    }

    /// The trace id for the access log, when the span records.
    pub(crate) fn trace_id(&self) -> Option<TraceId> {
        match &self.0 {
            Trace::Sampled(live) => Some(TraceId(live.trace_id)),
            Trace::Unsampled { .. } => None,
        }
    }

    /// The host the request named (`server.address`).
    pub(crate) fn server_address(&self, host: &str) {
        if let Trace::Sampled(live) = &self.0 {
            live.with(|s| s.attributes.push(("server.address", Value::from(host.to_owned()))));
        }
    }

    /// The request matched the route of `names`: the span is named after it.
    pub(crate) fn routed(&self, method: &Method, names: &RouteNames) {
        if let Trace::Sampled(live) = &self.0 {
            let method = method_name(method);
            let mut name = String::with_capacity(method.len() + 1 + names.name.len());
            name.push_str(&method);
            name.push(' ');
            name.push_str(&names.name);
            live.with(|s| {
                s.name = Cow::Owned(name);
                s.attributes.push(("http.route", Value::Shared(names.pattern.clone())));
                s.attributes
                    .push(("portcullis.route", Value::Shared(names.name.clone())));
            });
        }
    }

    /// A CLIENT span for the upstream exchange (`None` when not sampled),
    /// named by the method (or `WebSocket` for a tunnel).
    pub(crate) fn upstream_span(&self, websocket: bool, upstream: &str, method: &Method) -> Option<ChildSpan> {
        let Trace::Sampled(live) = &self.0 else { return None };
        let name = if websocket {
            Cow::Borrowed("WebSocket")
        } else {
            method_name(method)
        };
        let attributes = vec![
            ("http.request.method", Value::Str(method_name(method))),
            ("portcullis.upstream", Value::from(upstream.to_owned())),
        ];
        Some(ChildSpan(Arc::new(live.child(Kind::Client, name, attributes))))
    }

    /// Replace the client's trace context with the gateway's in the headers
    /// going upstream: `via`'s (a CLIENT span) or, unsampled, the request's.
    pub(crate) fn propagate(&self, via: Option<&ChildSpan>, headers: &mut HeaderMap) {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        let (parent, state) = match &self.0 {
            Trace::Sampled(live) => {
                let span_id = via.map_or(live.span_id, |c| c.0.span_id);
                (w3c::write_traceparent(live.trace_id, span_id, true), &live.trace_state)
            }
            Trace::Unsampled {
                trace_id,
                span_id,
                state,
            } => (w3c::write_traceparent(*trace_id, *span_id, false), state),
        };
        headers.insert(TRACEPARENT, parent);
        if let Some(state) = state {
            headers.insert(TRACESTATE, state.clone());
        }
    }

    /// The answer is known: the last attributes, and the span ends.
    pub(crate) fn finish(&self, status: u16, facts: Finish<'_>) {
        let Trace::Sampled(live) = &self.0 else { return };
        live.with(|s| {
            let last = &mut s.attributes;
            last.push(("http.response.status_code", Value::Int(i64::from(status))));
            if let Some(path) = facts.path {
                last.push(("url.path", Value::from(path.to_owned())));
            }
            if let Some(subject) = facts.subject {
                last.push(("enduser.id", Value::from(subject.to_owned())));
            }
            if let Some(reason) = facts.refused {
                last.push(("portcullis.reason", Value::from(reason)));
                last.push(("error.type", Value::from(reason)));
            } else if status >= 500 {
                last.push(("error.type", Value::from(status.to_string())));
            }
            if let Some(reason) = facts.monitor_denied {
                last.push(("portcullis.monitor_denied", Value::from(reason)));
            }
            s.error = status >= 500;
        });
        live.end();
    }
}

/// What the access log knows when a request ends.
pub(crate) struct Finish<'a> {
    pub path: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub refused: Option<&'static str>,
    pub monitor_denied: Option<&'static str>,
}

/// A child span; ends when dropped.
#[derive(Debug)]
pub(crate) struct ChildSpan(Arc<Live>);

impl ChildSpan {
    pub(crate) fn set(&self, key: &'static str, value: impl Into<Value>) {
        let value = value.into();
        self.0.with(|s| s.attributes.push((key, value)));
    }

    /// The work failed: `kind` says how (an error type, never a secret).
    pub(crate) fn fail(&self, kind: impl Into<Value>) {
        let kind = kind.into();
        self.0.with(|s| {
            s.attributes.push(("error.type", kind));
            s.error = true;
        });
    }

    /// The span to run the child's work in (for its own children).
    pub(crate) fn span(&self) -> Arc<Live> {
        self.0.clone()
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A child of whatever span the running work belongs to (`None` without one).
pub(crate) fn child(name: &'static str, kind: Kind) -> Option<ChildSpan> {
    CURRENT
        .try_with(|parent| ChildSpan(Arc::new(parent.child(kind, Cow::Borrowed(name), Vec::new()))))
        .ok()
}

/// An event on the running work's span, if there is one.
pub(crate) fn event(name: &'static str) {
    let _ = CURRENT.try_with(|span| span.with(|s| s.events.push((span::now(), name))));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(ratio: f64, trust: bool) -> Telemetry {
        let config = crate::config::Telemetry {
            traces_url: "http://127.0.0.1:9/v1/traces".into(),
            service_name: "portcullis".into(),
            sample_ratio: ratio,
            trust_incoming_traceparent: trust,
            ca_file: None,
        };
        Telemetry::new(&config).unwrap()
    }

    fn traced(t: &Telemetry, incoming: Option<&str>) -> (RequestTrace, HeaderMap) {
        let mut h = HeaderMap::new();
        if let Some(tp) = incoming {
            h.insert(TRACEPARENT, tp.parse().unwrap());
            h.insert(TRACESTATE, "vendor=secret".parse().unwrap());
        }
        let id = HeaderValue::from_static("r1");
        let client = HeaderValue::from_static("127.0.0.1");
        let trace = t.start_request(&h, &Method::GET, http::Version::HTTP_11, &client, &id);
        trace.propagate(None, &mut h);
        (trace, h)
    }

    const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[tokio::test]
    async fn trusted_context_is_continued_and_untrusted_replaced() {
        let (trace, h) = traced(&telemetry(0.0, true), Some(INCOMING));
        assert!(
            trace.span().is_some(),
            "a sampled trusted parent is honoured at ratio 0"
        );
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert!(sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{sent}");
        assert!(
            !sent.contains("b7ad6b7169203331"),
            "the gateway's span is the parent: {sent}"
        );
        assert!(sent.ends_with("-01"));
        assert_eq!(h[TRACESTATE], "vendor=secret");

        let (trace, h) = traced(&telemetry(1.0, false), Some(INCOMING));
        assert!(trace.span().is_some());
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert!(!sent.contains("0af7651916cd43dd8448eb211c80319c"), "{sent}");
        assert!(h.get(TRACESTATE).is_none(), "an untrusted tracestate is dropped");
    }

    #[tokio::test]
    async fn an_unsampled_trusted_parent_is_not_recorded_even_at_ratio_one() {
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let (trace, h) = traced(&telemetry(1.0, true), Some(unsampled));
        assert!(trace.span().is_none(), "the parent's decision stands");
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert!(sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{sent}");
        assert!(sent.ends_with("-00") && !sent.contains("b7ad6b7169203331"), "{sent}");
        assert_eq!(h[TRACESTATE], "vendor=secret");
    }

    #[tokio::test]
    async fn ratio_zero_records_nothing_but_still_propagates() {
        let (trace, h) = traced(&telemetry(0.0, true), None);
        assert!(trace.trace_id().is_none());
        assert!(trace.span().is_none());
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert_eq!(sent.len(), 55);
        assert!(sent.ends_with("-00"), "not sampled: {sent}");
        assert!(trace.upstream_span(false, "u", &Method::GET).is_none());
    }

    #[tokio::test]
    async fn a_malformed_traceparent_starts_a_new_trace() {
        let bad = "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (_, h) = traced(&telemetry(1.0, true), Some(bad));
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert!(!sent.contains("0af7651916cd43dd8448eb211c80319c"), "{sent}");
        assert!(h.get(TRACESTATE).is_none(), "no parent, no state");
    }

    #[tokio::test]
    async fn children_belong_to_the_span_they_run_within() {
        assert!(child("outside", Kind::Internal).is_none());
        let t = telemetry(1.0, true);
        let (trace, _) = traced(&t, None);
        let server = trace.span().unwrap();
        let (server_id, trace_id) = (server.span_id, server.trace_id);
        within(trace.span().unwrap(), async {
            let verify = child("verify token", Kind::Internal).unwrap();
            assert_eq!(verify.0.trace_id, trace_id);
            within(verify.span(), async {
                let fetch = child("fetch keys", Kind::Client).unwrap();
                assert_ne!(fetch.0.span_id, verify.0.span_id);
            })
            .await;
        })
        .await;
        assert_ne!(server_id, 0);
        assert_eq!(format!("{}", trace.trace_id().unwrap()).len(), 32);
    }
}
