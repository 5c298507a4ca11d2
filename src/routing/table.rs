//! The route table (SPEC §3.4): the first route in file order whose host,
//! method and path all match. When some route matches the path but none the
//! method, the answer is 405 with the methods that would have matched.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::config::{PathMatch, Route};

/// The outcome of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Index of the matching route.
    Found(usize),
    /// The path matched, the method did not: the value for `Allow`.
    MethodNotAllowed(HeaderValue),
    NotFound,
}

/// The routes in file order, plus an index by first path segment so a lookup
/// only walks the routes that could match (a 1,000-route table stays well
/// under a microsecond). Each bucket keeps file order, so "first match wins"
/// is unchanged.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Route names, shared with logs and metrics without copying per request.
    names: Vec<Arc<str>>,
    /// First segment -> indexes of the routes that could match a path starting with it.
    by_segment: HashMap<Box<str>, Vec<usize>>,
    /// Routes for a first segment no route names: the ones with prefix `/`.
    fallback: Vec<usize>,
}

/// `a` for `/a/b`, `` for `/`.
fn first_segment(path: &str) -> &str {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').next().unwrap_or("")
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let catch_all = |r: &Route| matches!(&r.path, PathMatch::Prefix(p) if p == "/");
        let fallback: Vec<usize> = (0..routes.len()).filter(|&i| catch_all(&routes[i])).collect();
        let mut by_segment: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        for r in routes.iter().filter(|r| !catch_all(r)) {
            let (PathMatch::Prefix(p) | PathMatch::Exact(p)) = &r.path;
            by_segment.entry(first_segment(p).into()).or_default();
        }
        for (segment, bucket) in by_segment.iter_mut() {
            *bucket = (0..routes.len())
                .filter(|&i| {
                    let (PathMatch::Prefix(p) | PathMatch::Exact(p)) = &routes[i].path;
                    catch_all(&routes[i]) || first_segment(p) == &**segment
                })
                .collect();
        }
        let names = routes.iter().map(|r| Arc::from(r.name.as_str())).collect();
        RouteTable {
            routes,
            names,
            by_segment,
            fallback,
        }
    }

    fn candidates(&self, path: &str) -> &[usize] {
        self.by_segment.get(first_segment(path)).unwrap_or(&self.fallback)
    }

    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    pub fn shared_name(&self, index: usize) -> Arc<str> {
        self.names[index].clone()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// `host` is the request's host, lower-cased, without port.
    pub fn find(&self, host: Option<&str>, method: &Method, path: &str) -> Lookup {
        let mut path_matched = false;
        for &i in self.candidates(path) {
            let route = &self.routes[i];
            if !host_matches(route, host) || !path_matches(&route.path, path) {
                continue;
            }
            match &route.methods {
                Some(methods) if !methods.contains(method) => path_matched = true,
                _ => return Lookup::Found(i),
            }
        }
        if path_matched {
            Lookup::MethodNotAllowed(self.allow(host, path))
        } else {
            Lookup::NotFound
        }
    }

    /// The `Allow` value: every method some path-matching route accepts, in
    /// file order. Only built on the (rare) 405 path.
    fn allow(&self, host: Option<&str>, path: &str) -> HeaderValue {
        let mut methods: Vec<&str> = Vec::new();
        for route in self.candidates(path).iter().map(|&i| &self.routes[i]) {
            if host_matches(route, host) && path_matches(&route.path, path) {
                for m in route.methods.iter().flatten() {
                    if !methods.contains(&m.as_str()) {
                        methods.push(m.as_str());
                    }
                }
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

/// Prefixes match whole segments: `/api/orders` matches `/api/orders` and
/// `/api/orders/7`, never `/api/ordersX`.
pub fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => crate::config::segment_prefix(p, path),
    }
}

/// The path the upstream sees after `strip_prefix` (always starts with `/`).
pub fn strip_prefix<'a>(prefix: Option<&str>, path: &'a str) -> std::borrow::Cow<'a, str> {
    match prefix {
        Some(p) if crate::config::segment_prefix(p, path) && p != "/" => {
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
mod tests {
    use super::*;
    use crate::config::Access;

    fn route(name: &str, path: PathMatch, methods: Option<&[&str]>, host: Option<&str>) -> Route {
        Route {
            name: name.into(),
            path,
            methods: methods.map(|ms| ms.iter().map(|m| Method::from_bytes(m.as_bytes()).unwrap()).collect()),
            host: host.map(str::to_string),
            upstream: 0,
            strip_prefix: None,
            access: Access::Public,
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
