//! OTLP/HTTP's protobuf body (`ExportTraceServiceRequest`), written straight
//! from the SDK's finished spans. The generic route (spans converted to
//! generated message structs, every key and value copied into a `String`,
//! then encoded) cost more instructions per request than the whole proxy
//! path; writing the few message kinds a span needs takes no allocation
//! but the output buffer. The tests decode the result with
//! `opentelemetry-proto`, the official generated types.

use std::time::SystemTime;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the flags say whether the parent was remote.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// The request body for `spans`, under one resource (its attributes
/// pre-encoded by [`resource`]) and one instrumentation scope (the first
/// span's: the gateway has one tracer).
pub(super) fn request(resource: &[u8], spans: &[SpanData]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + spans.len() * 320);
    let Some(first) = spans.first() else { return out };
    nested(&mut out, 1, |out| {
        out.extend_from_slice(resource);
        nested(out, 2, |out| {
            let scope = &first.instrumentation_scope;
            nested(out, 1, |out| {
                string(out, 1, scope.name());
                if let Some(version) = scope.version() {
                    string(out, 2, version);
                }
            });
            for span in spans {
                nested(out, 2, |out| self::span(out, span));
            }
        });
    });
    out
}

/// `ResourceSpans.resource` (field 1) holding `attributes`, encoded once.
pub(super) fn resource(attributes: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::new();
    nested(&mut out, 1, |out| {
        attributes.iter().for_each(|kv| key_value(out, 1, kv))
    });
    out
}

fn span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(out, 1, &context.trace_id().to_bytes());
    bytes(out, 2, &context.span_id().to_bytes());
    let state = context.trace_state().header();
    if !state.is_empty() {
        string(out, 3, &state);
    }
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    string(out, 5, &span.name);
    let kind = match span.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    tag(out, 6, VARINT);
    varint(out, kind);
    tag(out, 7, FIXED64);
    out.extend_from_slice(&nanos(span.start_time).to_le_bytes());
    tag(out, 8, FIXED64);
    out.extend_from_slice(&nanos(span.end_time).to_le_bytes());
    for kv in &span.attributes {
        key_value(out, 9, kv);
    }
    counter(out, 10, span.dropped_attributes_count);
    for event in span.events.iter() {
        nested(out, 11, |out| {
            tag(out, 1, FIXED64);
            out.extend_from_slice(&nanos(event.timestamp).to_le_bytes());
            string(out, 2, &event.name);
            for kv in &event.attributes {
                key_value(out, 3, kv);
            }
        });
    }
    counter(out, 12, span.events.dropped_count);
    // The gateway makes no links; any the SDK kept are counted as dropped.
    counter(out, 14, span.links.dropped_count + span.links.len() as u32);
    match &span.status {
        Status::Unset => {}
        Status::Ok => nested(out, 15, |out| {
            tag(out, 3, VARINT);
            varint(out, 1);
        }),
        Status::Error { description } => nested(out, 15, |out| {
            if !description.is_empty() {
                string(out, 2, description);
            }
            tag(out, 3, VARINT);
            varint(out, 2);
        }),
    }
    let mut flags = HAS_IS_REMOTE | u32::from(context.trace_flags().to_u8());
    if span.parent_span_is_remote {
        flags |= IS_REMOTE;
    }
    tag(out, 16, FIXED32);
    out.extend_from_slice(&flags.to_le_bytes());
}

fn key_value(out: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    nested(out, field, |out| {
        string(out, 1, kv.key.as_str());
        nested(out, 2, |out| any_value(out, &kv.value));
    });
}

