//! `portcullis test`: request → expected-decision cases, run offline through
//! the decision code `explain` uses, which is the gateway's own (routing,
//! token sources, verification or introspection, scopes, claims, identity
//! headers). No port is bound, no upstream contacted, no key fetched and no
//! introspection endpoint called: each provider's keys are replaced by a
//! throwaway key the runner signs its tokens with, and introspection answers
//! come from the cases. Rate limits and revocation are not evaluated.

pub mod file;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{ConfigError, Field};
use crate::explain::Explanation;
use crate::snapshot::Snapshot;
use file::{Case, CaseToken};

/// What one case got, in the terms `expect` uses.
#[derive(Debug, Serialize)]
pub struct Got {
    pub status: u16,
    pub error: Option<&'static str>,
    pub reason: Option<&'static str>,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub path: Option<String>,
    /// The identity headers the upstream would get.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identity_headers: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub name: String,
    /// Where the case is written (`file:line`).
    pub at: String,
    pub passed: bool,
    /// Each expectation that did not hold: `status: expected 403, got 200`.
    pub failures: Vec<String>,
    pub got: Got,
}

/// The whole run, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub cases: Vec<CaseResult>,
    pub passed: usize,
    pub failed: usize,
    /// Routes no case reached.
    pub unreached_routes: Vec<String>,
    /// What the runner does not evaluate.
    pub not_evaluated: Vec<&'static str>,
}

impl Report {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.cases {
            if c.passed {
                out.push_str(&format!("PASS {}\n", c.name));
            } else {
                let reason = c.got.reason.unwrap_or("-");
                out.push_str(&format!(
                    "FAIL {} ({}): {} (reason {reason})\n",
                    c.name,
                    c.at,
                    c.failures.join("; ")
                ));
            }
        }
        out.push_str(&format!("{} passed, {} failed\n", self.passed, self.failed));
        if !self.unreached_routes.is_empty() {
            out.push_str(&format!(
                "routes no case reached: {}\n",
                self.unreached_routes.join(", ")
            ));
        }
        out.push_str("not evaluated: rate limits, revocation\n");
        out
    }
}

/// A provider's stand-in for this run.
struct StandIn {
    alg: Algorithm,
    key: EncodingKey,
}

/// Run every case of `files` against the configuration in `snap`. `Err` is
/// a case file that cannot be read or is wrong (`file:line:column`).
pub async fn run(snap: &Snapshot, files: &[PathBuf]) -> Result<Report, ConfigError> {
    let mut stand_ins: BTreeMap<usize, StandIn> = BTreeMap::new();
    for p in &snap.providers {
        if let Some(i) = &p.introspection {
            i.go_offline();
        }
    }
    let mut results = Vec::new();
    let mut reached = BTreeSet::new();
    for path in files {
        let (cases, text) = file::load(path)?;
        for (n, case) in cases.cases.iter().enumerate() {
            let place = |field: &'static str, message: String| {
                ConfigError::new(Field::key("cases").index(n).then(field), message).at(path, &text)
            };
            let (url, headers) = request_headers(snap, case, &mut stand_ins).map_err(|(field, m)| place(field, m))?;
            let explained = crate::explain::explain(snap, &case.request.method, &url, headers.clone())
                .await
                .map_err(|m| place(".request", m))?;
            if let Some(route) = &explained.route {
                reached.insert(route.clone());
            }
            let at = format!("{}:{}", path.display(), line_of(path, &text, n));
            results.push(judge(snap, case, &explained, headers, at));
        }
    }
    let passed = results.iter().filter(|r| r.passed).count();
    Ok(Report {
        failed: results.len() - passed,
        passed,
        unreached_routes: snap
            .config
            .routes
            .iter()
            .filter(|r| !reached.contains(&r.name))
            .map(|r| r.name.clone())
            .collect(),
        cases: results,
        not_evaluated: vec!["rate_limits", "revocation"],
    })
}

fn line_of(path: &Path, text: &str, n: usize) -> usize {
    crate::config::ConfigError::new(Field::key("cases").index(n), "")
        .at(path, text)
        .position
        .map_or(0, |(line, _)| line)
}

