//! Opaque tokens (RFC 7662): the provider is asked whether a token is active,
//! and its answer is cached by SHA-256 of the token for `cache_ttl` (never
//! past the token's `exp`), inactive answers for `negative_cache_ttl`.
//!
//! The cache holds answers, never decisions: the route's providers, scopes
//! and claims are checked on every request, hits included (Ory Oathkeeper's
//! CVE-2021-32701 was a cache that skipped them). Each provider has a cache
//! of its own, so two endpoints never share an entry (CVE-2026-33496).
//! Concurrent requests with the same new token make one call; a failed call
//! is never cached (the next request asks again).

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use base64::Engine;
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{Map, Value};
use tokio::sync::{OnceCell, Semaphore};

use super::cache::CacheKey;
use super::Caller;
use crate::config::{ClientAuth, ConfigError, Provider};
use crate::error::Rejection;

/// Answers each provider's cache keeps at most.
pub(crate) const MAX_ENTRIES: usize = 100_000;
/// Calls in flight to one provider at most; more wait (within the timeout).
const MAX_CONCURRENT_CALLS: usize = 64;
/// Largest introspection answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The provider's answer about one token, as checked against the provider's
/// settings. Times are Unix seconds.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The caller, or why the token is refused (`inactive`, wrong issuer, ...).
    pub verdict: Result<Arc<Caller>, Rejection>,
    /// The answer's `nbf` plus leeway: refused before then.
    not_before: f64,
    /// When the cache stops reusing this answer.
    fresh_until: f64,
}

impl Answer {
    /// The verdict at `now`.
    pub(crate) fn at(&self, now: f64) -> Result<Arc<Caller>, Rejection> {
        let caller = self.verdict.clone()?;
        if now < self.not_before {
            return Err(Rejection::NotYetValid);
        }
        if now >= caller.valid_until {
            return Err(Rejection::Expired);
        }
        Ok(caller)
    }
}

/// Why a call gave no answer. The text names the endpoint and what went
/// wrong, never the token or the secret.
#[derive(Debug, thiserror::Error)]
#[error("introspection at {endpoint}: {reason}")]
pub struct CallError {
    endpoint: String,
    reason: String,
}

/// One token's call, shared by the requests that arrive while it runs.
/// Holds `None` when the call failed.
#[derive(Debug, Default)]
struct Flight(OnceCell<Option<Answer>>);

impl Flight {
    /// Whether a request may use this entry: a call still running, or a
    /// fresh answer. A failed call or a stale answer is replaced.
    fn usable(&self, now: f64) -> bool {
        match self.0.get() {
            None => true,
            Some(Some(answer)) => now < answer.fresh_until,
            Some(None) => false,
        }
    }
}

/// The introspecting side of a provider.
pub struct Introspector {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The configured endpoint, or the one discovery found (`None` until then).
    endpoint: ArcSwapOption<String>,
    calls: Semaphore,
    entries: DashMap<CacheKey, Arc<Flight>>,
    /// The `Authorization: Basic` value, for `client_secret_basic`.
    basic: Option<String>,
    metrics: crate::metrics::IntrospectionMetrics,
    /// What the provider's `ca_file` held when the client was built.
    pub ca_digest: Option<[u8; 32]>,
    /// Set by `portcullis test`: never call the endpoint; answers come from the cases.
    offline: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.endpoint.load())
            .finish_non_exhaustive()
    }
}

