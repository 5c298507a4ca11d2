//! A configuration field as an error names it and as [`super::locate`] finds
//! it in the text: `routes[2] (orders).match.path` is the key `routes`, the
//! index 2, the keys `match` and `path`; the route's name in parentheses is
//! for the reader only. Built step by step, so a name with a `.`, `[` or `(`
//! in it is one key, never read back from the text.

use std::fmt;

use super::locate::Step;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Key(String),
    Index(usize),
    /// Shown after an index, ` (name)`; not a step.
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field(Vec<Part>);

impl Field {
    /// A top-level key.
    pub fn key(key: impl Into<String>) -> Self {
        Field(vec![Part::Key(key.into())])
    }

    /// The key `key` under this field.
    pub fn at(&self, key: impl Into<String>) -> Self {
        self.with(Part::Key(key.into()))
    }

    /// The element `i` of this list.
    pub fn index(&self, i: usize) -> Self {
        self.with(Part::Index(i))
    }

    /// This field shown with a name for the reader: `routes[2] (orders)`.
    pub fn named(&self, name: impl Into<String>) -> Self {
        self.with(Part::Label(name.into()))
    }

    /// A literal path under this field (`"match.path"`, `".request"`; empty: this field).
    pub fn then(&self, literal: &'static str) -> Self {
        let literal = literal.trim_start_matches('.');
        if literal.is_empty() {
            return self.clone();
        }
        let mut parts = self.0.clone();
        parts.extend(Field::from(literal).0);
        Field(parts)
    }

    fn with(&self, part: Part) -> Self {
        let mut parts = self.0.clone();
        parts.push(part);
        Field(parts)
    }

    /// The steps that lead to the field in the YAML document.
    pub(crate) fn steps(&self) -> Vec<Step> {
        self.0
            .iter()
            .filter_map(|p| match p {
                Part::Key(k) => Some(Step::Key(k.clone())),
                Part::Index(i) => Some(Step::Index(*i)),
                Part::Label(_) => None,
            })
            .collect()
    }
}

/// A field written as a literal in the code, such as `"listen.https"` or
/// `"identity.claims"`: dot-separated keys, each optionally followed by
/// `[index]`. Only for literals: a name from the configuration goes in with
/// [`Field::at`], whatever characters it holds.
impl From<&'static str> for Field {
    fn from(literal: &'static str) -> Self {
        let mut parts = Vec::new();
        for segment in literal.split('.') {
            match segment.split_once('[') {
                Some((key, index)) => {
                    parts.push(Part::Key(key.to_string()));
                    match index.trim_end_matches(']').parse() {
                        Ok(i) => parts.push(Part::Index(i)),
                        Err(_) => parts.push(Part::Key(format!("[{index}"))),
                    }
                }
                None => parts.push(Part::Key(segment.to_string())),
            }
        }
        Field(parts)
    }
}

impl From<&Field> for Field {
    fn from(f: &Field) -> Self {
        f.clone()
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, part) in self.0.iter().enumerate() {
            match part {
                Part::Key(k) if n == 0 => f.write_str(k)?,
                Part::Key(k) => write!(f, ".{k}")?,
                Part::Index(i) => write!(f, "[{i}]")?,
                Part::Label(name) => write!(f, " ({name})")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::*;

    #[test]
    fn shown_as_written_and_walked_by_steps() {
        let f = Field::key("routes").index(2).named("orders").at("match").at("path");
        assert_eq!(f.to_string(), "routes[2] (orders).match.path");
        assert_eq!(
            f.steps(),
            vec![Key("routes".into()), Index(2), Key("match".into()), Key("path".into())]
        );
        assert_eq!(
            Field::key("cases").index(3).then(".request.headers").to_string(),
            "cases[3].request.headers"
        );
        assert_eq!(Field::key("cases").index(3).then(""), Field::key("cases").index(3));
        let literal = Field::from("identity.claims[1].header");
        assert_eq!(literal.to_string(), "identity.claims[1].header");
        assert_eq!(
            literal.steps(),
            vec![
                Key("identity".into()),
                Key("claims".into()),
                Index(1),
                Key("header".into())
            ]
        );
    }

    #[test]
    fn a_name_is_one_key_whatever_it_holds() {
        let f = Field::key("providers").at("corp.v2 (old) [eu]").at("issuer");
        assert_eq!(f.to_string(), "providers.corp.v2 (old) [eu].issuer");
        assert_eq!(
            f.steps(),
            vec![
                Key("providers".into()),
                Key("corp.v2 (old) [eu]".into()),
                Key("issuer".into())
            ]
        );
    }
}
