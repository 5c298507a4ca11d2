//! gRPC clients read a call's outcome from `grpc-status`, not from the HTTP
//! status: a gateway refusal sent as an HTTP 401 with a JSON body reaches them
//! as an opaque protocol error. So a refusal of a gRPC request (content-type
//! `application/grpc` or `application/grpc+...`) is sent as a Trailers-Only
//! response: HTTP 200, `content-type: application/grpc`, no body, with the
//! gRPC status and a percent-encoded message in the headers
//! (gRPC over HTTP/2 protocol, "Responses").

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Whether the request is a gRPC call.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// The gRPC status code for a status the gateway answers with.
pub(crate) fn status_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 3,             // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 | 405 => 12,      // UNIMPLEMENTED
        413 | 429 | 431 => 8, // RESOURCE_EXHAUSTED
        502 | 503 => 14,      // UNAVAILABLE
        504 => 4,             // DEADLINE_EXCEEDED
        _ => 2,               // UNKNOWN
    }
}

/// `grpc-message` text: printable ASCII except `%` as it is, every other byte
/// of the UTF-8 as `%XX`.
pub(crate) fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turn a gateway-made JSON error into its Trailers-Only form, keeping the
/// headers the error carries (`www-authenticate`, `allow`, ...).
pub(crate) fn trailers_only(error: Response<Full<Bytes>>, description: &str) -> Response<Full<Bytes>> {
    let (mut parts, _) = error.into_parts();
    let code = status_code(parts.status);
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(description)) {
        h.insert("grpc-message", v);
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_grpc(&m)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(h("Application/GRPC+json"));
        assert!(!h("application/grpc-web"));
        assert!(!h("application/grpcx"));
        assert!(!h("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn status_table() {
        let cases = [
            (400, 3),
            (401, 16),
            (403, 7),
            (404, 12),
            (405, 12),
            (413, 8),
            (429, 8),
            (431, 8),
            (502, 14),
            (503, 14),
            (504, 4),
            (500, 2),
        ];
        for (http, grpc) in cases {
            assert_eq!(status_code(StatusCode::from_u16(http).unwrap()), grpc, "{http}");
        }
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            percent_encode("A bearer token is required."),
            "A bearer token is required."
        );
        assert_eq!(percent_encode("100% sure"), "100%25 sure");
        assert_eq!(percent_encode("line\nbreak"), "line%0Abreak");
        assert_eq!(percent_encode("café"), "caf%C3%A9");
    }
}