impl Introspector {
    pub(crate) fn new(provider: &Provider) -> Result<Option<Self>, ConfigError> {
        let Some(settings) = &provider.introspection else {
            return Ok(None);
        };
        // RFC 6749 §2.3.1: id and secret are form-encoded before base64.
        let basic = (settings.auth_method == ClientAuth::Basic).then(|| {
            let pair = format!(
                "{}:{}",
                form_encode(&settings.client_id),
                form_encode(settings.client_secret.expose())
            );
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        });
        Ok(Some(Introspector {
            client: super::jwks::https_client(provider, settings.timeout)?,
            endpoint: ArcSwapOption::from(settings.endpoint.clone().map(Arc::new)),
            calls: Semaphore::new(MAX_CONCURRENT_CALLS),
            entries: DashMap::new(),
            basic,
            metrics: crate::metrics::IntrospectionMetrics::new(&provider.name),
            ca_digest: crate::tls::ca_digest(provider.ca_file.as_deref()),
            offline: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// The endpoint discovery found, used when none is configured.
    pub(crate) fn discovered(&self, provider: &Provider, endpoint: Option<String>) {
        let configured = provider.introspection.as_ref().is_some_and(|i| i.endpoint.is_some());
        if !configured {
            self.endpoint.store(endpoint.map(Arc::new));
        }
    }

    /// Answers held now (for tests and `explain`).
    pub fn cached(&self) -> usize {
        self.entries.len()
    }

    /// `portcullis test`: no call is ever made; only [`Introspector::prime`]d
    /// answers exist, and a token without one gets the endpoint-failure answer.
    pub(crate) fn go_offline(&self) {
        self.offline.store(true, std::sync::atomic::Ordering::Relaxed);
        self.entries.clear();
    }

    /// Hold `json` as the provider's answer about the token with this key
    /// (a test case's `introspection:`), in place of any other.
    pub(crate) fn prime(&self, provider: &Provider, key: CacheKey, json: &[u8]) -> Result<(), String> {
        let mut answer = parse(json, provider, crate::clock::unix_now())?;
        answer.fresh_until = f64::INFINITY;
        self.entries.clear();
        self.entries
            .insert(key, Arc::new(Flight(OnceCell::new_with(Some(Some(answer))))));
        Ok(())
    }

    /// The provider's answer about `token`: from the cache while fresh, else
    /// from one call shared with concurrent requests for the same token.
    /// `Err` when the endpoint gave no usable answer.
    pub(crate) async fn answer(
        &self,
        provider: &Provider,
        token: &str,
        key: CacheKey,
        now: f64,
    ) -> Result<Answer, CallError> {
        if let Some(flight) = self.entries.get(&key) {
            if let Some(Some(answer)) = flight.0.get() {
                if now < answer.fresh_until {
                    self.metrics.cache_hit();
                    return Ok(answer.clone());
                }
            }
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.make_room(now);
        }
        let flight = match self.entries.entry(key) {
            Entry::Occupied(mut e) if !e.get().usable(now) => {
                let flight = Arc::new(Flight::default());
                e.insert(flight.clone());
                flight
            }
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => e.insert(Arc::new(Flight::default())).clone(),
        };
        let mut failure = None;
        let outcome = flight
            .0
            .get_or_init(|| async {
                match self.call(provider, token).await {
                    Ok(answer) => Some(answer),
                    Err(e) => {
                        failure = Some(e);
                        None
                    }
                }
            })
            .await;
        match outcome {
            Some(answer) => {
                // Not to be reused (`cache_ttl: 0s`, or the token expires
                // now): the entry only served the requests that shared the call.
                if crate::clock::unix_now() >= answer.fresh_until {
                    self.entries.remove_if(&key, |_, f| Arc::ptr_eq(f, &flight));
                }
                Ok(answer.clone())
            }
            None => {
                // Not cached: the next request calls again.
                self.entries.remove_if(&key, |_, f| Arc::ptr_eq(f, &flight));
                Err(failure.unwrap_or_else(|| CallError {
                    endpoint: self.endpoint_text(),
                    reason: "the shared call for this token failed".into(),
                }))
            }
        }
    }

    fn endpoint_text(&self) -> String {
        self.endpoint
            .load()
            .as_deref()
            .map_or_else(|| "(not discovered yet)".into(), |e| e.to_string())
    }

    /// Drop stale and failed entries; if too few go, about half of the rest.
    fn make_room(&self, now: f64) {
        self.entries.retain(|_, f| f.usable(now));
        if self.entries.len() >= MAX_ENTRIES * 3 / 4 {
            let bit = (now as u64 & 1) as u8;
            self.entries.retain(|k, _| k[0] & 1 != bit);
        }
    }

    /// One call to the endpoint, counted and timed.
    async fn call(&self, provider: &Provider, token: &str) -> Result<Answer, CallError> {
        let span = crate::telemetry::child("introspect token", crate::telemetry::Kind::Client);
        let started = Instant::now();
        let result = self.ask(provider, token).await;
        let elapsed = started.elapsed();
        let answer = result.and_then(|json| {
            parse(&json, provider, crate::clock::unix_now()).map_err(|reason| CallError {
                endpoint: self.endpoint_text(),
                reason,
            })
        });
        let outcome = match &answer {
            Ok(a) if a.verdict.as_ref().err() == Some(&Rejection::Inactive) => "inactive",
            Ok(_) => "active",
            Err(e) => {
                tracing::warn!(provider = %provider.name, error = %e, "token introspection failed");
                "error"
            }
        };
        self.metrics.call(outcome, elapsed);
        if let Some(span) = &span {
            span.set("portcullis.provider", provider.name.clone());
            span.set("portcullis.result", outcome);
            if outcome == "error" {
                span.fail("introspection_unavailable");
            }
        }
        answer
    }

    /// The HTTP exchange: the answer's JSON body, or why there is none.
    async fn ask(&self, provider: &Provider, token: &str) -> Result<Bytes, CallError> {
        let endpoint = self.endpoint.load_full();
        let fail = |reason: String| CallError {
            endpoint: endpoint
                .as_deref()
                .map_or_else(|| "(not discovered yet)".into(), |e| e.to_string()),
            reason,
        };
        if self.offline.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(fail(
                "not called: `portcullis test` runs offline; give the case an `introspection:` answer".into(),
            ));
        }
        let Some(url) = endpoint.as_deref() else {
            return Err(fail(
                "the discovery document has not been fetched, or names no introspection_endpoint".into(),
            ));
        };
        let Some(settings) = &provider.introspection else {
            return Err(fail("the provider does not introspect".into()));
        };
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token)
                .append_pair("token_type_hint", "access_token");
            if settings.auth_method == ClientAuth::Post {
                form.append_pair("client_id", &settings.client_id)
                    .append_pair("client_secret", settings.client_secret.expose());
            }
            form.finish()
        };
        let mut req = Request::post(url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("portcullis/", env!("CARGO_PKG_VERSION")));
        if let Some(basic) = &self.basic {
            req = req.header(header::AUTHORIZATION, basic);
        }
        let req = req
            .body(Full::new(Bytes::from(form)))
            .map_err(|_| fail("not a valid URL".into()))?;
        let exchange = async {
            let _permit = self.calls.acquire().await.map_err(|_| fail("closed".into()))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| fail(format!("request failed: {}", crate::one_line(&e))))?;
            if resp.status() != StatusCode::OK {
                return Err(fail(format!("answered {} (expected 200)", resp.status())));
            }
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    fail(format!(
                        "reading the answer failed: {e} (limit {MAX_ANSWER_BYTES} bytes)"
                    ))
                })?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(settings.timeout, exchange)
            .await
            .map_err(|_| fail(format!("no answer within {:?}", settings.timeout)))?
    }
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// An answer's JSON checked against the provider (RFC 7662 §2.2): `Err` when
/// it is not an answer at all (the endpoint is then treated as failing).
pub(crate) fn parse(json: &[u8], provider: &Provider, now: f64) -> Result<Answer, String> {
    let members: Map<String, Value> =
        serde_json::from_slice(json).map_err(|_| "the answer is not a JSON object".to_string())?;
    let settings = provider.introspection.as_ref();
    let cache_ttl = settings.map_or(0.0, |s| s.cache_ttl.as_secs_f64());
    let negative_ttl = settings.map_or(0.0, |s| s.negative_cache_ttl.as_secs_f64());
    match members.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            return Ok(Answer {
                verdict: Err(Rejection::Inactive),
                not_before: f64::MIN,
                fresh_until: now + negative_ttl,
            })
        }
        _ => return Err("the answer has no boolean `active` member".into()),
    }
    let leeway = provider.leeway.as_secs_f64();
    let time = |name: &str| -> Result<Option<f64>, Rejection> {
        match members.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or(Rejection::ClaimType),
        }
    };
    let checked = (|| {
        let exp = time("exp")?;
        let nbf = time("nbf")?;
        if exp.is_some_and(|exp| now >= exp + leeway) {
            return Err(Rejection::Expired);
        }
        if let Some(issuer) = &provider.issuer {
            match members.get("iss") {
                None => {}
                Some(Value::String(iss)) if iss == issuer => {}
                Some(_) => return Err(Rejection::Issuer),
            }
        }
        if let Some(audiences) = &provider.audiences {
            let fits = |a: &Value| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a));
            let ok = match members.get("aud") {
                Some(Value::String(_)) => members.get("aud").is_some_and(fits),
                Some(Value::Array(list)) => list.iter().any(fits),
                _ => false,
            };
            if !ok {
                return Err(Rejection::Audience);
            }
        }
        if members.get("token_type").and_then(Value::as_str) == Some("refresh_token") {
            return Err(Rejection::Type);
        }
        Ok((exp, nbf))
    })();
    let (exp, nbf) = match checked {
        Ok(times) => times,
        Err(rejection) => {
            return Ok(Answer {
                verdict: Err(rejection),
                not_before: f64::MIN,
                fresh_until: now + negative_ttl,
            })
        }
    };
    let mut caller = Caller::from_claims(members, provider);
    // No `exp`: valid for as long as the provider says it is active.
    caller.valid_until = exp.map_or(f64::INFINITY, |exp| exp + leeway);
    let fresh_until = exp.map_or(now + cache_ttl, |exp| (now + cache_ttl).min(exp));
    Ok(Answer {
        verdict: Ok(Arc::new(caller)),
        not_before: nbf.map_or(f64::MIN, |nbf| nbf - leeway),
        fresh_until,
    })
}

