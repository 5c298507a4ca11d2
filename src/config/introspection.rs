//! A provider's `introspection` block: asking the identity provider about an
//! opaque token (RFC 7662). The client secret is read here, at load, so a
//! reload picks up a rotated secret and `check` finds a missing one.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::ctx::Ctx;
use super::raw::Dur;
use super::{ConfigError, Field};

/// How the gateway authenticates to the introspection endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum ClientAuth {
    /// HTTP Basic with the URL-encoded client id and secret.
    #[default]
    #[serde(rename = "client_secret_basic")]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    #[serde(rename = "client_secret_post")]
    Post,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntrospection {
    /// The RFC 7662 endpoint; left out, the discovery document's
    /// `introspection_endpoint` (needs `discovery: true`).
    pub endpoint: Option<String>,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub auth_method: ClientAuth,
    pub timeout: Option<Dur>,
    pub cache_ttl: Option<Dur>,
    pub negative_cache_ttl: Option<Dur>,
}

/// A secret that never shows in `Debug` output, logs or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub(crate) fn for_tests(secret: &str) -> Self {
        Secret(secret.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    /// `None`: taken from the discovery document.
    pub endpoint: Option<String>,
    pub client_id: String,
    pub client_secret: Secret,
    /// Where the secret was read from (`client_secret_file`), for `reload.watch`.
    pub secret_file: Option<PathBuf>,
    pub auth_method: ClientAuth,
    pub timeout: Duration,
    /// Upper bound on how long an active answer is reused (never past its `exp`).
    pub cache_ttl: Duration,
    /// How long an `"active": false` answer is reused.
    pub negative_cache_ttl: Duration,
}

pub(super) fn validate(
    ctx: &mut Ctx,
    provider: &str,
    discovery: bool,
    raw: RawIntrospection,
) -> Result<Introspection, ConfigError> {
    let at = Field::key("providers").at(provider).at("introspection");
    let field = |f: &str| at.at(f);
    match &raw.endpoint {
        Some(url) => super::provider::check_fetch_url(ctx, &field("endpoint"), url)?,
        None if discovery => {}
        None => {
            return Err(ctx.err(
                field("endpoint"),
                "missing; give the introspection endpoint's URL, or set `discovery: true` on the provider to take it from the discovery document",
            ))
        }
    }
    if raw.client_id.is_empty() || raw.client_id.chars().any(char::is_control) {
        return Err(ctx.err(
            field("client_id"),
            "must be a non-empty string without control characters",
        ));
    }
    let mut secret_file = None;
    let secret = match (&raw.client_secret_file, &raw.client_secret_env) {
        (Some(path), None) => {
            let path = ctx.existing_file(field("client_secret_file"), path)?;
            secret_file = Some(path.clone());
            let bytes = super::read_secret_file(&path).map_err(|e| {
                ctx.err(
                    field("client_secret_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            String::from_utf8(bytes).map_err(|_| {
                ctx.err(
                    field("client_secret_file"),
                    format!("{} is not UTF-8 text", path.display()),
                )
            })?
        }
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            ctx.err(
                field("client_secret_env"),
                format!("the environment variable {var} is not set; export it before starting the gateway"),
            )
        })?,
        _ => return Err(ctx.err(&at, "set exactly one of client_secret_file and client_secret_env")),
    };
    if secret.is_empty() {
        return Err(ctx.err(&at, "the client secret is empty"));
    }
    let timeout = raw.timeout.map_or(Duration::from_secs(2), |d| d.0);
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        return Err(ctx.err(field("timeout"), "must be more than 0s and at most 60s"));
    }
    let cache_ttl = raw.cache_ttl.map_or(Duration::from_secs(300), |d| d.0);
    let negative_cache_ttl = raw.negative_cache_ttl.map_or(Duration::from_secs(10), |d| d.0);
    if cache_ttl > Duration::from_secs(24 * 3600) || negative_cache_ttl > Duration::from_secs(3600) {
        return Err(ctx.err(
            field(if cache_ttl > Duration::from_secs(24 * 3600) { "cache_ttl" } else { "negative_cache_ttl" }),
            "too long: a revoked token would be honoured (or a new one refused) that long; keep cache_ttl within 24h and negative_cache_ttl within 1h",
        ));
    }
    Ok(Introspection {
        endpoint: raw.endpoint,
        client_id: raw.client_id,
        client_secret: Secret(secret),
        secret_file,
        auth_method: raw.auth_method,
        timeout,
        cache_ttl,
        negative_cache_ttl,
    })
}
