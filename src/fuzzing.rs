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

/// The same token checked by `jsonwebtoken` as a second opinion (HS256 with a
/// fixed secret; signature, header and JSON only, no time checks): nothing
/// the gateway accepts may be a token `jsonwebtoken` finds forged.
/// Returns whether the gateway accepted it.
pub fn token_second_opinion(data: &[u8]) -> bool {
    static KEYS: OnceLock<(crate::config::Provider, crate::auth::keys::KeySet)> = OnceLock::new();
    let (provider, keys) = KEYS.get_or_init(|| {
        let mut p = provider();
        // Read as a provider's secret_file is, from a file written for it.
        let file = std::env::temp_dir().join(format!("portcullis-fuzz-secret-{}", std::process::id()));
        std::fs::write(&file, FUZZ_SECRET).expect("a temporary file");
        p.keys = crate::config::KeySource::SecretFile(file.clone());
        p.algorithms = Some(vec!["HS256".into()]);
        let keys = crate::auth::keys::load_local(&p).ok().flatten().expect("an HMAC key");
        let _ = std::fs::remove_file(file);
        (p, keys)
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(unverified) = crate::auth::token::decode(text) else {
        return false;
    };
    if unverified.verify(provider, keys, 1_000_000.0).is_err() {
        return false;
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_secret(FUZZ_SECRET.as_bytes());
    if let Err(e) = jsonwebtoken::decode::<serde_json::Value>(text, &key, &validation) {
        panic!("the gateway accepted a token jsonwebtoken refuses ({e}): {text:?}");
    }
    true
}

/// The HMAC secret of [`token_second_opinion`] (seed tokens are signed with it).
pub const FUZZ_SECRET: &str = "portcullis-fuzz-secret-of-32-bytes-or-more";

/// A JWKS document: a key set or an error, never a panic; every key it
/// yields verifies (or refuses) any message and signature without a panic.
pub fn jwks(data: &[u8]) {
    let Ok(keys) = crate::auth::keys::parse_jwks(data, &None) else {
        return;
    };
    for key in &keys.keys {
        for alg in key.algorithms() {
            let _ = key.verify(alg, data, &data[..data.len().min(64)]);
        }
    }
}

/// Credentials: whatever a client sends in the route's three sources, once
/// the gateway has stripped them as it does before forwarding, none of the
/// sources yields anything (a token, or a malformed or repeated one).
/// Input: the query string, then lines `a:VALUE` (an `Authorization` header)
/// and `c:VALUE` (a `Cookie` header).
pub fn credentials(data: &[u8]) {
    use crate::config::TokenSource;
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let query = lines.next().filter(|q| !q.is_empty());
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let (name, value) = match line.split_at_checked(2) {
            Some(("a:", v)) => (http::header::AUTHORIZATION, v),
            Some(("c:", v)) => (http::header::COOKIE, v),
            _ => continue,
        };
        if let Ok(v) = http::HeaderValue::from_str(value) {
            headers.append(name, v);
        }
    }
    let sources = [
        TokenSource::Header,
        TokenSource::Query("access_token".into()),
        TokenSource::Cookie("session".into()),
    ];
    let _ = crate::auth::credential::find(&sources, &headers, query);
    headers.remove(http::header::AUTHORIZATION);
    let query = query.and_then(|q| crate::auth::credential::strip_query(q, "access_token"));
    crate::auth::credential::strip_cookie(&mut headers, "session");
    let left = crate::auth::credential::find(&sources, &headers, query.as_deref());
    assert!(
        matches!(left, Ok(None)),
        "left after stripping: {left:?} in {query:?} {headers:?}"
    );
}

/// CORS origins: a pattern (first line) and an `Origin` (second line). A
/// pattern never panics; an origin matched by a `*.` pattern is that scheme,
/// one or more labels, the suffix and the port, and nothing else.
pub fn cors(data: &[u8]) {
    use crate::config::OriginPattern;
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, origin) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(pattern) = crate::config::origin_pattern(pattern) else {
        return;
    };
    if !crate::cors::origin_matches(&pattern, origin) {
        return;
    }
    match &pattern {
        OriginPattern::Any => {}
        OriginPattern::Exact(o) => assert!(o.eq_ignore_ascii_case(origin)),
        OriginPattern::Subdomains { scheme, suffix, port } => {
            let lower = origin.to_ascii_lowercase();
            let rest = lower.strip_prefix(&format!("{scheme}://")).expect("the scheme");
            let host = match port {
                Some(p) => rest.strip_suffix(&format!(":{p}")).expect("the port"),
                None => rest,
            };
            let labels = host.strip_suffix(suffix.as_str()).expect("the suffix");
            assert!(
                !labels.is_empty()
                    && labels
                        .split('.')
                        .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
                "{origin:?} matched {pattern:?}"
            );
        }
    }
}

/// The WebSocket frame follower sees a Close frame start exactly where a
/// reference reading of the whole stream does, however the bytes are cut
/// into reads (the first byte chooses the cuts).
pub fn websocket_frames(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let mut follower = crate::proxy::tunnel::Frames::default();
    let mut seen = false;
    let step = usize::from(cut % 17) + 1;
    for chunk in stream.chunks(step) {
        seen |= follower.feed(chunk);
    }
    assert_eq!(seen, reference_close(stream), "cut every {step} bytes");
}

/// RFC 6455 §5.2 read plainly: whether any complete frame header in the
/// stream has opcode 8.
fn reference_close(mut stream: &[u8]) -> bool {
    loop {
        let [first, second, rest @ ..] = stream else {
            return false;
        };
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        let Some(length_bytes) = rest.get(..extended) else {
            return false;
        };
        if rest.len() < extended + mask {
            return false;
        }
        if first & 0x0f == 0x8 {
            return true;
        }
        let length = match extended {
            0 => u64::from(second & 0x7f),
            _ => length_bytes.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
        };
        let after = rest.len() - extended - mask;
        let Ok(length) = usize::try_from(length) else {
            return false;
        };
        if length >= after {
            return false;
        }
        stream = &rest[extended + mask + length..];
    }
}

/// Claims conditions (`auth.claims`) written in YAML, evaluated on claims
/// written in JSON (input: the conditions, a NUL byte, the claims): load
/// errors but never panics, and `not`, `all_of` and `any_of` agree with the
/// conditions they wrap.
pub fn claims(data: &[u8]) {
    use crate::policy::Condition;
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (conditions, claims) = text.split_once('\0').unwrap_or((text, "{}"));
    if conditions.contains('\n') {
        return; // one flow-style line: the route below stays what it is
    }
    let yaml = format!(
        "listen: {{ decision: 127.0.0.1:0 }}\nproviders:\n  p: {{ issuer: \"https://id.example.com/\", jwks_uri: \"https://id.example.com/jwks\" }}\nroutes:\n  - name: r\n    match: {{ path_template: \"/orgs/{{org}}/items/{{item}}\" }}\n    auth:\n      claims: {conditions}\n"
    );
    let Ok(loaded) = crate::config::Config::from_yaml(&yaml, std::path::Path::new("/nonexistent/gateway.yaml")) else {
        return;
    };
    let Some(crate::config::Access::Protected(rule)) = loaded.config.routes.first().map(|r| &r.access) else {
        return;
    };
    let Ok(serde_json::Value::Object(claims)) = serde_json::from_str::<serde_json::Value>(claims) else {
        return;
    };
    let params = [
        ("org".to_string(), "acme".to_string()),
        ("item".to_string(), "7".to_string()),
    ];
    let facts = crate::policy::Facts {
        host: Some("api.example.com"),
        path_params: &params,
    };
    for c in &rule.claims {
        let holds = c.holds(&claims, &facts);
        assert_eq!(Condition::Not(Box::new(c.clone())).holds(&claims, &facts), !holds);
        assert_eq!(Condition::AllOf(vec![c.clone()]).holds(&claims, &facts), holds);
        assert_eq!(Condition::AnyOf(vec![c.clone()]).holds(&claims, &facts), holds);
    }
    let all = crate::policy::first_failure(&rule.claims, &claims, &facts).is_none();
    assert_eq!(Condition::AllOf(rule.claims.clone()).holds(&claims, &facts), all);
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

/// W3C trace context from a client: `traceparent` (first line) and
/// `tracestate` headers (the other lines). Never a panic; a context that is
/// read has non-zero ids and survives being written and read back; a state
/// that is kept is within the recommendation's limits.
pub fn trace_context(data: &[u8]) {
    use crate::telemetry::w3c::{parent, write_traceparent, TRACEPARENT, TRACESTATE};
    let mut lines = data.split(|&b| b == b'\n');
    let mut headers = http::HeaderMap::new();
    if let Some(Ok(v)) = lines.next().map(http::HeaderValue::from_bytes) {
        headers.append(TRACEPARENT, v);
    }
    for line in lines {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            headers.append(TRACESTATE, v);
        }
    }
    let Some(p) = parent(&headers) else { return };
    assert!(p.trace_id != 0 && p.span_id != 0);
    let mut again = http::HeaderMap::new();
    again.insert(TRACEPARENT, write_traceparent(p.trace_id, p.span_id, p.sampled));
    let back = parent(&again).expect("what the gateway writes, it reads");
    assert_eq!(
        (back.trace_id, back.span_id, back.sampled),
        (p.trace_id, p.span_id, p.sampled)
    );
    if let Some(state) = p.state {
        let text = state.to_str().expect("visible ASCII");
        assert!(text.len() <= 512);
        let members = text
            .split(',')
            .map(|m| m.trim_matches([' ', '\t']))
            .filter(|m| !m.is_empty());
        assert!(members.clone().count() <= 32);
        assert!(members.clone().all(|m| m.matches('=').count() == 1), "{text:?}");
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
            b"access_token=a&access%5Ftoken=b\na:Bearer x\nc:session =y; theme=z",
            b"https://*.example.com\nhttps://a.b.example.com",
            b"\x03\x81\x05hello\x88\x00",
            b"[{claim: org, equals: \"{path.org}\"}, {not: {claim: /roles, contains: admin}}]\0{\"org\": \"acme\", \"roles\": [\"x\"]}",
            br#"{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#,
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\ncongo=t61rcWkgMzE\nrojo=00f067aa0ba902b7",
        ] {
            super::token(input);
            super::normalize(input);
            super::config(input);
            super::openapi(input);
            super::introspection_answer(input);
            let _ = super::token_second_opinion(input);
            super::jwks(input);
            super::credentials(input);
            super::cors(input);
            super::websocket_frames(input);
            super::claims(input);
            super::trace_context(input);
        }
    }

    /// The samples reach what the targets check, not only their early returns.
    #[test]
    fn samples_reach_the_checks() {
        assert!(super::reference_close(b"\x81\x02hi\x88\x00"), "text, then close");
        assert!(!super::reference_close(b"\x81\x05hi"), "an unfinished text frame");
        let yaml = "listen: { decision: 127.0.0.1:0 }\nproviders:\n  p: { issuer: \"https://id.example.com/\", jwks_uri: \"https://id.example.com/jwks\" }\nroutes:\n  - name: r\n    match: { path_template: \"/orgs/{org}/items/{item}\" }\n    auth:\n      claims: [{claim: org, equals: \"{path.org}\"}]\n";
        let loaded = crate::config::Config::from_yaml(yaml, std::path::Path::new("/nonexistent/gateway.yaml"));
        assert!(loaded.is_ok(), "{loaded:?}");
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"iss": "https://id.example.com/", "aud": "api", "sub": "a", "exp": 2_000_000}),
            &jsonwebtoken::EncodingKey::from_secret(super::FUZZ_SECRET.as_bytes()),
        )
        .unwrap();
        assert!(super::token_second_opinion(token.as_bytes()));
        assert!(!super::token_second_opinion(format!("{token}x").as_bytes()));
    }
}
