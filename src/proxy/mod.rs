//! The request pipeline (docs/request-lifecycle.md): one straight async function per request.
//! Each step returns a value or a [`GatewayError`]; none reaches back into an
//! earlier one.

mod access;
pub mod access_log;
pub mod body;
mod decide;
pub mod forward;
pub mod headers;
pub mod pool;
mod shape;
pub mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::auth::credential;
use crate::config::{Access, HostPolicy, TokenSource};
use crate::error::GatewayError;
use crate::routing::normalize::normalize;
use crate::routing::table::{strip_prefix, Lookup};
use crate::snapshot::Snapshot;
use access_log::AccessLog;
use body::{LimitedBody, ReplayableBody};
use headers::X_REQUEST_ID;

pub(crate) use access::{check_cookie_origin, claims_path_params};
pub(crate) use decide::{decide, Allowed, Listener};
pub use pool::ResponseBody;
use shape::header_bytes;
pub(crate) use shape::{check_request_shape, request_host};

/// What the gateway knows about the client connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer` as the access log writes it, rendered once per connection.
    pub client: Arc<str>,
    /// `peer`'s address as an `X-Forwarded-For` element.
    pub forwarded_for: HeaderValue,
    /// Where WebSocket tunnels opened on this connection are counted.
    pub tunnels: crate::proxy::tunnel::Tunnels,
    /// The connection's place in `limits.max_connections`: a tunnel opened
    /// on it keeps the place after the connection hands its socket over.
    pub place: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        tunnels: crate::proxy::tunnel::Tunnels,
        place: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    ) -> Self {
        ConnInfo {
            peer,
            client: peer.to_string().into(),
            forwarded_for: headers::client_address(peer.ip()),
            tunnels,
            place,
        }
    }
}

