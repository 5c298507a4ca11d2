//! The signed identity assertion (`identity.assertion`): a compact JWS the
//! gateway adds to each request it forwards with a verified identity, so an
//! upstream can verify the request came through the gateway instead of
//! trusting the network (as Pomerium, Google IAP and AWS ALB do).
//!
//! ES256 (EC P-256) or EdDSA (Ed25519) keys from PKCS#8 files: the first
//! signs, all are published as a JWKS, each with its RFC 7638 thumbprint as
//! `kid`. Without `bind_request`, an assertion is reused for the same token
//! and upstream while more than half its lifetime remains, so signing is not
//! paid per request; the reuse is keyed by SHA-256 of the token and the
//! upstream, so two tokens or two upstreams never share one.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderName, HeaderValue};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde_json::{json, Map, Value};

use crate::auth::Caller;
use crate::config::{Assertion, ConfigError};

/// Reused assertions kept at most; past it the map is emptied.
const MAX_REUSED: usize = 100_000;

enum Key {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

struct SigningKey {
    key: Key,
    /// The JOSE header, base64url-encoded once.
    header: String,
}

/// The request an assertion is for (`htm` / `htu` with `bind_request`).
pub struct Bound<'a> {
    pub method: &'a http::Method,
    /// The request's host (`Host` or `:authority`).
    pub host: Option<&'a HeaderValue>,
    /// The path as forwarded, without its query.
    pub path: &'a str,
}

impl Bound<'_> {
    /// `https://<host><path>`, the `htu` claim.
    fn url(&self) -> String {
        let host = self.host.and_then(|v| v.to_str().ok()).unwrap_or_default();
        format!("https://{}{}", host.to_ascii_lowercase(), self.path)
    }
}

/// One configuration's assertion signer.
pub struct Signer {
    pub header: HeaderName,
    issuer: String,
    ttl: f64,
    claims: Vec<(String, crate::policy::Pointer)>,
    pub bind_request: bool,
    signing: SigningKey,
    /// The public keys as a JWKS document.
    jwks: Bytes,
    rng: SystemRandom,
    /// (SHA-256 of the token, upstream index) → (assertion, its `exp`).
    reused: DashMap<([u8; 32], usize), (HeaderValue, f64)>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Read and check the keys (every one must load: a key listed only to be
    /// published must still be one the upstream can use).
    pub fn new(config: &Assertion) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        let mut published = Vec::new();
        for (i, path) in config.key_files.iter().enumerate() {
            let field = crate::config::Field::from("identity.assertion.key_files").index(i);
            let (key, jwk) = load(path).map_err(|e| ConfigError::new(field, format!("{}: {e}", path.display())))?;
            published.push(jwk);
            keys.push(key);
        }
        let signing = keys
            .into_iter()
            .next()
            .ok_or_else(|| ConfigError::new("identity.assertion.key_files", "the list is empty"))?;
        Ok(Signer {
            header: config.header.clone(),
            issuer: config.issuer.clone(),
            ttl: config.ttl.as_secs_f64(),
            claims: config.claims.clone(),
            bind_request: config.bind_request,
            signing,
            jwks: Bytes::from(json!({ "keys": published }).to_string()),
            rng: SystemRandom::new(),
            reused: DashMap::new(),
        })
    }

    /// The public keys, as served at the JWKS endpoints.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The assertion for a request forwarded to `upstream` with `caller`'s
    /// identity. `token`: SHA-256 of the bearer token (reuse is keyed by it);
    /// `request`: read only with `bind_request`.
    pub fn assertion(
        &self,
        caller: &Caller,
        upstream: (usize, &str),
        token: Option<[u8; 32]>,
        request: Bound<'_>,
    ) -> Option<HeaderValue> {
        let now = crate::clock::unix_now();
        let reuse_key = token.filter(|_| !self.bind_request).map(|t| (t, upstream.0));
        if let Some(key) = &reuse_key {
            if let Some(entry) = self.reused.get(key) {
                if entry.1 - now > self.ttl / 2.0 {
                    return Some(entry.0.clone());
                }
            }
        }
        let bound = self.bind_request.then(|| (request.method, request.url()));
        let (value, exp) = self.sign(caller, upstream.1, bound, now)?;
        if let Some(key) = reuse_key {
            if self.reused.len() >= MAX_REUSED {
                self.reused.clear();
            }
            self.reused.insert(key, (value.clone(), exp));
        }
        Some(value)
    }

