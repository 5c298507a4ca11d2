//! Where a field sits in the YAML text, so that validation errors (found after
//! parsing, on typed values) still point at `file:line:column`.
//!
//! yaml_serde keeps no spans, but it stamps every error raised while visiting a
//! node with that node's position. [`locate`] walks the document to the field
//! and raises a marker error there; the error's position is the answer.

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a field path: `routes[2].match` is `routes`, `2`, `match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

const FOUND: &str = "portcullis-located";

/// 1-based line and column of the node at `path`, or of its deepest ancestor
/// that the text has (a key left out to take its default is not in the text).
pub(crate) fn locate(text: &str, path: &[Step]) -> Option<(usize, usize)> {
    (1..=path.len()).rev().find_map(|n| {
        let err = Seek(&path[..n])
            .deserialize(serde_yaml::Deserializer::from_str(text))
            .err()?;
        // yaml_serde prefixes the message with the path it walked.
        if !err.to_string().contains(FOUND) {
            return None;
        }
        err.location().map(|l| (l.line(), l.column()))
    })
}

/// Visits the document down `path`; at its end, fails with [`FOUND`].
struct Seek<'p>(&'p [Step]);

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Seek<'_> {
    fn scalar<E: de::Error>(self) -> Result<(), E> {
        if self.0.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((step, rest)) = self.0.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        while let Some(key) = map.next_key::<String>()? {
            if matches!(step, Step::Key(k) if *k == key) {
                map.next_value_seed(Seek(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((step, rest)) = self.0.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        let mut i = 0;
        loop {
            let found = if matches!(step, Step::Index(n) if *n == i) {
                seq.next_element_seed(Seek(rest))?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !found {
                return Ok(());
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "listen:\n  https: 127.0.0.1:8443\nproviders:\n  corp:\n    issuer: https://id/\n    secret_env: X\nroutes:\n  - name: a\n    match: { path: /a }\n    upstream: nope\n  - name: b\n    match:\n      path: /b\n";

    fn at(field: super::super::Field) -> Option<(usize, usize)> {
        locate(YAML, &field.steps())
    }

    #[test]
    fn fields_are_found_where_they_are_written() {
        use super::super::Field;
        let route = |i| Field::key("routes").index(i).named("a");
        assert_eq!(at(route(0).at("upstream")), Some((10, 15)));
        assert_eq!(at(route(1).at("match").at("path")), Some((13, 13)));
        assert_eq!(
            at(route(0).at("match").at("path")),
            Some((9, 20)),
            "inside a flow mapping"
        );
        assert_eq!(at(Field::from("providers.corp.secret_env")), Some((6, 17)));
        // A key left out is reported at its parent.
        assert_eq!(at(Field::from("providers.corp.audiences")), Some((5, 5)));
        assert_eq!(at(Field::from("routes[7]")), Some((8, 3)));
        assert_eq!(at(Field::from("nowhere")), None);
    }
}
