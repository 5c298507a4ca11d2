//! The admin listener (SPEC §6): `/healthz`, `/readyz` and `/metrics` over
//! plain HTTP, meant for loopback or a private network only.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::error::json_response;
use crate::snapshot::Snapshot;

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// What keeps the gateway from being ready: providers without keys.
pub fn missing(snap: &Snapshot) -> Vec<String> {
    snap.providers
        .iter()
        .filter(|p| !p.ready())
        .map(|p| format!("providers.{}: no signing keys yet", p.config.name))
        .collect()
}

pub fn answer<B>(req: &Request<B>, snap: &Snapshot) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = json_response(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Use GET.");
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
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
            "The admin listener serves /healthz, /readyz and /metrics.",
        ),
    }
}
