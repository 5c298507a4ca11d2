//! Authentication and authorisation (docs/request-lifecycle.md, steps 8 and 9): the bearer token from
//! the request, the provider that must vouch for it, its signature and claims,
//! then the route's scope requirement.

pub mod cache;
pub mod credential;
pub mod introspection;
pub mod jwks;
pub mod keys;
pub mod scopes;
pub mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::header::{HeaderMap, AUTHORIZATION};
use serde_json::{Map, Value};

use crate::config::{AuthRule, ConfigError, Provider};
use crate::error::GatewayError;
use cache::{CachedToken, TokenCache};
use keys::KeySet;
use token::Rejection;

/// A provider at run time: its configuration and its current keys. Shared
/// across reloads while the provider's configuration is unchanged, so keys
/// already loaded or fetched are kept.
#[derive(Debug)]
pub struct ProviderState {
    pub config: Provider,
    /// `None` until the keys are available (remote sources before their first fetch).
    pub keys: ArcSwapOption<KeySet>,
    /// Bumped each time new keys are installed.
    generation: AtomicU64,
    /// How remote keys are fetched; `None` for keys on disk or in the environment.
    pub remote: Option<jwks::RemoteKeys>,
    /// How opaque tokens are introspected, with the cache of answers; kept
    /// across reloads that leave the provider unchanged.
    pub introspection: Option<Arc<introspection::Introspector>>,
}

impl ProviderState {
    /// Load local key material now; remote sources start empty and are filled
    /// by [`ProviderState::start_refresher`] (never by `check`).
    pub fn new(config: Provider) -> Result<Self, ConfigError> {
        let keys = keys::load_local(&config)?;
        let remote = if config.keys.is_remote() {
            Some(jwks::RemoteKeys::new(&config)?)
        } else {
            None
        };
        let introspection = introspection::Introspector::new(&config)?.map(Arc::new);
        Ok(ProviderState {
            config,
            keys: ArcSwapOption::from(keys.map(Arc::new)),
            generation: AtomicU64::new(0),
            remote,
            introspection,
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn install(&self, keys: KeySet) {
        self.keys.store(Some(Arc::new(keys)));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether the provider can verify tokens now.
    pub fn ready(&self) -> bool {
        self.keys.load().is_some()
    }
}

/// What a verified token says about the caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub subject: Option<Value>,
    pub scopes: Vec<String>,
    pub claims: Map<String, Value>,
    /// Unix seconds: the token's `exp` plus the provider's leeway.
    pub valid_until: f64,
}

impl Caller {
    /// The caller as a provider's settings read a verified token's claims.
    pub(crate) fn from_claims(claims: Map<String, Value>, provider: &Provider) -> Self {
        let valid_until = claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0) + provider.leeway.as_secs_f64();
        Caller {
            subject: claims.get(&provider.subject_claim).cloned(),
            scopes: scopes::collect(&claims, &provider.scope_claims),
            claims,
            valid_until,
        }
    }
}

/// The provider that must verify a token: the one whose issuer is the
/// token's unverified `iss` (none: the provider without an issuer), among
/// those the route allows. The unverified `iss` only chooses; it proves nothing.
pub(crate) fn select_provider<'p>(
    providers: &'p [Arc<ProviderState>],
    rule: &AuthRule,
    unverified: &token::Unverified<'_>,
) -> Result<(usize, &'p Arc<ProviderState>), GatewayError> {
    let issuer = unverified.issuer().map_err(GatewayError::InvalidToken)?;
    rule.providers
        .iter()
        .map(|&i| (i, &providers[i]))
        .find(|(_, p)| p.config.issuer.as_deref() == issuer)
        .ok_or(GatewayError::InvalidToken(Rejection::Issuer))
}

/// The bearer token of a request: `Ok(None)` when there is none.
/// Two `Authorization` headers, or a `Bearer` credential that is not a
/// well-formed `b64token` (RFC 6750 §2.1), is a bad request.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest("Send exactly one Authorization header."));
    }
    let malformed = GatewayError::BadRequest("The Authorization header is not a valid Bearer credential.");
    // Bytes, not `to_str`: the token is scanned once, by the b64token table
    // (which admits ASCII only), rather than once more for visible ASCII.
    let bytes = value.as_bytes();
    let (scheme, credentials) = match bytes.iter().position(|&b| b == b' ') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        // Another scheme (Basic, ...) carries no bearer token, but must still
        // be a well-formed header value.
        return value.to_str().map(|_| None).map_err(|_| malformed);
    }
    let start = credentials.iter().position(|&b| b != b' ').unwrap_or(credentials.len());
    let token = &credentials[start..];
    // Every byte looked up, without a branch per byte (tokens are valid, and
    // the compiler unrolls a loop with no early exit).
    let well_formed = token.iter().fold(true, |ok, &b| ok & B64TOKEN[usize::from(b)]);
    if token.is_empty() || !well_formed {
        return Err(malformed);
    }
    std::str::from_utf8(token).map(Some).map_err(|_| malformed)
}

