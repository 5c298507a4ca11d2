//! Keeping credentials out of `explain`'s output: every credential the request
//! carried is found first, then replaced by `<token>` in every field.

use http::HeaderMap;

use super::Explanation;
use crate::config::{Access, TokenSource};
use crate::snapshot::Snapshot;

/// `explanation` (or the reason there is none) with every credential of the
/// request replaced.
pub(super) fn redact(secrets: &[String], explanation: Result<Explanation, String>) -> Result<Explanation, String> {
    let hide = |text: &mut String| {
        for secret in secrets {
            if text.contains(secret.as_str()) {
                *text = text.replace(secret.as_str(), "<token>");
            }
        }
    };
    let mut e = match explanation {
        Ok(e) => e,
        Err(mut why) => {
            hide(&mut why);
            return Err(why);
        }
    };
    for step in &mut e.steps {
        hide(&mut step.detail);
    }
    if let Some(f) = &mut e.forwarded_as {
        hide(f);
    }
    for (_, v) in &mut e.identity_headers {
        hide(v);
    }
    Ok(e)
}

/// Every credential a request carries, as it could appear in text: the
/// `Authorization` header's credentials (any scheme), cookie values, and the
/// values of query parameters that a route reads tokens from or that look
/// like a JWT, raw and percent-decoded. Short values are left alone (they
/// would blot out ordinary words, and no token is that short).
pub(super) fn credentials_in(snap: &Snapshot, url: &str, headers: &HeaderMap) -> Vec<String> {
    const SHORTEST: usize = 8;
    let mut found = Vec::new();
    for v in headers.get_all(http::header::AUTHORIZATION) {
        let text = String::from_utf8_lossy(v.as_bytes());
        let credentials = text.split_once(' ').map_or(&*text, |(_, c)| c).trim();
        found.push(credentials.to_string());
    }
    for v in headers.get_all(http::header::COOKIE) {
        let text = String::from_utf8_lossy(v.as_bytes());
        for pair in text.split(';') {
            if let Some((_, value)) = pair.split_once('=') {
                found.push(value.trim().trim_matches('"').to_string());
            }
        }
    }
    let query = url
        .split_once('?')
        .map_or("", |(_, q)| q.split('#').next().unwrap_or(""));
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name);
        let jwt_shaped = value.starts_with("eyJ") && value.matches('.').count() >= 2;
        if jwt_shaped || is_query_source(snap, &name) {
            found.push(value.to_string());
            found.push(percent_decode(value));
        }
    }
    found.retain(|s| s.len() >= SHORTEST);
    // Longest first, so a token is never half-replaced by a shorter secret inside it.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

/// Whether some route takes a token from the query parameter `name`.
fn is_query_source(snap: &Snapshot, name: &str) -> bool {
    snap.config.routes.iter().any(|r| match &r.access {
        Access::Protected(rule) => rule
            .token_sources
            .iter()
            .any(|s| matches!(s, TokenSource::Query(n) if n == name)),
        Access::Public => false,
    })
}

/// `%XX` decoded, lossily as UTF-8.
fn percent_decode(text: &str) -> String {
    String::from_utf8_lossy(&crate::routing::normalize::percent_decode(text)).into_owned()
}

/// The URL as given, with the value of every query parameter some route takes
/// a token from replaced: explain never prints a token.
pub(super) fn redact_query_tokens(snap: &Snapshot, url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_query_source(snap, &percent_decode(k)) => format!("{k}=<token>"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}
