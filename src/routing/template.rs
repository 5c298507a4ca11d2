//! Path templates (`/items/{item_id}/owner`): each `{name}` stands for exactly
//! one non-empty path segment; every other segment compares exactly, and so
//! does the end of the path (`/items/7/owner/` does not match). This is how
//! OpenAPI and FastAPI write their paths, so a route table can be generated
//! from an application's own description of itself.

use std::fmt;

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    pub text: String,
    /// The segments after the leading `/`; a trailing `/` is an empty literal.
    pub segments: Vec<Segment>,
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PathTemplate {
    /// Parse a template; literal segments must already be in normal form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| "must start with '/'".to_string())?;
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        let parts: Vec<&str> = rest.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(format!(
                        "{{{name}}} is not a parameter name (letters, digits, '_' and '-')"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("the parameter {{{name}}} appears twice"));
                }
                names.push(name);
                segments.push(Segment::Param(name.to_string()));
            } else if part.contains(['{', '}']) {
                return Err(format!(
                    "{part:?}: a parameter must be a whole segment, as in /items/{{id}}"
                ));
            } else if part.is_empty() && i + 1 != parts.len() {
                return Err("has an empty segment ('//')".into());
            } else if *part == "." || *part == ".." {
                return Err("has a '.' or '..' segment".into());
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        // `/` alone is one empty literal: a template of just the root.
        Ok(PathTemplate {
            text: text.to_string(),
            segments,
        })
    }

    /// Whether a normalised request path matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Literal(l), Some(p)) if l == p => {}
                (Segment::Param(_), Some(p)) if !p.is_empty() => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }

    /// The parameters of a matching normalised path, percent-decoded
    /// (`None` when the path does not match, or a value is not UTF-8).
    pub fn params(&self, path: &str) -> Option<Vec<(String, String)>> {
        if !self.matches(path) {
            return None;
        }
        let parts = path.strip_prefix('/')?.split('/');
        self.segments
            .iter()
            .zip(parts)
            .filter_map(|(seg, value)| match seg {
                Segment::Param(name) => Some((name, value)),
                Segment::Literal(_) => None,
            })
            .map(|(name, value)| {
                let decoded = String::from_utf8(super::normalize::percent_decode(value)).ok()?;
                Some((name.clone(), decoded))
            })
            .collect()
    }

    /// The literal segments before the first parameter, as a path (`/items`).
    pub(crate) fn literal_prefix(&self) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) if !l.is_empty() => {
                    out.push('/');
                    out.push_str(l);
                }
                _ => break,
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }

    /// Whether every path this template matches is matched by `other` too.
    pub fn within(&self, other: &PathTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(mine, theirs)| match (mine, theirs) {
                    (_, Segment::Param(_)) => !matches!(mine, Segment::Literal(l) if l.is_empty()),
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    (Segment::Param(_), Segment::Literal(_)) => false,
                })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let t = PathTemplate::parse("/items/{item_id}/owner").unwrap();
        let cases = [
            ("/items/7/owner", true),
            ("/items/abc-def/owner", true),
            ("/items/7/owner/", false),
            ("/items//owner", false),
            ("/items/owner", false),
            ("/items/7/8/owner", false),
            ("/items/7/owners", false),
            ("/Items/7/owner", false),
            ("/items/7", false),
            ("items/7/owner", false),
        ];
        for (path, want) in cases {
            assert_eq!(t.matches(path), want, "{path}");
        }
        let two = PathTemplate::parse("/users/{user}/orders/{order}").unwrap();
        assert!(two.matches("/users/u1/orders/o2"));
        assert!(!two.matches("/users/u1/orders/"));
        assert_eq!(two.literal_prefix(), "/users");
        let slash = PathTemplate::parse("/dirs/{d}/").unwrap();
        assert!(slash.matches("/dirs/x/"));
        assert!(!slash.matches("/dirs/x"));
    }

    #[test]
    fn refused_templates() {
        for bad in [
            "items/{id}",
            "/items/{}",
            "/items/{id}{x}",
            "/items/x{id}",
            "/a//{b}",
            "/a/{b}/{b}",
            "/a/../{b}",
            "/a/{b c}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coverage() {
        let t = |s: &str| PathTemplate::parse(s).unwrap();
        assert!(t("/items/7/owner").within(&t("/items/{id}/owner")));
        assert!(t("/items/{a}/owner").within(&t("/items/{id}/owner")));
        assert!(!t("/items/{id}/owner").within(&t("/items/7/owner")));
        assert!(!t("/items/{id}").within(&t("/items/{id}/owner")));
    }
}
