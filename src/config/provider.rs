//! Validation of `providers`: one key source each, an algorithm allowlist that
//! fits it, and the settings that decide which tokens are accepted.

use std::time::Duration;

use super::ctx::Ctx;
use super::raw::RawProvider;
use super::{ConfigError, Field, KeySource, Provider};

/// JWS algorithms the gateway can verify.
pub const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Check a URL the gateway will fetch keys from: https, or http on loopback only.
pub(super) fn check_fetch_url(ctx: &mut Ctx, field: &Field, url: &str) -> Result<(), ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| ctx.err(field, format!("{url:?} is not a valid URL")))?;
    let host = uri
        .host()
        .ok_or_else(|| ctx.err(field, format!("{url:?} has no host")))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback_host(host) => {
            ctx.warnings.push(format!(
                "{field}: {url:?} uses plain http; accepted only because the host is loopback"
            ));
            Ok(())
        }
        Some("http") => Err(ctx.err(
            field,
            format!(
                "{url:?} uses plain http; keys must be fetched over https (http is allowed only for loopback hosts)"
            ),
        )),
        _ => Err(ctx.err(field, format!("{url:?} must be an https:// URL"))),
    }
}

pub(super) fn validate_provider(ctx: &mut Ctx, name: String, raw: RawProvider) -> Result<Provider, ConfigError> {
    let keys = key_source(ctx, &name, &raw)?;
    let algorithms = algorithms(ctx, &name, raw.algorithms.clone(), &keys)?;
    rest_of_provider(ctx, name, raw, keys, algorithms)
}

/// Exactly one key source, each checked where it is written.
fn key_source(ctx: &mut Ctx, name: &str, raw: &RawProvider) -> Result<KeySource, ConfigError> {
    let at = Field::key("providers").at(name);
    let field = |f: &str| at.at(f);
    let mut sources = Vec::new();
    if raw.discovery {
        let issuer = raw.issuer.as_deref().ok_or_else(|| {
            ctx.err(
                field("discovery"),
                "discovery needs an `issuer` to find the discovery document",
            )
        })?;
        check_fetch_url(ctx, &field("issuer"), issuer)?;
        sources.push(KeySource::Discovery);
    }
    if let Some(uri) = &raw.jwks_uri {
        check_fetch_url(ctx, &field("jwks_uri"), uri)?;
        sources.push(KeySource::JwksUri(uri.clone()));
    }
    if let Some(p) = &raw.jwks_file {
        sources.push(KeySource::JwksFile(ctx.existing_file(field("jwks_file"), p)?));
    }
    if let Some(p) = &raw.public_key_file {
        sources.push(KeySource::PublicKeyFile(
            ctx.existing_file(field("public_key_file"), p)?,
        ));
    }
    if let Some(var) = &raw.secret_env {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => {}
            _ => {
                return Err(ctx.err(
                    field("secret_env"),
                    format!(
                        "the environment variable {var} is not set or is empty; export it before starting the gateway"
                    ),
                ))
            }
        }
        sources.push(KeySource::SecretEnv(var.clone()));
    }
    if let Some(p) = &raw.secret_file {
        sources.push(KeySource::SecretFile(ctx.existing_file(field("secret_file"), p)?));
    }
    let keys = match sources.len() {
        1 => sources.remove(0),
        // Opaque tokens only: the provider answers through introspection.
        0 if raw.introspection.is_some() => KeySource::IntrospectionOnly,
        0 => return Err(ctx.err(&at, "no key source; set exactly one of discovery, jwks_uri, jwks_file, public_key_file, secret_env, secret_file (or an `introspection` block for opaque tokens)")),
        _ => return Err(ctx.err(&at, "more than one key source; set exactly one of discovery, jwks_uri, jwks_file, public_key_file, secret_env, secret_file")),
    };
    Ok(keys)
}

