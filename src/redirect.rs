//! The optional plain-HTTP listener (`listen.http`): every request is
//! answered 308 to the same path and query on the HTTPS listener. It never
//! proxies, and never sends HSTS (RFC 6797 §7.2).

use bytes::Bytes;
use http::header::{HeaderValue, HOST, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use crate::error::json_response;

pub fn answer<B>(req: &Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    match location(req, https_port) {
        Some(location) => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            resp.headers_mut().insert(LOCATION, location);
            resp
        }
        None => json_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "A valid Host header is required to redirect to HTTPS.",
        ),
    }
}

/// `https://host[:port]/path?query`, with the port left out when it is 443.
/// The host must be a plain host name or IP literal so that nothing a client
/// sends can steer the redirect elsewhere.
fn location<B>(req: &Request<B>, https_port: u16) -> Option<HeaderValue> {
    let host_value = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => {
            let mut hosts = req.headers().get_all(HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(h), None) => h.to_str().ok()?.to_string(),
                _ => return None,
            }
        }
    };
    let authority: http::uri::Authority = host_value.parse().ok()?;
    let host = authority.host();
    let plain = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if host.is_empty() || !plain || authority.as_str().contains('@') {
        return None;
    }
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let path = if path.starts_with('/') { path } else { "/" };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    HeaderValue::from_str(&format!("https://{host}{port}{path}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn redirects() {
        let cases = [
            (
                "/a/b?x=1",
                Some("example.com"),
                8443,
                Some("https://example.com:8443/a/b?x=1"),
            ),
            ("/", Some("example.com:8080"), 443, Some("https://example.com/")),
            ("/x", Some("[::1]:8080"), 8443, Some("https://[::1]:8443/x")),
            ("/x", None, 8443, None),
            ("/x", Some("evil.com@good.com"), 8443, None),
            ("/x", Some("a b"), 8443, None),
        ];
        for (uri, host, port, want) in cases {
            let resp = answer(&req(uri, host), port);
            match want {
                Some(loc) => {
                    assert_eq!(resp.status(), 308);
                    assert_eq!(resp.headers()[LOCATION], loc);
                }
                None => assert_eq!(resp.status(), 400, "{host:?}"),
            }
        }
    }
}
