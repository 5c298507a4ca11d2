//! Revoked tokens, shared through Redis and checked locally on every request
//! (verified-token cache hits included), so a check costs no round trip.
//!
//! In Redis, `{prefix}revoked:jti:{jti}` holds a token's `exp` and
//! `{prefix}revoked:sub:{sub}` the time before which every token of that
//! subject is revoked; each expires once the tokens it covers could no longer
//! be accepted anyway. Every change is also published on
//! `{prefix}revocations`; each instance follows that channel and reloads the
//! whole list whenever it (re)connects, so a revocation is in force on every
//! instance within moments, and on an instance started later from the start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Weak;
use std::time::Duration;

use crate::clock::unix_now;

use dashmap::DashMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::auth::Caller;

/// Accepted past `exp` by at most a provider's leeway: entries outlive it by this.
const SLACK_SECONDS: f64 = 3600.0;

/// One revocation, as `POST /revoke` takes it and the channel carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Revocation {
    /// One token, by its `jti`; kept until its `exp`.
    Token { jti: String, exp: f64 },
    /// Every token of a subject issued (`iat`) before `before`.
    Subject { sub: String, before: f64 },
}

impl Revocation {
    /// A body that is exactly one of the two forms, with sensible values.
    pub fn parse(body: &[u8]) -> Result<Self, &'static str> {
        let r: Revocation = serde_json::from_slice(body).map_err(|_| {
            "Send {\"jti\": \"...\", \"exp\": <unix seconds>} or {\"sub\": \"...\", \"before\": <unix seconds>}."
        })?;
        match &r {
            Revocation::Token { jti, exp } if jti.is_empty() || !exp.is_finite() || *exp <= 0.0 => {
                Err("`jti` must be non-empty and `exp` a positive number of seconds.")
            }
            Revocation::Subject { sub, before } if sub.is_empty() || !before.is_finite() || *before <= 0.0 => {
                Err("`sub` must be non-empty and `before` a positive number of seconds.")
            }
            _ => Ok(r),
        }
    }

    /// Refuse what would lock someone out for good: a subject revocation
    /// whose `before` is more than 5 minutes ahead (every token issued until
    /// then, including ones not yet issued), or a token's `exp` beyond the
    /// longest a token lives.
    pub(crate) fn within_bounds(self, now: f64, max_token_lifetime: Duration) -> Result<Self, &'static str> {
        match &self {
            Revocation::Subject { before, .. } if *before > now + MAX_BEFORE_AHEAD => {
                Err("`before` may be at most 5 minutes in the future; revoke again later if needed.")
            }
            Revocation::Token { exp, .. } if *exp > now + max_token_lifetime.as_secs_f64() => {
                Err("`exp` is later than revocation.max_token_lifetime from now; send the token's own exp.")
            }
            _ => Ok(self),
        }
    }
}

/// How far ahead a subject revocation's `before` may be.
const MAX_BEFORE_AHEAD: f64 = 300.0;