/// `AnyValue`: string 1, bool 2, int 3, double 4, array 5.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => string(out, 1, s.as_str()),
        Value::Bool(b) => {
            tag(out, 2, VARINT);
            varint(out, u64::from(*b));
        }
        Value::I64(i) => {
            tag(out, 3, VARINT);
            varint(out, *i as u64);
        }
        Value::F64(f) => {
            tag(out, 4, FIXED64);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::Array(array) => nested(out, 5, |out| {
            let mut each = |v: Value| nested(out, 1, |out| any_value(out, &v));
            match array {
                Array::Bool(v) => v.iter().for_each(|b| each(Value::Bool(*b))),
                Array::I64(v) => v.iter().for_each(|i| each(Value::I64(*i))),
                Array::F64(v) => v.iter().for_each(|f| each(Value::F64(*f))),
                Array::String(v) => v.iter().for_each(|s| each(Value::String(s.clone()))),
                _ => {}
            }
        }),
        // A kind added to the API later: recorded as its text.
        other => string(out, 1, &other.to_string()),
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn counter(out: &mut Vec<u8>, field: u32, n: u32) {
    if n > 0 {
        tag(out, field, VARINT);
        varint(out, u64::from(n));
    }
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes(out, field, s.as_bytes());
}

/// A length-delimited message: written in place, then its length is
/// slipped in front of it (one move of the bytes after it, no scratch).
fn nested(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    let start = out.len();
    body(out);
    let (mut len, mut prefix, mut n) = ((out.len() - start) as u64, [0u8; 10], 0);
    while len >= 0x80 {
        prefix[n] = len as u8 | 0x80;
        len >>= 7;
        n += 1;
    }
    prefix[n] = len as u8;
    n += 1;
    out.splice(start..start, prefix[..n].iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry::InstrumentationScope;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    use std::borrow::Cow;
    use std::time::Duration;

    fn sample(parent: u64, status: Status, attributes: Vec<KeyValue>) -> SpanData {
        let state = TraceState::from_key_value([("vendor", "x")]).unwrap();
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(0x0af7651916cd43dd8448eb211c80319c),
                SpanId::from(0x00f067aa0ba902b7),
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: parent != 0,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed("GET orders"),
            start_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            end_time: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_223_456_789),
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status,
            instrumentation_scope: InstrumentationScope::builder("portcullis")
                .with_version("9.9.9")
                .build(),
        }
    }

    #[test]
    fn the_official_types_decode_what_is_written() {
        let attributes = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.response.status_code", 403i64),
            KeyValue::new("negative", -2i64),
            KeyValue::new("flag", true),
            KeyValue::new("ratio", 0.5),
            KeyValue::new("long", "x".repeat(300)),
            KeyValue::new("list", Value::Array(Array::I64(vec![1, 2]))),
        ];
        let mut second = sample(0, Status::error("upstream"), Vec::new());
        second.span_kind = SpanKind::Client;
        let spans = [sample(0xb7ad6b7169203331, Status::Unset, attributes), second];
        let resource = resource(&[KeyValue::new("service.name", "edge")]);
        let body = request(&resource, &spans);
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();

        let rs = &decoded.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
        let ss = &rs.scope_spans[0];
        let scope = ss.scope.as_ref().unwrap();
        assert_eq!((scope.name.as_str(), scope.version.as_str()), ("portcullis", "9.9.9"));
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
        assert!(s.status.is_none() || s.status.as_ref().unwrap().code == 0);
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
        assert_eq!(value("flag"), Some(Any::BoolValue(true)));
        assert_eq!(value("ratio"), Some(Any::DoubleValue(0.5)));
        assert_eq!(value("long"), Some(Any::StringValue("x".repeat(300))));
        let Some(Any::ArrayValue(list)) = value("list") else {
            panic!("array")
        };
        assert_eq!(list.values.len(), 2);

        let c = &ss.spans[1];
        assert!(c.parent_span_id.is_empty());
        assert_eq!((c.kind, c.flags), (3, 0x101));
        let status = c.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "upstream"));
    }

    #[test]
    fn lengths_of_every_size_are_prefixed_correctly() {
        for n in [0usize, 1, 127, 128, 16_383, 16_384, 70_000] {
            let mut out = Vec::new();
            nested(&mut out, 1, |out| out.extend(std::iter::repeat_n(7u8, n)));
            let mut expected = Vec::new();
            bytes(&mut expected, 1, &vec![7u8; n]);
            assert_eq!(out, expected, "{n}");
        }
        assert!(request(&[], &[]).is_empty());
    }
}
