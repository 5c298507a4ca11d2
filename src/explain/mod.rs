//! `portcullis explain`: what the gateway would do with one request, and why,
//! without sending anything upstream. Every decision is made by the same
//! functions the request pipeline calls (shape checks, host and path
//! normalisation, the route table, token sources, provider selection, token
//! verification, scopes, identity headers), so the explanation cannot drift
//! from what the gateway does. It never prints the token or a secret.
//!
//! The parts: this file walks the request; [`verdict`] explains the token's verdict;
//! [`redact`] keeps every credential out of the output.

mod redact;
mod verdict;

use http::{HeaderMap, Method, Request};
use serde::Serialize;

use crate::auth::credential;
use crate::config::{Access, AuthRule, TokenSource};
use crate::error::GatewayError;
use crate::routing::normalize::normalize;
use crate::routing::table::{strip_prefix, Lookup};
use crate::snapshot::Snapshot;

/// One line of the explanation.
#[derive(Debug, Serialize)]
pub struct Step {
    pub step: String,
    /// `pass`, `fail`, `info` or `skipped`.
    pub result: &'static str,
    pub detail: String,
}

/// The whole explanation, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub steps: Vec<Step>,
    /// `forward` or `refuse`.
    pub decision: &'static str,
    /// The route that matched, if one did.
    pub route: Option<String>,
    pub status: u16,
    /// The error code for a refusal.
    pub error: Option<&'static str>,
    /// The refusal's reason code (as the access log and metrics name it);
    /// on a monitor-mode route, what enforcement would have refused for.
    pub reason: Option<&'static str>,
    pub upstream: Option<String>,
    /// `METHOD /path?query` as the upstream would receive it.
    pub forwarded_as: Option<String>,
    /// The identity headers the upstream would receive.
    pub identity_headers: Vec<(String, String)>,
}

impl Explanation {
    pub fn forwards(&self) -> bool {
        self.decision == "forward"
    }

    /// The explanation as aligned text, one step per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            out.push_str(&format!("{:<10} {:<8} {}\n", s.step, s.result, s.detail));
        }
        match (&self.upstream, &self.forwarded_as) {
            (Some(up), Some(req)) if self.forwards() => {
                out.push_str(&format!("answer     forward to {up} as {req}\n"));
                for (k, v) in &self.identity_headers {
                    out.push_str(&format!("           {k}: {v}\n"));
                }
            }
            (None, _) if self.forwards() => {
                out.push_str("answer     allow: 200 from the decision API (the route has no upstream)\n");
                for (k, v) in &self.identity_headers {
                    out.push_str(&format!("           {k}: {v}\n"));
                }
            }
            _ => {
                let reason = self.reason.map(|r| format!(" (reason {r})")).unwrap_or_default();
                out.push_str(&format!(
                    "answer     {} {}{reason}\n",
                    self.status,
                    self.error.unwrap_or("")
                ));
            }
        }
        out
    }
}

struct Builder {
    steps: Vec<Step>,
    route: Option<String>,
}

impl Builder {
    fn add(&mut self, step: &str, result: &'static str, detail: impl Into<String>) {
        self.steps.push(Step {
            step: step.to_string(),
            result,
            detail: detail.into(),
        });
    }

    fn refuse(self, e: GatewayError) -> Explanation {
        Explanation {
            steps: self.steps,
            decision: "refuse",
            route: self.route,
            status: e.status().as_u16(),
            error: Some(e.kind()),
            reason: crate::auth::denial_reason(&e),
            upstream: None,
            forwarded_as: None,
            identity_headers: Vec::new(),
        }
    }
}

/// What the gateway would do with `method url` and these headers. No field
/// of the answer holds a credential the request carried, whatever printed it:
/// every one is replaced by `<token>` on the way out.
pub async fn explain(snap: &Snapshot, method: &str, url: &str, headers: HeaderMap) -> Result<Explanation, String> {
    let secrets = redact::credentials_in(snap, url, &headers);
    redact::redact(&secrets, explain_unredacted(snap, method, url, headers).await)
}