/// How long an answer's reuse may last, for tests: `min(cache_ttl, exp − now)`.
#[cfg(test)]
fn reuse_for(answer: &Answer, now: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64((answer.fresh_until - now).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn provider() -> Provider {
        let mut p = crate::auth::token::tests::provider();
        p.introspection = Some(crate::config::Introspection {
            endpoint: Some("http://127.0.0.1:1/introspect".into()),
            client_id: "gw".into(),
            client_secret: crate::config::Secret::for_tests("s3cret"),
            secret_file: None,
            auth_method: ClientAuth::Basic,
            timeout: Duration::from_secs(1),
            cache_ttl: Duration::from_secs(300),
            negative_cache_ttl: Duration::from_secs(10),
        });
        p
    }

    fn parsed(json: &str) -> Result<Answer, String> {
        parse(json.as_bytes(), &provider(), 1_000_000.0)
    }

    #[test]
    fn not_an_answer_is_an_error() {
        for bad in ["", "[]", "{}", r#"{"active":"true"}"#, r#"{"active":1}"#, "null"] {
            assert!(parsed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inactive_is_negative_cached() {
        let a = parsed(r#"{"active":false}"#).unwrap();
        assert_eq!(a.verdict.clone().unwrap_err(), Rejection::Inactive);
        assert_eq!(reuse_for(&a, 1_000_000.0), Duration::from_secs(10));
    }

    #[test]
    fn active_answer_checked_against_the_provider() {
        let p = provider();
        let iss = p.issuer.clone().unwrap();
        let aud = p.audiences.clone().unwrap()[0].clone();
        let ok = format!(r#"{{"active":true,"sub":"alice","scope":"a b","iss":"{iss}","aud":"{aud}","exp":1000100}}"#);
        let a = parsed(&ok).unwrap();
        let caller = a.at(1_000_000.0).unwrap();
        assert_eq!(caller.scopes, vec!["a", "b"]);
        assert_eq!(caller.subject, Some(Value::from("alice")));
        // Reused until exp, not for the whole cache_ttl.
        assert_eq!(reuse_for(&a, 1_000_000.0), Duration::from_secs(100));
        let cases = [
            (r#""iss":"https://elsewhere/""#.to_string(), Rejection::Issuer),
            (format!(r#""iss":"{iss}","aud":"nope""#), Rejection::Audience),
            (format!(r#""iss":"{iss}""#), Rejection::Audience),
            (
                format!(r#""aud":["x","{aud}"],"token_type":"refresh_token""#),
                Rejection::Type,
            ),
            (format!(r#""aud":"{aud}","exp":999000"#), Rejection::Expired),
            (format!(r#""aud":"{aud}","exp":"1000100""#), Rejection::ClaimType),
        ];
        for (members, want) in cases {
            let json = format!(r#"{{"active":true,{members}}}"#);
            assert_eq!(parsed(&json).unwrap().verdict.unwrap_err(), want, "{json}");
        }
        let later = parsed(&format!(r#"{{"active":true,"aud":["x","{aud}"],"nbf":1000500}}"#)).unwrap();
        assert_eq!(later.at(1_000_000.0).unwrap_err(), Rejection::NotYetValid);
        assert!(later.at(1_000_480.0).is_ok(), "leeway applies to nbf");
        // No exp: cached for cache_ttl, and a tunnel is not closed for expiry.
        let no_exp = parsed(&format!(r#"{{"active":true,"aud":"{aud}"}}"#)).unwrap();
        assert_eq!(reuse_for(&no_exp, 1_000_000.0), Duration::from_secs(300));
        assert!(no_exp.at(1e12).unwrap().valid_until.is_infinite());
    }

    #[test]
    fn basic_credentials_are_form_encoded() {
        assert_eq!(form_encode("a b:c%"), "a+b%3Ac%25");
    }
}
