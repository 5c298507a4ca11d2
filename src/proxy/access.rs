//! The route's access decision for a request: the token verified, not
//! revoked, scopes held and claims met; cookie tokens only from origins that
//! may send them; monitor mode's record of what enforcement would refuse.

use std::sync::Arc;

use http::header::{self, HeaderValue};

use super::access_log::AccessLog;
use crate::error::GatewayError;
use crate::snapshot::Snapshot;

/// Monitor mode: what enforcement would have refused goes to the log line
/// and `portcullis_auth_monitor_denials_total`; the request goes on.
pub(super) fn note_monitor_denial(log: &mut AccessLog, e: &GatewayError) {
    let reason = crate::auth::failure_reason(e);
    log.monitor_denied = Some(reason);
    if let Some(route_name) = log.route_name() {
        crate::metrics::monitor_denial(route_name, reason);
    }
}

/// The route template's parameters in `path`, when a claims condition reads
/// `{path.NAME}` (none otherwise: most routes never pay for them).
pub(crate) fn claims_path_params(
    route: &crate::config::Route,
    rule: &crate::config::AuthRule,
    path: &str,
) -> Vec<(String, String)> {
    match (&route.path, rule.claims_read_path) {
        (crate::config::PathMatch::Template(t), true) => t.params(path).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The token's verdict for a protected route: verified, not revoked, scopes
/// held, claims conditions met. A failure comes with the identity when the
/// token itself verified (monitor mode forwards that one).
pub(crate) async fn check_access(
    snap: &Snapshot,
    rule: &crate::config::AuthRule,
    token: Result<Option<&str>, GatewayError>,
    facts: &crate::policy::Facts<'_>,
) -> Result<Arc<crate::auth::Caller>, (GatewayError, Option<Arc<crate::auth::Caller>>)> {
    let token = token.map_err(|e| (e, None))?;
    let identity = crate::auth::verify_token(&snap.providers, &snap.tokens, rule, token)
        .await
        .map_err(|e| (e, None))?;
    // Checked on every request, cache hits included, against the local copy.
    let revocations = snap.store.as_ref().and_then(|s| s.revocations.as_ref());
    // A fresh instance whose Redis is down would serve tokens revoked before
    // it started: refuse until the list is in, unless told not to.
    let unloaded = revocations.is_some_and(|r| !r.loaded());
    if unloaded && snap.config.revocation.as_ref().is_some_and(|c| c.refuse_until_loaded) {
        return Err((GatewayError::RevocationsNotLoaded, None));
    }
    if revocations.is_some_and(|r| r.is_revoked(&identity)) {
        crate::metrics::auth_failure("revoked");
        return Err((GatewayError::InvalidToken(crate::auth::token::Rejection::Revoked), None));
    }
    if let Err(e) = crate::auth::authorize(rule, &identity) {
        return Err((e, Some(identity)));
    }
    // Evaluated on every request, cache hits too: the cache holds claims,
    // never a decision.
    if let Some(i) = crate::policy::first_failure(&rule.claims, &identity.claims, facts) {
        crate::metrics::auth_failure("claims");
        return Err((GatewayError::ClaimsDenied(i), Some(identity)));
    }
    Ok(identity)
}

/// A cookie rides along on cross-site requests (forged form posts, cross-site
/// WebSocket hijacking), so a cookie token counts only without `Origin`, from
/// the gateway's own origin, or from an origin the route's CORS policy lists
/// by name (never through `"*"`, never `null`). Without `Origin`, a browser's
/// `Sec-Fetch-Site: cross-site` on a request that is not GET or HEAD says the
/// same as a foreign origin would.
pub(crate) fn check_cookie_origin(
    snap: &Snapshot,
    route: &crate::config::Route,
    method: &http::Method,
    headers: &http::HeaderMap,
    host: Option<&HeaderValue>,
) -> Result<(), GatewayError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        let safe_method = *method == http::Method::GET || *method == http::Method::HEAD;
        let cross_site = headers
            .get_all("sec-fetch-site")
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        return if cross_site && !safe_method {
            Err(GatewayError::CorsRejected)
        } else {
            Ok(())
        };
    };
    let allowed = crate::cors::same_origin(origin, host)
        || route
            .cors
            .is_some_and(|p| crate::cors::lists_origin(&snap.config.cors[p], origin));
    if allowed {
        Ok(())
    } else {
        Err(GatewayError::CorsRejected)
    }
}