async fn explain_unredacted(
    snap: &Snapshot,
    method: &str,
    url: &str,
    headers: HeaderMap,
) -> Result<Explanation, String> {
    let mut b = Builder {
        steps: Vec::new(),
        route: None,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{:?} is not a URL", redact::redact_query_tokens(snap, url)))?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let mut req = Request::new(());
    *req.method_mut() = method.clone();
    *req.version_mut() = http::Version::HTTP_11;
    *req.headers_mut() = headers;
    if !req.headers().contains_key(http::header::HOST) {
        if let Some(a) = uri.authority() {
            let host =
                http::HeaderValue::from_str(a.as_str()).map_err(|_| "the URL's host is not valid".to_string())?;
            req.headers_mut().insert(http::header::HOST, host);
        }
    }
    let origin_form = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    *req.uri_mut() = origin_form
        .parse()
        .map_err(|_| format!("{url:?} has an invalid path"))?;
    let (mut parts, ()) = req.into_parts();
    b.add(
        "request",
        "info",
        format!("{method} {}", redact::redact_query_tokens(snap, url)),
    );

    // The same steps, in the same order, as the request pipeline.
    if let Err(e) = crate::proxy::check_request_shape(snap, &parts) {
        b.add("shape", "fail", e.description());
        return Ok(b.refuse(e));
    }
    let host = match crate::proxy::request_host(&parts.uri, &parts.headers) {
        Ok(h) => h,
        Err(e) => {
            b.add("host", "fail", e.description());
            return Ok(b.refuse(e));
        }
    };
    let host_name = host.as_ref().map(|(_, h)| h.clone());
    b.add("host", "info", host_name.clone().unwrap_or_else(|| "-".into()));
    let path = match normalize(parts.uri.path()) {
        Ok(p) => p,
        Err(e) => {
            let e = GatewayError::BadPath(e);
            b.add(
                "path",
                "fail",
                format!("{:?} refused: {}", parts.uri.path(), e.description()),
            );
            return Ok(b.refuse(e));
        }
    };
    b.add(
        "path",
        "pass",
        if path == parts.uri.path() {
            format!("{path} (already normal)")
        } else {
            format!("{} normalised to {path}", parts.uri.path())
        },
    );
    let stripped: Vec<String> = parts
        .headers
        .keys()
        .filter(|h| snap.strip.matches(h))
        .map(|h| h.to_string())
        .collect();
    snap.strip.strip(&mut parts.headers);
    if !stripped.is_empty() {
        b.add("strip", "info", format!("removed {}", stripped.join(", ")));
    }

    let route_index = match snap.routes.find(host_name.as_deref(), &method, &path) {
        Lookup::Found(i) => i,
        Lookup::MethodNotAllowed(allow) => {
            b.add(
                "route",
                "fail",
                format!(
                    "a route matches the path but not {method}; allowed: {}",
                    allow.to_str().unwrap_or("")
                ),
            );
            return Ok(b.refuse(GatewayError::MethodNotAllowed(allow)));
        }
        Lookup::NotFound => {
            b.add("route", "fail", "no route matches the path");
            return Ok(b.refuse(GatewayError::NotFound));
        }
    };
    let route = snap.routes.get(route_index);
    b.route = Some(route.name.clone());
    let at = crate::config::position_of(
        &snap.config.source,
        &crate::config::Field::key("routes").index(route_index),
    )
    .map(|(line, _)| format!(" ({}:{line})", snap.config.source.display()))
    .unwrap_or_default();
    let upstream = route.upstream.map(|u| &snap.upstreams[u]);
    let to = upstream.map_or_else(
        || "no upstream: decided on by the decision API only (the HTTPS listener answers 404)".to_string(),
        |u| format!("upstream {}", u.config.name),
    );
    b.add("route", "pass", format!("{}{at} -> {to}", route.name));

    if !route.source_ips.is_empty() {
        let ranges: Vec<String> = route.source_ips.iter().map(ToString::to_string).collect();
        b.add(
            "source_ips",
            "skipped",
            format!(
                "explain has no client address; the route accepts only {}",
                ranges.join(", ")
            ),
        );
    }
    let mut monitor_denied = None;
    let identity = match &route.access {
        Access::Public => {
            b.add("requires", "info", "nothing: the route is public");
            None
        }
        Access::Protected(rule) => {
            b.add("requires", "info", describe_rule(snap, rule));
            let path_params = crate::proxy::claims_path_params(route, rule, &path);
            let facts = crate::policy::Facts {
                host: host_name.as_deref(),
                path_params: &path_params,
            };
            let host_value = host.as_ref().map(|(v, _)| v);
            match verdict::check_token(&mut b, snap, route, rule, &parts, host_value, &facts).await {
                Ok(identity) => Some(identity),
                // As the gateway does: forwarded, with identity headers only
                // for a token that verified.
                Err((e, verified)) if rule.monitor => {
                    monitor_denied = Some(crate::auth::failure_reason(&e));
                    b.add(
                        "monitor",
                        "info",
                        format!(
                            "mode: monitor: forwarded anyway; logged and counted as {}",
                            crate::auth::failure_reason(&e)
                        ),
                    );
                    verified
                }
                Err((e, _)) => return Ok(b.refuse(e)),
            }
        }
    };
    if !route.rate_limits.is_empty() {
        let names: Vec<&str> = route
            .rate_limits
            .iter()
            .map(|&i| snap.config.rate_limits[i].name.as_str())
            .collect();
        b.add(
            "limits",
            "skipped",
            format!("rate limits {} are not consumed by explain", names.join(", ")),
        );
    }

    let mut forwarded = HeaderMap::new();
    if let Some(identity) = &identity {
        snap.identity.apply(&mut forwarded, identity);
    }
    let upstream_path = strip_prefix(route.strip_prefix.as_deref(), &path);
    // Every query source of the route is emptied, as the pipeline does.
    let mut query = parts.uri.query().map(str::to_string);
    if let (Access::Protected(rule), false) = (&route.access, snap.config.identity.forward_authorization) {
        for source in &rule.token_sources {
            if let TokenSource::Query(name) = source {
                query = query.and_then(|q| credential::strip_query(&q, name));
            }
        }
    }
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Ok(Explanation {
        steps: b.steps,
        decision: "forward",
        route: b.route,
        status: 200,
        error: None,
        reason: monitor_denied,
        upstream: upstream.map(|u| u.config.name.clone()),
        // A decision-only route: allowed, nothing forwarded.
        forwarded_as: upstream.map(|_| format!("{method} {upstream_path}{query}")),
        identity_headers: forwarded
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
    })
}

fn describe_rule(snap: &Snapshot, rule: &AuthRule) -> String {
    let providers: Vec<&str> = rule
        .providers
        .iter()
        .map(|&i| snap.config.providers[i].name.as_str())
        .collect();
    let mut s = format!("a token from {}", providers.join(" or "));
    if !rule.scopes.is_empty() {
        s.push_str(&format!("; scopes {}", rule.scopes.join(" ")));
    }
    if !rule.claims.is_empty() {
        s.push_str(&format!("; {} claims conditions", rule.claims.len()));
    }
    if !rule.any_scopes.is_empty() {
        s.push_str(&format!("; one of {}", rule.any_scopes.join(" ")));
    }
    if rule.monitor {
        s.push_str("; mode monitor");
    }
    s
}