    fn sign(
        &self,
        caller: &Caller,
        audience: &str,
        bound: Option<(&http::Method, String)>,
        now: f64,
    ) -> Option<(HeaderValue, f64)> {
        let now_secs = now.floor();
        let mut exp = now_secs + self.ttl;
        // Never past the token's own `exp`.
        if let Some(token_exp) = caller.claims.get("exp").and_then(Value::as_f64) {
            exp = exp.min(token_exp.floor());
        }
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).ok()?;
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), audience.into());
        if let Some(sub) = &caller.subject {
            claims.insert("sub".into(), sub.clone());
        }
        claims.insert("scope".into(), caller.scopes.join(" ").into());
        claims.insert("iat".into(), (now_secs as i64).into());
        claims.insert("exp".into(), (exp as i64).into());
        claims.insert("jti".into(), URL_SAFE_NO_PAD.encode(jti).into());
        for (name, pointer) in &self.claims {
            if let Some(v) = pointer.find(&caller.claims) {
                claims.insert(name.clone(), v.clone());
            }
        }
        if let Some((method, url)) = bound {
            claims.insert("htm".into(), method.as_str().into());
            claims.insert("htu".into(), url.into());
        }
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).ok()?);
        let message = format!("{}.{payload}", self.signing.header);
        let signature = match &self.signing.key {
            Key::Es256(k) => k.sign(&self.rng, message.as_bytes()).ok()?.as_ref().to_vec(),
            Key::Ed25519(k) => k.sign(message.as_bytes()).as_ref().to_vec(),
        };
        let jws = format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature));
        let mut value = HeaderValue::from_str(&jws).ok()?;
        // Unique per request: never HPACK-indexed.
        value.set_sensitive(true);
        Some((value, exp))
    }
}

/// A PKCS#8 PEM private key: the signing key and its public JWK.
fn load(path: &Path) -> Result<(SigningKey, Value), String> {
    let der = PrivatePkcs8KeyDer::from_pem_file(path).map_err(|_| {
        "not a PKCS#8 PEM private key (BEGIN PRIVATE KEY); convert with `openssl pkcs8 -topk8 -nocrypt`".to_string()
    })?;
    let der = der.secret_pkcs8_der();
    let (key, alg, mut jwk) = if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
        // An uncompressed point: 0x04 || x || y.
        let point = k.public_key().as_ref().to_vec();
        let (x, y) = (&point[1..33], &point[33..65]);
        let jwk = json!({"crv": "P-256", "kty": "EC", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)});
        (Key::Es256(k), "ES256", jwk)
    } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        let jwk = json!({"crv": "Ed25519", "kty": "OKP", "x": URL_SAFE_NO_PAD.encode(k.public_key().as_ref())});
        (Key::Ed25519(k), "EdDSA", jwk)
    } else {
        return Err("neither an EC P-256 nor an Ed25519 key (RSA and other curves are not accepted)".into());
    };
    let kid = thumbprint(&jwk);
    let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    if let Some(m) = jwk.as_object_mut() {
        m.insert("kid".into(), kid.into());
        m.insert("alg".into(), alg.into());
        m.insert("use".into(), "sig".into());
    }
    Ok((SigningKey { key, header }, jwk))
}

/// RFC 7638: SHA-256 of the required members in lexicographic order, no
/// whitespace (serde_json's maps are ordered and compact), base64url.
fn thumbprint(jwk: &Value) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, jwk.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Where the HTTPS listener serves the public keys.
pub const HTTPS_JWKS_PATH: &str = "/.well-known/portcullis/jwks.json";
/// Where the admin listener serves them.
pub const ADMIN_JWKS_PATH: &str = "/.well-known/jwks.json";

/// The JWKS as an answer: public, cacheable for five minutes (a rotated-in
/// key is published by the reload that starts signing with it, so verifiers
/// refetch on an unknown `kid`).
pub fn jwks_response(signer: &Signer) -> http::Response<http_body_util::Full<Bytes>> {
    let mut resp = http::Response::new(http_body_util::Full::new(signer.jwks()));
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// The signer of a configuration, if it has `identity.assertion`.
pub fn signer(config: &crate::config::Config) -> Result<Option<Arc<Signer>>, ConfigError> {
    config
        .identity
        .assertion
        .as_ref()
        .map(|a| Signer::new(a).map(Arc::new))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 §3.1 uses an RSA key; the rule (sorted required members,
        // compact) is the same. Checked here on RFC 8037's Ed25519 example, whose
        // thumbprint appendix A.3 gives.
        let jwk = json!({"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        assert_eq!(thumbprint(&jwk), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