/// The case's request headers, with its token as `Authorization: Bearer`
/// (minted with the provider's stand-in key), and its introspection answer
/// held by the route's introspecting providers. `Err`: the field and why.
fn request_headers(
    snap: &Snapshot,
    case: &Case,
    stand_ins: &mut BTreeMap<usize, StandIn>,
) -> Result<(String, HeaderMap), (&'static str, String)> {
    let mut headers = HeaderMap::new();
    for (name, value) in &case.request.headers {
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) else {
            return Err((".request.headers", format!("{name:?}: {value:?} is not a valid header")));
        };
        headers.append(n, v);
    }
    let token = match &case.token {
        None => None,
        Some(CaseToken::Raw { raw }) => Some(raw.clone()),
        Some(CaseToken::Minted { provider, claims }) => Some(mint(snap, provider, claims, stand_ins)?),
    };
    // `{token}` in the URL or a header value places the token there (a query
    // or cookie token source); else it goes in `Authorization: Bearer`.
    let mut url = case.request.url.clone();
    let placed = token.as_ref().is_some_and(|t| {
        let mut placed = url.contains("{token}");
        url = url.replace("{token}", t);
        for value in headers.values_mut() {
            if let Ok(text) = value.to_str() {
                if text.contains("{token}") {
                    if let Ok(v) = HeaderValue::from_str(&text.replace("{token}", t)) {
                        *value = v;
                        placed = true;
                    }
                }
            }
        }
        placed
    });
    if let (Some(token), false) = (&token, placed) {
        if headers.contains_key(http::header::AUTHORIZATION) {
            return Err((
                ".token",
                "the request also has an Authorization header; give the token in one place".into(),
            ));
        }
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| (".token", "not a valid bearer token".to_string()))?;
        headers.insert(http::header::AUTHORIZATION, value);
    }
    // The answer stands for whatever opaque token the case sends.
    for p in &snap.providers {
        let Some(introspector) = &p.introspection else { continue };
        introspector.go_offline();
        if let (Some(answer), Some(token)) = (&case.introspection, token.clone().or_else(|| bearer(&headers))) {
            let json = serde_json::to_vec(answer).unwrap_or_default();
            let key = crate::auth::cache::TokenCache::key(&token);
            introspector
                .prime(&p.config, key, &json)
                .map_err(|m| (".introspection", m))?;
        }
    }
    Ok((url, headers))
}

/// The opaque token a case sends: in `Authorization`, or the minted/raw one
/// placed elsewhere.
fn bearer(headers: &HeaderMap) -> Option<String> {
    crate::auth::bearer_token(headers).ok().flatten().map(str::to_string)
}

/// A token for `provider` with `claims`, signed with its stand-in key.
fn mint(
    snap: &Snapshot,
    provider: &str,
    claims: &Map<String, Value>,
    stand_ins: &mut BTreeMap<usize, StandIn>,
) -> Result<String, (&'static str, String)> {
    let Some(index) = snap.providers.iter().position(|p| p.config.name == provider) else {
        let known: Vec<&str> = snap.providers.iter().map(|p| p.config.name.as_str()).collect();
        return Err((
            ".token.provider",
            format!(
                "no provider named {provider:?}; defined providers: {}",
                known.join(", ")
            ),
        ));
    };
    let state = &snap.providers[index];
    if state.config.keys == crate::config::KeySource::IntrospectionOnly {
        return Err((
            ".token.provider",
            format!("{provider} only introspects opaque tokens; give the token as `raw:` and its answer as `introspection:`"),
        ));
    }
    let stand_in = match stand_ins.entry(index) {
        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::btree_map::Entry::Vacant(e) => {
            let (alg, key, mut keys) =
                crate::auth::keys::stand_in(&state.config).map_err(|m| (".token.provider", m))?;
            // Beside the provider's own local keys, so that `raw` tokens
            // signed with them keep verifying (remote keys are never fetched).
            if let Ok(Some(local)) = crate::auth::keys::load_local(&state.config) {
                keys.keys.extend(local.keys);
            }
            state.install(keys);
            e.insert(StandIn { alg, key })
        }
    };
    let config = &state.config;
    let spec = crate::mint::TokenSpec {
        iss: config.issuer.clone(),
        aud: config.audiences.as_ref().and_then(|a| a.first().cloned()),
        typ: config.typ.clone(),
        ttl: std::time::Duration::from_secs(3600),
        claims: claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    };
    crate::mint::mint(stand_in.alg, &stand_in.key, &spec).map_err(|m| (".token", m))
}

