//! The verified-token cache. Verifying an RS256 or ES256 signature costs tens of
//! microseconds; a client sends the same token many times. A hit skips the
//! signature and claim parsing, and nothing else: every hit still checks
//! expiry, the route's providers and the route's scopes (a cache that skipped
//! those was GHSA-qvp4-rpmr-xwrr in Ory Oathkeeper).
//!
//! Keys are the SHA-256 of the whole token, so no crafted token can collide
//! with a cached one. The cache belongs to one configuration snapshot (a reload
//! starts empty) and an entry is only valid for the key generation of the
//! provider that verified it (new keys, a removed key: the entry is dropped).
//!
//! Each worker thread has a cache of its own: a token many connections send
//! (one client, one service account) would otherwise put the same map shard
//! and the same entry under every worker at once, moving their cache lines
//! between cores on each request. The price is one verification per worker
//! that sees a token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::{Caller, ProviderState};

/// Entries each worker keeps at most; past it, expired entries and then about
/// half of the rest are evicted.
pub(crate) const DEFAULT_CAPACITY: usize = 4096;

pub(crate) type CacheKey = [u8; 32];

#[derive(Debug)]
pub struct CachedToken {
    /// Index of the provider that verified the token.
    pub provider: usize,
    /// That provider's key generation at verification time.
    pub generation: u64,
    /// `exp` plus the provider's leeway, Unix seconds.
    pub valid_until: f64,
    pub identity: Arc<Caller>,
}

#[derive(Debug)]
pub struct TokenCache {
    /// One per worker, see `shard::shard_count`.
    shards: Box<[Shard]>,
    /// Entries kept at most per shard.
    capacity: usize,
    /// Which half of the key space the next overflow evicts.
    sweep: AtomicU8,
}

/// One worker's entries, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<HashMap<CacheKey, Arc<CachedToken>>>);

impl Default for TokenCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl TokenCache {
    /// `capacity` entries in each worker's cache.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        TokenCache {
            shards: (0..crate::shard::shard_count()).map(|_| Shard::default()).collect(),
            capacity: capacity.max(1),
            sweep: AtomicU8::new(0),
        }
    }

    /// The calling worker's entries.
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, Arc<CachedToken>>> {
        let shard = crate::shard::current_shard() % self.shards.len();
        self.shards[shard].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn key(token: &str) -> CacheKey {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// Entries in the calling worker's cache.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// A still-valid entry: not expired, and verified with the provider's
    /// current keys. Stale entries are removed on the way.
    pub fn get(&self, key: &CacheKey, providers: &[Arc<ProviderState>], now: f64) -> Option<Arc<CachedToken>> {
        let mut entries = self.entries();
        let entry = entries.get(key)?;
        let current = providers.get(entry.provider).map(|p| p.generation());
        if now >= entry.valid_until || current != Some(entry.generation) {
            entries.remove(key);
            return None;
        }
        Some(entry.clone())
    }

    pub fn insert(&self, key: CacheKey, entry: CachedToken, now: f64) {
        let mut entries = self.entries();
        if entries.len() >= self.capacity {
            self.evict(&mut entries, now);
        }
        entries.insert(key, Arc::new(entry));
    }

    /// Drop expired entries; if that frees too little, drop about half, a
    /// different half each time (by the first bit of the key).
    fn evict(&self, entries: &mut HashMap<CacheKey, Arc<CachedToken>>, now: f64) {
        entries.retain(|_, e| now < e.valid_until);
        if entries.len() >= self.capacity * 3 / 4 {
            let bit = self.sweep.fetch_add(1, Ordering::Relaxed) & 1;
            entries.retain(|k, _| k[0] & 1 != bit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Arc<Caller> {
        Arc::new(Caller {
            subject: None,
            scopes: vec![],
            claims: Default::default(),
            valid_until: 0.0,
        })
    }

    fn entry(valid_until: f64, generation: u64) -> CachedToken {
        CachedToken {
            provider: 0,
            generation,
            valid_until,
            identity: identity(),
        }
    }

    fn provider() -> Arc<ProviderState> {
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), "x").unwrap();
        let config = crate::config::Provider {
            name: "p".into(),
            issuer: None,
            audiences: None,
            keys: crate::config::KeySource::SecretFile(secret.path().to_path_buf()),
            ca_file: None,
            algorithms: None,
            leeway: std::time::Duration::from_secs(30),
            jwks_refresh: std::time::Duration::from_secs(600),
            scope_claims: vec!["scope".into()],
            subject_claim: "sub".into(),
            typ: None,
            introspection: None,
        };
        Arc::new(ProviderState::new(config).unwrap())
    }

    #[test]
    fn keys_are_sha256_of_the_whole_token() {
        assert_ne!(TokenCache::key("a.b.c"), TokenCache::key("a.b.d"));
        assert_eq!(TokenCache::key("a.b.c"), TokenCache::key("a.b.c"));
    }

    #[test]
    fn entries_never_outlive_their_expiry() {
        let cache = TokenCache::default();
        let providers = vec![provider()];
        let k = TokenCache::key("t");
        cache.insert(k, entry(100.0, 0), 50.0);
        assert!(cache.get(&k, &providers, 99.0).is_some());
        assert!(cache.get(&k, &providers, 100.0).is_none());
        assert!(cache.is_empty(), "the expired entry is removed");
    }

    #[test]
    fn entries_die_with_the_keys_that_verified_them() {
        let cache = TokenCache::default();
        let providers = vec![provider()];
        let k = TokenCache::key("t");
        cache.insert(k, entry(1e12, providers[0].generation()), 0.0);
        assert!(cache.get(&k, &providers, 1.0).is_some());
        providers[0].install(crate::auth::keys::KeySet::default());
        assert!(
            cache.get(&k, &providers, 1.0).is_none(),
            "new keys invalidate the entry"
        );
    }

    #[test]
    fn size_is_bounded() {
        let cache = TokenCache::with_capacity(100);
        for i in 0..10_000 {
            cache.insert(TokenCache::key(&i.to_string()), entry(1e12, 0), 0.0);
            assert!(cache.len() <= 100, "{} entries after {i} inserts", cache.len());
        }
        // Expired entries go first.
        let cache = TokenCache::with_capacity(10);
        for i in 0..10 {
            cache.insert(TokenCache::key(&i.to_string()), entry(5.0, 0), 0.0);
        }
        cache.insert(TokenCache::key("fresh"), entry(1e12, 0), 6.0);
        assert_eq!(cache.len(), 1);
    }
}
