//! Rate limits: GCRA (the generic cell rate algorithm, a token bucket kept as
//! one timestamp per key) with `rate` sustained and `burst` at once. A policy
//! keeps its buckets in this process (`store: local`) or in Redis
//! (`store: redis`), where one Lua script per check reads and moves the
//! bucket atomically, so N instances draw from one bucket with no
//! read-then-write race, timed by Redis's own clock.
//!
//! Checked after authorisation, in the route's order: a refused request
//! consumes nothing from the policies after the one that refused it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;

use crate::config::{LimitKey, RateLimitPolicy};
use crate::error::GatewayError;
use crate::store::Store;

/// Past this many buckets, expired ones are swept now and then.
const SWEEP_ABOVE: usize = 10_000;

/// The most buckets one local policy holds. A bucket is a 16-byte digest and
/// a timestamp (~60 bytes with the map's own), so this bounds a policy near
/// 12 MB whatever clients send; past it, a key not seen yet is treated as a
/// store error (the policy's `on_store_error`).
pub(crate) const MAX_LOCAL_BUCKETS: usize = 200_000;

/// A bucket's key: a fixed-size digest of the key value, so a long header
/// value costs the map no more than a short one.
type BucketKey = [u8; 16];

fn bucket_digest(value: &str) -> BucketKey {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    key
}

/// Local buckets of one policy: key digest -> theoretical arrival time (ns
/// since a process-wide epoch). Kept across reloads while the policy is
/// unchanged.
#[derive(Debug, Default)]
pub struct LocalBuckets {
    tat: DashMap<BucketKey, u64>,
    inserts: AtomicU64,
}

/// One GCRA step: `Ok(new_tat)` when a request at `now` fits, else how long
/// until it would.
fn gcra(tat: u64, now: u64, interval: u64, burst: u32) -> Result<u64, u64> {
    let new_tat = tat.max(now) + interval;
    let allow_at = new_tat.saturating_sub(interval.saturating_mul(u64::from(burst)));
    if now < allow_at {
        Err(allow_at - now)
    } else {
        Ok(new_tat)
    }
}

/// A bucket's answer.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    Wait(Duration),
    /// The bucket could not be consulted (the store did not answer, or a
    /// local policy is full): the policy's `on_store_error` decides.
    Unavailable,
}

impl LocalBuckets {
    fn check(&self, value: &str, policy: &RateLimitPolicy) -> Verdict {
        let key = bucket_digest(value);
        let now = crate::clock::nanos();
        let interval = policy.interval.as_nanos() as u64;
        let step = match self.tat.get_mut(&key) {
            Some(mut tat) => gcra(*tat, now, interval, policy.burst).map(|new| *tat = new),
            None => {
                let new = match gcra(now, now, interval, policy.burst) {
                    Ok(new) => new,
                    Err(wait) => return Verdict::Wait(Duration::from_nanos(wait)),
                };
                // Swept now and then, never per request: a full map of live
                // buckets must not make every new key pay for a scan of it.
                let sweep = self.inserts.fetch_add(1, Ordering::Relaxed).is_multiple_of(1024);
                if sweep && self.tat.len() > SWEEP_ABOVE {
                    self.tat.retain(|_, tat| *tat > now);
                }
                if self.tat.len() >= MAX_LOCAL_BUCKETS {
                    return Verdict::Unavailable;
                }
                self.tat.insert(key, new);
                Ok(())
            }
        };
        match step {
            Ok(()) => Verdict::Allowed,
            Err(wait) => Verdict::Wait(Duration::from_nanos(wait)),
        }
    }

    /// How many buckets the policy holds now.
    pub fn len(&self) -> usize {
        self.tat.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tat.is_empty()
    }
}

/// GCRA on Redis: `KEYS[1]` the bucket, `ARGV` the interval in µs and the
/// burst. Returns `{1, 0}` when allowed, `{0, µs to wait}` when not. Numbers
/// are written with `%.0f`: Lua's own formatting would round them.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then return {0, allow_at - now} end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0}
";

fn gcra_script() -> &'static redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(GCRA_SCRIPT))
}

/// What a request offers the key functions.
pub struct RequestFacts<'a> {
    pub route: &'a str,
    pub client: std::net::IpAddr,
    pub headers: &'a http::HeaderMap,
    pub identity: Option<&'a crate::auth::Caller>,
}

/// The bucket a request falls in; `None` when the request lacks what the
/// policy keys on (then that policy does not limit it).
fn key_value(key: &LimitKey, facts: &RequestFacts) -> Option<String> {
    let claim_text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    match key {
        LimitKey::Subject => facts.identity?.subject.as_ref().map(claim_text),
        LimitKey::ClientIp => Some(facts.client.to_string()),
        LimitKey::Route => Some(facts.route.to_string()),
        LimitKey::Header(name) => facts.headers.get(name)?.to_str().ok().map(str::to_string),
        LimitKey::Claim(name) => facts.identity?.claims.get(name).map(claim_text),
    }
}

