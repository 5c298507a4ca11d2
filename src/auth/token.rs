//! Compact JWS access tokens (RFC 7515 / 7519 / 9068): split, decode, verify
//! the signature with a configured key, then check the registered claims.
//! The token never chooses its own algorithm family, issuer, audience or key:
//! those come from the provider's configuration; `jwk`, `jku`, `x5u` and `x5c`
//! headers are never read.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::keys::KeySet;
use crate::config::Provider;

pub use crate::error::Rejection;

impl Rejection {
    /// The step of verification that refuses with this reason, in the order
    /// [`Unverified::verify`] takes them (see [`VERIFY_STEPS`]).
    pub fn step(self) -> usize {
        match self {
            Rejection::Malformed => 0,
            Rejection::Algorithm => 1,
            Rejection::Critical => 2,
            Rejection::UnknownKey => 3,
            Rejection::Signature => 4,
            Rejection::Type => 5,
            Rejection::ClaimType => 6,
            Rejection::MissingExp | Rejection::Expired => 7,
            Rejection::NotYetValid => 8,
            Rejection::Issuer => 9,
            Rejection::Audience => 10,
            Rejection::Revoked => 11,
            // Introspected tokens are not walked through these steps.
            Rejection::Inactive => 0,
        }
    }
}

/// The JOSE header fields the gateway reads. Everything else is ignored, on
/// purpose: a header can name a key (`jwk`, `jku`, `x5u`, `x5c`) but never
/// supply one.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// The checks a token goes through, in order; a token is refused at the
/// first that fails ([`Rejection::step`] says which).
pub(crate) const VERIFY_STEPS: &[&str] = &[
    "well-formed JWT",
    "algorithm allowed for the provider's keys",
    "no `crit` extension",
    "key found (by kid)",
    "signature",
    "typ",
    "registered claims have the right JSON types",
    "exp present and not passed (with leeway)",
    "nbf and iat not in the future (with leeway)",
    "iss equals the provider's issuer",
    "aud contains one of the provider's audiences",
];

/// A decoded but not yet verified token.
pub struct Unverified<'t> {
    header: JoseHeader,
    claims: Map<String, Value>,
    /// `header.payload`, the signed bytes.
    message: &'t str,
    signature: &'t str,
}

/// Longest token accepted; far above any real access token.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

fn b64_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, Rejection> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| Rejection::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Rejection::Malformed)
}

/// Split and decode a compact JWS. Nothing here is trusted yet.
pub fn decode(token: &str) -> Result<Unverified<'_>, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Rejection::Malformed);
    };
    let header: JoseHeader = b64_json(h)?;
    let claims: Map<String, Value> = b64_json(p)?;
    Ok(Unverified {
        header,
        claims,
        message: &token[..h.len() + 1 + p.len()],
        signature,
    })
}

/// Whether a bearer string is a compact JWS (three base64url segments whose
/// header parses), to be verified locally, rather than an opaque token.
pub fn is_jws(token: &str) -> bool {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(_), Some(_), None) => b64_json::<JoseHeader>(h).is_ok(),
        _ => false,
    }
}

impl Unverified<'_> {
    /// The unverified `iss`: only used to pick which provider verifies the token.
    pub fn issuer(&self) -> Result<Option<&str>, Rejection> {
        match self.claims.get("iss") {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Rejection::ClaimType),
        }
    }

    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// The header's `alg` and `typ` as written (for `explain`; never trusted).
    pub(crate) fn alg_and_typ(&self) -> (&str, Option<&str>) {
        (&self.header.alg, self.header.typ.as_deref())
    }

    /// The claims as written, before verification (for `explain`).
    pub(crate) fn unverified_claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Verify the signature and every claim rule of the provider; `now` is Unix seconds.
    pub fn verify(&self, provider: &Provider, keys: &KeySet, now: f64) -> Result<(), Rejection> {
        // `alg` names are case-sensitive (RFC 7518 §3.1): `none`, `None` and `NONE`
        // all fail to parse, and no key is ever pinned to them.
        let alg: Algorithm = self.header.alg.parse().map_err(|_| Rejection::Algorithm)?;
        // RFC 7515 §4.1.11: extensions we do not understand must fail the token.
        if self.header.crit.is_some() {
            return Err(Rejection::Critical);
        }
        let kid = self.header.kid.as_deref();
        let mut candidates = keys.candidates(kid, alg).peekable();
        if candidates.peek().is_none() {
            // A key that fits the `kid` exists, but not for this `alg`: that is
            // an algorithm problem, not a key the provider may have rotated in.
            return Err(if keys.knows_kid(kid) {
                Rejection::Algorithm
            } else {
                Rejection::UnknownKey
            });
        }
        let signature = URL_SAFE_NO_PAD
            .decode(self.signature)
            .map_err(|_| Rejection::Signature)?;
        if !candidates.any(|k| k.verify(alg, self.message.as_bytes(), &signature)) {
            return Err(Rejection::Signature);
        }
        if let Some(want) = &provider.typ {
            if !self.header.typ.as_deref().is_some_and(|t| typ_matches(t, want)) {
                return Err(Rejection::Type);
            }
        }
        check_claims(&self.claims, provider, now)
    }

    /// The claims, once [`Unverified::verify`] has accepted them.
    pub fn into_claims(self) -> Map<String, Value> {
        self.claims
    }
}

