//! `portcullis import-openapi`: a route table from an application's OpenAPI
//! 3.0 / 3.1 document (FastAPI serves one at `/openapi.json`).
//!
//! One route per path and set of methods sharing a requirement; paths with
//! parameters become `path_template`, the others `path_exact`, and
//! template-free paths come first (so `/users/me` wins over `/users/{id}`).
//! Scopes come from the operation's `security` (else the document's) on
//! OAuth2 or OpenID Connect schemes. An operation with no requirement is
//! `public: true`. Whatever cannot be expressed (alternatives between
//! requirements, API-key or HTTP schemes, parameters inside a segment) is
//! reported, and the route is protected with the strictest requirement seen:
//! an import never makes anything public by guessing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Deserialize;

use crate::routing::template::PathTemplate;

#[derive(Debug, Deserialize)]
struct Document {
    #[serde(default)]
    openapi: String,
    #[serde(default)]
    paths: BTreeMap<String, PathItem>,
    security: Option<Vec<Requirement>>,
    components: Option<Components>,
}

#[derive(Debug, Default, Deserialize)]
struct Components {
    #[serde(default, rename = "securitySchemes")]
    security_schemes: BTreeMap<String, Scheme>,
}

#[derive(Debug, Deserialize)]
struct Scheme {
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Debug, Default, Deserialize)]
struct PathItem {
    get: Option<Operation>,
    put: Option<Operation>,
    post: Option<Operation>,
    delete: Option<Operation>,
    options: Option<Operation>,
    head: Option<Operation>,
    patch: Option<Operation>,
    trace: Option<Operation>,
}

#[derive(Debug, Deserialize)]
struct Operation {
    #[serde(rename = "operationId")]
    operation_id: Option<String>,
    security: Option<Vec<Requirement>>,
}

/// An operation's method and route name.
type MethodAndName = (&'static str, String);

/// A security requirement object: scheme name -> scopes.
type Requirement = BTreeMap<String, Vec<String>>;

/// What a route needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Public,
    Scopes(BTreeSet<String>),
}

/// What the import produced.
#[derive(Debug)]
pub struct Imported {
    /// `routes:` entries as YAML.
    pub yaml: String,
    /// What could not be expressed exactly, one line each.
    pub notes: Vec<String>,
    pub routes: usize,
}

/// Options of the command.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub upstream: String,
    pub provider: Option<String>,
}

/// How a route's path is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Matcher {
    Exact,
    Template,
    Prefix,
}

impl Matcher {
    fn key(self) -> &'static str {
        match self {
            Matcher::Exact => "path_exact",
            Matcher::Template => "path_template",
            Matcher::Prefix => "path",
        }
    }
}

struct Route {
    names: Vec<String>,
    path: String,
    matcher: Matcher,
    methods: Vec<&'static str>,
    need: Need,
    notes: Vec<String>,
}

