//! The admin listener (docs/operations.md): `/healthz`, `/readyz` and `/metrics` over
//! plain HTTP, meant for loopback or a private network only, and `POST /revoke`.
//!
//! It is not for browsers: a request carrying `Origin` is refused, so a page
//! that someone with access to the port visits cannot use it. A `POST` needs
//! `Content-Type: application/json` (a form or `text/plain` body is what a
//! page can send without asking) and, with `admin.token_file`, the secret as
//! a bearer token. A body must arrive within `header_read_timeout`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::error::json_response;
use crate::snapshot::Snapshot;

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// What keeps the gateway from being ready: providers without keys, a
/// store not reached yet.
pub fn missing(snap: &Snapshot) -> Vec<String> {
    let mut missing: Vec<String> = snap
        .providers
        .iter()
        .filter(|p| !p.ready())
        .map(|p| format!("providers.{}: no signing keys yet", p.config.name))
        .collect();
    if let Some(store) = snap.store.as_ref().filter(|s| !s.ready()) {
        missing.push(format!(
            "store: {} not reached yet{}",
            store.config.url,
            if store.revocations.is_some() {
                " (revocation list not loaded)"
            } else {
                ""
            }
        ));
    }
    missing
}

/// The largest `POST /revoke` body read.
const MAX_REVOKE_BODY: usize = 4096;

pub async fn answer(req: Request<Incoming>, snap: Arc<Snapshot>) -> Response<Full<Bytes>> {
    if req.headers().contains_key(http::header::ORIGIN) {
        return json_response(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The admin listener does not serve browsers: requests with an Origin header are refused.",
        );
    }
    if req.method() == Method::POST {
        if let Some(token) = &snap.config.admin_token {
            let given = req.headers().get(http::header::AUTHORIZATION);
            if !given.is_some_and(|v| token.admits(v.as_bytes())) {
                let mut resp = json_response(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Admin requests that change state need the admin token as a bearer token.",
                );
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="portcullis-admin""#),
                );
                return resp;
            }
        }
    }
    if req.uri().path() == "/revoke" {
        return revoke(req, &snap).await;
    }
    read(&req, &snap)
}

/// What an admin connection gets while every regular admin slot is taken
/// (slow or stuck clients): health, readiness and metrics, never a change.
pub(crate) async fn answer_when_busy(req: Request<Incoming>, snap: Arc<Snapshot>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The admin listener is busy; retry shortly.",
        );
    }
    answer(req, snap).await
}

/// `POST /revoke`: `{"jti", "exp"}` or `{"sub", "before"}`, recorded in the
/// shared store and applied on every instance.
async fn revoke(req: Request<Incoming>, snap: &Snapshot) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Use POST.");
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return resp;
    }
    let Some(store) = snap.store.as_ref().filter(|s| s.revocations.is_some()) else {
        return json_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "Revocation is not configured; add `revocation: { store: redis }`.",
        );
    };
    let json_body = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_body {
        return json_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the revocation as Content-Type: application/json.",
        );
    }
    // The head was read within header_read_timeout; the body gets as long.
    let deadline = snap.config.limits.header_read_timeout;
    let collected = tokio::time::timeout(deadline, Limited::new(req.into_body(), MAX_REVOKE_BODY).collect()).await;
    let body = match collected {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "A revocation body is at most 4 KiB.",
            )
        }
        Err(_) => {
            let mut resp = json_response(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "The request body did not arrive in time.",
            );
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
    };
    let max_lifetime = snap.config.revocation.as_ref().map(|r| r.max_token_lifetime);
    let revocation = crate::store::revocation::Revocation::parse(&body)
        .and_then(|r| r.within_bounds(crate::clock::unix_now(), max_lifetime.unwrap_or_default()));
    let revocation = match revocation {
        Ok(r) => r,
        Err(why) => return json_response(StatusCode::BAD_REQUEST, "invalid_request", why),
    };
    match crate::store::revocation::revoke(store, revocation.clone()).await {
        Ok(()) => json(StatusCode::OK, serde_json::json!({ "revoked": revocation })),
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The shared store did not answer; the revocation was not recorded. Retry.",
        ),
    }
}

fn read<B>(req: &Request<B>, snap: &Snapshot) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Use GET.");
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    if let (crate::assertion::ADMIN_JWKS_PATH, Some(signer)) = (req.uri().path(), &snap.assertion) {
        return crate::assertion::jwks_response(signer);
    }
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, serde_json::json!({ "status": "ok" })),
        "/readyz" => {
            let missing = missing(snap);
            if missing.is_empty() {
                json(StatusCode::OK, serde_json::json!({ "status": "ready" }))
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "status": "not_ready", "missing": missing }),
                )
            }
        }
        "/metrics" => {
            // Prometheus asks for OpenMetrics in `Accept`; anything else gets the classic text format.
            let openmetrics = req
                .headers()
                .get_all(http::header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            let content_type = if openmetrics {
                crate::metrics::OPENMETRICS_CONTENT_TYPE
            } else {
                crate::metrics::TEXT_CONTENT_TYPE
            };
            let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::render(openmetrics))));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            resp
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            "not_found",
            "The admin listener serves /healthz, /readyz, /metrics, POST /revoke and, with identity.assertion, /.well-known/jwks.json.",
        ),
    }
}