/// `typ` compares case-insensitively and may omit `application/` (RFC 7515 §4.1.9).
fn typ_matches(got: &str, want: &str) -> bool {
    let strip = |s: &str| {
        let lower = s.to_ascii_lowercase();
        lower.strip_prefix("application/").map(str::to_string).unwrap_or(lower)
    };
    strip(got) == strip(want)
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(Rejection::ClaimType),
        Some(_) => Err(Rejection::ClaimType),
    }
}

/// Registered-claim rules (RFC 7519 §4.1): types first, so `"exp": "9999999999"`
/// is refused rather than read as absent; then time, issuer and audience.
fn check_claims(claims: &Map<String, Value>, provider: &Provider, now: f64) -> Result<(), Rejection> {
    let exp = numeric(claims, "exp")?;
    let nbf = numeric(claims, "nbf")?;
    let iat = numeric(claims, "iat")?;
    for name in ["iss", "sub", "jti"] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return Err(Rejection::ClaimType);
        }
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or(Rejection::ClaimType))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Rejection::ClaimType),
    };

    let leeway = provider.leeway.as_secs_f64();
    let exp = exp.ok_or(Rejection::MissingExp)?;
    if now >= exp + leeway {
        return Err(Rejection::Expired);
    }
    // A token issued "later" would escape a revocation of every token
    // issued before a time: it is not valid yet either.
    if nbf.is_some_and(|nbf| nbf > now + leeway) || iat.is_some_and(|iat| iat > now + leeway) {
        return Err(Rejection::NotYetValid);
    }
    let iss = claims.get("iss").and_then(Value::as_str);
    if iss != provider.issuer.as_deref() {
        return Err(Rejection::Issuer);
    }
    if let Some(accepted) = &provider.audiences {
        if !audiences.iter().any(|a| accepted.iter().any(|b| b == a)) {
            return Err(Rejection::Audience);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    pub(crate) fn provider() -> Provider {
        Provider {
            name: "p".into(),
            issuer: Some("https://id.example.com/".into()),
            audiences: Some(vec!["api".into(), "other".into()]),
            keys: crate::config::KeySource::SecretEnv("X".into()),
            ca_file: None,
            algorithms: None,
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(600),
            scope_claims: vec!["scope".into()],
            subject_claim: "sub".into(),
            typ: None,
            introspection: None,
        }
    }

    fn check(claims: Value) -> Result<(), Rejection> {
        let Value::Object(map) = claims else { panic!("object") };
        check_claims(&map, &provider(), 1_000_000.0)
    }

    #[test]
    fn claim_rules() {
        let iss = "https://id.example.com/";
        let cases = [
            (json!({"iss": iss, "aud": "api", "exp": 1_000_100}), Ok(())),
            (json!({"iss": iss, "aud": ["x", "other"], "exp": 1_000_100.5}), Ok(())),
            (json!({"iss": iss, "aud": "api", "exp": 999_990}), Ok(())),
            (
                json!({"iss": iss, "aud": "api", "exp": 999_960}),
                Err(Rejection::Expired),
            ),
            (json!({"iss": iss, "aud": "api"}), Err(Rejection::MissingExp)),
            (
                json!({"iss": iss, "aud": "api", "exp": "9999999999"}),
                Err(Rejection::ClaimType),
            ),
            (
                json!({"iss": iss, "aud": "api", "exp": 1_000_100, "nbf": "1"}),
                Err(Rejection::ClaimType),
            ),
            (
                json!({"iss": iss, "aud": "api", "exp": 1_000_100, "nbf": 1_000_020}),
                Ok(()),
            ),
            (
                json!({"iss": iss, "aud": "api", "exp": 1_000_100, "nbf": 1_000_040}),
                Err(Rejection::NotYetValid),
            ),
            (
                json!({"iss": iss, "aud": "api", "exp": 1_000_100, "iat": "now"}),
                Err(Rejection::ClaimType),
            ),
            (
                json!({"iss": iss, "aud": "api", "exp": 1_000_100, "iat": 1_000_030}),
                Ok(()),
            ),
            (
                json!({"iss": iss, "aud": "api", "exp": 1_000_100, "iat": 1_000_031}),
                Err(Rejection::NotYetValid),
            ),
            (
                json!({"iss": iss, "aud": "api", "exp": 1e300, "iat": 1e300}),
                Err(Rejection::NotYetValid),
            ),
            (
                json!({"iss": iss, "aud": "api", "exp": 1_000_100, "sub": 7}),
                Err(Rejection::ClaimType),
            ),
            (
                json!({"iss": [iss], "aud": "api", "exp": 1_000_100}),
                Err(Rejection::ClaimType),
            ),
            (
                json!({"iss": "https://id.example.com", "aud": "api", "exp": 1_000_100}),
                Err(Rejection::Issuer),
            ),
            (json!({"aud": "api", "exp": 1_000_100}), Err(Rejection::Issuer)),
            (
                json!({"iss": iss, "aud": "nope", "exp": 1_000_100}),
                Err(Rejection::Audience),
            ),
            (
                json!({"iss": iss, "aud": [], "exp": 1_000_100}),
                Err(Rejection::Audience),
            ),
            (json!({"iss": iss, "exp": 1_000_100}), Err(Rejection::Audience)),
            (
                json!({"iss": iss, "aud": ["api", 1], "exp": 1_000_100}),
                Err(Rejection::ClaimType),
            ),
            (
                json!({"iss": iss, "aud": {"a": 1}, "exp": 1_000_100}),
                Err(Rejection::ClaimType),
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(check(claims.clone()), want, "{claims}");
        }
    }

    #[test]
    fn malformed_tokens() {
        for t in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.e30.x",
            "e30.!!.x",
            "bm90anNvbg.e30.x",
            "e30.W10.x",
        ] {
            assert!(decode(t).is_err(), "{t:?}");
        }
        // {"alg":"HS256"} . {} . sig
        assert!(decode("eyJhbGciOiJIUzI1NiJ9.e30.c2ln").is_ok());
    }

    #[test]
    fn every_reason_has_a_metric_series() {
        use Rejection::*;
        for r in [
            Malformed,
            Algorithm,
            UnknownKey,
            Signature,
            Critical,
            Type,
            ClaimType,
            Expired,
            MissingExp,
            NotYetValid,
            Issuer,
            Audience,
            Revoked,
        ] {
            assert!(crate::metrics::AUTH_FAILURE_REASONS.contains(&r.reason()), "{r:?}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state: u64 = 42;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        // Pieces a header or claims document is made of: well-formed and
        // not, odd types, huge and fractional numbers, invalid UTF-8.
        let pieces: [&[u8]; 16] = [
            br#""alg":"HS256""#,
            br#""alg":"none""#,
            br#""alg":7"#,
            br#""kid":"k1""#,
            br#""crit":["exp"]"#,
            br#""typ":"at+jwt""#,
            br#""exp":1e308"#,
            br#""exp":-1"#,
            br#""nbf":"0""#,
            br#""iat":18446744073709551616"#,
            br#""iss":"https://id.example.com/""#,
            br#""aud":["api",{}]"#,
            br#""x":[[[[[]]]]]"#,
            b"\"\xff\xfe\":1",
            br#""sub":null"#,
            b"",
        ];
        let document = |next: &mut dyn FnMut(u64) -> u64| {
            let mut doc = b"{".to_vec();
            for i in 0..next(5) {
                if i > 0 {
                    doc.push(b',');
                }
                doc.extend_from_slice(pieces[next(16) as usize]);
            }
            if next(8) != 0 {
                doc.push(b'}');
            }
            doc
        };
        let mut decoded = 0;
        for _ in 0..20_000 {
            let header = document(&mut next);
            let claims = document(&mut next);
            let signature: Vec<u8> = (0..next(70)).map(|_| next(256) as u8).collect();
            let mut token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims),
                URL_SAFE_NO_PAD.encode(signature)
            );
            // Now and then, damage the text itself.
            match next(10) {
                0 => token.push('.'),
                1 => token.insert(next(token.len() as u64) as usize, '%'),
                2 => token.truncate(next(token.len() as u64 + 1) as usize),
                _ => {}
            }
            if let Ok(u) = decode(&token) {
                decoded += 1;
                let _ = u.issuer();
                let _ = u.kid();
                let _ = u.alg_and_typ();
                let _ = u.verify(&provider(), &KeySet::default(), 1.7e9);
            }
        }
        // The generator reaches verification, not only the decoder's first check.
        assert!(decoded > 500, "only {decoded} of 20,000 generated tokens decoded");
    }

    /// Structurally valid tokens with random headers and claims, half of them
    /// signed with the provider's key: verification really runs, never
    /// panics, and accepts exactly the tokens that are signed with the key and
    /// whose claims are all in order (checked here independently).
    #[test]
    fn random_well_formed_tokens_are_judged_correctly() {
        use aws_lc_rs::hmac;
        let secret = b"a-random-token-test-secret-0123456789";
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), secret).unwrap();
        let mut p = provider();
        p.keys = crate::config::KeySource::SecretFile(file.path().to_path_buf());
        let keys = crate::auth::keys::load_local(&p).unwrap().unwrap();
        let signer = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let now = 1_000_000.0;
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let (mut accepted, mut verified_signatures) = (0, 0);
        for _ in 0..20_000 {
            let alg = ["HS256", "HS512", "RS256", "none", "hs256"][next(5) as usize];
            let mut header = json!({ "alg": alg });
            if next(4) == 0 {
                header["kid"] = json!("k1");
            }
            if next(10) == 0 {
                header["crit"] = json!(["exp"]);
            }
            let number_or_junk = |r: u64, base: f64| match r {
                0 => json!(base),
                1 => json!(base.to_string()),
                2 => Value::Null,
                _ => json!(base + 500.0),
            };
            let mut claims = json!({});
            match next(6) {
                0 => {}
                r => claims["exp"] = number_or_junk(r % 4, now - 100.0 + next(400) as f64),
            }
            if next(3) == 0 {
                claims["nbf"] = number_or_junk(next(4), now - 50.0 + next(200) as f64);
            }
            match next(4) {
                0 => {}
                1 => claims["iss"] = json!("https://other.example/"),
                2 => claims["iss"] = json!(7),
                _ => claims["iss"] = json!("https://id.example.com/"),
            }
            match next(4) {
                0 => {}
                1 => claims["aud"] = json!(["x", "api"]),
                2 => claims["aud"] = json!(3),
                _ => claims["aud"] = json!("api"),
            }
            let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
            let message = format!("{}.{}", b64(&header), b64(&claims));
            let signed = next(2) == 0;
            let signature = if signed {
                hmac::sign(&signer, message.as_bytes()).as_ref().to_vec()
            } else {
                (0..32).map(|_| next(256) as u8).collect()
            };
            let token = format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature));
            let verdict = decode(&token).expect("well-formed").verify(&p, &keys, now);

            // The rules, written out independently of `verify`.
            let leeway = p.leeway.as_secs_f64();
            let exp_ok = claims
                .get("exp")
                .and_then(Value::as_f64)
                .is_some_and(|e| now < e + leeway);
            let nbf_ok = match claims.get("nbf") {
                None => true,
                Some(v) => v.as_f64().is_some_and(|n| n <= now + leeway),
            };
            let should_accept = signed
                && alg == "HS256"
                && header.get("crit").is_none()
                && exp_ok
                && nbf_ok
                && claims.get("iss") == Some(&json!("https://id.example.com/"))
                && matches!(claims.get("aud"), Some(a) if a == &json!("api") || a == &json!(["x", "api"]));
            assert_eq!(
                verdict.is_ok(),
                should_accept,
                "{header} {claims} signed={signed}: {verdict:?}"
            );
            if !signed && alg == "HS256" && header.get("crit").is_none() {
                assert_eq!(
                    verdict,
                    Err(Rejection::Signature),
                    "a forged HS256 token is a bad signature"
                );
            }
            accepted += usize::from(verdict.is_ok());
            verified_signatures += usize::from(signed && alg == "HS256");
        }
        assert!(
            accepted > 20 && verified_signatures > 2000,
            "{accepted} accepted, {verified_signatures} signed"
        );
    }

    #[test]
    fn typ_comparison() {
        assert!(typ_matches("at+jwt", "at+jwt"));
        assert!(typ_matches("application/AT+JWT", "at+jwt"));
        assert!(!typ_matches("JWT", "at+jwt"));
    }
}
