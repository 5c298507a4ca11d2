//! Header rewriting on the way in and out (docs/request-lifecycle.md, steps 5, 12 and 14): strip what a
//! client could spoof, drop hop-by-hop headers, add the forwarding headers.
//! Pure functions over `HeaderMap`, so they are easy to test and to bench.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::fold_header_name;

/// Glob match where `*` stands for any run of characters (including none).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob_match(rest, &name[i..])),
        Some((&p, rest)) => name
            .split_first()
            .is_some_and(|(&n, tail)| p == n && glob_match(rest, tail)),
    }
}

/// The compiled `identity.strip_incoming` list plus the identity header names.
#[derive(Debug, Clone, Default)]
pub struct StripRules {
    patterns: Vec<String>,
}

impl StripRules {
    /// `patterns` must already be folded with [`fold_header_name`].
    pub fn new(patterns: Vec<String>, identity_names: &[&HeaderName]) -> Self {
        let mut all = patterns;
        all.extend(identity_names.iter().map(|h| fold_header_name(h.as_str())));
        StripRules { patterns: all }
    }

    pub fn matches(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        // Header names from `http` are already lower-case; only `_` needs folding.
        let folded;
        let name = if name.contains('_') {
            folded = fold_header_name(name);
            folded.as_str()
        } else {
            name
        };
        self.patterns.iter().any(|p| glob_match(p.as_bytes(), name.as_bytes()))
    }

    /// Remove every matching header from `headers`.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if self.patterns.is_empty() {
            return;
        }
        let doomed: Vec<HeaderName> = headers.keys().filter(|h| self.matches(h)).cloned().collect();
        for h in doomed {
            headers.remove(&h);
        }
    }
}

/// The identity headers set on authenticated requests (`identity` in docs/configuration.md).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    subject: HeaderName,
    scopes: HeaderName,
    claims: Vec<crate::config::ClaimHeader>,
}

impl IdentityHeaders {
    pub fn new(config: &crate::config::IdentitySettings) -> Self {
        IdentityHeaders {
            subject: config.subject_header.clone(),
            scopes: config.scopes_header.clone(),
            claims: config.claims.clone(),
        }
    }

    /// Set the identity headers from verified claims. A claim that is absent
    /// is left out; one whose value cannot travel safely in a header (CR, LF,
    /// other control characters, non-ASCII) is left out and counted, never
    /// forwarded raw.
    pub fn apply(&self, headers: &mut HeaderMap, identity: &crate::auth::Caller) {
        match identity.subject.as_ref().map(|s| claim_header(s, ",", false)) {
            Some(Rendered::Value(v)) => {
                headers.insert(self.subject.clone(), v);
            }
            Some(Rendered::Unsafe) => crate::metrics::identity_header_omitted(&self.subject),
            _ => {}
        }
        // Scope tokens were filtered to printable ASCII when collected.
        if let Ok(v) = HeaderValue::from_str(&identity.scopes.join(" ")) {
            headers.insert(self.scopes.clone(), v);
        }
        for c in &self.claims {
            let rendered = c
                .claim
                .find(&identity.claims)
                .map_or(Rendered::Absent, |v| claim_header(v, &c.join, c.json));
            match rendered {
                Rendered::Value(v) => {
                    headers.insert(c.header.clone(), v);
                }
                Rendered::Absent => {
                    headers.remove(&c.header);
                }
                Rendered::Unsafe => {
                    headers.remove(&c.header);
                    crate::metrics::identity_header_omitted(&c.header);
                }
            }
        }
    }
}

/// A claim made into a header value, or why not.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rendered {
    Value(HeaderValue),
    /// No such claim (or `null`): no header.
    Absent,
    /// The value cannot travel in a header as it is: no header, counted.
    Unsafe,
}

/// A claim as a header value. Strings as they are when every byte is visible
/// ASCII or space; arrays of such strings joined with `join` (an element
/// holding the separator makes the header ambiguous, so it is left out too);
/// numbers and booleans as JSON text; objects, other arrays, and anything
/// with `json`, as compact JSON with non-ASCII escaped, which is always safe.
pub(crate) fn claim_header(v: &serde_json::Value, join: &str, json: bool) -> Rendered {
    use serde_json::Value;
    let safe = |s: &str| s.bytes().all(|b| (0x20..0x7f).contains(&b));
    let text = match v {
        Value::Null => return Rendered::Absent,
        _ if json => ascii_json(v),
        Value::String(s) if safe(s) => s.clone(),
        Value::String(_) => return Rendered::Unsafe,
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let items: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            if items.iter().any(|s| !safe(s) || s.contains(join)) {
                return Rendered::Unsafe;
            }
            items.join(join)
        }
        _ => ascii_json(v),
    };
    HeaderValue::from_str(&text).map_or(Rendered::Unsafe, Rendered::Value)
}

