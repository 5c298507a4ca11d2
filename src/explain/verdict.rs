//! The token's part of an explanation: where it was found, its header and
//! claims, each verification check, scopes held against required, and every
//! claims condition with what the token holds there.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::Builder;
use crate::auth::token::{self, VERIFY_STEPS};
use crate::auth::{credential, Caller};
use crate::config::{AuthRule, TokenSource};
use crate::error::GatewayError;
use crate::snapshot::Snapshot;

/// The token's part, step by step: where it was found, its header and
/// claims, each verification check, scopes held against required.
pub(super) async fn check_token(
    b: &mut Builder,
    snap: &Snapshot,
    route: &crate::config::Route,
    rule: &AuthRule,
    parts: &http::request::Parts,
    host: Option<&http::HeaderValue>,
    facts: &crate::policy::Facts<'_>,
) -> Result<Arc<Caller>, (GatewayError, Option<Arc<Caller>>)> {
    let identity = verified(b, snap, route, rule, parts, host)
        .await
        .map_err(|e| (e, None))?;
    let identity = Arc::new(identity);
    policy(b, rule, &identity, facts).map_err(|e| (e, Some(identity.clone())))?;
    Ok(identity)
}

/// The token found, verified (or introspected) and not refused by its origin.
async fn verified(
    b: &mut Builder,
    snap: &Snapshot,
    route: &crate::config::Route,
    rule: &AuthRule,
    parts: &http::request::Parts,
    host: Option<&http::HeaderValue>,
) -> Result<Caller, GatewayError> {
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
    let identity = if token::is_jws(found.token) {
        verify_jwt(b, snap, rule, found.token, &source)?
    } else {
        introspect(b, snap, rule, &source, found.token).await?
    };
    Ok(identity)
}

/// The route's scopes and claims conditions against a verified identity,
/// each condition with what the token holds there.
fn policy(
    b: &mut Builder,
    rule: &AuthRule,
    identity: &Caller,
    facts: &crate::policy::Facts<'_>,
) -> Result<(), GatewayError> {
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
    Ok(())
}

/// A JWT's checks, each as a step: header, claims as written, the provider
/// its issuer selects, then every verification step in order.
fn verify_jwt(
    b: &mut Builder,
    snap: &Snapshot,
    rule: &AuthRule,
    token: &str,
    source: &str,
) -> Result<Caller, GatewayError> {
    let unverified = token::decode(token).map_err(|r| {
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
    Ok(Caller::from_claims(
        unverified.unverified_claims().clone(),
        &provider.config,
    ))
}

/// An opaque token: the route's introspecting provider is asked (as the
/// gateway would ask it, through its cache), and the answer's members that
/// decide are shown.
async fn introspect(
    b: &mut Builder,
    snap: &Snapshot,
    rule: &AuthRule,
    source: &str,
    token: &str,
) -> Result<Caller, GatewayError> {
    let Some((provider, introspector)) = crate::auth::introspecting_provider(&snap.providers, rule) else {
        b.add(
            "token",
            "fail",
            format!("from {source}: not a JWT, and no provider allowed on this route introspects opaque tokens"),
        );
        return Err(GatewayError::InvalidToken(token::Rejection::Malformed));
    };
    b.add("token", "info", format!("from {source}: opaque (not a JWT)"));
    b.add("provider", "pass", provider.config.name.clone());
    let now = crate::clock::unix_now();
    let key = crate::auth::cache::TokenCache::key(token);
    let answer = introspector
        .answer(&provider.config, token, key, now)
        .await
        .map_err(|e| {
            b.add("introspect", "fail", e.to_string());
            GatewayError::IntrospectionUnavailable
        })?;
    match answer.at(now) {
        Ok(caller) => {
            let m = &caller.claims;
            let time = |name: &str| m.get(name).and_then(Value::as_f64).map_or("-".into(), date);
            b.add(
                "introspect",
                "pass",
                format!(
                    "active: iss={} sub={} aud={} client_id={} token_type={} exp={} nbf={}",
                    claim_text(m.get("iss")),
                    claim_text(m.get("sub")),
                    claim_text(m.get("aud")),
                    claim_text(m.get("client_id")),
                    claim_text(m.get("token_type")),
                    time("exp"),
                    time("nbf")
                ),
            );
            b.add(
                "revoked",
                "skipped",
                "revocations live in the shared store; explain does not read it",
            );
            Ok((*caller).clone())
        }
        Err(r) => {
            b.add("introspect", "fail", r.description());
            Err(GatewayError::InvalidToken(r))
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
