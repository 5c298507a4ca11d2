//! Time, written once. Hot paths keep timestamps in atomics, as milliseconds
//! or nanoseconds since one process-wide monotonic epoch; tokens speak Unix
//! seconds. A leaf: it imports nothing from the crate.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The process-wide monotonic epoch (the first time anything asks).
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], plus one: never 0, so an atomic holding 0
/// can mean "not set".
pub(crate) fn millis() -> u64 {
    Instant::now().saturating_duration_since(epoch()).as_millis() as u64 + 1
}

/// The instant a [`millis`] value stands for.
pub(crate) fn at_millis(ms: u64) -> Instant {
    epoch() + Duration::from_millis(ms.saturating_sub(1))
}

/// Nanoseconds since [`epoch`].
pub(crate) fn nanos() -> u64 {
    Instant::now().saturating_duration_since(epoch()).as_nanos() as u64
}

/// Unix time in seconds, with the fraction (0 if the clock is before 1970).
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Unix time in whole seconds (0 if the clock is before 1970).
pub(crate) fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Sleep until `deadline`, or forever when there is none (a `select!` arm
/// that is armed only sometimes).
pub(crate) async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_and_never_zero() {
        let a = millis();
        assert!(a >= 1);
        let at = at_millis(a);
        assert!(at <= Instant::now());
        assert!(at_millis(0) == epoch() && at_millis(1) == epoch());
        assert!(unix_now() > 1.7e9 && unix_secs() > 1_700_000_000);
    }
}
