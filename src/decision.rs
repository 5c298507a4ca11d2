//! The decision API (`listen.decision`, forward auth): a proxy in front
//! (nginx `auth_request`, Traefik `forwardAuth`, Envoy `ext_authz`) describes
//! an original request in headers; the gateway runs its whole pipeline on it
//! — normalisation, routing, token sources, verification or introspection,
//! scopes, claims, rate limits — and answers the decision without forwarding
//! anything: `200` with the identity headers (and the assertion), or the
//! refusal the gateway would have sent.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;

use crate::error::GatewayError;
use crate::proxy::access_log::AccessLog;
use crate::proxy::{decide, Allowed, Answering, Listener};
use crate::routing::normalize::normalize;
use crate::snapshot::Snapshot;

const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// In nginx mode, the status the gateway would have answered.
const X_PORTCULLIS_STATUS: HeaderName = HeaderName::from_static("x-portcullis-status");

/// Answer one decision request from the proxy at `peer`.
pub async fn answer<B>(req: Request<B>, snap: Arc<Snapshot>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let request_id =
        crate::proxy::headers::incoming_request_id(req.headers()).unwrap_or_else(crate::proxy::headers::new_request_id);
    // nginx's auth_request treats any status but 2xx, 401 and 403 as an error.
    let nginx = req.headers().contains_key(X_ORIGINAL_URI);
    let (parts, _body) = req.into_parts();
    let original = match original_request(parts, peer) {
        Ok(o) => o,
        Err(e) => {
            let mut log = AccessLog::start(request_id.clone(), peer.to_string().into(), Method::GET);
            log.listener = "decision";
            return refuse(e, &mut log, nginx, &Answering::default(), &request_id);
        }
    };
    let (parts, client) = original;
    let mut log = AccessLog::start(request_id.clone(), client.to_string().into(), parts.method.clone());
    log.listener = "decision";
    if let Some(t) = &snap.telemetry {
        let address = crate::proxy::headers::client_address(client);
        log.trace = Some(t.start_request(&parts.headers, &parts.method, parts.version, &address, &request_id));
    }
    let traced = log.trace.as_ref().and_then(|t| t.span());
    let mut answering = Answering::default();
    let decided = decide_original(&snap, parts, client, &mut log, &mut answering);
    let decided = match traced {
        Some(span) => crate::telemetry::within(span, decided).await,
        None => decided.await,
    };
    match decided {
        Ok(resp) => {
            let mut resp = resp;
            resp.headers_mut()
                .insert(crate::proxy::headers::X_REQUEST_ID, request_id);
            // The proxy in front can pass the gateway's trace context on
            // (nginx: `auth_request_set $traceparent $upstream_http_traceparent`).
            if let Some(t) = &log.trace {
                t.propagate(None, resp.headers_mut());
            }
            log.write(200);
            resp
        }
        Err(e) => refuse(e, &mut log, nginx, &answering, &request_id),
    }
}

/// The original request the proxy describes, and the client's address.
fn original_request(
    mut parts: http::request::Parts,
    peer: SocketAddr,
) -> Result<(http::request::Parts, IpAddr), GatewayError> {
    let one = |name: &HeaderName| -> Result<Option<String>, GatewayError> {
        let mut values = parts.headers.get_all(name).iter();
        let Some(v) = values.next() else { return Ok(None) };
        if values.next().is_some() {
            return Err(GatewayError::BadRequest("A forwarded request header is given twice."));
        }
        v.to_str()
            .map(|s| Some(s.trim().to_string()))
            .map_err(|_| GatewayError::BadRequest("A forwarded request header is not valid text."))
    };
    let method = match one(&X_FORWARDED_METHOD)?.or(one(&X_ORIGINAL_METHOD)?) {
        Some(m) => Method::from_bytes(m.as_bytes())
            .map_err(|_| GatewayError::BadRequest("The forwarded method is not an HTTP method."))?,
        None => parts.method.clone(),
    };
    let uri = match one(&X_FORWARDED_URI)?.or(one(&X_ORIGINAL_URI)?) {
        Some(u) if u.starts_with('/') => u
            .parse::<Uri>()
            .map_err(|_| GatewayError::BadRequest("The forwarded URI is not a request target."))?,
        Some(_) => return Err(GatewayError::BadRequest("The forwarded URI must start with '/'.")),
        None => parts.uri.clone(),
    };
    if let Some(host) = one(&X_FORWARDED_HOST)? {
        let value =
            HeaderValue::from_str(&host).map_err(|_| GatewayError::BadRequest("The forwarded host is not valid."))?;
        parts.headers.insert(header::HOST, value);
    }
    // The last entry is the one the proxy in front added: the client it saw.
    let client = match parts.headers.get_all(&X_FORWARDED_FOR).iter().next_back() {
        None => peer.ip(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.rsplit(',').next())
            .and_then(|s| s.trim().parse().ok())
            .ok_or(GatewayError::BadRequest(
                "The last X-Forwarded-For entry is not an address.",
            ))?,
    };
    for name in [
        X_FORWARDED_METHOD,
        X_ORIGINAL_METHOD,
        X_FORWARDED_URI,
        X_ORIGINAL_URI,
        X_FORWARDED_HOST,
    ] {
        parts.headers.remove(name);
    }
    parts.method = method;
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    Ok((parts, client))
}