/// The local copy.
#[derive(Debug)]
pub struct Revocations {
    /// `jti` -> the token's `exp`.
    tokens: DashMap<String, f64>,
    /// `sub` -> tokens issued before this are revoked.
    subjects: DashMap<String, f64>,
    max_token_lifetime: Duration,
    loaded: AtomicBool,
    /// Bumped on every change, for open WebSocket tunnels to re-check
    /// their token (a revoked token's tunnels close at once).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Revocations {
    pub fn new(max_token_lifetime: Duration) -> Self {
        Revocations {
            tokens: DashMap::new(),
            subjects: DashMap::new(),
            max_token_lifetime,
            loaded: AtomicBool::new(false),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A receiver that wakes whenever the list changes.
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.tokens.len() + self.subjects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a verified token has been revoked.
    pub(crate) fn is_revoked(&self, identity: &Caller) -> bool {
        if self.is_empty() {
            return false;
        }
        let by_jti = identity
            .claims
            .get("jti")
            .and_then(|j| j.as_str())
            .is_some_and(|jti| self.tokens.contains_key(jti));
        let by_subject = || {
            let sub = identity.subject.as_ref().and_then(|s| s.as_str())?;
            let before = *self.subjects.get(sub)?;
            // A token without `iat` counts as issued before.
            let iat = identity.claims.get("iat").and_then(|v| v.as_f64()).unwrap_or(f64::MIN);
            Some(iat < before)
        };
        by_jti || by_subject().unwrap_or(false)
    }

    /// Add one revocation to the local copy.
    pub fn apply(&self, r: &Revocation) {
        match r {
            Revocation::Token { jti, exp } => {
                self.tokens.insert(jti.clone(), *exp);
            }
            Revocation::Subject { sub, before } => {
                let mut entry = self.subjects.entry(sub.clone()).or_insert(*before);
                if *entry < *before {
                    *entry = *before;
                }
            }
        }
        crate::metrics::revocations(self.len());
        self.changes.send_modify(|n| *n += 1);
    }

    /// Drop entries that can no longer match an acceptable token.
    fn prune(&self) {
        let now = unix_now();
        let lifetime = self.max_token_lifetime.as_secs_f64();
        self.tokens.retain(|_, exp| *exp + SLACK_SECONDS > now);
        self.subjects
            .retain(|_, before| *before + lifetime + SLACK_SECONDS > now);
        crate::metrics::revocations(self.len());
    }

    /// Unix seconds at which Redis may forget `r`.
    fn expires_at(&self, r: &Revocation) -> u64 {
        let at = match r {
            Revocation::Token { exp, .. } => *exp,
            Revocation::Subject { before, .. } => *before + self.max_token_lifetime.as_secs_f64(),
        };
        (at + SLACK_SECONDS).max(unix_now() + 60.0).ceil() as u64
    }
}

fn redis_key(store: &Store, r: &Revocation) -> String {
    match r {
        Revocation::Token { jti, .. } => store.key(&format!("revoked:jti:{jti}")),
        Revocation::Subject { sub, .. } => store.key(&format!("revoked:sub:{sub}")),
    }
}

/// Record a revocation in Redis, tell every instance, and apply it here.
pub async fn revoke(store: &Store, r: Revocation) -> Result<(), StoreError> {
    let Some(local) = &store.revocations else {
        return Ok(());
    };
    let key = redis_key(store, &r);
    let channel = store.key("revocations");
    let expires = local.expires_at(&r);
    let value = match &r {
        Revocation::Token { exp, .. } => *exp,
        Revocation::Subject { before, .. } => *before,
    };
    let message = serde_json::to_string(&r).unwrap_or_default();
    // A later `before` for the same subject wins: a smaller one is only published.
    let script = redis::Script::new(
        r"local old = tonumber(redis.call('GET', KEYS[1]))
          if not old or old < tonumber(ARGV[1]) then
            redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2])
          end
          redis.call('PUBLISH', KEYS[2], ARGV[3])
          return 1",
    );
    store
        .run("revoke", |mut c| async move {
            script
                .key(&key)
                .key(&channel)
                .arg(format!("{value:.0}"))
                .arg(expires)
                .arg(message)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await?;
    local.apply(&r);
    Ok(())
}

/// How often the follower checks that its subscription still delivers (it
/// publishes a ping of its own and must see it come back before the next
/// check) and reloads the whole list, which also brings in anything a
/// half-dead subscription missed: a lost channel costs at most twice this.
const LIVENESS_EVERY: Duration = Duration::from_secs(25);

/// A liveness ping on the revocation channel: `{"ping": "<follower's nonce>"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ping {
    ping: String,
}

/// Follow the revocation channel for as long as the store lives: subscribe,
/// load the whole list, then apply each message; on any disconnect, or when
/// the channel stops delivering, again.
pub(crate) async fn follow(store: Weak<Store>) {
    let mut backoff = Duration::from_millis(100);
    let mut prune = tokio::time::interval(Duration::from_secs(60));
    let nonce = {
        use std::hash::BuildHasher;
        format!("{:016x}", std::collections::hash_map::RandomState::new().hash_one(0u8))
    };
    let ping = serde_json::to_string(&Ping { ping: nonce.clone() }).unwrap_or_default();
    loop {
        let Some(s) = store.upgrade() else { return };
        let Some(local) = s.revocations.clone() else { return };
        let channel = s.key("revocations");
        let mut pubsub = match s.pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the store");
                drop(s);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if pubsub.subscribe(&channel).await.is_err() {
            drop(s);
            tokio::time::sleep(backoff).await;
            continue;
        }
        // Subscribed first, then loaded: nothing published in between is missed.
        if let Err(e) = resync(&s, &local).await {
            tracing::warn!(error = %e, "cannot load the revocation list");
            drop(s);
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        drop(s);
        let mut liveness = tokio::time::interval_at(tokio::time::Instant::now() + LIVENESS_EVERY, LIVENESS_EVERY);
        let mut ping_out = false;
        let mut messages = pubsub.on_message();
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else { break };
                    let payload = msg.get_payload_bytes();
                    if let Ok(Ping { ping: theirs }) = serde_json::from_slice::<Ping>(payload) {
                        // Another instance's pings are no concern of ours.
                        if theirs == nonce {
                            ping_out = false;
                        }
                        continue;
                    }
                    match serde_json::from_slice::<Revocation>(payload) {
                        Ok(r) => local.apply(&r),
                        Err(_) => tracing::warn!("ignoring a malformed message on the revocation channel"),
                    }
                }
                _ = liveness.tick() => {
                    let Some(s) = store.upgrade() else { return };
                    if ping_out {
                        tracing::warn!("the revocation channel stopped delivering; reconnecting");
                        break;
                    }
                    if let Err(e) = resync(&s, &local).await {
                        tracing::warn!(error = %e, "cannot reload the revocation list; reconnecting");
                        break;
                    }
                    let (channel, ping) = (channel.clone(), ping.clone());
                    let sent = s
                        .run("revocation_ping", |mut c| async move {
                            redis::cmd("PUBLISH").arg(channel).arg(ping).query_async::<i64>(&mut c).await
                        })
                        .await;
                    ping_out = sent.is_ok();
                }
                _ = prune.tick() => {
                    if store.strong_count() == 0 {
                        return;
                    }
                    local.prune();
                }
            }
        }
        tracing::warn!("lost the store's revocation channel; reconnecting");
        if store.strong_count() == 0 {
            return;
        }
    }
}