/// Compact JSON with every non-ASCII character written `\uXXXX` (UTF-16,
/// surrogate pairs above U+FFFF); serde_json escapes the control characters.
fn ascii_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the gateway, and
/// every `Proxy-*` header: those are for the hop to a proxy, never for the service.
fn is_hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 6] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
        || name.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// [`is_hop_by_hop`] for a header's own name, which is always lowercase:
/// one comparison by length and bytes instead of seven case-blind ones.
fn is_hop_by_hop_name(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// Drop hop-by-hop headers, including every header named in `Connection`.
/// This runs before the gateway adds anything, so a client's
/// `Connection: X-Auth-Subject` can only remove the client's own copy.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass to find them: most messages carry none, or only `Connection`.
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|h| is_hop_by_hop_name(h)).cloned().collect();
    if doomed.is_empty() {
        return;
    }
    for v in headers.get_all(header::CONNECTION) {
        // Usually `keep-alive`, doomed already: only other names need a lookup.
        let named = v.to_str().unwrap_or("").split(',').map(str::trim);
        let others = named.filter(|t| !is_hop_by_hop(t));
        doomed.extend(others.filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok()));
    }
    for h in doomed {
        headers.remove(&h);
    }
}

/// Whether the client's `TE` header lists `trailers` (RFC 9110 §10.1.4).
pub(crate) fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
    })
}

/// An `X-Request-Id` worth keeping: `[A-Za-z0-9._-]{1,128}`.
pub(crate) fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The client's `X-Request-Id` when exactly one well-formed value was sent.
pub(crate) fn incoming_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(X_REQUEST_ID).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if valid_request_id(v) => Some(v.clone()),
        _ => None,
    }
}

