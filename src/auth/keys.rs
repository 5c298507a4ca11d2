//! Verification keys: where they come from (secret, PEM, JWKS) and which
//! algorithms each one may verify. Every key is pinned to its own family and
//! to the provider's allowlist, so an HS256 token can never be checked against
//! an RSA public key (key confusion) and `alg: none` has no key at all.

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

use std::path::Path;

use crate::config::{ConfigError, KeySource, Provider};

/// One key and, for each algorithm it may verify, its verifier: parsed once
/// when the key is loaded, so a request pays for the signature check only.
pub struct VerifyKey {
    pub kid: Option<String>,
    verifiers: Vec<(Algorithm, Verifier)>,
}

enum Verifier {
    Hmac(Box<hmac::Key>),
    Public(ParsedPublicKey),
}

impl VerifyKey {
    /// Whether this key may verify `alg` at all.
    pub(crate) fn supports(&self, alg: Algorithm) -> bool {
        self.verifiers.iter().any(|(a, _)| *a == alg)
    }

    /// Whether `signature` is this key's `alg` signature over `message`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers.iter().any(|(a, v)| {
            *a == alg
                && match v {
                    // Constant-time comparison of the MAC.
                    Verifier::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
                    Verifier::Public(key) => key.verify_sig(message, signature).is_ok(),
                }
        })
    }

    pub(crate) fn algorithms(&self) -> Vec<Algorithm> {
        self.verifiers.iter().map(|(a, _)| *a).collect()
    }

    fn fits_kid(&self, kid: Option<&str>) -> bool {
        kid.is_none() || self.kid.is_none() || self.kid.as_deref() == kid
    }
}

impl std::fmt::Debug for VerifyKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms())
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
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyKey> {
        self.keys.iter().filter(move |k| k.supports(alg) && k.fits_kid(kid))
    }

    /// Whether some key, whatever its algorithms, could be the one `kid` names.
    pub(crate) fn knows_kid(&self, kid: Option<&str>) -> bool {
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
pub(crate) fn load_local(provider: &Provider) -> Result<Option<KeySet>, ConfigError> {
    let allow = allowlist(provider);
    let at = crate::config::Field::key("providers").at(provider.name.as_str());
    let field = |f: &str| at.at(f);
    let unreadable = |f: &str, path: &Path, e: std::io::Error| {
        ConfigError::new(field(f), format!("cannot read {}", path.display())).because(e)
    };
    let keys = match &provider.keys {
        KeySource::Discovery | KeySource::JwksUri(_) => return Ok(None),
        // Nothing to wait for: a JWT naming this issuer finds no key.
        KeySource::IntrospectionOnly => return Ok(Some(KeySet { keys: Vec::new() })),
        KeySource::SecretEnv(var) => {
            let secret = std::env::var(var).ok().filter(|s| !s.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    field("secret_env"),
                    format!("the environment variable {var} is not set or is empty"),
                )
            })?;
            vec![hmac_key(secret.as_bytes(), &allow)]
        }
        KeySource::SecretFile(path) => {
            let secret = crate::config::read_secret_file(path).map_err(|e| unreadable("secret_file", path, e))?;
            if secret.is_empty() {
                return Err(ConfigError::new(
                    field("secret_file"),
                    format!("{} is empty", path.display()),
                ));
            }
            vec![hmac_key(&secret, &allow)]
        }
        KeySource::PublicKeyFile(path) => {
            let pem = std::fs::read(path).map_err(|e| unreadable("public_key_file", path, e))?;
            let key = pem_key(&pem, &allow)
                .map_err(|e| ConfigError::new(field("public_key_file"), format!("{}: {e}", path.display())))?;
            vec![key]
        }
        KeySource::JwksFile(path) => {
            let json = std::fs::read(path).map_err(|e| unreadable("jwks_file", path, e))?;
            let set = parse_jwks(&json, &allow)
                .map_err(|e| ConfigError::new(field("jwks_file"), format!("{}: {e}", path.display())))?;
            set.keys
        }
    };
    if keys.iter().all(|k| k.verifiers.is_empty()) {
        return Err(ConfigError::new(
            &at,
            "none of its keys can verify the algorithms in `algorithms`; check the list against the key type",
        ));
    }
    Ok(Some(KeySet { keys }))
}

