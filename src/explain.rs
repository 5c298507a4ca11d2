//! `portcullis explain`: what the gateway would do with one request, and why,
//! without sending anything upstream. Every decision is made by the same
//! functions the request pipeline calls (shape checks, host and path
//! normalisation, the route table, token sources, provider selection, token
//! verification, scopes, identity headers), so the explanation cannot drift
//! from what the gateway does. It never prints the token or a secret.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, Request};
use serde::Serialize;
use serde_json::Value;

use crate::auth::token::{self, VERIFY_STEPS};
use crate::auth::{credential, Caller};
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
    pub status: u16,
    /// The error code for a refusal.
    pub error: Option<&'static str>,
    /// The refusal's reason code (as the access log and metrics name it).
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
            status: e.status().as_u16(),
            error: Some(e.kind()),
            reason: crate::auth::denial_reason(&e),
            upstream: None,
            forwarded_as: None,
            identity_headers: Vec::new(),
        }
    }
}

/// A Unix time as a readable UTC date, with how far from now.
fn date(secs: f64) -> String {
    // A token's `exp` may be any number: one too large for a date is shown as written.
    let Some(t) = Duration::try_from_secs_f64(secs.max(0.0))
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .filter(|_| secs.abs() < 1e12)
    else {
        return format!("{secs:e} (not a date)");
    };
    let now = SystemTime::now();
    let relative = match t.duration_since(now) {
        Ok(d) => format!("in {}", human(d)),
        Err(e) => format!("{} ago", human(e.duration())),
    };
    let days = (secs / 86400.0).floor() as i64;
    let rem = secs as i64 - days * 86400;
    let (y, m, d) = crate::log_format::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC ({relative})",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn claim_text(v: Option<&Value>) -> String {
    match v {
        None => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Explain `method url` with `headers` (the token, if any, among them as the
/// request would carry it) against a snapshot whose remote keys are fetched.
/// What the gateway would do with `method url` and these headers. No field
/// of the answer holds a credential the request carried, whatever printed it:
/// every one is replaced by `<token>` on the way out.
pub fn explain(snap: &Snapshot, method: &str, url: &str, headers: HeaderMap) -> Result<Explanation, String> {
    let secrets = credentials_in(snap, url, &headers);
    let hide = |text: &mut String| {
        for secret in &secrets {
            if text.contains(secret.as_str()) {
                *text = text.replace(secret.as_str(), "<token>");
            }
        }
    };
    let mut e = match explain_unredacted(snap, method, url, headers) {
        Ok(e) => e,
        Err(mut why) => {
            hide(&mut why);
            return Err(why);
        }
    };
    for step in &mut e.steps {
        hide(&mut step.detail);
    }
    if let Some(f) = &mut e.forwarded_as {
        hide(f);
    }
    for (_, v) in &mut e.identity_headers {
        hide(v);
    }
    Ok(e)
}

/// Every credential a request carries, as it could appear in text: the
/// `Authorization` header's credentials (any scheme), cookie values, and the
/// values of query parameters that a route reads tokens from or that look
/// like a JWT, raw and percent-decoded. Short values are left alone (they
/// would blot out ordinary words, and no token is that short).
fn credentials_in(snap: &Snapshot, url: &str, headers: &HeaderMap) -> Vec<String> {
    const SHORTEST: usize = 8;
    let mut found = Vec::new();
    for v in headers.get_all(http::header::AUTHORIZATION) {
        let text = String::from_utf8_lossy(v.as_bytes());
        let credentials = text.split_once(' ').map_or(&*text, |(_, c)| c).trim();
        found.push(credentials.to_string());
    }
    for v in headers.get_all(http::header::COOKIE) {
        let text = String::from_utf8_lossy(v.as_bytes());
        for pair in text.split(';') {
            if let Some((_, value)) = pair.split_once('=') {
                found.push(value.trim().trim_matches('"').to_string());
            }
        }
    }
    let query = url
        .split_once('?')
        .map_or("", |(_, q)| q.split('#').next().unwrap_or(""));
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name);
        let jwt_shaped = value.starts_with("eyJ") && value.matches('.').count() >= 2;
        if jwt_shaped || is_query_source(snap, &name) {
            found.push(value.to_string());
            found.push(percent_decode(value));
        }
    }
    found.retain(|s| s.len() >= SHORTEST);
    // Longest first, so a token is never half-replaced by a shorter secret inside it.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

/// Whether some route takes a token from the query parameter `name`.
fn is_query_source(snap: &Snapshot, name: &str) -> bool {
    snap.config.routes.iter().any(|r| match &r.access {
        Access::Protected(rule) => rule
            .token_sources
            .iter()
            .any(|s| matches!(s, TokenSource::Query(n) if n == name)),
        Access::Public => false,
    })
}

/// `%XX` decoded, lossily as UTF-8.
fn percent_decode(text: &str) -> String {
    String::from_utf8_lossy(&crate::routing::normalize::percent_decode(text)).into_owned()
}

fn explain_unredacted(snap: &Snapshot, method: &str, url: &str, headers: HeaderMap) -> Result<Explanation, String> {
    let mut b = Builder { steps: Vec::new() };
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{:?} is not a URL", redact_query_tokens(snap, url)))?;
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
        format!("{method} {}", redact_query_tokens(snap, url)),
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
    let at = crate::config::position_of(&snap.config.source, &format!("routes[{route_index}]"))
        .map(|(line, _)| format!(" ({}:{line})", snap.config.source.display()))
        .unwrap_or_default();
    let upstream = &snap.upstreams[route.upstream];
    b.add(
        "route",
        "pass",
        format!("{}{at} -> upstream {}", route.name, upstream.config.name),
    );

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
    let identity = match &route.access {
        Access::Public => {
            b.add("requires", "info", "nothing: the route is public");
            None
        }
        Access::Protected(rule) => {
            b.add("requires", "info", describe_rule(snap, rule));
            let path_params = match (&route.path, rule.claims_read_path) {
                (crate::config::PathMatch::Template(t), true) => t.params(&path).unwrap_or_default(),
                _ => Vec::new(),
            };
            let facts = crate::policy::Facts {
                host: host_name.as_deref(),
                path_params: &path_params,
            };
            let host_value = host.as_ref().map(|(v, _)| v);
            match check_token(&mut b, snap, route, rule, &parts, host_value, &facts) {
                Ok(identity) => Some(identity),
                Err(e) if rule.monitor => {
                    b.add(
                        "monitor",
                        "info",
                        format!(
                            "mode: monitor: forwarded anyway; logged and counted as {}",
                            crate::auth::failure_reason(&e)
                        ),
                    );
                    None
                }
                Err(e) => return Ok(b.refuse(e)),
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
        status: 200,
        error: None,
        reason: None,
        upstream: Some(upstream.config.name.clone()),
        forwarded_as: Some(format!("{method} {upstream_path}{query}")),
        identity_headers: forwarded
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
    })
}

/// The URL as given, with the value of every query parameter some route takes
/// a token from replaced: explain never prints a token.
fn redact_query_tokens(snap: &Snapshot, url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_query_source(snap, &percent_decode(k)) => format!("{k}=<token>"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
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

/// The token's part, step by step: where it was found, its header and
/// claims, each verification check, scopes held against required.
fn check_token(
    b: &mut Builder,
    snap: &Snapshot,
    route: &crate::config::Route,
    rule: &AuthRule,
    parts: &http::request::Parts,
    host: Option<&http::HeaderValue>,
    facts: &crate::policy::Facts<'_>,
) -> Result<Arc<Caller>, GatewayError> {
    let found = credential::find(&rule.token_sources, &parts.headers, parts.uri.query()).inspect_err(|e| {
        b.add("token", "fail", e.description());
    })?;
    let Some(found) = found else {
        b.add("token", "fail", "no token in any of the route's token sources");
        return Err(GatewayError::MissingToken);
    };
    let source = match found.source {
        TokenSource::Header => "the Authorization header".to_string(),
        TokenSource::Query(n) => format!("the query parameter {n}"),
        TokenSource::Cookie(n) => format!("the cookie {n}"),
    };
    if let TokenSource::Cookie(_) = found.source {
        crate::proxy::check_cookie_origin(snap, route, &parts.method, &parts.headers, host).inspect_err(|_| {
            b.add(
                "origin",
                "fail",
                "a cookie token on a cross-site request (an Origin the route's CORS policy does not list by name, or Sec-Fetch-Site: cross-site)",
            );
        })?;
    }
    let unverified = token::decode(found.token).map_err(|r| {
        b.add("token", "fail", format!("from {source}: {}", r.description()));
        GatewayError::InvalidToken(r)
    })?;
    let (alg, typ) = unverified.alg_and_typ();
    b.add(
        "token",
        "info",
        format!(
            "from {source}: alg={alg} kid={} typ={}",
            unverified.kid().unwrap_or("-"),
            typ.unwrap_or("-")
        ),
    );
    let claims = unverified.unverified_claims();
    let time = |name: &str| claims.get(name).and_then(Value::as_f64).map_or("-".into(), date);
    b.add(
        "claims",
        "info",
        format!(
            "iss={} sub={} aud={} exp={} nbf={}",
            claim_text(claims.get("iss")),
            claim_text(claims.get("sub")),
            claim_text(claims.get("aud")),
            time("exp"),
            time("nbf")
        ),
    );
    let (_, provider) = crate::auth::select_provider(&snap.providers, rule, &unverified).inspect_err(|_| {
        b.add(
            "provider",
            "fail",
            "no provider allowed on this route has the token's issuer (a token without iss needs the provider without one)",
        );
    })?;
    b.add("provider", "pass", provider.config.name.clone());
    let Some(keys) = provider.keys.load_full() else {
        b.add("keys", "fail", "the provider's keys could not be loaded or fetched");
        return Err(GatewayError::KeysUnavailable);
    };
    let now = crate::clock::unix_now();
    let verdict = unverified.verify(&provider.config, &keys, now);
    let failed_at = verdict.err().map(|r| (r.step(), r));
    // Steps 5 and 10 only apply when the provider sets `typ` / `audiences`.
    let not_configured = |i: usize| match i {
        5 => provider
            .config
            .typ
            .is_none()
            .then_some("typ (not required by the provider)"),
        10 => provider
            .config
            .audiences
            .is_none()
            .then_some("aud (not checked: the provider sets no audiences)"),
        _ => None,
    };
    for (i, check) in VERIFY_STEPS.iter().enumerate().skip(1) {
        match failed_at {
            Some((at, r)) if at == i => b.add("check", "fail", format!("{check}: {}", r.description())),
            Some((at, _)) if at < i => b.add("check", "skipped", format!("{check} (not reached)")),
            _ => match not_configured(i) {
                Some(why) => b.add("check", "skipped", why),
                None => b.add("check", "pass", *check),
            },
        }
    }
    if let Some((_, r)) = failed_at {
        return Err(GatewayError::InvalidToken(r));
    }
    b.add(
        "revoked",
        "skipped",
        "revocations live in the shared store; explain does not read it",
    );
    let identity = Caller::from_claims(unverified.unverified_claims().clone(), &provider.config);
    let held = identity.scopes.join(" ");
    match crate::auth::scopes::authorize(rule, &identity.scopes) {
        Ok(()) => b.add("scopes", "pass", format!("held [{held}]")),
        Err(missing) => {
            let missing: Vec<&str> = missing
                .split(' ')
                .filter(|s| !identity.scopes.iter().any(|h| h == s))
                .collect();
            b.add(
                "scopes",
                "fail",
                format!("held [{held}]; missing {}", missing.join(" ")),
            );
            return Err(GatewayError::InsufficientScope(missing.join(" ")));
        }
    }
    // Every condition with its result and what the token holds there
    // (operators run explain; the access log never shows these values).
    let mut failed = None;
    for (i, condition) in rule.claims.iter().enumerate() {
        let holds = condition.holds(&identity.claims, facts);
        let held = match condition {
            crate::policy::Condition::Claim(pointer, _) => pointer.find(&identity.claims).map_or_else(
                || "; the token has no such claim".to_string(),
                |v| format!("; the token has {v}"),
            ),
            _ => String::new(),
        };
        // What the request's substitutions stood for.
        let request: Vec<String> = condition
            .path_params()
            .into_iter()
            .map(|name| {
                let value = facts
                    .path_params
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str());
                format!("{{path.{name}}} = {}", value.unwrap_or("-"))
            })
            .collect();
        let request = if request.is_empty() {
            String::new()
        } else {
            format!(" ({})", request.join(", "))
        };
        b.add(
            &format!("claims[{i}]"),
            if holds { "pass" } else { "fail" },
            format!("{condition}{request}{held}"),
        );
        failed = failed.or((!holds).then_some(i));
    }
    if let Some(i) = failed {
        return Err(GatewayError::ClaimsDenied(i));
    }
    Ok(Arc::new(identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enormous_dates_never_panic() {
        for secs in [1e300, f64::MAX, f64::INFINITY, f64::NAN, -1e300, 9.9e11] {
            let _ = date(secs);
        }
        assert_eq!(date(1e300), "1e300 (not a date)");
    }

    #[test]
    fn dates() {
        assert!(date(0.0).starts_with("1970-01-01 00:00:00 UTC"));
        assert!(date(1_700_000_000.0).starts_with("2023-11-14 22:13:20 UTC"));
        assert!(date(951_782_400.0).starts_with("2000-02-29 00:00:00 UTC"));
    }
}
