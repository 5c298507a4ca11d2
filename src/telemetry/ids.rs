//! Trace and span ids, and the coin the sampler tosses: a per-thread
//! SplitMix64 stream seeded from the standard library's random hasher keys.
//! Ids must be unique and unpredictable enough not to collide across
//! instances, not secret; each costs a few instructions.

use std::cell::Cell;
use std::hash::{BuildHasher, RandomState};

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()));
}

/// The next 64 random bits of this thread.
pub(super) fn next_u64() -> u64 {
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// A new trace id (never the invalid 0).
pub(super) fn trace_id() -> u128 {
    ((u128::from(next_u64()) << 64) | u128::from(next_u64())).max(1)
}

/// A new span id (never the invalid 0).
pub(super) fn span_id() -> u64 {
    next_u64().max(1)
}

/// Whether a new trace is recorded at `ratio` (0 to 1).
pub(super) fn sample(ratio: f64) -> bool {
    // 53 random bits against the ratio: exact at 0 and 1.
    ((next_u64() >> 11) as f64) < ratio * (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_the_coin_is_fair_enough() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| trace_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!((0..1000).all(|_| !sample(0.0)));
        assert!((0..1000).all(|_| sample(1.0)));
        let hits = (0..100_000).filter(|_| sample(0.25)).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
    }
}
