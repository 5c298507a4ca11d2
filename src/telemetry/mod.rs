//! OpenTelemetry traces (docs/operations.md, "Traces"): one SERVER span per
//! request, child spans for what a request waits on (token verification,
//! introspection, key fetches, Redis, the upstream), and the W3C trace
//! context to the upstream.
//!
//! The request's span travels in an `opentelemetry::Context`: the pipeline
//! runs with it attached, so the code that makes a child span (deep in
//! `auth` or `store`) takes it from `Context::current()` and needs no extra
//! argument. Without `telemetry` nothing is attached and [`child`] returns
//! `None` at once. Nothing here ever records a token, a secret, a query
//! string or a cookie; the only claim recorded is the subject.

mod export;
mod ids;
mod otlp;

use std::borrow::Cow;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    SpanId, SpanKind, Status, TraceContextExt, TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::ConfigError;

pub use opentelemetry::trace::SpanKind as Kind;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The tracer of one `telemetry` configuration, kept across reloads that leave it unchanged.
#[derive(Debug)]
pub struct Telemetry {
    pub config: crate::config::Telemetry,
    /// The CA file's content digest when it was read.
    pub ca_digest: Option<[u8; 32]>,
    tracer: SdkTracer,
    /// Ends the export task once the last span of this tracer is gone.
    _provider: SdkTracerProvider,
    exporter: export::Exporter,
}

/// Carried in the request's context so that child spans find the tracer.
#[derive(Debug, Clone)]
struct TracerOf(SdkTracer);

impl Telemetry {
    pub fn new(config: &crate::config::Telemetry) -> Result<Self, ConfigError> {
        let resource = [
            KeyValue::new("service.name", config.service_name.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ];
        let (queue, exporter) = export::Exporter::new(&config.traces_url, config.ca_file.as_deref(), &resource)?;
        let provider = SdkTracerProvider::builder()
            // The gateway decides (parent-based, at `sample_ratio`) before
            // asking the SDK for a span: an unsampled request never reaches it.
            .with_sampler(Sampler::AlwaysOn)
            .with_id_generator(ids::Ids)
            .with_span_processor(queue)
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("portcullis")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Ok(Telemetry {
            config: config.clone(),
            ca_digest: crate::tls::ca_digest(config.ca_file.as_deref()),
            tracer,
            _provider: provider,
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
        let parent = if self.config.trust_incoming_traceparent && headers.contains_key(TRACEPARENT) {
            Some(TraceContextPropagator::new().extract(&Incoming(headers)))
                .filter(|cx| cx.span().span_context().is_valid())
        } else {
            None
        };
        let sampled = match &parent {
            Some(cx) => cx.span().span_context().is_sampled(),
            None => ids::sample(self.config.sample_ratio),
        };
        if !sampled {
            let (trace_id, state) = match &parent {
                Some(cx) => {
                    let span = cx.span();
                    (
                        span.span_context().trace_id(),
                        span.span_context().trace_state().clone(),
                    )
                }
                None => (ids::trace_id(), TraceState::default()),
            };
            return RequestTrace(Trace::Unsampled {
                trace_id,
                span_id: ids::span_id(),
                state,
            });
        }
        let parent = parent.unwrap_or_else(Context::new);
        let protocol = match version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        let attributes = vec![
            KeyValue::new("http.request.method", method_name(method)),
            KeyValue::new("url.scheme", "https"),
            KeyValue::new("network.protocol.version", protocol),
            KeyValue::new("client.address", text(client)),
            KeyValue::new("portcullis.request_id", text(request_id)),
        ];
        let span = self
            .tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        RequestTrace(Trace::Sampled(
            parent.with_span(span).with_value(TracerOf(self.tracer.clone())),
        ))
    }
}

/// A header value (always visible ASCII here) as an attribute value.
fn text(v: &HeaderValue) -> String {
    v.to_str().unwrap_or("").to_owned()
}

/// `Method::as_str` without an allocation for the standard methods.
fn method_name(m: &Method) -> Cow<'static, str> {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    match KNOWN.iter().find(|k| *k == m) {
        Some(k) => Cow::Borrowed(match *k {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::PATCH => "PATCH",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            Method::CONNECT => "CONNECT",
            _ => "TRACE",
        }),
        None => Cow::Owned(m.as_str().to_owned()),
    }
}

/// One request's trace.
#[derive(Debug)]
pub(crate) struct RequestTrace(Trace);

#[derive(Debug)]
enum Trace {
    /// Recorded: the SERVER span, in the context the pipeline runs in.
    Sampled(Context),
    /// Not recorded: only the ids the upstream is told about.
    Unsampled {
        trace_id: TraceId,
        span_id: SpanId,
        state: TraceState,
    },
}

impl RequestTrace {
    /// The context to run the pipeline in, when the span records.
    pub(crate) fn context(&self) -> Option<Context> {
        match &self.0 {
            Trace::Sampled(cx) => Some(cx.clone()),
            Trace::Unsampled { .. } => None,
        }
    }