/// Serve one request end to end and write its access-log line.
pub async fn handle(snap: Arc<Snapshot>, conn: &ConnInfo, req: Request<Incoming>) -> Response<ResponseBody> {
    let request_id = headers::incoming_request_id(req.headers()).unwrap_or_else(headers::new_request_id);
    let http1 = req.version() < http::Version::HTTP_2;
    let grpc = crate::grpc::is_grpc(req.headers());
    // Written on every path out of here, including the future being dropped.
    let mut log = AccessLog::start(request_id, conn.client.clone(), req.method().clone());
    if let Some(t) = &snap.telemetry {
        let (h, m, v) = (req.headers(), req.method(), req.version());
        log.trace = Some(t.start_request(h, m, v, &conn.forwarded_for, log.request_id()));
    }

    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut answering = Answering::default();

    let status;
    // A recorded trace runs the pipeline in its context: child spans find their parent there.
    let traced = log.trace.as_ref().and_then(|t| t.span());
    let outcome = pipeline(&snap, conn, req, &mut log, &mut answering);
    let outcome = match traced {
        Some(span) => crate::telemetry::within(span, outcome).await,
        None => outcome.await,
    };
    let mut resp = match outcome {
        Ok(mut resp) => {
            status = resp.status().as_u16();
            log.upstream_status = Some(status);
            log.note_upstream_answer(status);
            // A 101 carries the upgrade's own Connection / Upgrade headers.
            if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                headers::remove_hop_by_hop(resp.headers_mut());
            }
            resp
        }
        Err(e) => {
            if let Some(reason) = crate::auth::denial_reason(&e) {
                log.refused = Some(reason);
                if let Some(route) = log.route_name() {
                    crate::metrics::denial(route, reason);
                }
            }
            // Client faults are routine (debug); upstream failures were logged at warn where they happened.
            tracing::debug!(error = %e, route = log.route_name().map(|n| &**n), "request answered by the gateway");
            let refused_body = matches!(e, GatewayError::PayloadTooLarge);
            status = e.status().as_u16();
            let description = e.description();
            let mut resp = e.into_response();
            if let (401, Some(url)) = (status, &answering.metadata_url) {
                crate::resource_metadata::add_to_challenge(resp.headers_mut(), url);
            }
            // A gRPC client reads the outcome from grpc-status; the log keeps ours.
            let resp = if grpc {
                crate::grpc::trailers_only(resp, description)
            } else {
                resp
            };
            let mut resp = resp.map(Either::Right);
            // The rest of a refused body is still on the wire: close the
            // connection rather than read or skip it.
            if refused_body && http1 {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    let h = resp.headers_mut();
    match snap.config.tls.as_ref().and_then(|t| t.hsts.as_ref()) {
        Some(v) => h.insert(header::STRICT_TRANSPORT_SECURITY, v.clone()),
        None => h.remove(header::STRICT_TRANSPORT_SECURITY),
    };
    // Unique per response: in HTTP/2, HPACK-indexing it would only evict
    // entries worth keeping, so it is sent as a never-indexed literal.
    let mut id = log.request_id().clone();
    id.set_sensitive(true);
    h.insert(X_REQUEST_ID, id);
    if let Some(p) = answering.cors_policy {
        crate::cors::apply(&snap.config.cors[p], origin.as_ref(), h);
    }
    log.write(status);
    resp
}

/// What the pipeline learns that shapes the answer, whichever it is.
#[derive(Default)]
pub(crate) struct Answering {
    /// The route's CORS policy (index into `config.cors`).
    pub cors_policy: Option<usize>,
    /// The route's protected-resource metadata URL, for its 401 challenges.
    pub metadata_url: Option<String>,
}

async fn pipeline(
    snap: &Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    log: &mut AccessLog,
    answering: &mut Answering,
) -> Result<Response<ResponseBody>, GatewayError> {
    let limits = &snap.config.limits;
    if header_bytes(&req) > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge);
    }
    // RFC 9112 §6.3: a request with both Content-Length and Transfer-Encoding
    // reaches us with Content-Length already removed by hyper, which also
    // closes the client connection after it; the body is forwarded chunked.
    let (mut parts, body) = req.into_parts();
    let content_length = match parts.headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(GatewayError::BadRequest("The Content-Length header is malformed."))?,
        ),
    };

    // Normalise, strip spoofable headers, route (docs/request-lifecycle.md).
    check_request_shape(snap, &parts)?;
    let host = request_host(&parts.uri, &parts.headers)?;
    let host_name = host.as_ref().map(|(_, h)| h.as_str());
    if let (Some(t), Some(name)) = (&log.trace, host_name) {
        t.server_address(name);
    }
    let path = normalize(parts.uri.path()).map_err(GatewayError::BadPath)?;
    log.path = Some(path.clone());
    snap.strip.strip(&mut parts.headers);

    // RFC 9728 metadata, answered before routing: public, for any client.
    if !snap.resource_metadata.is_empty()
        && path.starts_with(crate::config::RESOURCE_METADATA_PREFIX)
        && (parts.method == http::Method::GET || parts.method == http::Method::HEAD)
    {
        let host = host.as_ref().map(|(v, n)| (v, n.as_str()));
        if let Some(resp) = crate::resource_metadata::answer(&snap.config, &snap.resource_metadata, host, &path) {
            return Ok(resp.map(Either::Right));
        }
    }

    // The assertion's public keys, for upstreams that verify it.
    if let Some(signer) = &snap.assertion {
        if path == crate::assertion::HTTPS_JWKS_PATH
            && (parts.method == http::Method::GET || parts.method == http::Method::HEAD)
        {
            return Ok(crate::assertion::jwks_response(signer).map(Either::Right));
        }
    }

    // A CORS preflight is routed by the method it asks about, and answered
    // here on a route with a policy: no token, nothing sent upstream.
    if let Some(requested) = crate::cors::preflight_method(&parts.method, &parts.headers) {
        if let Lookup::Found(i) = snap.routes.find(host_name, &requested, &path) {
            let route = snap.routes.get(i);
            if let Some(p) = route.cors {
                log.route = Some(snap.route_metrics[i].clone());
                let policy = &snap.config.cors[p];
                return crate::cors::answer_preflight(policy, route.methods.as_deref(), &parts.headers, &requested)
                    .map(|r| r.map(Either::Right))
                    .ok_or(GatewayError::CorsRejected);
            }
        }
    }

    let Allowed {
        route_index,
        identity,
        monitor_denied,
        token_key,
    } = decide(
        snap,
        Listener::Https,
        conn.peer.ip(),
        &parts,
        host.as_ref(),
        &path,
        log,
        answering,
    )
    .await?;
    let route = snap.routes.get(route_index);

    if content_length.is_some_and(|n| n > limits.max_body_bytes) {
        return Err(GatewayError::PayloadTooLarge);
    }

    let websocket = route
        .websocket
        .as_ref()
        .filter(|_| crate::proxy::tunnel::is_websocket_upgrade(&parts));
    if websocket.is_some() && crate::proxy::tunnel::has_body(&parts.headers) {
        return Err(GatewayError::BadRequest(
            "A WebSocket upgrade request cannot carry a body.",
        ));
    }
    // `decide` answered 404 for a route without an upstream.
    let Some(upstream_index) = route.upstream else {
        return Err(GatewayError::NotFound);
    };
    let upstream = &snap.upstreams[upstream_index];
    let upstream_path = strip_prefix(route.strip_prefix.as_deref(), &path);
    let outgoing = Outgoing {
        upstream: &upstream.config,
        upstream_index,
        host: host.as_ref().map(|(v, _)| v),
        caller: identity.as_deref(),
        // Only for what the gateway allowed: a monitor-mode denial carries none.
        asserted: identity.as_deref().filter(|_| !monitor_denied),
        token_key,
        method: &parts.method,
        upstream_path: &upstream_path,
        token_sources: match &route.access {
            Access::Protected(rule) => &rule.token_sources,
            Access::Public => &[],
        },
        request_id: log.request_id(),
    };
    let query = rewrite_for_upstream(snap, conn, &outgoing, &mut parts.headers, parts.uri.query());
    let path_and_query = match query {
        Some(q) => PathAndQuery::try_from(format!("{upstream_path}?{q}")),
        None => PathAndQuery::try_from(upstream_path.as_ref()),
    }
    .map_err(|_| GatewayError::BadRequest("The request target cannot be forwarded."))?;
    // The upstream exchange's span, and the gateway's trace context in place of the client's.
    let upstream_span = log
        .trace
        .as_ref()
        .and_then(|t| t.upstream_span(websocket.is_some(), &upstream.config.name, &parts.method));
    if let Some(t) = &log.trace {
        t.propagate(upstream_span.as_ref(), &mut parts.headers);
    }

    if let Some(policy) = websocket {
        let upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(GatewayError::BadRequest("The connection cannot be upgraded."))?;
        let mut tunnel = crate::proxy::tunnel::TunnelLimits::new(
            log.route_name().cloned().unwrap_or_else(|| "-".into()),
            policy,
            identity.as_ref().map(|i| i.valid_until),
            limits.shutdown_grace,
        );
        let revocations = snap.store.as_ref().and_then(|s| s.revocations.clone());
        tunnel.revocation = identity.clone().zip(revocations);
        tunnel.span = upstream_span.map(Arc::new);
        // Boxed: a rare branch whose state would otherwise enlarge every request's future.
        return Box::pin(crate::proxy::tunnel::open(
            upstream,
            upgrade,
            path_and_query,
            parts.headers,
            tunnel,
            (&conn.tunnels, conn.place.clone()),
        ))
        .await;
    }

    let trailer_rules = (!http_body::Body::is_end_stream(&body)).then(|| snap.strip.clone());
    let body = ReplayableBody::new(LimitedBody::new(body, limits.max_body_bytes, trailer_rules));
    // A handle never sent: it tells, after the attempts, whether the body went over its budget.
    let budget = body.again();
    // Boxed, like `check_access` above: their states are large, and an unboxed
    // await would make every request's future carry (and move) them inline
    // (bench/callgrind.sh, h1 public route: 75.9k -> 66.2k instructions).
    let sending = Box::pin(upstream.send(parts.method, path_and_query, parts.headers, body));
    let sent = match &upstream_span {
        Some(span) => crate::telemetry::within(span.span(), sending).await,
        None => sending.await,
    };
    if let Some(span) = &upstream_span {
        match &sent {
            Ok(resp) => span.set("http.response.status_code", i64::from(resp.status().as_u16())),
            Err(failure) => span.fail(failure.kind()),
        }
    }
    match sent {
        // Only a WebSocket route's handshake may switch protocols; any other
        // 101 would hand the client a raw connection to the upstream.
        Ok(resp) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            tracing::warn!(upstream = %upstream.config.name, "upstream answered 101 to a request that asked for no WebSocket");
            Err(forward::UpstreamFailure::NotAWebSocket.counted(&upstream.config.name))
        }
        Ok(resp) => Ok(resp.map(Either::Left)),
        Err(_) if budget.exceeded() => Err(GatewayError::PayloadTooLarge),
        Err(failure) => {
            tracing::warn!(upstream = %upstream.config.name, kind = failure.kind(), "upstream request failed");
            Err(failure.counted(&upstream.config.name))
        }
    }
}