/// A Redis key for a bucket. A header's value is the client's to choose:
/// it is always hashed, like any long or odd value, so no raw header value
/// ever becomes a key name.
fn bucket_key(store: &Store, policy: &RateLimitPolicy, value: &str) -> String {
    let plain =
        !matches!(policy.key, LimitKey::Header(_)) && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    if plain {
        store.key(&format!("rl:{}:{value}", policy.name))
    } else {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        store.key(&format!("rl:{}:#{hex}", policy.name))
    }
}

/// Check a route's policies in order. `buckets` and `policies` are indexed
/// alike; `route_limits` are the route's indexes into them.
pub async fn check(
    policies: &[RateLimitPolicy],
    buckets: &[Arc<LocalBuckets>],
    store: Option<&Store>,
    route_limits: &[usize],
    facts: &RequestFacts<'_>,
    route_name: &Arc<str>,
) -> Result<(), GatewayError> {
    for &i in route_limits {
        let policy = &policies[i];
        let Some(value) = key_value(&policy.key, facts) else {
            continue;
        };
        let verdict = if policy.shared {
            match store {
                Some(store) => shared_check(store, policy, &value).await,
                None => Verdict::Unavailable,
            }
        } else {
            buckets[i].check(&value, policy)
        };
        match verdict {
            Verdict::Allowed => {}
            Verdict::Wait(wait) => {
                crate::metrics::rate_limited(route_name, &policy.name);
                // Whole seconds, at least 1 (RFC 9110 §10.2.3).
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(GatewayError::RateLimited(secs.max(1)));
            }
            // The store did not answer in time, or the local policy is
            // full: the policy says what to do.
            Verdict::Unavailable if policy.allow_on_store_error => {}
            Verdict::Unavailable => return Err(GatewayError::StoreUnavailable),
        }
    }
    Ok(())
}

async fn shared_check(store: &Store, policy: &RateLimitPolicy, value: &str) -> Verdict {
    let key = bucket_key(store, policy, value);
    let interval = policy.interval.as_micros().max(1) as u64;
    let burst = policy.burst;
    let answer: Result<(i64, i64), _> = store
        .run("rate_limit", |mut c| async move {
            gcra_script()
                .key(key)
                .arg(interval)
                .arg(burst)
                .invoke_async(&mut c)
                .await
        })
        .await;
    match answer {
        Ok((1, _)) => Verdict::Allowed,
        Ok((_, wait)) => Verdict::Wait(Duration::from_micros(wait.max(1) as u64)),
        Err(_) => Verdict::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let interval = 100; // one request per 100 ns
        let mut tat = 0;
        for _ in 0..5 {
            tat = gcra(tat, 1_000, interval, 5).expect("within the burst");
        }
        assert_eq!(gcra(tat, 1_000, interval, 5), Err(100), "the 6th waits one interval");
        // One interval later, one more fits, and only one.
        let tat = gcra(tat, 1_100, interval, 5).expect("refilled by one");
        assert!(gcra(tat, 1_100, interval, 5).is_err());
        // Long idle: the bucket is full again, never more than full.
        let mut tat2 = tat;
        for _ in 0..5 {
            tat2 = gcra(tat2, 1_000_000, interval, 5).unwrap();
        }
        assert!(gcra(tat2, 1_000_000, interval, 5).is_err());
    }

    #[test]
    fn local_buckets_are_per_key() {
        let policy = RateLimitPolicy {
            name: "p".into(),
            key: LimitKey::ClientIp,
            interval: Duration::from_secs(3600),
            burst: 2,
            shared: false,
            allow_on_store_error: true,
        };
        let b = LocalBuckets::default();
        assert_eq!(b.check("a", &policy), Verdict::Allowed);
        assert_eq!(b.check("a", &policy), Verdict::Allowed);
        let Verdict::Wait(wait) = b.check("a", &policy) else {
            panic!("the third request within the hour must wait");
        };
        assert!(
            wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        assert_eq!(b.check("b", &policy), Verdict::Allowed);
    }

    /// Long key values cost a bucket no more than short ones, and the number
    /// of buckets is capped: a key not seen yet past the cap is "unavailable"
    /// (the policy's on_store_error), while known keys keep being limited.
    #[test]
    fn local_buckets_are_bounded() {
        let policy = RateLimitPolicy {
            name: "p".into(),
            key: LimitKey::Header(http::HeaderName::from_static("x-key")),
            interval: Duration::from_secs(3600),
            burst: 1,
            shared: false,
            allow_on_store_error: true,
        };
        let b = LocalBuckets::default();
        let long = "x".repeat(16 * 1024);
        assert_eq!(b.check(&long, &policy), Verdict::Allowed);
        assert!(matches!(b.check(&long, &policy), Verdict::Wait(_)));
        for i in 1..MAX_LOCAL_BUCKETS {
            assert_eq!(b.check(&i.to_string(), &policy), Verdict::Allowed);
        }
        assert_eq!(b.len(), MAX_LOCAL_BUCKETS);
        assert_eq!(b.check("one more", &policy), Verdict::Unavailable);
        assert_eq!(b.len(), MAX_LOCAL_BUCKETS);
        assert!(matches!(b.check(&long, &policy), Verdict::Wait(_)));
    }
}
