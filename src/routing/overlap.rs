//! What the route table says about itself before it serves: routes that can
//! never match because an earlier one covers them, and protected exact paths
//! whose trailing-slash twin falls to a later public route. Warnings for
//! `check`, startup and reload, found through the same path index a lookup
//! uses, so that 20,000 routes are checked in moments, not pair by pair.

use crate::config::{Access, PathMatch, Route};
use crate::routing::normalize::segment_prefix;
use crate::routing::table::PathIndex;
use crate::routing::template::Segment;

/// Every warning about the table, in route order.
pub fn lint(routes: &[Route]) -> Vec<String> {
    let index = PathIndex::new(routes);
    let mut warnings = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        if let Some(earlier) = shadowed_by(&index, routes, i) {
            warnings.push(format!(
                "route {:?} can never match: the earlier route {:?} matches every request it would",
                route.name, earlier.name
            ));
        }
    }
    trailing_slash_fallthrough(routes, &index, &mut warnings);
    warnings
}

/// Express, Rails and others serve `/admin/` as `/admin`. A protected
/// `path_exact: /admin` does not match `/admin/`, so if that request falls to
/// a later public route, the upstream may serve the protected page unchecked.
fn trailing_slash_fallthrough(routes: &[Route], index: &PathIndex, warnings: &mut Vec<String>) {
    for (i, route) in routes.iter().enumerate() {
        let (PathMatch::Exact(p), Access::Protected(_)) = (&route.path, &route.access) else {
            continue;
        };
        if p.ends_with('/') {
            continue;
        }
        let slashed = format!("{p}/");
        let overlaps = |later: &Route| {
            let host = later.host.is_none() || later.host == route.host;
            let methods = match (&route.methods, &later.methods) {
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                _ => true,
            };
            host && methods
        };
        let falls_to = first_match(index, routes, &slashed, |j| j > i && overlaps(&routes[j]));
        if let Some(later) = falls_to.filter(|later| later.access == Access::Public) {
            warnings.push(format!(
                "route {:?} protects {p:?} exactly, but {slashed:?} falls to the public route {:?}; upstreams that serve {slashed:?} as {p:?} (Express, Rails) would answer it without a token: protect it with `path: {p}` or add {slashed:?}",
                route.name, later.name
            ));
        }
    }
}

/// The first route before `routes[i]` that matches every request it could
/// (so it never matches). Such a route matches in particular one path
/// `routes[i]` matches: only the routes the index finds for that path are
/// compared, not every pair (seconds at 20,000 routes).
fn shadowed_by<'r>(index: &PathIndex, routes: &'r [Route], i: usize) -> Option<&'r Route> {
    let later = &routes[i];
    first_match(index, routes, &a_path_of(&later.path), |j| {
        j < i && covers(&routes[j], later)
    })
}

/// The route with the lowest index among those whose path matches `path`
/// and that pass `keep`.
fn first_match<'r>(
    index: &PathIndex,
    routes: &'r [Route],
    path: &str,
    keep: impl Fn(usize) -> bool,
) -> Option<&'r Route> {
    let mut first: Option<usize> = None;
    index.for_each_path_match(routes, path, |j| {
        if first.is_none_or(|f| j < f) && keep(j) {
            first = Some(j);
        }
    });
    first.map(|j| &routes[j])
}

/// One path that `m` matches: its own, with any parameters filled in.
fn a_path_of(m: &PathMatch) -> String {
    match m {
        PathMatch::Prefix(p) | PathMatch::Exact(p) => p.clone(),
        PathMatch::Template(t) => {
            let path: String = t
                .segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => format!("/{l}"),
                    Segment::Param(_) => "/x".to_string(),
                })
                .collect();
            if path.is_empty() {
                "/".into()
            } else {
                path
            }
        }
    }
}

/// Whether `earlier` matches every request `later` could match (shadowing).
fn covers(earlier: &Route, later: &Route) -> bool {
    let host = earlier.host.is_none() || earlier.host == later.host;
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
    };
    let path = match (&earlier.path, &later.path) {
        (PathMatch::Prefix(e), PathMatch::Prefix(l) | PathMatch::Exact(l)) => segment_prefix(e, l),
        (PathMatch::Prefix(e), PathMatch::Template(t)) => segment_prefix(e, &t.literal_prefix()),
        (PathMatch::Exact(e), PathMatch::Exact(l)) => e == l,
        (PathMatch::Template(e), PathMatch::Exact(l)) => e.matches(l),
        (PathMatch::Template(e), PathMatch::Template(l)) => l.within(e),
        (PathMatch::Exact(_) | PathMatch::Template(_), PathMatch::Prefix(_)) => false,
        (PathMatch::Exact(_), PathMatch::Template(_)) => false,
    };
    host && methods && path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::tests::{random_routes, Xorshift};

    /// Random route lists over a few shared segments: the index finds the
    /// same shadowing route as comparing every pair, in file order.
    #[test]
    fn shadowing_found_through_the_index_agrees_with_every_pair() {
        let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
        let mut shadowed = 0;
        for _ in 0..400 {
            let routes = random_routes(&mut rng);
            let index = PathIndex::new(&routes);
            for (i, route) in routes.iter().enumerate() {
                let pairwise = routes[..i].iter().find(|earlier| covers(earlier, route));
                let indexed = shadowed_by(&index, &routes, i);
                assert_eq!(
                    indexed.map(|r| &r.name),
                    pairwise.map(|r| &r.name),
                    "{:?} in {routes:#?}",
                    route.name
                );
                shadowed += usize::from(pairwise.is_some());
            }
        }
        assert!(shadowed > 100, "the generator shadowed only {shadowed} routes");
    }
}