/// The case's expectations against what it got.
fn judge(snap: &Snapshot, case: &Case, x: &Explanation, request: HeaderMap, at: String) -> CaseResult {
    let path = x
        .forwarded_as
        .as_deref()
        .and_then(|f| f.split_once(' '))
        .map(|(_, p)| p.to_string());
    let got = Got {
        status: x.status,
        error: x.error,
        reason: x.reason,
        route: x.route.clone(),
        upstream: x.upstream.clone(),
        path,
        identity_headers: x.identity_headers.clone(),
    };
    let e = &case.expect;
    let mut failures = Vec::new();
    let show = |v: Option<&str>| v.map_or_else(|| "none".to_string(), str::to_string);
    if e.status != got.status {
        failures.push(format!("status: expected {}, got {}", e.status, got.status));
    }
    let mut compare = |name: &str, want: &Option<String>, have: Option<&str>| {
        if let Some(want) = want {
            if Some(want.as_str()) != have {
                failures.push(format!("{name}: expected {want}, got {}", show(have)));
            }
        }
    };
    compare("error", &e.error, got.error);
    compare("reason", &e.reason, got.reason);
    compare("route", &e.route, got.route.as_deref());
    compare("upstream", &e.upstream, got.upstream.as_deref());
    // Without `?`, only the path is compared.
    let forwarded_path = match (&e.path, &got.path) {
        (Some(want), Some(p)) if !want.contains('?') => p.split('?').next().map(str::to_string),
        (_, p) => p.clone(),
    };
    compare("path", &e.path, forwarded_path.as_deref());
    if let Some(expected) = &e.headers {
        let upstream = forwarded_headers(snap, request, x);
        for (name, want) in expected {
            let have = upstream.get(name.as_str()).and_then(|v| v.to_str().ok());
            match (want, have) {
                (None, Some(v)) => failures.push(format!("header {name}: expected absent, got {v:?}")),
                (Some(w), h) if Some(w.as_str()) != h => failures.push(format!(
                    "header {name}: expected {w:?}, got {}",
                    h.map_or("absent".into(), |h| format!("{h:?}"))
                )),
                _ => {}
            }
        }
    }
    CaseResult {
        name: case.name.clone(),
        at,
        passed: failures.is_empty(),
        failures,
        got,
    }
}

/// The headers the upstream would get: the request's, less what the gateway
/// strips (spoofable identity headers, hop-by-hop headers, the
/// `Authorization` header unless `forward_authorization`), plus the identity
/// headers. Nothing when the request is refused.
fn forwarded_headers(snap: &Snapshot, mut h: HeaderMap, x: &Explanation) -> HeaderMap {
    if !x.forwards() {
        return HeaderMap::new();
    }
    snap.strip.strip(&mut h);
    crate::proxy::headers::remove_hop_by_hop(&mut h);
    if !snap.config.identity.forward_authorization {
        h.remove(http::header::AUTHORIZATION);
        let route = snap.config.routes.iter().find(|r| Some(&r.name) == x.route.as_ref());
        if let Some(crate::config::Access::Protected(rule)) = route.map(|r| &r.access) {
            for source in &rule.token_sources {
                if let crate::config::TokenSource::Cookie(name) = source {
                    crate::auth::credential::strip_cookie(&mut h, name);
                }
            }
        }
    }
    for (name, value) in &x.identity_headers {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            h.insert(n, v);
        }
    }
    h
}