/// A fresh request id: 32 hex digits from a per-process random key and a
/// counter, so ids are unique without a syscall per request.
pub(crate) fn new_request_id() -> HeaderValue {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    // Two random keys per process; each id mixes a counter with them through
    // a bijection (SplitMix64's finaliser), so ids never repeat within a
    // process and do not reveal how many requests came before.
    static KEYS: OnceLock<(u64, u64)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (a, b) = *KEYS.get_or_init(|| {
        let random = std::collections::hash_map::RandomState::new();
        (random.hash_one(1u8), random.hash_one(2u8))
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    hex_into(&mut id[..16], mix(n ^ a));
    hex_into(&mut id[16..], mix(n.wrapping_add(b)));
    // One allocation, shared by every copy (the upstream's header, the response's).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id)).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// SplitMix64's output function: a bijection on u64 that spreads every bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `v` as 16 lower-case hex digits.
fn hex_into(out: &mut [u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate().take(16) {
        *byte = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client address as an `X-Forwarded-For` element; computed once per connection.
pub fn client_address(client: std::net::IpAddr) -> HeaderValue {
    // An IP address in text form is always a valid header value.
    HeaderValue::from_str(&client.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Headers never forwarded from a client: forwarding headers the gateway
/// does not write (an upstream that trusts "proxy headers" only ever sees
/// values the gateway wrote), and the method and URL overrides that Symfony,
/// Laravel, Rack, Express and IIS act on, which would let a request be
/// routed here as one method or path and served upstream as another.
const NEVER_FORWARDED: [HeaderName; 8] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Fields that only a request's head may carry, or that the gateway itself
/// writes: never taken from a client's trailer section (RFC 9110 §6.5.1).
const NOT_IN_TRAILERS: [HeaderName; 10] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::HOST,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    X_REQUEST_ID,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

/// A client's request trailers made fit for the upstream, by the rules its
/// headers go through: hop-by-hop fields out, every `strip_incoming` and
/// identity name out, and nothing the gateway writes or a head must carry.
pub(crate) fn filter_trailers(strip: &StripRules, trailers: &mut HeaderMap) {
    remove_hop_by_hop(trailers);
    strip.strip(trailers);
    for name in NOT_IN_TRAILERS.iter().chain(&NEVER_FORWARDED) {
        trailers.remove(name);
    }
}

/// Append the client address to `X-Forwarded-For`, folding repeated headers
/// into one list; set `X-Forwarded-Proto: https` and `X-Forwarded-Host`;
/// remove the other forwarding headers and the overrides a client may have sent.
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, host: Option<&HeaderValue>) {
    // One scan of the few headers a request has, rather than a lookup per
    // name: almost no request carries any of them.
    if headers.keys().any(|k| NEVER_FORWARDED.contains(k)) {
        for name in &NEVER_FORWARDED {
            headers.remove(name);
        }
    }
    let mut chain = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                chain.push_str(s);
                chain.push_str(", ");
            }
        }
    }
    if chain.is_empty() {
        headers.insert(X_FORWARDED_FOR, client.clone());
    } else {
        chain.push_str(client.to_str().unwrap_or("unknown"));
        if let Ok(v) = HeaderValue::from_str(&chain) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn claims_as_headers() {
        use serde_json::json;
        let v = |r: Rendered| match r {
            Rendered::Value(v) => v.to_str().unwrap().to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(
            v(claim_header(&json!("alice@example.com"), ",", false)),
            "alice@example.com"
        );
        assert_eq!(v(claim_header(&json!("a b"), ",", false)), "a b");
        assert_eq!(
            claim_header(&json!("evil\r\nX-Auth-Subject: root"), ",", false),
            Rendered::Unsafe
        );
        assert_eq!(claim_header(&json!("tab\there"), ",", false), Rendered::Unsafe);
        assert_eq!(claim_header(&json!("Zoë"), ",", false), Rendered::Unsafe);
        assert_eq!(claim_header(&json!(null), ",", false), Rendered::Absent);
        assert_eq!(v(claim_header(&json!(42), ",", false)), "42");
        assert_eq!(v(claim_header(&json!(true), ",", false)), "true");
        assert_eq!(v(claim_header(&json!(["a", "b"]), ",", false)), "a,b");
        assert_eq!(v(claim_header(&json!(["a", "b"]), " | ", false)), "a | b");
        assert_eq!(claim_header(&json!(["a,b", "c"]), ",", false), Rendered::Unsafe);
        assert_eq!(claim_header(&json!(["a", "b\n"]), ",", false), Rendered::Unsafe);
        assert_eq!(v(claim_header(&json!([]), ",", false)), "");
        assert_eq!(v(claim_header(&json!([1, "a"]), ",", false)), r#"[1,"a"]"#);
        assert_eq!(
            v(claim_header(&json!({"k": "Zoë\n"}), ",", false)),
            r#"{"k":"Zo\u00eb\n"}"#
        );
        assert_eq!(
            v(claim_header(&json!(["😀", "b"]), ",", true)),
            r#"["\ud83d\ude00","b"]"#
        );
        assert_eq!(v(claim_header(&json!("plain"), ",", true)), r#""plain""#);
    }

    #[test]
    fn trailers_lose_what_headers_would() {
        let strip = StripRules::new(vec!["x-auth-*".into()], &[&HeaderName::from_static("x-user")]);
        let mut t = map(&[
            ("grpc-status", "0"),
            ("x-checksum", "abc"),
            ("x-auth-subject", "root"),
            ("x_auth_scopes", "admin"),
            ("x-user", "root"),
            ("authorization", "Bearer x"),
            ("connection", "x-checksum"),
            ("te", "trailers"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-http-method-override", "DELETE"),
            ("host", "internal"),
        ]);
        filter_trailers(&strip, &mut t);
        let left: Vec<&str> = t.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["grpc-status"]);
    }

    #[test]
    fn overrides_are_never_forwarded() {
        let mut h = map(&[
            ("x-http-method-override", "DELETE"),
            ("X-Method-Override", "PUT"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-kept", "1"),
        ]);
        set_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), None);
        assert!(h.contains_key("x-kept"));
        for gone in [
            "x-http-method-override",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn glob() {
        let cases = [
            ("x-auth-*", "x-auth-subject", true),
            ("x-auth-*", "x-auth-", true),
            ("x-auth-*", "x-author", false),
            ("*-secret", "x-secret", true),
            ("x-*-id", "x-user-id", true),
            ("x-*-id", "x-user-idx", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "anything", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(glob_match(p.as_bytes(), n.as_bytes()), want, "{p} vs {n}");
        }
    }

    #[test]
    fn strip_folds_case_and_underscores() {
        let rules = StripRules::new(
            vec![fold_header_name("X-Auth-*")],
            &[&HeaderName::from_static("x-user")],
        );
        let mut h = map(&[
            ("x-auth-subject", "a"),
            ("X_Auth_Scopes", "b"),
            ("x-user", "c"),
            ("x_user", "d"),
            ("x-other", "e"),
        ]);
        rules.strip(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-other"));
    }

    #[test]
    fn the_name_check_agrees_with_the_case_blind_one() {
        for name in [
            "connection",
            "Connection",
            "KEEP-ALIVE",
            "te",
            "tE",
            "trailer",
            "trailers",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "Proxy-Foo",
            "proxy",
            "proxy-",
            "x-proxy-a",
            "accept",
            "t",
            "connections",
        ] {
            let header = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(is_hop_by_hop_name(&header), is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Auth-Subject, x-custom"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-foo", "1"),
            ("x-custom", "1"),
            ("x-auth-subject", "spoof"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["accept"]);

        // Names compared without regard to case, every Connection header read.
        let mut h = map(&[
            ("connection", "Keep-Alive, Close"),
            ("connection", "X-Second"),
            ("Keep-Alive", "timeout=5"),
            ("close", "reserved"),
            ("x-second", "1"),
            ("Proxy-Thing", "1"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), vec!["accept"]);
    }

    #[test]
    fn te_trailers() {
        assert!(accepts_trailers(&map(&[("te", "trailers")])));
        assert!(accepts_trailers(&map(&[("te", "gzip, Trailers")])));
        assert!(accepts_trailers(&map(&[("te", "deflate;q=0.5"), ("te", "trailers")])));
        assert!(!accepts_trailers(&map(&[("te", "gzip")])));
        assert!(!accepts_trailers(&map(&[("te", "trailersx")])));
        assert!(!accepts_trailers(&HeaderMap::new()));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=10.0.0.1;proto=https"),
            ("x-real-ip", "10.0.0.1"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
        ]);
        let client = client_address("127.0.0.1".parse().unwrap());
        set_forwarded(&mut h, &client, Some(&HeaderValue::from_static("api.example.com")));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1");
        let mut first = HeaderMap::new();
        set_forwarded(&mut first, &client_address("::1".parse().unwrap()), None);
        assert_eq!(first["x-forwarded-for"], "::1");
        assert!(!first.contains_key("x-forwarded-host"));
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        for foreign in ["forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix"] {
            assert!(!h.contains_key(foreign), "{foreign} must be removed");
        }
    }

    #[test]
    fn identity_values() {
        use serde_json::json;
        let value = |v: serde_json::Value| match claim_header(&v, ",", false) {
            Rendered::Value(h) => Some(h),
            _ => None,
        };
        assert_eq!(value(json!("alice")).unwrap(), "alice");
        assert_eq!(value(json!(42)).unwrap(), "42");
        assert_eq!(value(json!({"a": [1, "b"]})).unwrap(), r#"{"a":[1,"b"]}"#);
        assert!(value(json!("line\nbreak")).is_none());
        assert!(value(json!("evil\r\nX-Injected: 1")).is_none());
        assert!(value(json!("nul\u{0}")).is_none());
        assert!(value(json!(null)).is_none());
        // An array of strings is joined, so a newline in one leaves the header out.
        assert!(value(json!(["a\nb"])).is_none());
        // Inside an object, JSON escapes it: safe.
        assert_eq!(value(json!({"k": "a\nb"})).unwrap(), r#"{"k":"a\nb"}"#);
    }

    #[test]
    fn generated_request_ids_are_distinct_hex() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(id.len(), 32);
            assert!(id
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(valid_request_id(id));
        }
        let mut v = [0u8; 16];
        hex_into(&mut v, 0x0123_4567_89ab_cdef);
        assert_eq!(&v, b"0123456789abcdef");
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(&HeaderValue::from_static("abc-DEF_1.2")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!valid_request_id(&HeaderValue::from_str(&"a".repeat(129)).unwrap()));
        assert!(valid_request_id(&HeaderValue::from_str(&"a".repeat(128)).unwrap()));
        let two = map(&[("x-request-id", "a"), ("x-request-id", "b")]);
        assert_eq!(incoming_request_id(&two), None);
    }
}
