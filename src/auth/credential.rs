//! Where a request's bearer token comes from: the `Authorization` header, a
//! query parameter or a cookie, in the order a route lists them (browsers
//! cannot set `Authorization` on a WebSocket or an `EventSource`). And how
//! the credential is taken out of what goes upstream.

use http::header::{HeaderMap, HeaderValue, COOKIE};

use super::bearer_token;
use crate::config::TokenSource;
use crate::error::GatewayError;

/// The token a request carries, and where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential<'a> {
    pub token: &'a str,
    pub source: &'a TokenSource,
}

/// The first source in `sources` that is present. A source present twice
/// (two `Authorization` headers, two parameters or cookies of that name) is
/// ambiguous and refused; a value that is not a token is malformed.
pub fn find<'a>(
    sources: &'a [TokenSource],
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<Credential<'a>>, GatewayError> {
    for source in sources {
        let token = match source {
            TokenSource::Header => bearer_token(headers)?,
            TokenSource::Query(name) => single(query_values(query, name))?,
            TokenSource::Cookie(name) => single(cookie_values(headers, name))?,
        };
        if let Some(token) = token {
            return Ok(Some(Credential { token, source }));
        }
    }
    Ok(None)
}

fn single<'a>(mut values: impl Iterator<Item = &'a str>) -> Result<Option<&'a str>, GatewayError> {
    let Some(first) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest("The token is sent more than once."));
    }
    if first.is_empty()
        || !first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        return Err(GatewayError::BadRequest("The token is not a valid bearer token."));
    }
    Ok(Some(first))
}

/// Whether a query parameter's name, as sent, is `name`: frameworks decode
/// names before they look them up, so `access%5Ftoken` is `access_token`.
fn is_param(raw: &str, name: &str) -> bool {
    if !raw.contains('%') {
        return raw == name;
    }
    crate::routing::normalize::percent_decode(raw) == name.as_bytes()
}

/// The name of one `name=value` query pair (the whole pair without `=`).
fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(k, _)| k)
}

fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = &'a str> {
    query
        .unwrap_or("")
        .split('&')
        .filter(move |pair| is_param(param_name(pair), name))
        .map(|pair| pair.split_once('=').map_or("", |(_, v)| v))
}

/// Whether a cookie pair's name is `name`: servers trim the spaces around
/// it, so `session =x` is the cookie `session`.
fn is_cookie(pair: &str, name: &str) -> bool {
    pair.split_once('=').map_or(pair, |(k, _)| k).trim() == name
}

fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter(move |pair| is_cookie(pair, name))
        .filter_map(|pair| Some(pair.split_once('=')?.1.trim().trim_matches('"')))
}

/// The query string without the parameter `name`; `None` when nothing is left.
pub(crate) fn strip_query(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !is_param(param_name(pair), name))
        .collect();
    let rest = kept.join("&");
    (!rest.is_empty()).then_some(rest)
}

/// Remove the cookie `name` from the `Cookie` header(s), keeping the others.
pub(crate) fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !is_cookie(pair, name))
        .map(str::to_string)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn sources_in_order_of_preference() {
        let sources = [
            TokenSource::Header,
            TokenSource::Query("access_token".into()),
            TokenSource::Cookie("session".into()),
        ];
        let h = headers(&[
            ("cookie", "theme=dark; session=c.o.okie"),
            ("authorization", "Bearer h.e.ader"),
        ]);
        let found = find(&sources, &h, Some("access_token=q.u.ery")).unwrap().unwrap();
        assert_eq!((found.token, found.source), ("h.e.ader", &sources[0]));
        let h = headers(&[("cookie", "theme=dark; session=c.o.okie")]);
        let found = find(&sources, &h, Some("a=1&access_token=q.u.ery")).unwrap().unwrap();
        assert_eq!((found.token, found.source), ("q.u.ery", &sources[1]));
        let found = find(&sources, &h, Some("a=1")).unwrap().unwrap();
        assert_eq!((found.token, found.source), ("c.o.okie", &sources[2]));
        assert_eq!(find(&sources, &HeaderMap::new(), None).unwrap(), None);
        // A source the route does not list is never read.
        assert_eq!(find(&sources[..1], &h, Some("access_token=q.u.ery")).unwrap(), None);
    }

    #[test]
    fn ambiguous_or_malformed_credentials_are_refused() {
        let q = [TokenSource::Query("t".into())];
        assert!(find(&q, &HeaderMap::new(), Some("t=a&t=b")).is_err());
        assert!(find(&q, &HeaderMap::new(), Some("t=a%20b")).is_err());
        assert!(find(&q, &HeaderMap::new(), Some("t=")).is_err());
        let c = [TokenSource::Cookie("s".into())];
        assert!(find(&c, &headers(&[("cookie", "s=a"), ("cookie", "s=b")]), None).is_err());
        assert!(find(&c, &headers(&[("cookie", "s=<script>")]), None).is_err());
    }

    #[test]
    fn credentials_are_taken_out() {
        assert_eq!(
            strip_query("access_token=x&b=2", "access_token").as_deref(),
            Some("b=2")
        );
        assert_eq!(
            strip_query("a=1&access_token=x", "access_token").as_deref(),
            Some("a=1")
        );
        assert_eq!(strip_query("access_token=x", "access_token"), None);
        assert_eq!(
            strip_query("access_tokenx=1", "access_token").as_deref(),
            Some("access_tokenx=1")
        );
        let mut h = headers(&[("cookie", "theme=dark; session=abc"), ("cookie", "lang=en")]);
        strip_cookie(&mut h, "session");
        assert_eq!(h[COOKIE], "theme=dark; lang=en");
        let mut h = headers(&[("cookie", "session=abc")]);
        strip_cookie(&mut h, "session");
        assert!(!h.contains_key(COOKIE));
    }

    /// A name that a framework would read as the source's name is the
    /// source: found (and refused when given twice) and taken out alike.
    #[test]
    fn names_count_as_the_server_reads_them() {
        let q = [TokenSource::Query("access_token".into())];
        let none = HeaderMap::new();
        let found = find(&q, &none, Some("access%5Ftoken=a.b.c")).unwrap().unwrap();
        assert_eq!(found.token, "a.b.c");
        assert!(find(&q, &HeaderMap::new(), Some("access_token=a&access%5ftoken=b")).is_err());
        assert_eq!(
            strip_query("x=1&access%5Ftoken=a&%61ccess_token=b&access_tokens=c", "access_token").as_deref(),
            Some("x=1&access_tokens=c")
        );
        assert!(!is_param("access%5", "access_token"));
        assert!(is_param("%", "%"));
        let c = [TokenSource::Cookie("session".into())];
        let spaced = headers(&[("cookie", "a=1; session =t.o.k")]);
        let found = find(&c, &spaced, None).unwrap().unwrap();
        assert_eq!(found.token, "t.o.k");
        assert!(find(&c, &headers(&[("cookie", "session=a; session =b")]), None).is_err());
        let mut h = headers(&[("cookie", "session =abc; theme=dark;  session=x")]);
        strip_cookie(&mut h, "session");
        assert_eq!(h[COOKIE], "theme=dark");
    }
}
