//! What a request looks like before anything routes it: the size of its
//! head, the host it names, and the shapes common upstreams read differently
//! from the route table (refused with 400).

use http::header::{self, HeaderValue};
use http::Request;

use crate::error::GatewayError;
use crate::snapshot::Snapshot;

/// Size of the request head as the client sent it, near enough for the limit.
pub(super) fn header_bytes<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target =
        uri.path_and_query().map_or(1, |pq| pq.as_str().len()) + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    line + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// The host the client asked for: the URI authority (HTTP/2, absolute-form)
/// or the single `Host` header. Returns the header value to forward and the
/// lower-case host without port, for routing. One trailing dot is removed
/// (`admin.example.com.` names the same host as `admin.example.com`, and a
/// host-scoped route must not be skipped by it).
pub(crate) fn request_host(
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<Option<(HeaderValue, String)>, GatewayError> {
    let bad = || GatewayError::BadRequest("The Host header is repeated or malformed.");
    // The Host header as received, when that is what names the host: forwarded
    // as it is (no copy) unless it has to change.
    let mut received = None;
    let authority = match uri.authority() {
        Some(a) => a.clone(),
        None => {
            let mut hosts = headers.get_all(header::HOST).iter();
            match (hosts.next(), hosts.next()) {
                (None, _) => return Ok(None),
                (Some(h), None) => {
                    received = Some(h);
                    h.to_str()
                        .ok()
                        .and_then(|s| s.parse::<http::uri::Authority>().ok())
                        .ok_or_else(bad)?
                }
                (Some(_), Some(_)) => return Err(bad()),
            }
        }
    };
    let host = authority.host();
    if authority.as_str().contains('@') || host.is_empty() {
        return Err(bad());
    }
    let Some(undotted) = host.strip_suffix('.') else {
        let value = match received {
            Some(h) => h.clone(),
            None => HeaderValue::from_str(authority.as_str()).map_err(|_| bad())?,
        };
        return Ok(Some((value, host.to_ascii_lowercase())));
    };
    if undotted.is_empty() {
        return Err(bad());
    }
    let value = match authority.port() {
        Some(port) => HeaderValue::from_str(&format!("{undotted}:{port}")),
        None => HeaderValue::from_str(undotted),
    }
    .map_err(|_| bad())?;
    Ok(Some((value, undotted.to_ascii_lowercase())))
}

/// Refusals that come before anything reads the path or the host: request
/// shapes that common upstreams read differently from the route table.
pub(crate) fn check_request_shape(snap: &Snapshot, parts: &http::request::Parts) -> Result<(), GatewayError> {
    // Routing compares methods exactly, but Werkzeug, Django and ASP.NET Core
    // upper-case them: `post` must not slip past a POST-only route.
    if parts.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(GatewayError::BadRequest(
            "The request method must be written in upper case.",
        ));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400; an
    // HTTP/1.0 one too, since routing by host needs one.
    if (parts.version == http::Version::HTTP_11 || parts.version == http::Version::HTTP_10)
        && parts.uri.authority().is_none()
        && !parts.headers.contains_key(header::HOST)
    {
        return Err(GatewayError::BadRequest("An HTTP/1.x request needs a Host header."));
    }
    // Tomcat, Spring and Jetty read `;...` as path parameters: `/public/..;/admin`,
    // and some decode `%3B` to `;` before they do.
    if !snap.config.allow_semicolons && has_semicolon(parts.uri.path()) {
        return Err(GatewayError::BadRequest(
            "The request path contains ';', which this gateway does not accept.",
        ));
    }
    Ok(())
}

/// Whether a path holds `;`, raw or percent-encoded.
fn has_semicolon(path: &str) -> bool {
    path.contains(';')
        || (path.contains('%')
            && path
                .as_bytes()
                .windows(3)
                .any(|w| w[0] == b'%' && w[1] == b'3' && w[2].eq_ignore_ascii_case(&b'b')))
}
