//! Scopes: read from the configured claims (space-delimited string or array of
//! strings), and checked against a route's `scopes` / `any_scopes`.

use serde_json::{Map, Value};

use crate::config::AuthRule;

/// A scope token as RFC 6749 §3.3 defines it: printable ASCII without space,
/// `"` or `\`. Anything else is dropped, so it can never reach a header.
fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// The union of the scopes found in `claim_names`, sorted and de-duplicated.
pub fn collect(claims: &Map<String, Value>, claim_names: &[String]) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for name in claim_names {
        match claims.get(name) {
            Some(Value::String(s)) => scopes.extend(s.split(' ').filter(|s| valid_scope(s)).map(str::to_string)),
            Some(Value::Array(items)) => scopes.extend(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|s| valid_scope(s))
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    scopes.sort_unstable();
    scopes.dedup();
    scopes
}

/// `Err(scope)` with the value for `WWW-Authenticate: ... scope="..."`: the
/// route's `scopes` when one of them is missing, else its `any_scopes`.
pub(crate) fn authorize(rule: &AuthRule, granted: &[String]) -> Result<(), String> {
    let has = |s: &String| granted.binary_search(s).is_ok();
    if !rule.scopes.iter().all(has) {
        return Err(rule.scopes.join(" "));
    }
    if !rule.any_scopes.is_empty() && !rule.any_scopes.iter().any(has) {
        return Err(rule.any_scopes.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scope_claim_forms() {
        let claims = json!({
            "scope": "b a  a",
            "scp": ["c", "b", 3, "bad scope"],
            "scopes": ["d"],
            "permissions": "ignored unless configured",
            "x": "quote\"d"
        });
        let Value::Object(map) = claims else { unreachable!() };
        assert_eq!(
            collect(&map, &names(&["scope", "scp", "scopes"])),
            names(&["a", "b", "c", "d"])
        );
        assert_eq!(collect(&map, &names(&["x"])), Vec::<String>::new());
        assert_eq!(collect(&map, &names(&["missing"])), Vec::<String>::new());
    }

    #[test]
    fn rules() {
        let rule = |scopes: &[&str], any: &[&str]| AuthRule {
            providers: vec![0],
            scopes: names(scopes),
            any_scopes: names(any),
            token_sources: vec![crate::config::TokenSource::Header],
            monitor: false,
            claims: vec![],
            claims_read_path: false,
            resource_metadata: false,
        };
        let granted = names(&["admin", "orders:read"]);
        assert_eq!(authorize(&rule(&[], &[]), &granted), Ok(()));
        assert_eq!(authorize(&rule(&["orders:read"], &[]), &granted), Ok(()));
        assert_eq!(
            authorize(&rule(&["orders:read", "orders:write"], &[]), &granted),
            Err("orders:read orders:write".into())
        );
        assert_eq!(authorize(&rule(&["orders:read"], &["ops", "admin"]), &granted), Ok(()));
        assert_eq!(
            authorize(&rule(&["orders:read"], &["ops", "root"]), &granted),
            Err("ops root".into())
        );
        assert_eq!(authorize(&rule(&["x"], &["ops"]), &granted), Err("x".into()));
    }
}
