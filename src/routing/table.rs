//! The route table (docs/request-lifecycle.md, step 7): the first route in file order whose host,
//! method and path all match. When some route matches the path but none the
//! method, the answer is 405 with the methods that would have matched.

use std::collections::HashMap;

use http::{HeaderValue, Method};

use crate::config::{PathMatch, Route};
pub(crate) use crate::routing::normalize::segment_prefix;
use crate::routing::template::Segment;

/// The outcome of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Index of the matching route.
    Found(usize),
    /// The path matched, the method did not: the value for `Allow`.
    MethodNotAllowed(HeaderValue),
    NotFound,
}

/// The routes in file order, indexed by a tree of path segments, so that a
/// lookup only looks at the routes whose path could match: those attached to
/// the nodes the request path walks through. The cost grows with the depth of
/// the path, not with the number of routes, even when every route shares a
/// prefix such as `/api/v1`. File order still decides: among the routes that
/// match, the one with the lowest index wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    index: PathIndex,
}

/// Which routes' paths match a path, by route index. Also used when a
/// configuration is checked, to find shadowed routes without comparing
/// every pair.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathIndex {
    root: Node,
    /// Path templates, in a tree of their own where `{param}` is a branch.
    templates: TemplateNode,
}

/// One segment of the template tree.
#[derive(Debug, Clone, Default)]
struct TemplateNode {
    literal: HashMap<Box<str>, TemplateNode>,
    param: Option<Box<TemplateNode>>,
    /// Template routes whose last segment is this node.
    routes: Vec<usize>,
}

impl TemplateNode {
    /// Every template route matching the remaining segments of a path.
    fn each_match<'p>(&self, mut rest: impl Iterator<Item = &'p str> + Clone, f: &mut impl FnMut(usize)) {
        match rest.next() {
            None => self.routes.iter().for_each(|&i| f(i)),
            Some(seg) => {
                if let Some(child) = self.literal.get(seg) {
                    child.each_match(rest.clone(), f);
                }
                if let Some(child) = self.param.as_deref().filter(|_| !seg.is_empty()) {
                    child.each_match(rest, f);
                }
            }
        }
    }
}

/// One path segment of the index.
#[derive(Debug, Clone, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Prefix routes for the path down to here: they match it and everything below.
    prefix: Vec<usize>,
    /// Exact routes whose path ends here, compared in full (`/a` is not `/a/`).
    exact: Vec<usize>,
}

/// The non-empty segments of a normalised path: `/a/b/` gives `a`, `b`.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

impl PathIndex {
    pub fn new(routes: &[Route]) -> Self {
        let mut root = Node::default();
        let mut templates = TemplateNode::default();
        for (i, r) in routes.iter().enumerate() {
            let p = match &r.path {
                PathMatch::Prefix(p) | PathMatch::Exact(p) => p,
                PathMatch::Template(t) => {
                    let node = t.segments.iter().fold(&mut templates, |node, seg| match seg {
                        Segment::Literal(l) => node.literal.entry(l.as_str().into()).or_default(),
                        Segment::Param(_) => node.param.get_or_insert_with(Default::default),
                    });
                    node.routes.push(i);
                    continue;
                }
            };
            let node = segments(p).fold(&mut root, |node, s| node.children.entry(s.into()).or_default());
            match r.path {
                PathMatch::Prefix(_) => node.prefix.push(i),
                _ => node.exact.push(i),
            }
        }
        PathIndex { root, templates }
    }

