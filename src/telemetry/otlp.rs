//! OTLP/HTTP's protobuf body (`ExportTraceServiceRequest`), written straight
//! from the gateway's finished spans: a span needs five message kinds, each
//! written with its length computed first, so encoding takes no allocation
//! but the output. The tests decode the result with `opentelemetry-proto`,
//! the official generated types.

use super::span::{Finished, Value};

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: sampled, and whether the parent was remote.
const SAMPLED: u32 = 0x1;
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The instrumentation scope of every span.
const SCOPE: &str = "portcullis";

/// The request body for `spans` under one resource (its attributes
/// pre-encoded by [`resource`]). `scratch` is reused between calls.
pub(super) fn request(resource: &[u8], spans: &[Finished], scratch: &mut Vec<u8>) -> Vec<u8> {
    let mut encoded = Vec::with_capacity(spans.len() * 320);
    for s in spans {
        scratch.clear();
        span(scratch, s);
        bytes(&mut encoded, 2, scratch);
    }
    let mut scope = Vec::with_capacity(32);
    string(&mut scope, 1, SCOPE);
    string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
    // ScopeSpans { scope: 1, spans: 2 }, inside ResourceSpans { resource: 1, scope_spans: 2 }.
    let scope_spans = field_len(scope.len()) + encoded.len();
    let resource_spans = resource.len() + field_len(scope_spans);
    let mut out = Vec::with_capacity(field_len(resource_spans));
    tag(&mut out, 1, LEN);
    varint(&mut out, resource_spans as u64);
    out.extend_from_slice(resource);
    tag(&mut out, 2, LEN);
    varint(&mut out, scope_spans as u64);
    bytes(&mut out, 1, &scope);
    out.extend_from_slice(&encoded);
    out
}

/// `ResourceSpans.resource` (field 1) holding `attributes`, encoded once.
pub(super) fn resource(attributes: &[(&'static str, Value)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in attributes {
        key_value(&mut body, 1, key, value);
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    bytes(&mut out, 1, &body);
    out
}

fn span(out: &mut Vec<u8>, span: &Finished) {
    bytes(out, 1, &span.trace_id.to_be_bytes());
    bytes(out, 2, &span.span_id.to_be_bytes());
    if let Some(state) = span.trace_state.as_ref().and_then(|s| s.to_str().ok()) {
        string(out, 3, state);
    }
    if span.parent_id != 0 {
        bytes(out, 4, &span.parent_id.to_be_bytes());
    }
    string(out, 5, &span.name);
    tag(out, 6, VARINT);
    varint(out, span.kind as u64);
    fixed64(out, 7, span.start);
    fixed64(out, 8, span.end);
    for (key, value) in &span.attributes {
        key_value(out, 9, key, value);
    }
    for (time, name) in &span.events {
        // Event { time_unix_nano: 1, name: 2 }
        tag(out, 11, LEN);
        varint(out, (9 + field_len(name.len())) as u64);
        fixed64(out, 1, *time);
        string(out, 2, name);
    }
    if span.error {
        // Status { code: 3 = STATUS_CODE_ERROR (2) }
        tag(out, 15, LEN);
        varint(out, 2);
        tag(out, 3, VARINT);
        varint(out, 2);
    }
    let mut flags = SAMPLED | HAS_IS_REMOTE;
    if span.parent_remote {
        flags |= IS_REMOTE;
    }
    tag(out, 16, FIXED32);
    out.extend_from_slice(&flags.to_le_bytes());
}

/// `KeyValue { key: 1, value: 2 }` with `AnyValue { string: 1, int: 3 }`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    let any = match value {
        Value::Str(s) => field_len(s.len()),
        Value::Shared(s) => field_len(s.len()),
        Value::Int(i) => 1 + varint_len(*i as u64),
    };
    let body = field_len(key.len()) + field_len(any);
    out.reserve(field_len(body));
    head(out, field, body);
    string(out, 1, key);
    head(out, 2, any);
    match value {
        Value::Str(s) => string(out, 1, s),
        Value::Shared(s) => string(out, 1, s),
        Value::Int(i) => {
            tag(out, 3, VARINT);
            varint(out, *i as u64);
        }
    }
}

