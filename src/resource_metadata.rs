//! RFC 9728 protected-resource metadata: for a route with
//! `auth.resource_metadata: true`, the gateway answers
//! `GET /.well-known/oauth-protected-resource<route path>` itself, and its 401
//! challenges name that URL, so a client (an MCP client, say) can find the
//! authorization server from the resource alone.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::config::{Access, Config, PathMatch, Route, TokenSource};

/// The request's authority as resource URLs carry it: lower case, without
/// the default port.
fn authority(host: &HeaderValue) -> Option<String> {
    let host = host.to_str().ok()?.to_ascii_lowercase();
    Some(host.strip_suffix(":443").map(str::to_string).unwrap_or(host))
}

/// The metadata URL a 401 from `route` points at (`None`: the route has none).
pub(crate) fn url_for(route: &Route, host: Option<&HeaderValue>) -> Option<String> {
    let path = route.resource_metadata_path()?;
    Some(format!("https://{}{path}", authority(host?)?))
}

/// The metadata document for `path`, when a route the request's host reaches
/// has it there (`routes`: the indexes of routes with metadata).
pub(crate) fn answer(
    config: &Config,
    routes: &[usize],
    host: Option<(&HeaderValue, &str)>,
    path: &str,
) -> Option<Response<Full<Bytes>>> {
    let (host_value, host_name) = host?;
    let route = routes.iter().map(|&i| &config.routes[i]).find(|r| {
        r.host.as_deref().is_none_or(|h| h == host_name) && r.resource_metadata_path().as_deref() == Some(path)
    })?;
    let Access::Protected(rule) = &route.access else {
        return None;
    };
    let route_path = match &route.path {
        PathMatch::Prefix(p) | PathMatch::Exact(p) => p.as_str(),
        PathMatch::Template(_) => return None,
    };
    let mut servers: Vec<&str> = Vec::new();
    for issuer in rule
        .providers
        .iter()
        .filter_map(|&i| config.providers[i].issuer.as_deref())
    {
        if !servers.contains(&issuer) {
            servers.push(issuer);
        }
    }
    let mut scopes: Vec<&str> = Vec::new();
    for s in rule.scopes.iter().chain(&rule.any_scopes) {
        if !scopes.contains(&s.as_str()) {
            scopes.push(s);
        }
    }
    // RFC 6750's methods; a cookie is not one of them.
    let mut methods: Vec<&str> = Vec::new();
    for m in rule.token_sources.iter().filter_map(|s| match s {
        TokenSource::Header => Some("header"),
        TokenSource::Query(_) => Some("query"),
        TokenSource::Cookie(_) => None,
    }) {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    let document = json!({
        "resource": format!("https://{}{route_path}", authority(host_value)?),
        "authorization_servers": servers,
        "scopes_supported": scopes,
        "bearer_methods_supported": methods,
    });
    let mut resp = Response::new(Full::new(Bytes::from(document.to_string())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    Some(resp)
}

/// Add `resource_metadata="URL"` to a 401's `WWW-Authenticate` challenge.
pub(crate) fn add_to_challenge(headers: &mut http::HeaderMap, url: &str) {
    let Some(challenge) = headers.get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
        return;
    };
    // The URL is built from a host header value that passed routing and a
    // configured path: it holds no `"` or `\`, but check rather than trust.
    if url.contains(['"', '\\']) {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&format!(r#"{challenge}, resource_metadata="{url}""#)) {
        headers.insert(header::WWW_AUTHENTICATE, v);
    }
}
