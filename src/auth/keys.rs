//! Verification keys: where they come from (secret, PEM, JWKS) and which
//! algorithms each one may verify. Every key is pinned to its own family and
//! to the provider's allowlist, so an HS256 token can never be checked against
//! an RSA public key (key confusion) and `alg: none` has no key at all.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{KeySource, Provider};

/// One key and the algorithms it may verify.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

impl VerifyKey {
    fn fits_kid(&self, kid: Option<&str>) -> bool {
        kid.is_none() || self.kid.is_none() || self.kid.as_deref() == kid
    }
}

impl std::fmt::Debug for VerifyKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// A provider's current keys.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

impl KeySet {
    /// Candidate keys for a token: the keys that may verify `alg` and whose
    /// `kid` fits the token's. A key without a `kid` (a PEM file, a secret, a
    /// JWKS entry without one) fits any token, as in Envoy's jwt_authn: IdPs put
    /// a `kid` in every token, and the signature decides.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Algorithm) -> impl Iterator<Item = &'a VerifyKey> {
        self.keys
            .iter()
            .filter(move |k| k.algorithms.contains(&alg) && k.fits_kid(kid))
    }

    /// Whether some key, whatever its algorithms, could be the one `kid` names.
    pub fn knows_kid(&self, kid: Option<&str>) -> bool {
        self.keys.iter().any(|k| k.fits_kid(kid))
    }
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// The algorithms a provider's configuration allows (`None`: whatever the keys support).
pub fn allowlist(provider: &Provider) -> Option<Vec<Algorithm>> {
    provider
        .algorithms
        .as_ref()
        .map(|names| names.iter().filter_map(|n| n.parse().ok()).collect())
}

fn pin(family: &[Algorithm], allow: &Option<Vec<Algorithm>>) -> Vec<Algorithm> {
    family
        .iter()
        .copied()
        .filter(|a| allow.as_ref().is_none_or(|allow| allow.contains(a)))
        .collect()
}

/// Load the keys of a local key source (secret, secret file, PEM, JWKS file).
/// Remote sources return `Ok(None)`: they are filled by fetching.
pub fn load_local(provider: &Provider) -> Result<Option<KeySet>, String> {
    let allow = allowlist(provider);
    let field = |f: &str| format!("providers.{}.{f}", provider.name);
    let keys = match &provider.keys {
        KeySource::Discovery | KeySource::JwksUri(_) => return Ok(None),
        KeySource::SecretEnv(var) => {
            let secret = std::env::var(var).ok().filter(|s| !s.is_empty()).ok_or_else(|| {
                format!(
                    "{}: the environment variable {var} is not set or is empty",
                    field("secret_env")
                )
            })?;
            vec![hmac_key(secret.as_bytes(), &allow)]
        }
        KeySource::SecretFile(path) => {
            let secret = read_secret_file(path)
                .map_err(|e| format!("{}: cannot read {}: {e}", field("secret_file"), path.display()))?;
            if secret.is_empty() {
                return Err(format!("{}: {} is empty", field("secret_file"), path.display()));
            }
            vec![hmac_key(&secret, &allow)]
        }
        KeySource::PublicKeyFile(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("{}: cannot read {}: {e}", field("public_key_file"), path.display()))?;
            vec![pem_key(&pem, &allow).map_err(|e| format!("{}: {}: {e}", field("public_key_file"), path.display()))?]
        }
        KeySource::JwksFile(path) => {
            let json = std::fs::read(path)
                .map_err(|e| format!("{}: cannot read {}: {e}", field("jwks_file"), path.display()))?;
            let set =
                parse_jwks(&json, &allow).map_err(|e| format!("{}: {}: {e}", field("jwks_file"), path.display()))?;
            set.keys
        }
    };
    if keys.iter().all(|k| k.algorithms.is_empty()) {
        return Err(format!(
            "providers.{}: none of its keys can verify the algorithms in `algorithms`; check the list against the key type",
            provider.name
        ));
    }
    Ok(Some(KeySet { keys }))
}

/// A `secret_file`'s secret: its bytes without the one trailing newline
/// editors add (`\n` or `\r\n`), which is not part of the secret.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut raw = std::fs::read(path)?;
    if raw.ends_with(b"\n") {
        raw.pop();
        if raw.ends_with(b"\r") {
            raw.pop();
        }
    }
    Ok(raw)
}

fn hmac_key(secret: &[u8], allow: &Option<Vec<Algorithm>>) -> VerifyKey {
    VerifyKey {
        kid: None,
        key: DecodingKey::from_secret(secret),
        algorithms: pin(HMAC, allow),
    }
}

/// A PEM public key: RSA (PKCS#1 or SPKI), EC (P-256 / P-384) or Ed25519.
fn pem_key(pem: &[u8], allow: &Option<Vec<Algorithm>>) -> Result<VerifyKey, String> {
    let (key, family) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        (k, RSA)
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        (k, &[Algorithm::ES256, Algorithm::ES384][..])
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        (k, &[Algorithm::EdDSA][..])
    } else {
        return Err("not a PEM RSA, EC or Ed25519 public key".into());
    };
    Ok(VerifyKey {
        kid: None,
        key,
        algorithms: pin(family, allow),
    })
}

/// Largest JWKS document accepted, local or fetched.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Parse a JWKS document. Keys that are not for signatures, symmetric (`oct`:
/// a published secret is no secret), or of an unsupported type are skipped.
/// A document with no usable key is an error.
pub fn parse_jwks(json: &[u8], allow: &Option<Vec<Algorithm>>) -> Result<KeySet, String> {
    if json.len() > MAX_JWKS_BYTES {
        return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
    }
    let doc: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWKS: no `keys` array")?;
    let mut keys = Vec::new();
    for entry in entries {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        if let Some(k) = jwk_key(&jwk, allow) {
            keys.push(k);
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no usable signature key (RSA, EC P-256/P-384 or Ed25519)".into());
    }
    Ok(KeySet { keys })
}

fn jwk_key(jwk: &Jwk, allow: &Option<Vec<Algorithm>>) -> Option<VerifyKey> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
        _ => return None,
    };
    let mut algorithms = pin(family, allow);
    // A JWK that names its algorithm may verify only that one.
    if let Some(named) = jwk.common.key_algorithm {
        let named: Option<Algorithm> = named.to_string().parse().ok();
        algorithms.retain(|a| Some(*a) == named);
    }
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}
