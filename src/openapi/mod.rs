//! `portcullis import-openapi`: a route table from an application's OpenAPI
//! 3.0 / 3.1 document (FastAPI serves one at `/openapi.json`).
//!
//! One route per path and set of methods sharing a requirement; paths with
//! parameters become `path_template`, the others `path_exact`, and
//! template-free paths come first (so `/users/me` wins over `/users/{id}`);
//! templates keep the document's order, since that is the order Starlette
//! matches them in (`/{org}/settings` before `/help/{topic}`).
//! Scopes come from the operation's `security` (else the document's) on
//! OAuth2 or OpenID Connect schemes. Only a declared empty requirement
//! (`security: []`) makes a route public: an operation that says nothing is
//! exactly what a FastAPI route protected by its own dependency or middleware
//! looks like, so it is protected with the strictest requirement the document
//! has, and named on stderr (`--public-when-unsecured` opts out). Whatever
//! cannot be expressed (alternatives between requirements, API-key or HTTP
//! schemes, parameters inside a segment) is reported, and the route is
//! protected with the strictest requirement seen: an import never makes
//! anything public by guessing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::Deserialize;

use crate::routing::template::PathTemplate;

#[derive(Debug, Deserialize)]
struct Document {
    #[serde(default)]
    openapi: String,
    /// In the document's order (a mapping keeps it; a map type would sort).
    #[serde(default)]
    paths: serde_yaml::Mapping,
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
    /// The operation declares no requirement at all (resolved once the
    /// whole document has been read).
    Unsecured,
}

mod cases;

/// What the import produced.
#[derive(Debug)]
pub struct Imported {
    /// `routes:` entries as YAML.
    pub yaml: String,
    /// With `--cases`: a starting `portcullis test` case file.
    pub cases: Option<String>,
    /// What could not be expressed exactly, one line each.
    pub notes: Vec<String>,
    pub routes: usize,
}