    /// The trace id for the access log, when the span records (written
    /// as hex only if the line is).
    pub(crate) fn trace_id(&self) -> Option<TraceId> {
        match &self.0 {
            Trace::Sampled(cx) => Some(cx.span().span_context().trace_id()),
            Trace::Unsampled { .. } => None,
        }
    }

    /// The host the request named (`server.address`).
    pub(crate) fn server_address(&self, host: &str) {
        if let Trace::Sampled(cx) = &self.0 {
            cx.span()
                .set_attribute(KeyValue::new("server.address", host.to_owned()));
        }
    }

    /// The request matched `route`: the span is named after it.
    pub(crate) fn routed(&self, method: &Method, route: &crate::config::Route) {
        if let Trace::Sampled(cx) = &self.0 {
            let span = cx.span();
            let method = method_name(method);
            let mut name = String::with_capacity(method.len() + 1 + route.name.len());
            name.push_str(&method);
            name.push(' ');
            name.push_str(&route.name);
            span.update_name(name);
            span.set_attributes([
                KeyValue::new("http.route", route.path_pattern()),
                KeyValue::new("portcullis.route", route.name.clone()),
            ]);
        }
    }

    /// A CLIENT span for the upstream exchange (`None` when not sampled),
    /// named by the method (or `WebSocket` for a tunnel).
    pub(crate) fn upstream_span(&self, websocket: bool, upstream: &str, method: &Method) -> Option<ChildSpan> {
        let Trace::Sampled(cx) = &self.0 else { return None };
        let name = if websocket {
            Cow::Borrowed("WebSocket")
        } else {
            method_name(method)
        };
        let attributes = vec![
            KeyValue::new("http.request.method", method_name(method)),
            KeyValue::new("portcullis.upstream", upstream.to_owned()),
        ];
        start_child(cx, name, SpanKind::Client, attributes)
    }

    /// Replace the client's trace context with the gateway's in the headers
    /// going upstream: `via`'s (a CLIENT span) or, unsampled, the request's.
    pub(crate) fn propagate(&self, via: Option<&ChildSpan>, headers: &mut HeaderMap) {
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        let (value, state) = match (&self.0, via) {
            (_, Some(child)) => context_headers(child.cx.span().span_context()),
            (Trace::Sampled(cx), None) => context_headers(cx.span().span_context()),
            (
                Trace::Unsampled {
                    trace_id,
                    span_id,
                    state,
                },
                None,
            ) => (traceparent(*trace_id, *span_id, false), tracestate(state)),
        };
        if let Some(v) = value {
            headers.insert(TRACEPARENT, v);
        }
        if let Some(v) = state {
            headers.insert(TRACESTATE, v);
        }
    }

    /// The answer is known: the last attributes, and the span ends.
    pub(crate) fn finish(&self, status: u16, facts: Finish<'_>) {
        let Trace::Sampled(cx) = &self.0 else { return };
        let span = cx.span();
        let mut last = Vec::with_capacity(6);
        last.push(KeyValue::new("http.response.status_code", i64::from(status)));
        if let Some(path) = facts.path {
            last.push(KeyValue::new("url.path", path.to_owned()));
        }
        if let Some(subject) = facts.subject {
            last.push(KeyValue::new("enduser.id", subject.to_owned()));
        }
        if let Some(reason) = facts.refused {
            last.push(KeyValue::new("portcullis.reason", reason));
            last.push(KeyValue::new("error.type", reason));
        } else if status >= 500 {
            last.push(KeyValue::new("error.type", status.to_string()));
        }
        if let Some(reason) = facts.monitor_denied {
            last.push(KeyValue::new("portcullis.monitor_denied", reason));
        }
        span.set_attributes(last);
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

fn context_headers(sc: &opentelemetry::trace::SpanContext) -> (Option<HeaderValue>, Option<HeaderValue>) {
    (
        traceparent(sc.trace_id(), sc.span_id(), sc.is_sampled()),
        tracestate(sc.trace_state()),
    )
}

/// `00-TRACE-SPAN-FLAGS`, written without the formatting machinery.
fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> Option<HeaderValue> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let ids = trace_id.to_bytes().into_iter().chain(span_id.to_bytes());
    // Two digits a byte; the span id's start one dash later.
    for (i, byte) in ids.enumerate() {
        let at = 3 + 2 * i + usize::from(i >= 16);
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0xf)];
    }
    if sampled {
        out[54] = b'1';
    }
    HeaderValue::from_bytes(&out).ok()
}