/// The bytes of an RFC 6750 `b64token`: `ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/"`
/// and trailing `=`. A table, because every request to a protected route scans
/// its whole token (hundreds of bytes) before anything else.
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
        b += 1;
    }
    table
};

/// Authenticate a request's token (`None`: it has none) for a protected
/// route and check its scopes.
pub async fn authenticate(
    providers: &[Arc<ProviderState>],
    cache: &TokenCache,
    rule: &AuthRule,
    token: Option<&str>,
) -> Result<Arc<Caller>, GatewayError> {
    let identity = verify_token(providers, cache, rule, token).await?;
    authorize(rule, &identity)?;
    Ok(identity)
}

/// Verify the token alone: signature, claims, issuer allowed by the route.
pub(crate) async fn verify_token(
    providers: &[Arc<ProviderState>],
    cache: &TokenCache,
    rule: &AuthRule,
    token: Option<&str>,
) -> Result<Arc<Caller>, GatewayError> {
    let result = verify(providers, cache, rule, token).await;
    if let Err(e) = &result {
        count_failure(e);
    }
    result
}

/// The route's scope requirement against a verified token's scopes.
pub(crate) fn authorize(rule: &AuthRule, identity: &Caller) -> Result<(), GatewayError> {
    let result = scopes::authorize(rule, &identity.scopes).map_err(GatewayError::InsufficientScope);
    if let Err(e) = &result {
        count_failure(e);
    }
    result
}

/// The reason code an authentication or authorisation failure is counted
/// and logged under (one vocabulary: docs/errors.md).
pub(crate) fn failure_reason(e: &GatewayError) -> &'static str {
    denial_reason(e).unwrap_or("malformed_token")
}

/// The reason code of a refusal by the route's policy (authentication,
/// authorisation, source address, CORS, rate limits), or `None` for an
/// error that is not a policy's decision (a bad path, an upstream failure).
pub(crate) fn denial_reason(e: &GatewayError) -> Option<&'static str> {
    Some(match e {
        GatewayError::MissingToken => "no_token",
        GatewayError::InvalidToken(r) => r.reason(),
        GatewayError::InsufficientScope(_) => "missing_scope",
        GatewayError::KeysUnavailable => "keys_unavailable",
        GatewayError::IntrospectionUnavailable => "introspection_unavailable",
        GatewayError::RevocationsNotLoaded => "revocations_not_loaded",
        GatewayError::ClaimsDenied(_) => "claims",
        GatewayError::SourceDenied => "source_ip",
        GatewayError::CorsRejected => "cors_rejected",
        GatewayError::RateLimited(_) => "rate_limited",
        _ => return None,
    })
}

fn count_failure(e: &GatewayError) {
    crate::metrics::auth_failure(failure_reason(e));
}

