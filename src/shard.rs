//! Which worker thread the code runs on, and the per-worker shards that hot
//! state (route metrics, the verified-token cache, idle upstream connections)
//! is split into so that workers do not pass cache lines between cores. A
//! leaf: it imports nothing from the crate, so every layer may use it.

thread_local! {
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// The worker thread this code runs on (`usize::MAX` on any other thread):
/// the upstream pool prefers the connections a worker drives itself.
pub(crate) fn worker_index() -> usize {
    WORKER_INDEX.with(|i| i.get())
}

/// How many worker threads serve HTTPS connections: `PORTCULLIS_WORKERS`
/// (1 to 256) when set, else one per core this process may use (affinity
/// and cgroup quotas count). Decided once: the per-worker shards made at
/// every reload must match the workers started, and asking reads cgroup
/// files (once per route, per load, before).
pub(crate) fn worker_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        let forced = std::env::var("PORTCULLIS_WORKERS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok());
        match forced {
            Some(n) if (1..=256).contains(&n) => n,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    })
}

/// State that every request touches is split into shards, one per worker
/// (index 1..) plus shard 0 for every other thread, so that workers do not
/// pass the same cache lines between cores on each request.
pub(crate) fn shard_count() -> usize {
    worker_count() + 1
}

/// The shard of worker `worker` (see [`shard_count`]); threads other than
/// the workers have index `usize::MAX`, which wraps to shard 0.
pub(crate) fn shard_of(worker: usize) -> usize {
    worker.wrapping_add(1)
}

/// The calling thread's shard.
pub(crate) fn current_shard() -> usize {
    shard_of(worker_index())
}

/// Mark the calling thread as worker `index` (public for the benchmarks,
/// which stand in for workers).
pub fn become_worker(index: usize) {
    WORKER_INDEX.with(|i| i.set(index));
}
