//! Validation of the state instances share: the Redis `store`, `rate_limits`
//! policies and `revocation`.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;

use super::ctx::Ctx;
use super::raw::{RawRateLimit, RawRevocation, RawStore};
use super::{ConfigError, Field, LimitKey, RateLimitPolicy, RevocationConfig, StoreConfig};

pub(super) fn store(ctx: &mut Ctx, raw: Option<RawStore>) -> Result<Option<StoreConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let url: http::Uri = raw.redis.parse().map_err(|_| {
        ctx.err(
            "store.redis",
            format!("{:?} is not a URL; write redis://host:port/db", raw.redis),
        )
    })?;
    match url.scheme_str() {
        Some("redis") | Some("rediss") => {}
        _ => {
            return Err(ctx.err(
                "store.redis",
                format!("{:?} must start with redis:// or rediss:// (TLS)", raw.redis),
            ))
        }
    }
    if url.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ctx.err(
            "store.redis",
            "the URL carries credentials; put the password in an environment variable named by store.password_env",
        ));
    }
    if let Some(var) = &raw.password_env {
        if std::env::var(var).map_or(true, |v| v.is_empty()) {
            return Err(ctx.err(
                "store.password_env",
                format!("the environment variable {var} is not set or is empty"),
            ));
        }
    }
    if url.scheme_str() == Some("redis") && url.host().is_some_and(|h| !super::is_loopback_host(h)) {
        ctx.warnings.push(format!(
            "store.redis: {:?} is plain TCP to another host; use rediss:// so tokens' subjects and revocations are not sent in the clear",
            raw.redis
        ));
    }
    let timeout = raw.timeout.map_or(Duration::from_millis(100), |d| d.0);
    if timeout.is_zero() {
        return Err(ctx.err("store.timeout", "must be longer than 0"));
    }
    let ca_file = match &raw.ca_file {
        Some(_) if url.scheme_str() != Some("rediss") => {
            return Err(ctx.err(
                "store.ca_file",
                "applies to TLS only; write the URL as rediss://, or leave ca_file out",
            ))
        }
        Some(p) => Some(ctx.existing_file("store.ca_file", p)?),
        None => None,
    };
    Ok(Some(StoreConfig {
        url: raw.redis,
        password_env: raw.password_env,
        timeout,
        key_prefix: raw.key_prefix.unwrap_or_else(|| "portcullis:".into()),
        ca_file,
    }))
}

pub(super) fn rate_limits(
    ctx: &Ctx,
    raw: BTreeMap<String, RawRateLimit>,
    store: Option<&StoreConfig>,
) -> Result<Vec<RateLimitPolicy>, ConfigError> {
    let mut policies = Vec::new();
    for (name, r) in raw {
        let at = Field::key("rate_limits").at(name.as_str());
        let key = match r.key.split_once(':') {
            None if r.key == "subject" => LimitKey::Subject,
            None if r.key == "client_ip" => LimitKey::ClientIp,
            None if r.key == "route" => LimitKey::Route,
            Some(("header", h)) => LimitKey::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| ctx.err(at.at("key"), format!("{h:?} is not a header name")))?,
            ),
            Some(("claim", c)) if !c.is_empty() => LimitKey::Claim(c.to_string()),
            _ => {
                return Err(ctx.err(
                    at.at("key"),
                    format!(
                        "{:?} is not a key; write subject, client_ip, route, \"header:NAME\" or \"claim:NAME\"",
                        r.key
                    ),
                ))
            }
        };
        let interval = parse_rate(&r.rate).map_err(|why| ctx.err(at.at("rate"), format!("{:?} {why}", r.rate)))?;
        let burst = r.burst.unwrap_or(1);
        if burst == 0 {
            return Err(ctx.err(at.at("burst"), "must be at least 1"));
        }
        let shared = match r.store.as_deref() {
            None | Some("local") => false,
            Some("redis") => true,
            Some(other) => {
                return Err(ctx.err(at.at("store"), format!("{other:?} is neither local nor redis")));
            }
        };
        if shared && store.is_none() {
            return Err(ctx.err(at.at("store"), "redis needs a `store:` section naming the Redis server"));
        }
        let allow_on_store_error = match r.on_store_error.as_deref() {
            None | Some("allow") => true,
            Some("deny") => false,
            Some(other) => {
                return Err(ctx.err(at.at("on_store_error"), format!("{other:?} is neither allow nor deny")));
            }
        };
        policies.push(RateLimitPolicy {
            name,
            key,
            interval,
            burst,
            shared,
            allow_on_store_error,
        });
    }
    Ok(policies)
}

/// `N/s`, `N/m` or `N/h` as the interval between two requests.
fn parse_rate(text: &str) -> Result<Duration, &'static str> {
    let (n, unit) = text
        .split_once('/')
        .ok_or("is not a rate; write N/s, N/m or N/h, e.g. 100/m")?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| "needs a whole number of requests, e.g. 100/m")?;
    if n == 0 {
        return Err("must allow at least one request");
    }
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err("has an unknown unit; write /s, /m or /h"),
    };
    Ok(period / n)
}

pub(super) fn revocation(
    ctx: &Ctx,
    raw: Option<RawRevocation>,
    store: Option<&StoreConfig>,
) -> Result<Option<RevocationConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.store != "redis" {
        return Err(ctx.err(
            "revocation.store",
            format!("{:?} is not supported; write redis", raw.store),
        ));
    }
    if store.is_none() {
        return Err(ctx.err(
            "revocation.store",
            "redis needs a `store:` section naming the Redis server",
        ));
    }
    let max_token_lifetime = raw.max_token_lifetime.map_or(Duration::from_secs(24 * 3600), |d| d.0);
    if max_token_lifetime.is_zero() {
        return Err(ctx.err("revocation.max_token_lifetime", "must be longer than 0"));
    }
    let refuse_until_loaded = match raw.until_loaded.as_deref() {
        None | Some("refuse") => true,
        Some("allow") => false,
        Some(other) => {
            return Err(ctx.err(
                "revocation.until_loaded",
                format!("{other:?} is neither refuse nor allow"),
            ))
        }
    };
    Ok(Some(RevocationConfig {
        max_token_lifetime,
        refuse_until_loaded,
    }))
}

/// The route's `rate_limits` names as indexes; identity-based keys need a
/// protected route.
pub(super) fn route_limits(
    ctx: &Ctx,
    at: &Field,
    names: Option<Vec<String>>,
    policies: &[RateLimitPolicy],
    public: bool,
) -> Result<Vec<usize>, ConfigError> {
    let mut out = Vec::new();
    for name in names.unwrap_or_default() {
        let i = policies.iter().position(|p| p.name == name).ok_or_else(|| {
            let known: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
            ctx.err(
                at.at("rate_limits"),
                format!(
                    "no rate-limit policy named {name:?}; defined policies: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })?;
        if public && matches!(policies[i].key, LimitKey::Subject | LimitKey::Claim(_)) {
            return Err(ctx.err(at.at("rate_limits"), format!(
                "{name:?} is keyed by the token, but the route is public and has no token; key it by client_ip or a header"
            )));
        }
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10/s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_rate("100/m"), Ok(Duration::from_millis(600)));
        assert_eq!(parse_rate("1/h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "0/s", "10/d", "x/s", "-1/s", "1.5/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