    /// Call `f` with every route whose path matches `path` (not in file
    /// order). `routes` are the ones the index was built from.
    pub(crate) fn for_each_path_match(&self, routes: &[Route], path: &str, mut f: impl FnMut(usize)) {
        let mut node = &self.root;
        node.prefix.iter().for_each(|&i| f(i));
        // A normalised path has no empty segment but a trailing one (`/a/`), which no child has.
        for s in path.split('/').skip(1) {
            match node.children.get(s) {
                Some(child) => {
                    node = child;
                    node.prefix.iter().for_each(|&i| f(i));
                }
                None => break,
            }
        }
        for &i in &node.exact {
            if matches!(&routes[i].path, PathMatch::Exact(p) if p == path) {
                f(i);
            }
        }
        if let Some(rest) = path.strip_prefix('/') {
            self.templates.each_match(rest.split('/'), &mut f);
        }
    }
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let index = PathIndex::new(&routes);
        RouteTable { routes, index }
    }

    fn for_each_path_match(&self, path: &str, f: impl FnMut(usize)) {
        self.index.for_each_path_match(&self.routes, path, f);
    }

    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// `host` is the request's host, lower-cased, without port.
    pub fn find(&self, host: Option<&str>, method: &Method, path: &str) -> Lookup {
        let mut best: Option<usize> = None;
        let mut path_matched = false;
        self.for_each_path_match(path, |i| {
            let route = &self.routes[i];
            if best.is_some_and(|b| b < i) || !host_matches(route, host) {
                return;
            }
            match &route.methods {
                Some(methods) if !methods.contains(method) => path_matched = true,
                _ => best = Some(i),
            }
        });
        match best {
            Some(i) => Lookup::Found(i),
            None if path_matched => Lookup::MethodNotAllowed(self.allow(host, path)),
            None => Lookup::NotFound,
        }
    }

    /// The `Allow` value: every method some path-matching route accepts, in
    /// file order. Only built on the (rare) 405 path.
    fn allow(&self, host: Option<&str>, path: &str) -> HeaderValue {
        let mut matching = Vec::new();
        self.for_each_path_match(path, |i| {
            if host_matches(&self.routes[i], host) {
                matching.push(i);
            }
        });
        matching.sort_unstable();
        let mut methods: Vec<&str> = Vec::new();
        for m in matching.iter().flat_map(|&i| self.routes[i].methods.iter().flatten()) {
            if !methods.contains(&m.as_str()) {
                methods.push(m.as_str());
            }
        }
        // Method names are tokens, so this join is always a valid header value.
        HeaderValue::from_str(&methods.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

fn host_matches(route: &Route, host: Option<&str>) -> bool {
    match &route.host {
        None => true,
        Some(want) => host == Some(want.as_str()),
    }
}

/// The path the upstream sees after `strip_prefix` (always starts with `/`).
pub fn strip_prefix<'a>(prefix: Option<&str>, path: &'a str) -> std::borrow::Cow<'a, str> {
    match prefix {
        Some(p) if segment_prefix(p, path) && p != "/" => {
            let rest = &path[p.len()..];
            if rest.is_empty() {
                "/".into()
            } else {
                rest.into()
            }
        }
        _ => path.into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Access;

    pub(crate) fn route(name: &str, path: PathMatch, methods: Option<&[&str]>, host: Option<&str>) -> Route {
        Route {
            name: name.into(),
            path,
            methods: methods.map(|ms| ms.iter().map(|m| Method::from_bytes(m.as_bytes()).unwrap()).collect()),
            host: host.map(str::to_string),
            upstream: Some(0),
            strip_prefix: None,
            access: Access::Public,
            source_ips: vec![],
            websocket: None,
            cors: None,
            rate_limits: vec![],
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            route(
                "read",
                PathMatch::Prefix("/api/orders".into()),
                Some(&["GET", "HEAD"]),
                None,
            ),
            route("write", PathMatch::Prefix("/api/orders".into()), Some(&["POST"]), None),
            route("exact", PathMatch::Exact("/health".into()), None, None),
            route(
                "hosted",
                PathMatch::Prefix("/admin".into()),
                None,
                Some("admin.example.com"),
            ),
            route("root", PathMatch::Prefix("/static".into()), Some(&["GET"]), None),
        ])
    }

    #[test]
    fn lookups() {
        let t = table();
        let get = Method::GET;
        let cases: Vec<(Option<&str>, Method, &str, Lookup)> = vec![
            (None, get.clone(), "/api/orders", Lookup::Found(0)),
            (None, get.clone(), "/api/orders/", Lookup::Found(0)),
            (None, get.clone(), "/api/orders/7", Lookup::Found(0)),
            (None, Method::POST, "/api/orders/7", Lookup::Found(1)),
            (None, get.clone(), "/api/ordersX", Lookup::NotFound),
            (None, get.clone(), "/api", Lookup::NotFound),
            (
                None,
                Method::DELETE,
                "/api/orders",
                Lookup::MethodNotAllowed(HeaderValue::from_static("GET, HEAD, POST")),
            ),
            (None, Method::DELETE, "/health", Lookup::Found(2)),
            (None, get.clone(), "/health/", Lookup::NotFound),
            (None, get.clone(), "/healthz", Lookup::NotFound),
            (Some("admin.example.com"), get.clone(), "/admin/x", Lookup::Found(3)),
            (Some("other.example.com"), get.clone(), "/admin/x", Lookup::NotFound),
            (None, get.clone(), "/admin/x", Lookup::NotFound),
            (
                None,
                Method::PUT,
                "/static/a.css",
                Lookup::MethodNotAllowed(HeaderValue::from_static("GET")),
            ),
        ];
        for (host, method, path, want) in cases {
            assert_eq!(t.find(host, &method, path), want, "{host:?} {method} {path}");
        }
    }

    #[test]
    fn catch_all_routes_keep_their_place_in_file_order() {
        let t = RouteTable::new(vec![
            route("a", PathMatch::Prefix("/a".into()), Some(&["GET"]), None),
            route("all-post", PathMatch::Prefix("/".into()), Some(&["POST"]), None),
            route("a-any", PathMatch::Prefix("/a".into()), None, None),
            route("root", PathMatch::Exact("/".into()), None, None),
        ]);
        assert_eq!(t.find(None, &Method::GET, "/a/x"), Lookup::Found(0));
        assert_eq!(
            t.find(None, &Method::POST, "/a/x"),
            Lookup::Found(1),
            "the earlier catch-all wins"
        );
        assert_eq!(t.find(None, &Method::PUT, "/a/x"), Lookup::Found(2));
        assert_eq!(t.find(None, &Method::POST, "/zzz"), Lookup::Found(1));
        assert_eq!(
            t.find(None, &Method::GET, "/zzz"),
            Lookup::MethodNotAllowed(HeaderValue::from_static("POST"))
        );
        assert_eq!(t.find(None, &Method::GET, "/"), Lookup::Found(3));
    }

    /// Whether `pattern` matches `path`, written from the definitions alone
    /// (not with the product's own matchers): a prefix matches itself and
    /// anything below it on a segment boundary; an exact path matches only
    /// itself; a template matches segment by segment, `{...}` standing for one
    /// non-empty segment.
    fn reference_path_match(pattern: &PathMatch, path: &str) -> bool {
        match pattern {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) if p == "/" => true,
            PathMatch::Prefix(p) => path == p || path.starts_with(&format!("{p}/")),
            PathMatch::Template(t) => {
                let want: Vec<&str> = t.text.split('/').collect();
                let got: Vec<&str> = path.split('/').collect();
                want.len() == got.len()
                    && want.iter().zip(&got).all(|(w, g)| {
                        if w.starts_with('{') && w.ends_with('}') {
                            !g.is_empty()
                        } else {
                            w == g
                        }
                    })
            }
        }
    }

    /// The definition of the route table, as a plain scan in file order.
    fn scan(routes: &[Route], host: Option<&str>, method: &Method, path: &str) -> Lookup {
        let matching: Vec<usize> = (0..routes.len())
            .filter(|&i| {
                let host_ok = routes[i].host.is_none() || routes[i].host.as_deref() == host;
                host_ok && reference_path_match(&routes[i].path, path)
            })
            .collect();
        let by_method = matching
            .iter()
            .copied()
            .find(|&i| routes[i].methods.as_ref().is_none_or(|ms| ms.contains(method)));
        match by_method {
            Some(i) => Lookup::Found(i),
            None if matching.is_empty() => Lookup::NotFound,
            None => {
                let mut allow: Vec<&str> = Vec::new();
                for m in matching.iter().flat_map(|&i| routes[i].methods.iter().flatten()) {
                    if !allow.contains(&m.as_str()) {
                        allow.push(m.as_str());
                    }
                }
                Lookup::MethodNotAllowed(HeaderValue::from_str(&allow.join(", ")).unwrap())
            }
        }
    }

    /// A small deterministic random source for the property tests.
    pub(crate) struct Xorshift(pub u64);

    impl Xorshift {
        /// A number below `n`.
        pub(crate) fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const SEGMENTS: &[&str] = &["api", "v1", "orders", "o", "x"];

    /// A normalised path over a few shared segments, sometimes with a trailing slash.
    pub(crate) fn random_path(rng: &mut Xorshift) -> String {
        let mut p: String = (0..rng.below(4))
            .map(|_| format!("/{}", SEGMENTS[rng.below(SEGMENTS.len())]))
            .collect();
        if p.is_empty() || rng.below(4) == 0 {
            p.push('/');
        }
        p
    }

    /// Up to 12 routes over random paths: prefixes, exact paths and templates,
    /// some limited to methods or a host.
    pub(crate) fn random_routes(rng: &mut Xorshift) -> Vec<Route> {
        (0..1 + rng.below(12))
            .map(|i| {
                let p = random_path(rng);
                let matcher = if rng.below(3) == 0 {
                    PathMatch::Exact(p)
                } else if rng.below(3) == 0 {
                    // Some segments become parameters.
                    let mut text = String::new();
                    for (k, seg) in p.split('/').skip(1).enumerate() {
                        if !seg.is_empty() && rng.below(2) == 0 {
                            text.push_str(&format!("/{{p{k}}}"));
                        } else {
                            text.push_str(&format!("/{seg}"));
                        }
                    }
                    match crate::routing::template::PathTemplate::parse(&text) {
                        Ok(t) => PathMatch::Template(t),
                        Err(_) => PathMatch::Exact(p),
                    }
                } else {
                    let trimmed = p.trim_end_matches('/');
                    PathMatch::Prefix(if trimmed.is_empty() { "/".into() } else { trimmed.into() })
                };
                let methods: &[&[&str]] = &[&["GET"], &["POST", "GET"], &["DELETE"]];
                let methods = (rng.below(3) != 0).then(|| methods[rng.below(3)]);
                let host = (rng.below(4) == 0).then_some("a.example");
                route(&format!("r{i}"), matcher, methods, host)
            })
            .collect()
    }

    /// Random tables over a few shared segments agree with the plain scan on
    /// random paths: the index changes the cost, never the answer.
    #[test]
    fn the_index_agrees_with_a_scan_in_file_order() {
        let mut templates = 0;
        let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..300 {
            let routes = random_routes(&mut rng);
            templates += routes
                .iter()
                .filter(|r| matches!(r.path, PathMatch::Template(_)))
                .count();
            let table = RouteTable::new(routes.clone());
            for _ in 0..30 {
                let p = random_path(&mut rng);
                let method = [Method::GET, Method::POST, Method::PUT][rng.below(3)].clone();
                let host = [None, Some("a.example"), Some("b.example")][rng.below(3)];
                assert_eq!(
                    table.find(host, &method, &p),
                    scan(&routes, host, &method, &p),
                    "{host:?} {method} {p} in {routes:#?}"
                );
            }
        }
        assert!(templates > 50, "the generator made only {templates} templates");
    }

    #[test]
    fn root_prefix_matches_everything() {
        let t = RouteTable::new(vec![route("all", PathMatch::Prefix("/".into()), None, None)]);
        assert_eq!(t.find(None, &Method::GET, "/"), Lookup::Found(0));
        assert_eq!(t.find(None, &Method::GET, "/x/y"), Lookup::Found(0));
    }

    #[test]
    fn strip_prefixes() {
        assert_eq!(strip_prefix(Some("/api"), "/api/orders/7"), "/orders/7");
        assert_eq!(strip_prefix(Some("/api"), "/api"), "/");
        assert_eq!(strip_prefix(Some("/api"), "/api/"), "/");
        assert_eq!(strip_prefix(Some("/api"), "/apiary"), "/apiary");
        assert_eq!(strip_prefix(None, "/api/x"), "/api/x");
    }
}