/// What the upstream request is built from, besides the client's headers.
struct Outgoing<'a> {
    upstream: &'a crate::config::Upstream,
    upstream_index: usize,
    host: Option<&'a HeaderValue>,
    caller: Option<&'a crate::auth::Caller>,
    /// The identity the assertion vouches for (the gateway allowed the request).
    asserted: Option<&'a crate::auth::Caller>,
    /// SHA-256 of the token, when assertions are reused per token.
    token_key: Option<[u8; 32]>,
    method: &'a http::Method,
    /// The path as forwarded (after `strip_prefix`).
    upstream_path: &'a str,
    /// Every place the route reads a token from: all are emptied.
    token_sources: &'a [TokenSource],
    request_id: &'a HeaderValue,
}

/// The client's headers made into the upstream's (docs/request-lifecycle.md,
/// step 12), and the query string without a credential taken from it.
/// Hop-by-hop headers go first, so nothing a client names in `Connection`
/// can remove what the gateway adds after.
fn rewrite_for_upstream<'q>(
    snap: &Snapshot,
    conn: &ConnInfo,
    out: &Outgoing<'_>,
    h: &mut http::HeaderMap,
    query: Option<&'q str>,
) -> Option<std::borrow::Cow<'q, str>> {
    // `TE: trailers` is the one TE value HTTP/2 allows (RFC 9113 §8.2.2); gRPC
    // servers need it to know the client reads trailers.
    let te_trailers = out.upstream.protocol.is_http2() && headers::accepts_trailers(h);
    headers::remove_hop_by_hop(h);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // No credential goes further, whichever source supplied the token: a
    // second token in another of the route's sources would reach the
    // upstream unchecked (an app reading its session cookie itself).
    let mut query = query.map(std::borrow::Cow::Borrowed);
    if !snap.config.identity.forward_authorization {
        h.remove(header::AUTHORIZATION);
        for source in out.token_sources {
            match source {
                TokenSource::Query(name) => {
                    query = query.and_then(|q| credential::strip_query(&q, name).map(std::borrow::Cow::Owned));
                }
                TokenSource::Cookie(name) => credential::strip_cookie(h, name),
                TokenSource::Header => {}
            }
        }
    }
    if let Some(caller) = out.caller {
        snap.identity.apply(h, caller);
    }
    if let (Some(signer), Some(caller)) = (&snap.assertion, out.asserted) {
        let bound = crate::assertion::Bound {
            method: out.method,
            host: out.host,
            path: out.upstream_path,
        };
        let upstream = (out.upstream_index, out.upstream.name.as_str());
        if let Some(v) = signer.assertion(caller, upstream, out.token_key, bound) {
            h.insert(signer.header.clone(), v);
        }
    }
    headers::set_forwarded(h, &conn.forwarded_for, out.host);
    h.insert(X_REQUEST_ID, out.request_id.clone());
    match &out.upstream.host {
        HostPolicy::Preserve => match out.host {
            Some(v) => h.insert(header::HOST, v.clone()),
            None => h.remove(header::HOST),
        },
        HostPolicy::Literal(v) => h.insert(header::HOST, v.clone()),
    };
    query
}