fn tracestate(state: &TraceState) -> Option<HeaderValue> {
    let text = state.header();
    (!text.is_empty()).then(|| HeaderValue::try_from(text).ok()).flatten()
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
pub(crate) struct ChildSpan {
    cx: Context,
}

impl ChildSpan {
    pub(crate) fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// The work failed: `kind` says how (an error type, never a secret).
    pub(crate) fn fail(&self, kind: impl Into<opentelemetry::Value>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("error.type", kind));
        span.set_status(Status::error(""));
    }

    /// The context to run the child's work in (for its own children).
    pub(crate) fn context(&self) -> Context {
        self.cx.clone()
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// A child of whatever span the running request has (`None` without one,
/// or when it does not record: then nothing is allocated).
pub(crate) fn child(name: &'static str, kind: SpanKind) -> Option<ChildSpan> {
    start_child(&Context::current(), name, kind, Vec::new())
}

/// An event on the running request's innermost span, if it records.
pub(crate) fn event(name: &'static str) {
    let cx = Context::current();
    if cx.span().is_recording() {
        cx.span().add_event(name, Vec::new());
    }
}

fn start_child(
    parent: &Context,
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    attributes: Vec<KeyValue>,
) -> Option<ChildSpan> {
    if !parent.span().is_recording() {
        return None;
    }
    let tracer = &parent.get::<TracerOf>()?.0;
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    Some(ChildSpan {
        cx: parent.with_span(span),
    })
}

/// The client's headers as the propagator reads them.
struct Incoming<'a>(&'a HeaderMap);

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Two traceparent headers are no trace context at all.
        let mut values = self.0.get_all(key).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return None;
        }
        first.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
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
            trace.context().is_some(),
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
        assert!(trace.context().is_some());
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert!(!sent.contains("0af7651916cd43dd8448eb211c80319c"), "{sent}");
        assert!(h.get(TRACESTATE).is_none(), "an untrusted tracestate is dropped");
    }

    #[tokio::test]
    async fn an_unsampled_trusted_parent_is_not_recorded_even_at_ratio_one() {
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let (trace, h) = traced(&telemetry(1.0, true), Some(unsampled));
        assert!(trace.context().is_none(), "the parent's decision stands");
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert!(sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{sent}");
        assert!(sent.ends_with("-00") && !sent.contains("b7ad6b7169203331"), "{sent}");
        assert_eq!(h[TRACESTATE], "vendor=secret");
    }

    #[tokio::test]
    async fn ratio_zero_records_nothing_but_still_propagates() {
        let (trace, h) = traced(&telemetry(0.0, true), None);
        assert!(trace.trace_id().is_none());
        assert!(trace.context().is_none());
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert_eq!(sent.len(), 55);
        assert!(sent.ends_with("-00"), "not sampled: {sent}");
        assert!(trace.upstream_span(false, "u", &Method::GET).is_none());
    }

    #[tokio::test]
    async fn malformed_or_repeated_traceparent_starts_a_new_trace() {
        for bad in [
            "00-xyz-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            let (_, h) = traced(&telemetry(1.0, true), Some(bad));
            assert!(!h[TRACEPARENT]
                .to_str()
                .unwrap()
                .contains("0af7651916cd43dd8448eb211c80319c"));
        }
        let mut h = HeaderMap::new();
        h.append(TRACEPARENT, INCOMING.parse().unwrap());
        h.append(TRACEPARENT, INCOMING.parse().unwrap());
        assert_eq!(Incoming(&h).get("traceparent"), None);
    }

    #[test]
    fn traceparent_is_written_as_w3c_says() {
        let (t, s) = (
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
            SpanId::from(0x00f067aa0ba902b7),
        );
        assert_eq!(
            traceparent(t, s, true).unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        );
        assert_eq!(traceparent(t, s, false).unwrap(), format!("00-{t}-{s}-00"));
    }

    #[test]
    fn child_without_a_request_is_none() {
        assert!(child("x", SpanKind::Internal).is_none());
    }
}