/// Build the routes for `text` (JSON or YAML).
pub fn import(text: &str, options: &ImportOptions) -> Result<Imported, String> {
    let doc: Document = serde_yaml::from_str(text).map_err(|e| format!("not an OpenAPI document: {e}"))?;
    if !doc.openapi.starts_with("3.") {
        return Err(format!(
            "only OpenAPI 3.0 and 3.1 are supported (the document says openapi: {:?})",
            doc.openapi
        ));
    }
    let schemes = doc.components.map(|c| c.security_schemes).unwrap_or_default();
    let mut notes = Vec::new();
    let mut routes: Vec<Route> = Vec::new();
    for (path, item) in &doc.paths {
        // Operations grouped by requirement (and notes): each group is one route.
        let mut groups: BTreeMap<(Need, Vec<String>), Vec<MethodAndName>> = BTreeMap::new();
        for (method, op) in operations(item) {
            let name = op
                .operation_id
                .clone()
                .unwrap_or_else(|| format!("{}_{}", method.to_ascii_lowercase(), slug(path)));
            let requirement = op.security.as_ref().or(doc.security.as_ref());
            let mut op_notes = Vec::new();
            let need = need_of(requirement, &schemes, &mut op_notes);
            let op_notes: Vec<String> = op_notes
                .into_iter()
                .map(|n| format!("{method} {path} ({name}): {n}"))
                .collect();
            groups.entry((need, op_notes)).or_default().push((method, name));
        }
        let (literal, shape_note) = path_shape(path);
        for ((mut need, mut op_notes), ops) in groups {
            if let Some(note) = &shape_note {
                op_notes.push(format!("{path}: {note}"));
                if need == Need::Public {
                    // Matching more than the document says must not open anything.
                    need = Need::Scopes(BTreeSet::new());
                }
            }
            let matcher = match (&literal, path.contains('{')) {
                (Some(_), _) => Matcher::Prefix,
                (None, true) => Matcher::Template,
                (None, false) => Matcher::Exact,
            };
            routes.push(Route {
                names: ops.iter().map(|(_, n)| n.clone()).collect(),
                path: literal.clone().unwrap_or_else(|| path.clone()),
                matcher,
                methods: ops.iter().map(|(m, _)| *m).collect(),
                need,
                notes: op_notes,
            });
        }
    }
    // Exact paths first, then templates, then prefixes; each in path order.
    routes.sort_by(|a, b| (a.matcher, &a.path).cmp(&(b.matcher, &b.path)));

    let mut yaml = String::from("routes:\n");
    let mut used: BTreeSet<String> = BTreeSet::new();
    for r in &routes {
        let mut name = r.names.join("+");
        let base = name.clone();
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{base}-{n}");
            n += 1;
        }
        for note in &r.notes {
            let _ = writeln!(yaml, "  # {note}");
            notes.push(note.clone());
        }
        let _ = writeln!(yaml, "  - name: {}", quote(&name));
        let _ = writeln!(
            yaml,
            "    match: {{ {}: {}, methods: [{}] }}",
            r.matcher.key(),
            quote(&r.path),
            r.methods.join(", ")
        );
        let _ = writeln!(yaml, "    upstream: {}", quote(&options.upstream));
        match &r.need {
            Need::Public => yaml.push_str("    public: true\n"),
            Need::Scopes(scopes) => {
                let mut auth = Vec::new();
                if let Some(p) = &options.provider {
                    auth.push(format!("providers: [{}]", quote(p)));
                }
                if !scopes.is_empty() {
                    let list: Vec<String> = scopes.iter().map(|s| quote(s)).collect();
                    auth.push(format!("scopes: [{}]", list.join(", ")));
                }
                if auth.is_empty() {
                    yaml.push_str("    auth: {}\n");
                } else {
                    let _ = writeln!(yaml, "    auth: {{ {} }}", auth.join(", "));
                }
            }
        }
    }
    Ok(Imported {
        yaml,
        notes,
        routes: routes.len(),
    })
}