fn hmac_key(secret: &[u8], allow: &Option<Vec<Algorithm>>) -> VerifyKey {
    let verifiers = pin(HMAC, allow)
        .into_iter()
        .map(|alg| {
            let kind = match alg {
                Algorithm::HS384 => hmac::HMAC_SHA384,
                Algorithm::HS512 => hmac::HMAC_SHA512,
                _ => hmac::HMAC_SHA256,
            };
            (alg, Verifier::Hmac(Box::new(hmac::Key::new(kind, secret))))
        })
        .collect();
    VerifyKey { kid: None, verifiers }
}

/// The aws-lc-rs verification algorithm for a JWS asymmetric `alg` (RFC 7518
/// §3): RSA keys below 2048 bits are refused; ECDSA signatures are the fixed
/// `r || s` form JWS uses.
fn public_algorithm(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &sig::ED25519,
        _ => return None,
    })
}

/// A public key with a verifier for each algorithm of `algorithms` it parses
/// for (a P-384 point is no P-256 key; a 1024-bit RSA key fits none).
fn public_key(kid: Option<String>, key: &DecodingKey, algorithms: Vec<Algorithm>) -> VerifyKey {
    let der;
    let bytes: &[u8] = match key.kind() {
        DecodingKeyKind::SecretOrDer(bytes) => bytes,
        DecodingKeyKind::RsaModulusExponent { n, e } => {
            der = rsa_public_key_der(n, e);
            &der
        }
    };
    // aws-lc-rs parses a short RSA key and refuses it only when verifying:
    // refuse it here, so the configuration says so.
    if algorithms.iter().any(|a| RSA.contains(a)) && rsa_bits(bytes).is_none_or(|bits| bits < 2048) {
        return VerifyKey {
            kid,
            verifiers: Vec::new(),
        };
    }
    let verifiers = algorithms
        .into_iter()
        .filter_map(|alg| {
            let parsed = ParsedPublicKey::new(public_algorithm(alg)?, bytes).ok()?;
            Some((alg, Verifier::Public(parsed)))
        })
        .collect();
    VerifyKey { kid, verifiers }
}

/// The modulus size of an RFC 8017 `RSAPublicKey` (DER).
fn rsa_bits(pkcs1: &[u8]) -> Option<usize> {
    use aws_lc_rs::encoding::AsDer;
    let spki = aws_lc_rs::rsa::PublicKey::from_der(pkcs1).ok()?.as_der().ok()?;
    let key = aws_lc_rs::rsa::PublicEncryptingKey::from_der(spki.as_ref()).ok()?;
    Some(key.key_size_bits())
}