/// Options of the command.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub upstream: String,
    pub provider: Option<String>,
    /// `--public-when-unsecured`: an operation without any `security` is public.
    pub public_when_unsecured: bool,
    /// `--cases`: also write a case file (tokens minted for `provider`).
    pub cases: bool,
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
    for (key, value) in &doc.paths {
        let path = key
            .as_str()
            .ok_or_else(|| format!("a key of `paths` is not a string: {key:?}"))?;
        let item: PathItem =
            serde_yaml::from_value(value.clone()).map_err(|e| format!("paths.{path} is not a path item: {e}"))?;
        // Operations grouped by requirement (and notes): each group is one route.
        let mut groups: BTreeMap<(Need, Vec<String>), Vec<MethodAndName>> = BTreeMap::new();
        for (method, op) in operations(&item) {
            let mut op_notes = Vec::new();
            let generated = || format!("{}_{}", method.to_ascii_lowercase(), slug(path));
            let name = match &op.operation_id {
                Some(id) if id.chars().any(char::is_control) => {
                    op_notes.push(format!(
                        "the operationId {id:?} holds control characters; the route is named {} instead",
                        generated()
                    ));
                    generated()
                }
                Some(id) => id.clone(),
                None => generated(),
            };
            let requirement = op.security.as_ref().or(doc.security.as_ref());
            let need = need_of(requirement, &schemes, &mut op_notes);
            let op_notes: Vec<String> = op_notes
                .into_iter()
                .map(|n| format!("{method} {path} ({name}): {n}"))
                .collect();
            groups.entry((need, op_notes)).or_default().push((method, name));
        }
        let (literal, shape_note) = path_shape(path);
        let path = &path.to_string();
        for ((mut need, mut op_notes), ops) in groups {
            if let Some(note) = &shape_note {
                op_notes.push(format!("{path}: {note}"));
                if need == Need::Public || need == Need::Unsecured {
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
    // Exact paths first, then templates, then prefixes; within each kind the
    // document's order (a stable sort keeps it).
    routes.sort_by_key(|r| r.matcher);

    // An operation that says nothing about security: protected like the
    // strictest requirement in the document (every OAuth2 scope any
    // operation asks for), or any valid token when none asks for scopes.
    let strictest: BTreeSet<String> = routes
        .iter()
        .filter_map(|r| match &r.need {
            Need::Scopes(s) => Some(s.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect();
    for r in routes.iter_mut().filter(|r| r.need == Need::Unsecured) {
        let (method_list, names) = (r.methods.join(", "), r.names.join("+"));
        if options.public_when_unsecured {
            r.need = Need::Public;
            continue;
        }
        r.need = Need::Scopes(strictest.clone());
        let with = if strictest.is_empty() {
            "any valid token".to_string()
        } else {
            format!(
                "the document's strictest requirement (scopes {})",
                strictest.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        };
        r.notes.push(format!(
            "{method_list} {} ({names}): no security requirement, which is how a route protected by the app's own dependency or middleware looks; protected with {with}. Declare `security: []` on the operation if it is meant to be public, or pass --public-when-unsecured",
            r.path
        ));
    }

    let mut yaml = String::from("routes:\n");
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut named: Vec<(String, &Route)> = Vec::new();
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
        named.push((name.clone(), r));
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
            // Resolved above; never written as such.
            Need::Unsecured => yaml.push_str("    auth: {}\n"),
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
    let cases = match (&options.provider, options.cases) {
        (Some(provider), true) => Some(cases::write(&named, provider)),
        _ => None,
    };
    Ok(Imported {
        yaml,
        cases,
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
        return Need::Unsecured;
    };
    // `security: []` or `[{}]`: declared to need nothing.
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
            ..ImportOptions::default()
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
        // Saying nothing is not saying "public": the strictest requirement.
        assert!(
            route("none").contains(r#"scopes: ["a", "b", "c"]"#),
            "{}",
            route("none")
        );
        assert!(out
            .notes
            .iter()
            .any(|n| n.contains("GET /none (none): no security requirement")));
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
    fn unsecured_operations_and_names() {
        let doc = r#"
openapi: 3.1.0
paths:
  /a: {get: {operationId: "a\u0007b"}}
  /b: {get: {operationId: b, security: []}}
"#;
        let out = import(doc, &opts()).unwrap();
        // No scopes anywhere: any valid token.
        assert!(out.yaml.contains("- name: \"get_a\"\n    match: { path_exact: \"/a\", methods: [GET] }\n    upstream: \"app\"\n    auth: {}"), "{}", out.yaml);
        assert!(out
            .notes
            .iter()
            .any(|n| n.contains("control characters") && n.contains("get_a")));
        assert!(!out.yaml.contains('\u{7}'));
        let b = &out.yaml[out.yaml.find("\"b\"").unwrap()..];
        assert!(b.lines().take(4).any(|l| l.contains("public: true")), "{b}");
        let open = ImportOptions {
            public_when_unsecured: true,
            ..opts()
        };
        let out = import(doc, &open).unwrap();
        let a = &out.yaml[out.yaml.find("\"get_a\"").unwrap()..];
        assert!(a.lines().take(4).any(|l| l.contains("public: true")), "{a}");
    }

    /// Overlapping templates keep the document's order (Starlette matches in
    /// declaration order); exact paths still come first.
    #[test]
    fn templates_keep_the_documents_order() {
        let doc = r#"
openapi: 3.1.0
paths:
  /{org}/settings: {get: {operationId: org_settings, security: []}}
  /help/{topic}: {get: {operationId: help, security: []}}
  /help/me: {get: {operationId: me, security: []}}
  /a/{x}: {get: {operationId: ax, security: []}}
"#;
        let y = import(doc, &opts()).unwrap().yaml;
        let at = |n: &str| y.find(&format!("\"{n}\"")).unwrap();
        assert!(at("me") < at("org_settings"));
        assert!(at("org_settings") < at("help"), "{y}");
        assert!(at("help") < at("ax"), "{y}");
    }

    #[test]
    fn not_openapi_3() {
        assert!(import(r#"{"swagger": "2.0"}"#, &opts()).is_err());
        assert!(import("not: [valid", &opts()).is_err());
    }
}