/// The `algorithms` allowlist: never `none`, never HMAC mixed with
/// asymmetric algorithms (key confusion), and fitting the key source.
fn algorithms(
    ctx: &Ctx,
    name: &str,
    raw: Option<Vec<String>>,
    keys: &KeySource,
) -> Result<Option<Vec<String>>, ConfigError> {
    let at = Field::key("providers").at(name);
    let field = |f: &str| at.at(f);
    let algorithms = match raw {
        None => None,
        Some(list) => {
            if list.is_empty() {
                return Err(ctx.err(
                    field("algorithms"),
                    "the list is empty; leave it out to allow what the keys support",
                ));
            }
            let mut algs: Vec<String> = Vec::new();
            for a in list {
                if a.eq_ignore_ascii_case("none") {
                    return Err(ctx.err(
                        field("algorithms"),
                        "`none` is never allowed: unsigned tokens prove nothing",
                    ));
                }
                let known = ALGORITHMS.iter().find(|k| k.eq_ignore_ascii_case(&a)).ok_or_else(|| {
                    ctx.err(
                        field("algorithms"),
                        format!("unknown algorithm {a:?}; supported: {}", ALGORITHMS.join(", ")),
                    )
                })?;
                if !algs.iter().any(|x| x == known) {
                    algs.push((*known).to_string());
                }
            }
            let hmac = algs.iter().filter(|a| a.starts_with("HS")).count();
            if hmac != 0 && hmac != algs.len() {
                return Err(ctx.err(
                    field("algorithms"),
                    "mixes HMAC (HS*) with asymmetric algorithms; that enables key-confusion attacks, use one family",
                ));
            }
            if (hmac != 0) != keys.is_hmac() {
                let want = if keys.is_hmac() {
                    "HS256, HS384 or HS512"
                } else {
                    "asymmetric algorithms (RS*, PS*, ES*, EdDSA)"
                };
                return Err(ctx.err(
                    field("algorithms"),
                    format!("does not fit the key source; this provider's keys work with {want}"),
                ));
            }
            Some(algs)
        }
    };
    Ok(algorithms)
}

/// Everything else a provider says: audiences, CA, scope claims, timing.
fn rest_of_provider(
    ctx: &mut Ctx,
    name: String,
    raw: RawProvider,
    keys: KeySource,
    algorithms: Option<Vec<String>>,
) -> Result<Provider, ConfigError> {
    let at = Field::key("providers").at(name.as_str());
    let field = |f: &str| at.at(f);
    let secret_len = match &keys {
        KeySource::SecretEnv(var) => std::env::var(var).map(|v| v.len()).ok(),
        KeySource::SecretFile(path) => super::read_secret_file(path).map(|s| s.len()).ok(),
        _ => None,
    };
    if secret_len.is_some_and(|n| n < 32) {
        ctx.warnings.push(format!(
            "providers.{name}: the HMAC secret is shorter than 32 bytes; short secrets can be brute-forced offline from any token"
        ));
    }
    if raw.audiences.is_none() {
        ctx.warnings.push(format!(
            "{at}: no `audiences`, so the `aud` claim is not checked; any token from this issuer is accepted"
        ));
    }
    if let Some(a) = &raw.audiences {
        if a.is_empty() {
            return Err(ctx.err(
                field("audiences"),
                "the list is empty, so no token could match; list at least one audience or leave the key out",
            ));
        }
    }
    if let Some(ca) = &raw.ca_file {
        ctx.existing_file(field("ca_file"), ca)?;
    }
    let scope_claims = raw
        .scope_claims
        .unwrap_or_else(|| vec!["scope".into(), "scp".into(), "scopes".into()]);
    if scope_claims.is_empty() {
        return Err(ctx.err(
            field("scope_claims"),
            "the list is empty; leave it out for the default [scope, scp, scopes]",
        ));
    }
    let introspection = match raw.introspection {
        Some(block) => Some(super::introspection::validate(ctx, &name, raw.discovery, block)?),
        None => None,
    };
    let jwks_refresh = raw.jwks_refresh.map_or(Duration::from_secs(600), |d| d.0);
    if jwks_refresh < Duration::from_secs(1) {
        return Err(ctx.err(field("jwks_refresh"), "must be at least 1s"));
    }
    Ok(Provider {
        issuer: raw.issuer,
        audiences: raw.audiences,
        keys,
        ca_file: raw.ca_file.map(|p| ctx.resolve(&p)),
        algorithms,
        leeway: raw.leeway.map_or(Duration::from_secs(30), |d| d.0),
        jwks_refresh,
        scope_claims,
        subject_claim: raw.subject_claim.unwrap_or_else(|| "sub".into()),
        typ: raw.typ,
        introspection,
        name,
    })
}
