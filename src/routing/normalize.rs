//! Request-path normalisation (docs/request-lifecycle.md, step 4): the one place that turns the path a
//! client sent into the path that routing sees and the upstream receives.
//!
//! Order matters and is fixed: decode unreserved escapes once, merge repeated
//! `/`, then remove `.` / `..` segments (RFC 3986 §5.2.4). Anything that could
//! make the gateway and the upstream disagree about what path was asked for
//! (an encoded `/` or `\`, control characters, a `..` above the root) is refused
//! instead of guessed at.

use std::fmt;

/// `%XX` escapes decoded; a `%` not followed by two hex digits is kept as written.
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Whether `prefix` is `path` or a leading run of its segments.
pub(crate) fn segment_prefix(prefix: &str, path: &str) -> bool {
    prefix == "/" || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// Why a path was refused. Every variant is answered 400 `invalid_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (e.g. `*` or an empty path).
    NotAbsolute,
    /// `%2F` or `%5C`: the upstream might split on it where we did not.
    EncodedSeparator,
    /// A raw `\`: some servers treat it as `/`.
    Backslash,
    /// A raw or encoded control character (`%00`-`%1F`, `%7F`).
    ControlCharacter,
    /// A `%` not followed by two hex digits.
    MalformedEscape,
    /// A `..` that would climb above `/`.
    AboveRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the request path must start with '/'",
            PathError::EncodedSeparator => "the request path contains an encoded '/' or '\\'",
            PathError::Backslash => "the request path contains a backslash",
            PathError::ControlCharacter => "the request path contains a control character",
            PathError::MalformedEscape => "the request path contains a malformed percent-escape",
            PathError::AboveRoot => "the request path climbs above the root",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalise an origin-form path (without the query string).
///
/// The result always starts with `/`; a trailing `/` is kept, because `/a/` and
/// `/a` are different resources to many upstreams.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if is_normal(raw) {
        return Ok(raw.to_owned());
    }
    let decoded = decode_unreserved(raw)?;
    remove_dot_segments(&decoded)
}

/// Whether `raw` is already what normalising it gives, as nearly every path
/// is: absolute, nothing to decode or refuse, and no empty, `.` or `..`
/// segment (a trailing `/` aside). One scan, no copy but the result's.
fn is_normal(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    if !raw.bytes().all(|b| b >= 0x20 && b != 0x7f && b != b'%' && b != b'\\') {
        return false;
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Step 1: decode `%XX` when it names an unreserved character; keep every other
/// escape (upper-cased, RFC 3986 §6.2.2.1). Decoding happens exactly once, so
/// `%252e` stays `%252e` rather than becoming `.`.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::MalformedEscape),
                };
                let value = match (hex_value(hi), hex_value(lo)) {
                    (Some(h), Some(l)) => h << 4 | l,
                    _ => return Err(PathError::MalformedEscape),
                };
                if value == b'/' || value == b'\\' {
                    return Err(PathError::EncodedSeparator);
                }
                if value < 0x20 || value == 0x7f {
                    return Err(PathError::ControlCharacter);
                }
                if is_unreserved(value) {
                    out.push(value as char);
                } else {
                    out.push('%');
                    out.push(hi.to_ascii_uppercase() as char);
                    out.push(lo.to_ascii_uppercase() as char);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            _ => {
                // Copy the run of ordinary bytes up to the next special one in one go;
                // slicing at ASCII bytes always lands on a char boundary.
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b'%' | b'\\') && bytes[i] >= 0x20 && bytes[i] != 0x7f {
                    i += 1;
                }
                out.push_str(&raw[start..i]);
                continue;
            }
        }
    }
    Ok(out)
}