/// DER of an RFC 8017 `RSAPublicKey { modulus, publicExponent }` from the
/// big-endian `n` and `e` of a JWK.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn push_len(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let bytes = &bytes[bytes.iter().take_while(|b| **b == 0).count()..];
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
    }
    fn push_integer(out: &mut Vec<u8>, value: &[u8]) {
        let value = &value[value
            .iter()
            .take_while(|b| **b == 0)
            .count()
            .min(value.len().saturating_sub(1))..];
        // A leading 1 bit would make the INTEGER negative: prefix a zero byte.
        let pad = value.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        push_len(out, value.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(value);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    push_integer(&mut body, n);
    push_integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
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
    let algorithms = pin(family, allow);
    let key = public_key(None, &key, algorithms.clone());
    if key.verifiers.is_empty() {
        return Err(format!(
            "the key cannot verify {algorithms:?}: RSA keys need at least 2048 bits, EC keys are P-256 for ES256 and P-384 for ES384"
        ));
    }
    Ok(key)
}

/// Largest JWKS document accepted, local or fetched.
pub(crate) const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Parse a JWKS document. Keys that are not for signatures, symmetric (`oct`:
/// a published secret is no secret), or of an unsupported type are skipped.
/// A document with no usable key is an error.
pub(crate) fn parse_jwks(json: &[u8], allow: &Option<Vec<Algorithm>>) -> Result<KeySet, String> {
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
    let key = public_key(jwk.common.key_id.clone(), &DecodingKey::from_jwk(jwk).ok()?, algorithms);
    (!key.verifiers.is_empty()).then_some(key)
}

/// A throwaway key that stands in for a provider's keys while `portcullis
/// test` runs (the policy is under test, not the identity provider): the
/// algorithm it signs with (the first the provider allows, in the family of
/// its key source), the signing key, and the key set that verifies it.
pub(crate) fn stand_in(provider: &Provider) -> Result<(Algorithm, jsonwebtoken::EncodingKey, KeySet), String> {
    let allow = allowlist(provider);
    let hmac = provider.keys.is_hmac();
    let alg = match &allow {
        Some(list) => list.iter().copied().find(|a| HMAC.contains(a) == hmac),
        None if hmac => Some(Algorithm::HS256),
        None => Some(Algorithm::ES256),
    }
    .ok_or_else(|| {
        format!(
            "provider {} allows no algorithm its keys could sign with",
            provider.name
        )
    })?;
    if hmac {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| "no random bytes for a stand-in key".to_string())?;
        let key = hmac_key(&secret, &allow);
        return Ok((
            alg,
            jsonwebtoken::EncodingKey::from_secret(&secret),
            KeySet { keys: vec![key] },
        ));
    }
    let kind = match alg {
        Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        Algorithm::EdDSA => &rcgen::PKCS_ED25519,
        _ => &rcgen::PKCS_RSA_SHA256,
    };
    let pair = rcgen::KeyPair::generate_for(kind).map_err(|e| format!("cannot make a stand-in key: {e}"))?;
    let signing = crate::mint::pem_signing_key(alg, pair.serialize_pem().as_bytes())?;
    let key = pem_key(pair.public_key_pem().as_bytes(), &allow)?;
    Ok((alg, signing, KeySet { keys: vec![key] }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_1024: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDB9FMhYHkN+FDNNBlBP0HNhFQn
4SsWqGCSE8ugGf1GEOWTDUN54ZywKSJEBWAJtdR00rFYV4OgSJEVepiwTPK2cjqb
pScwlNAiZ2tuJxN4PhGbC33LY+lm5f16XTq8AcWoJGsgqcctUYgi2PUis4WSl8Ic
EGNVtf2yUclWV9iUHQIDAQAB
-----END PUBLIC KEY-----
";
    const P384: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEWzPgfkr+ZZjadirQXe56DTK137kXtLSj
w0HppBqdCkJpDdRn+sk8Zu744VqzHhuhsB2xE0cV5rwPYfDRrLSF/7zXnCNSqh8a
IVaPteFdI8d4YGZYgdSxPynaMDMajHqv
-----END PUBLIC KEY-----
";

    #[test]
    fn weak_or_mismatched_keys_get_no_verifier() {
        let e = pem_key(RSA_1024.as_bytes(), &None).expect_err("1024-bit RSA is refused");
        assert!(e.contains("2048 bits"), "{e}");
        // An EC PEM key verifies only the algorithm of its own curve.
        let k = pem_key(P384.as_bytes(), &None).unwrap();
        assert_eq!(k.algorithms(), vec![Algorithm::ES384]);
        assert!(pem_key(P384.as_bytes(), &Some(vec![Algorithm::ES256])).is_err());
    }

    #[test]
    fn hmac_keys_verify_only_their_own_algorithms() {
        let key = hmac_key(b"0123456789abcdef0123456789abcdef", &Some(vec![Algorithm::HS256]));
        let mac = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef"),
            b"msg",
        );
        assert!(key.verify(Algorithm::HS256, b"msg", mac.as_ref()));
        assert!(!key.verify(Algorithm::HS256, b"msh", mac.as_ref()));
        assert!(
            !key.verify(Algorithm::HS512, b"msg", mac.as_ref()),
            "HS512 is not allowed"
        );
        assert!(!key.verify(Algorithm::RS256, b"msg", mac.as_ref()));
    }

    #[test]
    fn rsa_der_from_jwk_components() {
        // Leading zeros are dropped; a high bit gets a 0x00 pad; e = 65537.
        let der = rsa_public_key_der(&[0, 0x80, 1], &[1, 0, 1]);
        assert_eq!(
            der,
            vec![0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01]
        );
        // A 2048-bit modulus needs the long length form.
        let der = rsa_public_key_der(&[0xc0; 256], &[1, 0, 1]);
        assert_eq!(&der[..8], &[0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01]);
    }
}