/// Load every revocation Redis holds into the local copy.
async fn resync(store: &Store, local: &Revocations) -> Result<(), StoreError> {
    let pattern = store.key("revoked:*");
    let jti_prefix = store.key("revoked:jti:");
    let sub_prefix = store.key("revoked:sub:");
    let keys: Vec<String> = store
        .run("resync", |mut c| async move {
            let mut keys = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await?;
                keys.extend(batch);
                if next == 0 {
                    return Ok(keys);
                }
                cursor = next;
            }
        })
        .await?;
    for chunk in keys.chunks(500) {
        let mut mget = redis::cmd("MGET");
        mget.arg(chunk);
        let values: Vec<Option<f64>> = store
            .run("resync", |mut c| async move { mget.query_async(&mut c).await })
            .await?;
        for (key, value) in chunk.iter().zip(values) {
            let Some(value) = value else { continue };
            if let Some(jti) = key.strip_prefix(&jti_prefix) {
                local.apply(&Revocation::Token {
                    jti: jti.to_string(),
                    exp: value,
                });
            } else if let Some(sub) = key.strip_prefix(&sub_prefix) {
                local.apply(&Revocation::Subject {
                    sub: sub.to_string(),
                    before: value,
                });
            }
        }
    }
    local.loaded.store(true, Ordering::Release);
    crate::metrics::revocations(local.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(claims: serde_json::Value) -> Caller {
        let claims = claims.as_object().unwrap().clone();
        Caller {
            subject: claims.get("sub").cloned(),
            scopes: vec![],
            claims,
            valid_until: 0.0,
        }
    }

    #[test]
    fn bodies() {
        assert_eq!(
            Revocation::parse(br#"{"jti":"a","exp":1700000000}"#),
            Ok(Revocation::Token {
                jti: "a".into(),
                exp: 1.7e9
            })
        );
        assert_eq!(
            Revocation::parse(br#"{"sub":"u","before":1700000000}"#),
            Ok(Revocation::Subject {
                sub: "u".into(),
                before: 1.7e9
            })
        );
        for bad in [
            &b"{}"[..],
            br#"{"jti":"a"}"#,
            br#"{"jti":"","exp":1}"#,
            br#"{"jti":"a","exp":"soon"}"#,
            br#"{"sub":"u","before":-1}"#,
            br#"{"jti":"a","exp":1,"sub":"u"}"#,
            b"not json",
        ] {
            assert!(Revocation::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn matching() {
        let r = Revocations::new(Duration::from_secs(3600));
        let t = identity(json!({"sub": "u1", "jti": "t1", "iat": 1000}));
        assert!(!r.is_revoked(&t));
        r.apply(&Revocation::Token {
            jti: "t1".into(),
            exp: 2e9,
        });
        assert!(r.is_revoked(&t));
        assert!(!r.is_revoked(&identity(json!({"sub": "u1", "jti": "t2", "iat": 1000}))));
        r.apply(&Revocation::Subject {
            sub: "u2".into(),
            before: 2000.0,
        });
        assert!(r.is_revoked(&identity(json!({"sub": "u2", "iat": 1999}))));
        assert!(!r.is_revoked(&identity(json!({"sub": "u2", "iat": 2000}))));
        assert!(r.is_revoked(&identity(json!({"sub": "u2"}))), "no iat counts as before");
        // An earlier `before` never shortens a later one.
        r.apply(&Revocation::Subject {
            sub: "u2".into(),
            before: 1500.0,
        });
        assert!(r.is_revoked(&identity(json!({"sub": "u2", "iat": 1999}))));
    }
}