/// Steps 2 and 3: merge repeated `/` and resolve `.` / `..` with a segment stack.
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    // Whether the output ends in `/`: a trailing empty segment, `.` or `..`.
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_paths() {
        let cases = [
            ("/", "/"),
            ("/api/orders", "/api/orders"),
            ("/api/orders/", "/api/orders/"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/./admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/./b/../c", "/a/c"),
            ("/%41%62c", "/Abc"),
            ("/%7euser", "/~user"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/%252e%252e/admin", "/%252e%252e/admin"),
            ("/%25", "/%25"),
            ("/a/..", "/"),
            ("/..a/b..", "/..a/b.."),
            ("/.../x", "/.../x"),
            ("/café", "/café"),
            ("/a;b=c", "/a;b=c"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).as_deref(), Ok(want), "input {input:?}");
        }
    }

    #[test]
    fn refused_paths() {
        use PathError::*;
        let cases = [
            ("", NotAbsolute),
            ("*", NotAbsolute),
            ("admin", NotAbsolute),
            ("/admin%2f", EncodedSeparator),
            ("/admin%2F..", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/a%5Cb", EncodedSeparator),
            ("/a\\b", Backslash),
            ("/a%00b", ControlCharacter),
            ("/a%1fb", ControlCharacter),
            ("/a%7fb", ControlCharacter),
            ("/a\u{1}b", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/a\u{7f}", ControlCharacter),
            ("/a%", MalformedEscape),
            ("/a%2", MalformedEscape),
            ("/a%zz", MalformedEscape),
            ("/a%g1", MalformedEscape),
            ("/..", AboveRoot),
            ("/../etc/passwd", AboveRoot),
            ("/a/../../b", AboveRoot),
            ("/%2e%2e/x", AboveRoot),
            ("//..//x", AboveRoot),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), Err(want), "input {input:?}");
        }
    }

    /// Random paths over the characters that matter: never a panic, and every
    /// accepted result is absolute, has no empty, `.` or `..` segment, and
    /// normalises to itself.
    #[test]
    fn random_inputs_hold_the_invariants() {
        const ALPHABET: &[&str] = &[
            "/", "/", ".", "..", "%", "%2e", "%2E", "%2f", "%5c", "%25", "%00", "%41", "a", "\\", "~", "%7", "é", ";",
            "?",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut path = String::from("/");
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for i in 0..(state % 12) {
                let pick = (state.rotate_left(i as u32 * 5) % ALPHABET.len() as u64) as usize;
                path.push_str(ALPHABET[pick]);
            }
            if let Ok(out) = normalize(&path) {
                assert!(out.starts_with('/'), "{path:?} -> {out:?}");
                let inner = &out[1..out.len() - usize::from(out.len() > 1 && out.ends_with('/'))];
                assert!(
                    inner.is_empty() || inner.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".."),
                    "{path:?} -> {out:?}"
                );
                assert_eq!(normalize(&out).as_deref(), Ok(out.as_str()), "{path:?}");
            }
        }
    }

    /// The shortcut for paths already in normal form gives exactly what the
    /// full steps give, for every short path (over 80,000 of them) built
    /// from the pieces that matter.
    #[test]
    fn shortcut_agrees_with_the_full_steps() {
        const PIECES: &[&str] = &["/", ".", "a", "%2e", "%", "\\", "\t", "é"];
        let mut paths = vec![String::from("/")];
        let mut checked = 0;
        while let Some(path) = paths.pop() {
            let full = decode_unreserved(&path).and_then(|d| remove_dot_segments(&d));
            if is_normal(&path) {
                assert_eq!(full.as_deref(), Ok(path.as_str()), "{path:?} is not normal");
            }
            assert_eq!(normalize(&path), full, "{path:?}");
            checked += 1;
            if path.len() < 7 {
                paths.extend(PIECES.iter().map(|p| format!("{path}{p}")));
            }
        }
        assert!(checked > 50_000, "only {checked} paths checked");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for input in ["/a//b/./c/../d/", "/%2e/x", "/%252e", "/x%20y/"] {
            let once = normalize(input).expect("valid");
            assert_eq!(normalize(&once).as_deref(), Ok(once.as_str()), "input {input:?}");
        }
    }
}
