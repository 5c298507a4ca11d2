//! Every error the gateway itself answers with (docs/errors.md): one enum, one
//! exhaustive mapping to status, JSON body and extra headers.

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::routing::normalize::PathError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request path: {0}")]
    BadPath(#[source] PathError),
    /// A malformed request; the description is fixed text, never client input.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no bearer token on a protected route")]
    MissingToken,
    #[error("invalid token: {}", .0.reason())]
    InvalidToken(Rejection),
    /// The value for the `scope` attribute of `WWW-Authenticate`.
    #[error("insufficient scope: needs {0}")]
    InsufficientScope(String),
    #[error("the request's origin is not allowed by the route's CORS policy")]
    CorsRejected,
    /// `auth.claims[N]` did not hold (the index is for the log, never the client).
    #[error("the token does not meet the route's claims condition {0}")]
    ClaimsDenied(usize),
    #[error("the client address is not in the route's source_ips")]
    SourceDenied,
    /// Over a rate limit; retry after this many whole seconds.
    #[error("over a rate limit")]
    RateLimited(u64),
    #[error("the shared store did not answer")]
    StoreUnavailable,
    /// `revocation.until_loaded: refuse` and the list is not loaded yet.
    #[error("the revocation list has not been loaded yet")]
    RevocationsNotLoaded,
    #[error("the provider's keys are not available yet")]
    KeysUnavailable,
    #[error("the token introspection endpoint gave no usable answer")]
    IntrospectionUnavailable,
    #[error("no route matches the request path")]
    NotFound,
    #[error("the route does not allow this method")]
    MethodNotAllowed(HeaderValue),
    #[error("the request header section is too large")]
    HeadersTooLarge,
    #[error("the request body is too large")]
    PayloadTooLarge,
    #[error("no upstream target accepted the connection")]
    UpstreamConnect,
    #[error("the upstream failed while answering")]
    UpstreamFailed(#[source] hyper::Error),
    #[error("no upstream connection became free in time")]
    UpstreamBusy,
    #[error("the upstream target has as many WebSocket tunnels open as it may")]
    TunnelsFull,
    #[error("the upstream answered an upgrade with something other than this WebSocket handshake")]
    NotAWebSocket,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadPath(_) | GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::MissingToken | GatewayError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            GatewayError::InsufficientScope(_)
            | GatewayError::CorsRejected
            | GatewayError::ClaimsDenied(_)
            | GatewayError::SourceDenied => StatusCode::FORBIDDEN,
            GatewayError::KeysUnavailable
            | GatewayError::IntrospectionUnavailable
            | GatewayError::UpstreamBusy
            | GatewayError::TunnelsFull
            | GatewayError::StoreUnavailable
            | GatewayError::RevocationsNotLoaded => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::UpstreamConnect | GatewayError::UpstreamFailed(_) | GatewayError::NotAWebSocket => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `error` code and the one-sentence description of the JSON body.
    fn code_and_description(&self) -> (&'static str, &'static str) {
        match self {
            GatewayError::BadPath(e) => ("invalid_request", path_description(*e)),
            GatewayError::BadRequest(why) => ("invalid_request", why),
            GatewayError::MissingToken => ("unauthorized", "A bearer token is required."),
            GatewayError::InvalidToken(r) => ("invalid_token", r.description()),
            GatewayError::InsufficientScope(_) => {
                ("insufficient_scope", "The token lacks a scope this route requires.")
            }
            GatewayError::ClaimsDenied(_) => ("access_denied", "The token does not meet this route's policy."),
            GatewayError::SourceDenied => (
                "access_denied",
                "This route does not accept requests from the client's address.",
            ),
            GatewayError::CorsRejected => (
                "cors_rejected",
                "The request's origin, method or headers are not allowed for this route.",
            ),
            GatewayError::RateLimited(_) => (
                "rate_limited",
                "Too many requests; retry after the time in the Retry-After header.",
            ),
            GatewayError::StoreUnavailable => (
                "temporarily_unavailable",
                "The gateway's shared store is unavailable; retry shortly.",
            ),
            GatewayError::RevocationsNotLoaded => (
                "temporarily_unavailable",
                "The gateway has not loaded the revocation list yet; retry shortly.",
            ),
            GatewayError::KeysUnavailable => (
                "temporarily_unavailable",
                "The token issuer's keys are not available yet; retry shortly.",
            ),
            GatewayError::IntrospectionUnavailable => (
                "temporarily_unavailable",
                "The token issuer could not be asked about the token; retry shortly.",
            ),
            GatewayError::NotFound => ("not_found", "No route matches the request path."),
            GatewayError::MethodNotAllowed(_) => (
                "method_not_allowed",
                "The route does not allow this method; see the Allow header.",
            ),
            GatewayError::HeadersTooLarge => (
                "request_header_fields_too_large",
                "The request header section is larger than the gateway accepts.",
            ),
            GatewayError::PayloadTooLarge => (
                "payload_too_large",
                "The request body is larger than the gateway accepts.",
            ),
            GatewayError::UpstreamConnect => ("bad_gateway", "The upstream service could not be reached."),
            GatewayError::UpstreamFailed(_) => (
                "bad_gateway",
                "The upstream service closed the connection without a valid response.",
            ),
            GatewayError::UpstreamBusy => (
                "temporarily_unavailable",
                "Every connection to the upstream service is busy; retry shortly.",
            ),
            GatewayError::TunnelsFull => (
                "temporarily_unavailable",
                "The upstream service has as many WebSocket connections open as it may take; retry shortly.",
            ),
            GatewayError::NotAWebSocket => (
                "bad_gateway",
                "The upstream service did not complete the WebSocket handshake.",
            ),
            GatewayError::UpstreamTimeout => ("gateway_timeout", "The upstream service did not answer in time."),
        }
    }

    /// The one-sentence description the client is given.
    pub(crate) fn description(&self) -> &'static str {
        self.code_and_description().1
    }

    /// A short machine-friendly label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        self.code_and_description().0
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let (code, description) = self.code_and_description();
        let mut resp = json_response(self.status(), code, description);
        let challenge = match &self {
            // RFC 6750 §3.1: no error attribute when the request had no token.
            GatewayError::MissingToken => Some(r#"Bearer realm="portcullis""#.to_string()),
            GatewayError::InvalidToken(_) => Some(format!(
                r#"Bearer realm="portcullis", error="invalid_token", error_description="{}""#,
                description.trim_end_matches('.')
            )),
            // Scope tokens never contain `"` or `\` (checked at config load).
            GatewayError::InsufficientScope(scope) => Some(format!(
                r#"Bearer realm="portcullis", error="insufficient_scope", scope="{scope}""#
            )),
            _ => None,
        };
        if let Some(v) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        match self {
            GatewayError::MethodNotAllowed(allow) => {
                resp.headers_mut().insert(ALLOW, allow);
            }
            GatewayError::RateLimited(secs) => {
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        resp
    }
}

fn path_description(e: PathError) -> &'static str {
    match e {
        PathError::NotAbsolute => "The request path must start with '/'.",
        PathError::EncodedSeparator => "The request path contains an encoded '/' or '\\'.",
        PathError::Backslash => "The request path contains a backslash.",
        PathError::ControlCharacter => "The request path contains a control character.",
        PathError::MalformedEscape => "The request path contains a malformed percent-escape.",
        PathError::AboveRoot => "The request path climbs above the root.",
    }
}

/// `{"error": code, "error_description": description}` as `application/json`.
pub(crate) fn json_response(status: StatusCode, code: &str, description: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": code, "error_description": description }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Why a token was refused. Kept here with the other answers (the checks
/// that produce it are `auth::token`'s); its text is safe to show the client:
/// it never contains the token or anything from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Critical,
    Type,
    ClaimType,
    Expired,
    MissingExp,
    NotYetValid,
    Issuer,
    Audience,
    Revoked,
    /// The provider answered introspection with `"active": false`.
    Inactive,
}

impl Rejection {
    pub(crate) fn description(self) -> &'static str {
        match self {
            Rejection::Malformed => "The token is not a well-formed JWT.",
            Rejection::Algorithm => "The token's signing algorithm is not accepted.",
            Rejection::UnknownKey => "The token was signed with an unknown key.",
            Rejection::Signature => "The token signature is invalid.",
            Rejection::Critical => "The token requires an extension the gateway does not support.",
            Rejection::Type => "The token is not an access token of the required type.",
            Rejection::ClaimType => "A registered claim in the token has the wrong type.",
            Rejection::Expired => "The token has expired.",
            Rejection::MissingExp => "The token has no expiry.",
            Rejection::NotYetValid => "The token is not valid yet.",
            Rejection::Issuer => "The token issuer is not accepted here.",
            Rejection::Audience => "The token audience is not accepted here.",
            Rejection::Revoked => "The token has been revoked.",
            Rejection::Inactive => "The token is not active.",
        }
    }

    /// The reason code for logs, metrics and `explain` (docs/errors.md).
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed_token",
            Rejection::Algorithm => "algorithm_not_allowed",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Signature => "bad_signature",
            Rejection::Critical => "unsupported_crit",
            Rejection::Type => "wrong_type",
            Rejection::ClaimType => "bad_claim_type",
            Rejection::Expired => "expired",
            Rejection::MissingExp => "missing_exp",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::Issuer => "wrong_issuer",
            Rejection::Audience => "wrong_audience",
            Rejection::Revoked => "revoked",
            Rejection::Inactive => "inactive",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let cases = [
            (GatewayError::BadPath(PathError::AboveRoot), 400, "invalid_request"),
            (GatewayError::BadRequest("x"), 400, "invalid_request"),
            (GatewayError::MissingToken, 401, "unauthorized"),
            (GatewayError::InvalidToken(Rejection::Expired), 401, "invalid_token"),
            (GatewayError::InsufficientScope("a".into()), 403, "insufficient_scope"),
            (GatewayError::CorsRejected, 403, "cors_rejected"),
            (GatewayError::RateLimited(3), 429, "rate_limited"),
            (GatewayError::StoreUnavailable, 503, "temporarily_unavailable"),
            (GatewayError::KeysUnavailable, 503, "temporarily_unavailable"),
            (GatewayError::IntrospectionUnavailable, 503, "temporarily_unavailable"),
            (GatewayError::NotFound, 404, "not_found"),
            (
                GatewayError::MethodNotAllowed(HeaderValue::from_static("GET")),
                405,
                "method_not_allowed",
            ),
            (GatewayError::HeadersTooLarge, 431, "request_header_fields_too_large"),
            (GatewayError::PayloadTooLarge, 413, "payload_too_large"),
            (GatewayError::UpstreamConnect, 502, "bad_gateway"),
            (GatewayError::UpstreamBusy, 503, "temporarily_unavailable"),
            (GatewayError::UpstreamTimeout, 504, "gateway_timeout"),
            (GatewayError::RevocationsNotLoaded, 503, "temporarily_unavailable"),
            (GatewayError::TunnelsFull, 503, "temporarily_unavailable"),
            (GatewayError::NotAWebSocket, 502, "bad_gateway"),
            (GatewayError::ClaimsDenied(1), 403, "access_denied"),
            (GatewayError::SourceDenied, 403, "access_denied"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.kind(), code);
        }
    }

    #[test]
    fn bearer_challenges() {
        let h = |e: GatewayError| e.into_response().headers().get(WWW_AUTHENTICATE).cloned();
        assert_eq!(h(GatewayError::MissingToken).unwrap(), r#"Bearer realm="portcullis""#);
        assert_eq!(
            h(GatewayError::InvalidToken(Rejection::Expired)).unwrap(),
            r#"Bearer realm="portcullis", error="invalid_token", error_description="The token has expired""#
        );
        assert_eq!(
            h(GatewayError::InsufficientScope("a b".into())).unwrap(),
            r#"Bearer realm="portcullis", error="insufficient_scope", scope="a b""#
        );
        assert_eq!(h(GatewayError::NotFound), None);
    }

    #[tokio::test]
    async fn body_is_json() {
        use http_body_util::BodyExt;
        let resp = GatewayError::MethodNotAllowed(HeaderValue::from_static("GET, HEAD")).into_response();
        assert_eq!(resp.headers()[ALLOW], "GET, HEAD");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "method_not_allowed");
        assert!(v["error_description"].as_str().unwrap().ends_with('.'));
    }
}
