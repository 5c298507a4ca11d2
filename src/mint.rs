//! Minting test tokens (`portcullis token`, `portcullis demo`): signing is the
//! identity provider's job in production; this exists for development and tests.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

/// What goes into a minted token.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub iss: Option<String>,
    pub aud: Option<String>,
    pub sub: Option<String>,
    /// Space-separated, as the `scope` claim.
    pub scope: Option<String>,
    pub ttl: Duration,
    /// Extra claims; they override the ones above.
    pub claims: Vec<(String, Value)>,
}

/// A signing key for `alg` from a PEM private key (RSA, EC or Ed25519, PKCS#8
/// or the traditional forms jsonwebtoken reads).
pub fn pem_signing_key(alg: Algorithm, pem: &[u8]) -> Result<EncodingKey, String> {
    let (key, kind) = match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => (EncodingKey::from_rsa_pem(pem), "an RSA"),
        Algorithm::ES256 => (EncodingKey::from_ec_pem(pem), "a P-256 EC"),
        Algorithm::ES384 => (EncodingKey::from_ec_pem(pem), "a P-384 EC"),
        Algorithm::EdDSA => (EncodingKey::from_ed_pem(pem), "an Ed25519"),
        _ => return Err(format!("{alg:?} takes a shared secret (--secret-env), not a PEM key")),
    };
    key.map_err(|e| format!("{alg:?} needs {kind} private key in PEM ({e}); pick --alg to match the key"))
}

/// Sign a token. Registered time claims are whole seconds.
pub fn mint(alg: Algorithm, key: &EncodingKey, spec: &TokenSpec) -> Result<String, String> {
    let now = crate::clock::unix_secs();
    let mut claims = Map::new();
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            claims.insert(k.into(), Value::String(v.clone()));
        }
    };
    put("iss", spec.iss.as_ref());
    put("aud", spec.aud.as_ref());
    put("sub", spec.sub.as_ref());
    put("scope", spec.scope.as_ref());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + spec.ttl.as_secs()).into());
    for (k, v) in &spec.claims {
        claims.insert(k.clone(), v.clone());
    }
    let mut header = Header::new(alg);
    header.kid = spec.kid.clone();
    if spec.typ.is_some() {
        header.typ = spec.typ.clone();
    }
    jsonwebtoken::encode(&header, &claims, key).map_err(|e| format!("cannot sign the token: {e}"))
}

/// `k=v` from the command line: `v` as JSON when it parses, else as a string.
pub fn parse_claim(arg: &str) -> Result<(String, Value), String> {
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| format!("--claim {arg:?}: write name=value"))?;
    if k.is_empty() {
        return Err(format!("--claim {arg:?}: the claim name is empty"));
    }
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
    Ok((k.to_string(), value))
}
