//! W3C Trace Context: reading a client's `traceparent` / `tracestate` and
//! writing the gateway's. Anything malformed is no trace context at all (a
//! new trace starts), as the recommendation asks; a bad `tracestate` alone
//! is dropped.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The most `tracestate` keeps: 32 members, 512 characters.
const MAX_MEMBERS: usize = 32;
const MAX_STATE: usize = 512;

/// A client's trace context.
#[derive(Debug, PartialEq)]
pub(crate) struct Parent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
    pub state: Option<HeaderValue>,
}

/// The client's context, if it sent exactly one well-formed `traceparent`.
pub(crate) fn parent(headers: &HeaderMap) -> Option<Parent> {
    let mut values = headers.get_all(TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (trace_id, span_id, flags) = traceparent(value.as_bytes())?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
        state: tracestate(headers),
    })
}

/// `version-traceid-spanid-flags`: lowercase hex; version `ff` and all-zero
/// ids are invalid; a later version may append `-...` fields.
fn traceparent(v: &[u8]) -> Option<(u128, u64, u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex(&v[0..2])? as u8;
    let extra_ok = if version == 0 {
        v.len() == 55
    } else {
        v.len() == 55 || v[55] == b'-'
    };
    if version == 0xff || !extra_ok {
        return None;
    }
    let trace_id = hex(&v[3..35])?;
    let span_id = hex(&v[36..52])? as u64;
    let flags = hex(&v[53..55])? as u8;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags))
}

/// Lowercase hex digits (at most 32) as a number.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

/// The client's `tracestate` (several headers are one list), kept only
/// when every member is `key=value` as the recommendation writes them.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(TRACESTATE).iter();
    let first = values.next()?;
    let value = match values.next() {
        None => first.clone(),
        Some(second) => {
            let mut joined = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                joined.push(b',');
                joined.extend_from_slice(v.as_bytes());
            }
            HeaderValue::from_bytes(&joined).ok()?
        }
    };
    let text = value.to_str().ok()?;
    if text.len() > MAX_STATE {
        return None;
    }
    let mut members = 0;
    for member in text.split(',').map(|m| m.trim_matches([' ', '\t'])) {
        if member.is_empty() {
            continue;
        }
        members += 1;
        let (key, val) = member.split_once('=')?;
        if members > MAX_MEMBERS || !state_key(key) || !state_value(val) {
            return None;
        }
    }
    (members > 0).then_some(value)
}

/// `[a-z0-9][a-z0-9_-*/]{0,255}`, or `tenant@system` (system up to 14).
fn state_key(key: &str) -> bool {
    let simple = |k: &str, max: usize| {
        let mut bytes = k.bytes();
        k.len() <= max
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b))
    };
    match key.split_once('@') {
        None => simple(key, 256),
        Some((tenant, system)) => simple(tenant, 241) && simple(system, 14),
    }
}

/// Printable ASCII but `,` and `=`, not ending in a space, 1 to 256 characters.
fn state_value(val: &str) -> bool {
    (1..=256).contains(&val.len())
        && !val.ends_with(' ')
        && val
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

/// `00-TRACE-SPAN-FLAGS`, written without the formatting machinery.
pub(crate) fn write_traceparent(trace_id: u128, span_id: u64, sampled: bool) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let (trace, span) = (trace_id.to_be_bytes(), span_id.to_be_bytes());
    for i in 0..16 {
        out[3 + 2 * i] = HEX[usize::from(trace[i] >> 4)];
        out[4 + 2 * i] = HEX[usize::from(trace[i] & 0xf)];
    }
    for i in 0..8 {
        out[36 + 2 * i] = HEX[usize::from(span[i] >> 4)];
        out[37 + 2 * i] = HEX[usize::from(span[i] & 0xf)];
    }
    if sampled {
        out[54] = b'1';
    }
    // Hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn headers(parent: &[&str], state: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for p in parent {
            h.append(TRACEPARENT, p.parse().unwrap());
        }
        for s in state {
            h.append(TRACESTATE, s.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_well_formed_parent_is_read() {
        let p = parent(&headers(&[GOOD], &["congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"])).unwrap();
        assert_eq!(p.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(p.span_id, 0xb7ad6b7169203331);
        assert!(p.sampled);
        assert_eq!(p.state.unwrap(), "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7");
        let later = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-what-comes-next";
        let p = parent(&headers(&[later], &[])).unwrap();
        assert!(!p.sampled && p.state.is_none());
    }

    #[test]
    fn anything_malformed_is_no_parent() {
        for bad in [
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",
            "00-xyz-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "",
        ] {
            assert_eq!(parent(&headers(&[bad], &[])), None, "{bad}");
        }
        assert_eq!(parent(&headers(&[GOOD, GOOD], &[])), None, "two traceparents");
    }

    #[test]
    fn tracestate_is_kept_whole_or_dropped() {
        let state = |s: &[&str]| parent(&headers(&[GOOD], s)).unwrap().state;
        assert_eq!(state(&["a=1", "b=2"]).unwrap(), "a=1,b=2");
        assert_eq!(state(&["tenant@sys=x"]).unwrap(), "tenant@sys=x");
        for bad in ["novalue", "Upper=1", "a=1,b", "a=b=c", "a=1 ,=2"] {
            assert_eq!(state(&[bad]), None, "{bad}");
        }
        let many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert_eq!(state(&[&many]), None);
        assert_eq!(state(&[&format!("k={}", "v".repeat(600))]), None);
        assert_eq!(state(&[]), None);
    }

    #[test]
    fn traceparent_is_written_as_w3c_says() {
        assert_eq!(
            write_traceparent(0x0af7651916cd43dd8448eb211c80319c, 0x00f067aa0ba902b7, true),
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        );
        let back = traceparent(write_traceparent(7, 9, false).as_bytes()).unwrap();
        assert_eq!(back, (7, 9, 0));
    }
}