fn operations(item: &PathItem) -> Vec<(&'static str, &Operation)> {
    [
        ("GET", &item.get),
        ("PUT", &item.put),
        ("POST", &item.post),
        ("DELETE", &item.delete),
        ("OPTIONS", &item.options),
        ("HEAD", &item.head),
        ("PATCH", &item.patch),
        ("TRACE", &item.trace),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
    .collect()
}

/// The requirement an operation's `security` expresses, noting what it cannot.
fn need_of(
    requirement: Option<&Vec<Requirement>>,
    schemes: &BTreeMap<String, Scheme>,
    notes: &mut Vec<String>,
) -> Need {
    let Some(alternatives) = requirement else {
        return Need::Public;
    };
    // `security: []` or `[{}]`: no requirement at all.
    if alternatives.iter().all(|r| r.is_empty()) {
        return Need::Public;
    }
    if alternatives.len() > 1 {
        notes.push(format!(
            "{} alternative security requirements cannot be expressed (a route has one); protected with all their scopes together",
            alternatives.len()
        ));
    }
    let mut scopes = BTreeSet::new();
    for requirement in alternatives {
        for (scheme, wanted) in requirement {
            match schemes.get(scheme).map(|s| s.kind.as_str()) {
                Some("oauth2") | Some("openIdConnect") => scopes.extend(wanted.iter().cloned()),
                Some(kind) => notes.push(format!(
                    "the {kind:?} scheme {scheme:?} is not a bearer token the gateway checks; protected with the OAuth2 scopes alone"
                )),
                None => notes.push(format!(
                    "the security scheme {scheme:?} is not defined in components.securitySchemes; protected"
                )),
            }
        }
    }
    Need::Scopes(scopes)
}

/// A path the route table cannot express as a template (a parameter inside a
/// segment, `/files/{name}.txt`) is matched by its literal prefix instead.
fn path_shape(path: &str) -> (Option<String>, Option<String>) {
    if !path.contains('{') || PathTemplate::parse(path).is_ok() {
        return (None, None);
    }
    let literal: Vec<&str> = path.split('/').skip(1).take_while(|s| !s.contains('{')).collect();
    let prefix = format!("/{}", literal.join("/"));
    (
        Some(prefix.clone()),
        Some(format!(
            "a parameter inside a segment cannot be a template; matched as a prefix ({prefix}) and protected"
        )),
    )
}

fn slug(path: &str) -> String {
    path.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_matches('_')
        .to_string()
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ImportOptions {
        ImportOptions {
            upstream: "app".into(),
            provider: None,
        }
    }

    #[test]
    fn requirements() {
        let doc = r#"{
          "openapi": "3.1.0",
          "components": {"securitySchemes": {
            "oauth": {"type": "oauth2"}, "oidc": {"type": "openIdConnect"}, "key": {"type": "apiKey"}}},
          "paths": {
            "/public": {"get": {"operationId": "pub", "security": []}},
            "/none": {"get": {"operationId": "none"}},
            "/empty": {"get": {"operationId": "empty", "security": [{}]}},
            "/scoped": {"get": {"operationId": "s", "security": [{"oauth": ["a", "b"]}]}},
            "/alt": {"get": {"operationId": "alt", "security": [{"oauth": ["a"]}, {"oidc": ["c"]}]}},
            "/key": {"get": {"operationId": "key", "security": [{"key": []}]}},
            "/optional": {"get": {"operationId": "opt", "security": [{}, {"oauth": ["a"]}]}}
          }}"#;
        let out = import(doc, &opts()).unwrap();
        let y = &out.yaml;
        let route = |name: &str| {
            let start = y
                .find(&format!("- name: \"{name}\""))
                .unwrap_or_else(|| panic!("{name}\n{y}"));
            y[start..].lines().take(4).collect::<Vec<_>>().join("\n")
        };
        assert!(route("pub").contains("public: true"));
        assert!(route("none").contains("public: true"));
        assert!(route("empty").contains("public: true"));
        assert!(route("s").contains(r#"scopes: ["a", "b"]"#), "{}", route("s"));
        assert!(route("alt").contains(r#"scopes: ["a", "c"]"#));
        assert!(route("key").contains("auth: {}"), "{}", route("key"));
        assert!(!route("opt").contains("public"), "optional auth is never made public");
        assert!(out.notes.iter().any(|n| n.contains("alternative")));
        assert!(out.notes.iter().any(|n| n.contains("\"apiKey\"")));
    }

    #[test]
    fn paths_and_grouping() {
        let doc = r#"
openapi: 3.0.3
components: {securitySchemes: {oauth: {type: oauth2}}}
paths:
  /items/{item_id}:
    get: {operationId: read_item, security: [{oauth: [items:read]}]}
    head: {operationId: head_item, security: [{oauth: [items:read]}]}
    delete: {operationId: delete_item, security: [{oauth: [items:write]}]}
  /items/me: {get: {operationId: my_items, security: [{oauth: [items:read]}]}}
  /files/{name}.txt: {get: {operationId: file}}
"#;
        let out = import(doc, &opts()).unwrap();
        let y = &out.yaml;
        let me = y.find("\"/items/me\"").unwrap();
        let template = y.find("\"/items/{item_id}\"").unwrap();
        assert!(me < template, "template-free paths first\n{y}");
        assert!(y.contains(r#"- name: "read_item+head_item""#), "{y}");
        assert!(
            y.contains(r#"match: { path_template: "/items/{item_id}", methods: [GET, HEAD] }"#),
            "{y}"
        );
        assert!(
            y.contains(r#"match: { path_template: "/items/{item_id}", methods: [DELETE] }"#),
            "{y}"
        );
        assert!(y.contains(r#"match: { path: "/files", methods: [GET] }"#), "{y}");
        let file = &y[y.find("\"file\"").unwrap()..];
        assert!(!file.lines().take(4).any(|l| l.contains("public")), "{file}");
        assert_eq!(out.routes, 4);
    }

    #[test]
    fn not_openapi_3() {
        assert!(import(r#"{"swagger": "2.0"}"#, &opts()).is_err());
        assert!(import("not: [valid", &opts()).is_err());
    }
}