async fn verify(
    providers: &[Arc<ProviderState>],
    cache: &TokenCache,
    rule: &AuthRule,
    token: Option<&str>,
) -> Result<Arc<Caller>, GatewayError> {
    let token = token.ok_or(GatewayError::MissingToken)?;
    let now = crate::clock::unix_now();
    let key = TokenCache::key(token);
    if let Some(hit) = cache.get(&key, providers, now) {
        // A hit saves the signature check only: the route's own rules still apply.
        if !rule.providers.contains(&hit.provider) {
            return Err(GatewayError::InvalidToken(Rejection::Issuer));
        }
        return Ok(hit.identity.clone());
    }
    let span = crate::telemetry::child("verify token", crate::telemetry::Kind::Internal);
    // Run in the span's context: a key refetch inside is its child.
    let work = verify_uncached(providers, cache, rule, token, key, now);
    let result = match &span {
        Some(span) => crate::telemetry::within(span.span(), work).await,
        None => work.await,
    };
    if let (Some(span), Err(e)) = (&span, &result) {
        span.fail(failure_reason(e));
    }
    result
}

/// A token the cache does not hold: verified (or introspected) and cached.
async fn verify_uncached(
    providers: &[Arc<ProviderState>],
    cache: &TokenCache,
    rule: &AuthRule,
    token: &str,
    key: cache::CacheKey,
    now: f64,
) -> Result<Arc<Caller>, GatewayError> {
    let invalid = GatewayError::InvalidToken;
    let unverified = match token::decode(token) {
        Ok(unverified) => unverified,
        Err(_) if !token::is_jws(token) => return introspect(providers, rule, token, key, now).await,
        Err(rejection) => return Err(invalid(rejection)),
    };
    let (index, provider) = select_provider(providers, rule, &unverified)?;
    let mut generation = provider.generation();
    let keys = provider.keys.load_full().ok_or(GatewayError::KeysUnavailable)?;
    let verified = match unverified.verify(&provider.config, &keys, now) {
        // A `kid` we have never seen may be a key the provider just rotated in.
        Err(Rejection::UnknownKey) if provider.remote.is_some() && provider.refetch_for_unknown_kid().await => {
            generation = provider.generation();
            let keys = provider.keys.load_full().ok_or(GatewayError::KeysUnavailable)?;
            unverified.verify(&provider.config, &keys, now)
        }
        other => other,
    };
    verified.map_err(invalid)?;
    let identity = Arc::new(Caller::from_claims(unverified.into_claims(), &provider.config));
    // Cached before the scope check: the token is valid whatever this route wants.
    cache.insert(
        key,
        CachedToken {
            provider: index,
            generation,
            valid_until: identity.valid_until,
            identity: identity.clone(),
        },
        now,
    );
    Ok(identity)
}

/// The one provider the route allows that introspects opaque tokens.
pub(crate) fn introspecting_provider<'p>(
    providers: &'p [Arc<ProviderState>],
    rule: &AuthRule,
) -> Option<(&'p Arc<ProviderState>, &'p introspection::Introspector)> {
    rule.providers
        .iter()
        .map(|&i| &providers[i])
        .find_map(|p| Some((p, p.introspection.as_deref()?)))
}

/// An opaque token: asked of the one introspecting provider the route
/// allows (none: refused without a call, as a token no provider can read).
async fn introspect(
    providers: &[Arc<ProviderState>],
    rule: &AuthRule,
    token: &str,
    key: cache::CacheKey,
    now: f64,
) -> Result<Arc<Caller>, GatewayError> {
    let Some((provider, introspector)) = introspecting_provider(providers, rule) else {
        return Err(GatewayError::InvalidToken(Rejection::Malformed));
    };
    let answer = introspector
        .answer(&provider.config, token, key, now)
        .await
        .map_err(|_| GatewayError::IntrospectionUnavailable)?;
    answer.at(now).map_err(GatewayError::InvalidToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer_token(&headers(&[])).unwrap(), None);
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])).unwrap(),
            Some("abc.def.ghi")
        );
        assert_eq!(bearer_token(&headers(&["bearer abc"])).unwrap(), Some("abc"));
        assert_eq!(bearer_token(&headers(&["BEARER  abc="])).unwrap(), Some("abc="));
        assert_eq!(bearer_token(&headers(&["Basic dXNlcjpwYXNz"])).unwrap(), None);
        for bad in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a,b",
            "Bearer \"a\"",
            "Bearer !abc",
            "Bearer abc!",
        ] {
            assert!(bearer_token(&headers(&[bad])).is_err(), "{bad:?}");
        }
        assert!(bearer_token(&headers(&["Bearer a", "Bearer b"])).is_err());
    }
}
