//! Keys generated per test run, and tokens signed with them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A freshly generated key pair, as PEM and as a signing key.
pub struct KeyPair {
    pub alg: Algorithm,
    /// The raw public key (Ed25519: 32 bytes; EC: the uncompressed point).
    pub public_raw: Vec<u8>,
    pub private_pem: String,
    pub public_pem: String,
    pub signing: EncodingKey,
}

impl KeyPair {
    pub fn generate(alg: Algorithm) -> KeyPair {
        let rc = match alg {
            Algorithm::RS256
            | Algorithm::PS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS384
            | Algorithm::PS512 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            other => panic!("no key pair for {other:?}"),
        };
        let key = rcgen::KeyPair::generate_for(rc).unwrap();
        let private_pem = key.serialize_pem();
        let signing = portcullis::mint::pem_signing_key(alg, private_pem.as_bytes()).unwrap();
        KeyPair {
            alg,
            public_raw: key.public_key_raw().to_vec(),
            private_pem,
            public_pem: key.public_key_pem(),
            signing,
        }
    }

    /// The public key as a JWK with `kid`.
    pub fn jwk(&self, kid: &str) -> Value {
        if self.alg == Algorithm::EdDSA {
            return json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&self.public_raw), "kid": kid});
        }
        let mut jwk = Jwk::from_encoding_key(&self.signing, self.alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        serde_json::to_value(jwk).unwrap()
    }

    pub fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.signing).unwrap()
    }

    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.signing).unwrap()
    }
}

pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

pub fn hs_sign(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// The HMAC secret of the `app` provider most test configs declare
/// (`secret_file: app.secret`, written by [`super::GatewayDir`]).
pub const SECRET: &str = "a-test-hmac-secret-that-must-never-be-logged";

/// An HS256 token signed with [`SECRET`]: `sub` alice, an `exp` ten minutes
/// away, then `claims` on top (a claim set to `null` is left out).
pub fn token(claims: Value) -> String {
    let mut all = json!({"sub": "alice", "exp": now() + 600});
    for (k, v) in claims.as_object().expect("claims are a JSON object") {
        match v {
            Value::Null => all.as_object_mut().unwrap().remove(k),
            v => all.as_object_mut().unwrap().insert(k.clone(), v.clone()),
        };
    }
    hs_sign(Algorithm::HS256, SECRET.as_bytes(), &all)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact token from raw parts: header JSON, claims JSON, raw signature bytes.
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}