/// The size of a length-delimited field (tag under 16) holding `n` bytes.
fn field_len(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[inline]
fn tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

/// A length-delimited field's tag and length: two bytes, most of the time.
#[inline]
fn head(out: &mut Vec<u8>, field: u32, len: usize) {
    if field < 16 && len < 0x80 {
        out.extend_from_slice(&[(field << 3 | LEN) as u8, len as u8]);
    } else {
        tag(out, field, LEN);
        varint(out, len as u64);
    }
}

#[inline]
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    head(out, field, b.len());
    out.extend_from_slice(b);
}

#[inline]
fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes(out, field, s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::span::Kind;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    use std::borrow::Cow;

    fn sample(parent: u64, error: bool, attributes: Vec<(&'static str, Value)>) -> Finished {
        Finished {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            span_id: 0x00f067aa0ba902b7,
            parent_id: parent,
            parent_remote: parent != 0,
            trace_state: Some(http::HeaderValue::from_static("vendor=x")),
            kind: Kind::Server,
            name: Cow::Borrowed("GET orders"),
            start: 1_700_000_000_123_456_789,
            end: 1_700_000_000_223_456_789,
            attributes,
            events: vec![(1_700_000_000_200_000_000, "connecting to the upstream")],
            error,
        }
    }

    #[test]
    fn the_official_types_decode_what_is_written() {
        let attributes = vec![
            ("http.request.method", Value::from("GET")),
            ("http.response.status_code", Value::Int(403)),
            ("negative", Value::Int(-2)),
            ("long", Value::from("x".repeat(300))),
            ("shared", Value::Shared("/api/*".into())),
        ];
        let mut second = sample(0, true, Vec::new());
        second.kind = Kind::Client;
        second.trace_state = None;
        let spans = [sample(0xb7ad6b7169203331, false, attributes), second];
        let resource = resource(&[("service.name", Value::from("edge"))]);
        let body = request(&resource, &spans, &mut Vec::new());
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();

        let rs = &decoded.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
        let ss = &rs.scope_spans[0];
        let scope = ss.scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("portcullis", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(ss.spans.len(), 2);
        let s = &ss.spans[0];
        assert_eq!(s.trace_id, 0x0af7651916cd43dd8448eb211c80319cu128.to_be_bytes());
        assert_eq!(s.span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
        assert_eq!(s.parent_span_id, 0xb7ad6b7169203331u64.to_be_bytes());
        assert_eq!(s.trace_state, "vendor=x");
        assert_eq!((s.name.as_str(), s.kind), ("GET orders", 2));
        assert_eq!(s.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 100_000_000);
        assert_eq!(s.flags, 0x301);
        assert!(s.status.is_none());
        assert_eq!(s.events[0].name, "connecting to the upstream");
        assert_eq!(s.events[0].time_unix_nano, 1_700_000_000_200_000_000);
        let value = |k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(value("http.request.method"), Some(Any::StringValue("GET".into())));
        assert_eq!(value("http.response.status_code"), Some(Any::IntValue(403)));
        assert_eq!(value("negative"), Some(Any::IntValue(-2)));
        assert_eq!(value("long"), Some(Any::StringValue("x".repeat(300))));
        assert_eq!(value("shared"), Some(Any::StringValue("/api/*".into())));

        let c = &ss.spans[1];
        assert!(c.parent_span_id.is_empty() && c.trace_state.is_empty());
        assert_eq!((c.kind, c.flags), (3, 0x101));
        assert_eq!(c.status.as_ref().unwrap().code, 2);
    }

    #[test]
    fn varint_lengths_match_what_is_written() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
