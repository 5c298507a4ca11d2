//! `identity.assertion`: a short-lived JWT the gateway signs for each request
//! it forwards with a verified identity, so an upstream can check that the
//! request came through the gateway (docs/assertion.md).

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use schemars::JsonSchema;
use serde::Deserialize;

use super::ctx::Ctx;
use super::raw::{Dur, HeaderNameStr};
use super::{ConfigError, Field};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAssertion {
    /// The request header that carries it (default `X-Portcullis-Assertion`).
    pub header: Option<HeaderNameStr>,
    /// PKCS#8 PEM private keys, EC P-256 (ES256) or Ed25519 (EdDSA): the first
    /// signs, all are published.
    pub key_files: Vec<PathBuf>,
    /// The `iss` of every assertion.
    pub issuer: String,
    /// Lifetime (default 60s), never past the token's own `exp`.
    pub ttl: Option<Dur>,
    /// Claims copied from the verified token (JSON Pointers or names), named by their last segment.
    #[serde(default)]
    pub claims: Vec<String>,
    /// Add `htm` / `htu` (the method and URL as forwarded).
    #[serde(default)]
    pub bind_request: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    pub header: HeaderName,
    pub key_files: Vec<PathBuf>,
    pub issuer: String,
    pub ttl: Duration,
    /// Each claim's name in the assertion and where it is read from.
    pub claims: Vec<(String, crate::policy::Pointer)>,
    pub bind_request: bool,
}

/// Claims the gateway writes itself; a listed claim may not take their names.
const REGISTERED: &[&str] = &["iss", "aud", "sub", "scope", "iat", "exp", "nbf", "jti", "htm", "htu"];

pub(super) fn validate(ctx: &Ctx, raw: RawAssertion) -> Result<Assertion, ConfigError> {
    let at = Field::from("identity.assertion");
    if raw.key_files.is_empty() {
        return Err(ctx.err(
            at.at("key_files"),
            "the list is empty; name at least one PKCS#8 EC P-256 or Ed25519 private key",
        ));
    }
    let mut key_files = Vec::new();
    for (i, p) in raw.key_files.iter().enumerate() {
        key_files.push(ctx.existing_file(at.at("key_files").index(i), p)?);
    }
    if raw.issuer.is_empty() || raw.issuer.chars().any(char::is_control) {
        return Err(ctx.err(at.at("issuer"), "must be a non-empty string without control characters"));
    }
    let ttl = raw.ttl.map_or(Duration::from_secs(60), |d| d.0);
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(3600) {
        return Err(ctx.err(
            at.at("ttl"),
            "must be between 1s and 1h: an assertion is for one hop, minted per request",
        ));
    }
    let mut claims: Vec<(String, crate::policy::Pointer)> = Vec::new();
    for (i, text) in raw.claims.iter().enumerate() {
        let field = at.at("claims").index(i);
        let pointer = crate::policy::Pointer::parse(text).map_err(|e| ctx.err(&field, format!("{text:?} {e}")))?;
        let name = pointer.name().to_string();
        if REGISTERED.contains(&name.as_str()) {
            return Err(ctx.err(
                &field,
                format!(
                    "{name:?} is a claim the gateway sets itself ({}); copy another claim",
                    REGISTERED.join(", ")
                ),
            ));
        }
        if claims.iter().any(|(n, _)| *n == name) {
            return Err(ctx.err(
                &field,
                format!("a second claim named {name:?}: claims are named by their last segment"),
            ));
        }
        claims.push((name, pointer));
    }
    let header = raw
        .header
        .map_or_else(|| HeaderName::from_static("x-portcullis-assertion"), |h| h.0);
    Ok(Assertion {
        header,
        key_files,
        issuer: raw.issuer,
        ttl,
        claims,
        bind_request: raw.bind_request,
    })
}
