//! Entry points for the fuzz targets in `fuzz/` (not part of the API): each
//! feeds arbitrary input to a parser or a check and asserts what must hold
//! for every input. A panic here is a finding.

use std::sync::OnceLock;

/// Token decoding and verification against a provider's key: never a panic,
/// and a token that verifies decodes to claims with a numeric `exp`.
pub fn token(data: &[u8]) {
    static KEYS: OnceLock<(crate::config::Provider, crate::auth::keys::KeySet)> = OnceLock::new();
    let (provider, keys) = KEYS.get_or_init(|| {
        let mut p = provider();
        p.keys = crate::config::KeySource::SecretEnv("UNUSED".into());
        let (_, _, keys) = crate::auth::keys::stand_in(&p).expect("a stand-in key");
        (p, keys)
    });
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = crate::auth::token::is_jws(text);
    if let Ok(unverified) = crate::auth::token::decode(text) {
        let _ = unverified.issuer();
        if unverified.verify(provider, keys, 1_000_000.0).is_ok() {
            assert!(unverified.unverified_claims().get("exp").is_some_and(|e| e.is_number()));
        }
    }
}

/// Path normalisation: idempotent, absolute, never above the root.
pub fn normalize(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if let Ok(normal) = crate::routing::normalize::normalize(path) {
        assert!(normal.starts_with('/'), "{normal:?}");
        assert!(
            !normal.split('/').any(|s| s == ".." || s == "."),
            "{path:?} -> {normal:?}"
        );
        assert_eq!(
            crate::routing::normalize::normalize(&normal).as_deref(),
            Ok(normal.as_str()),
            "{path:?}"
        );
    }
}

/// A configuration file, as SIGHUP would read it: an error, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = crate::config::Config::from_yaml(text, std::path::Path::new("/nonexistent/gateway.yaml"));
}

/// An OpenAPI document: routes or an error, never a panic.
pub fn openapi(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let options = crate::openapi::ImportOptions {
        upstream: "app".into(),
        provider: Some("p".into()),
        cases: true,
        ..Default::default()
    };
    let _ = crate::openapi::import(text, &options);
}

/// An introspection answer: a verdict or "not an answer", never a panic; an
/// accepted answer always has `"active": true`.
pub fn introspection_answer(data: &[u8]) {
    static PROVIDER: OnceLock<crate::config::Provider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(provider);
    if let Ok(answer) = crate::auth::introspection::parse(data, provider, 1_000_000.0) {
        if answer.at(1_000_000.0).is_ok() {
            let json: serde_json::Value = serde_json::from_slice(data).expect("parsed before");
            assert_eq!(json["active"], serde_json::Value::Bool(true));
        }
    }
}

fn provider() -> crate::config::Provider {
    crate::config::Provider {
        name: "fuzz".into(),
        issuer: Some("https://id.example.com/".into()),
        audiences: Some(vec!["api".into()]),
        keys: crate::config::KeySource::IntrospectionOnly,
        ca_file: None,
        algorithms: None,
        leeway: std::time::Duration::from_secs(30),
        jwks_refresh: std::time::Duration::from_secs(600),
        scope_claims: vec!["scope".into()],
        subject_claim: "sub".into(),
        typ: None,
        introspection: None,
    }
}

#[cfg(test)]
mod tests {
    /// The targets run on a few inputs in every `cargo test`, so they stay compiled and sound.
    #[test]
    fn targets_accept_sample_inputs() {
        for input in [
            &b""[..],
            b"/a/../b",
            b"eyJhbGciOiJIUzI1NiJ9.e30.x",
            b"{\"active\":true}",
            b"listen: {}",
            b"\xff",
        ] {
            super::token(input);
            super::normalize(input);
            super::config(input);
            super::openapi(input);
            super::introspection_answer(input);
        }
    }
}