/// The pipeline up to the decision; `Ok` is the `200` for the proxy.
async fn decide_original(
    snap: &Snapshot,
    mut parts: http::request::Parts,
    client: IpAddr,
    log: &mut AccessLog,
    answering: &mut Answering,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    crate::proxy::check_request_shape(snap, &parts)?;
    let host = crate::proxy::request_host(&parts.uri, &parts.headers)?;
    let path = normalize(parts.uri.path()).map_err(GatewayError::BadPath)?;
    log.path = Some(path.clone());
    snap.strip.strip(&mut parts.headers);
    let Allowed {
        route_index,
        identity,
        monitor_denied,
        token_key,
    } = decide(
        snap,
        Listener::Decision,
        client,
        &parts,
        host.as_ref(),
        &path,
        log,
        answering,
    )
    .await?;
    let mut resp = Response::new(Full::new(Bytes::new()));
    let h = resp.headers_mut();
    if let Some(caller) = &identity {
        snap.identity.apply(h, caller);
    }
    if let (Some(signer), Some(caller)) = (&snap.assertion, identity.as_deref().filter(|_| !monitor_denied)) {
        let route = snap.routes.get(route_index);
        // The assertion is for the service behind the proxy: the route's
        // upstream when it names one, else the route.
        let audience = route
            .upstream
            .map_or(route.name.as_str(), |u| snap.config.upstreams[u].name.as_str());
        let bound = crate::assertion::Bound {
            method: &parts.method,
            host: host.as_ref().map(|(v, _)| v),
            path: &path,
        };
        // Reuse is keyed by upstream index; decision-only routes share one
        // slot per token past the last upstream, and their audience is the route.
        let slot = route.upstream.unwrap_or(snap.upstreams.len() + route_index);
        if let Some(v) = signer.assertion(caller, (slot, audience), token_key, bound) {
            h.insert(signer.header.clone(), v);
        }
    }
    Ok(resp)
}

/// The refusal the gateway would answer; for nginx (`X-Original-URI`), 401 or
/// 403 only, with the real status in `X-Portcullis-Status`.
fn refuse(
    e: GatewayError,
    log: &mut AccessLog,
    nginx: bool,
    answering: &Answering,
    request_id: &HeaderValue,
) -> Response<Full<Bytes>> {
    if let Some(reason) = crate::auth::denial_reason(&e) {
        log.refused = Some(reason);
        if let Some(route) = log.route_name() {
            crate::metrics::denial(route, reason);
        }
    }
    let status = e.status();
    let mut resp = e.into_response();
    if let (StatusCode::UNAUTHORIZED, Some(url)) = (status, &answering.metadata_url) {
        crate::resource_metadata::add_to_challenge(resp.headers_mut(), url);
    }
    if nginx {
        resp.headers_mut()
            .insert(X_PORTCULLIS_STATUS, HeaderValue::from(status.as_u16()));
        if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
            *resp.status_mut() = StatusCode::FORBIDDEN;
        }
    }
    resp.headers_mut()
        .insert(crate::proxy::headers::X_REQUEST_ID, request_id.clone());
    log.write(status.as_u16());
    resp
}
