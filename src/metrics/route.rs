//! Per-route request metrics: `portcullis_requests_total{route,listener,status}` and
//! `portcullis_request_duration_seconds{route,listener}`, counted on the request path
//! in per-worker shards (no lock, no shared cache line) and summed at scrape
//! time by a collector of our own.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::{metrics, RequestLabels, RouteListenerLabels};

/// One answered request. `route` is `None` (label `-`) when no route matched.
pub fn request(route: Option<&RouteMetrics>, listener: &'static str, status: u16, seconds: f64) {
    static NO_ROUTE: OnceLock<[Arc<RouteMetrics>; 2]> = OnceLock::new();
    let unmatched = || {
        NO_ROUTE.get_or_init(|| [route_entry("-", "https", false), route_entry("-", "decision", false)])
            [usize::from(listener == "decision")]
        .as_ref()
    };
    route.unwrap_or_else(unmatched).record(status, seconds);
}

/// The request metrics of the route named `name` on the HTTPS listener,
/// created at zero on first use and kept across reloads.
pub fn route(name: &str) -> Arc<RouteMetrics> {
    route_entry(name, "https", true)
}

/// The same for another listener (`decision`).
pub fn route_on(name: &str, listener: &'static str) -> Arc<RouteMetrics> {
    route_entry(name, listener, true)
}

fn route_entry(name: &str, listener: &'static str, configured: bool) -> Arc<RouteMetrics> {
    let mut routes = metrics().routes.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = routes.by_name.get(&(Arc::from(name), listener)) {
        return r.clone();
    }
    let r = Arc::new(RouteMetrics::new(
        name,
        listener,
        configured,
        crate::shard::shard_count(),
    ));
    routes.push(r.clone());
    r
}

/// Every route ever configured (and `-`): in order of first use, as a scrape
/// lists them, and by name, since each configuration load looks up all of
/// its routes (a scan per route took seconds at 20,000 routes).
#[derive(Debug, Default)]
pub(super) struct RouteList {
    in_order: Vec<Arc<RouteMetrics>>,
    by_name: HashMap<(Arc<str>, &'static str), Arc<RouteMetrics>>,
}

impl RouteList {
    fn push(&mut self, r: Arc<RouteMetrics>) {
        self.by_name.insert((r.name.clone(), r.listener), r.clone());
        self.in_order.push(r);
    }
}

/// Upper bounds of the duration buckets, in seconds: 0.5 ms doubling up to
/// ~16 s, then +Inf.
const DURATION_BOUNDS: [f64; 16] = {
    let mut b = [0.0005; 16];
    let mut i = 1;
    while i < 16 {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};

/// The statuses counted without a lock: what the gateway answers itself and
/// what services commonly do. Others are rare and counted under a mutex.
const COMMON_STATUSES: [u16; 40] = [
    101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406, 408, 409, 410, 411, 412,
    413, 414, 415, 416, 422, 425, 426, 428, 429, 431, 451, 499, 500, 501, 502, 503, 504,
];

/// Requests answered on one route and how long they took, counted per worker
/// thread: every worker counts every request, and counters shared by all of
/// them would move the same cache lines between cores on each request
/// (a mutex-held histogram and two map lookups per request cost ~5 % of the
/// throughput of a public route on two cores). A scrape sums the shards.
#[derive(Debug)]
pub struct RouteMetrics {
    name: Arc<str>,
    /// `https` or `decision`.
    listener: &'static str,
    /// Listed at zero before its first request (a configured route), or only
    /// once counted (`-`, no route matched).
    configured: bool,
    /// One per worker, see `shard::shard_count`.
    shards: Box<[Shard]>,
    other_statuses: Mutex<BTreeMap<u16, u64>>,
}

/// One thread's counts, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    statuses: [AtomicU64; COMMON_STATUSES.len()],
    /// Per bucket, not cumulative; the last one is +Inf.
    buckets: [AtomicU64; DURATION_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            statuses: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl RouteMetrics {
    fn new(name: &str, listener: &'static str, configured: bool, shards: usize) -> Self {
        RouteMetrics {
            name: Arc::from(name),
            listener,
            configured,
            shards: (0..shards).map(|_| Shard::default()).collect(),
            other_statuses: Mutex::default(),
        }
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn record(&self, status: u16, seconds: f64) {
        let shard = &self.shards[crate::shard::current_shard() % self.shards.len()];
        match COMMON_STATUSES.binary_search(&status) {
            Ok(i) => {
                shard.statuses[i].fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let mut other = self.other_statuses.lock().unwrap_or_else(|e| e.into_inner());
                *other.entry(status).or_default() += 1;
            }
        }
        let bucket = DURATION_BOUNDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DURATION_BOUNDS.len());
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // `as` saturates: a negative or NaN duration adds nothing.
        shard.sum_nanos.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Requests by status, summed over the shards; statuses never seen are left out.
    fn statuses(&self) -> BTreeMap<u16, u64> {
        let mut counts = self.other_statuses.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (i, &status) in COMMON_STATUSES.iter().enumerate() {
            let n: u64 = self.shards.iter().map(|s| s.statuses[i].load(Ordering::Relaxed)).sum();
            if n > 0 {
                counts.insert(status, n);
            }
        }
        counts
    }

    /// `(sum in seconds, count, per-bucket counts)` summed over the shards.
    fn durations(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let bounds = DURATION_BOUNDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .enumerate()
            .map(|(i, bound)| {
                (
                    bound,
                    self.shards.iter().map(|s| s.buckets[i].load(Ordering::Relaxed)).sum(),
                )
            })
            .collect();
        // The count is the buckets' total, so a scrape never sees them disagree.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let nanos: u64 = self.shards.iter().map(|s| s.sum_nanos.load(Ordering::Relaxed)).sum();
        (nanos as f64 / 1e9, count, buckets)
    }
}

/// Writes `portcullis_requests` and `portcullis_request_duration_seconds`
/// from the per-route shards at scrape time.
#[derive(Debug)]
pub(super) struct RouteCollector(pub(super) Arc<Mutex<RouteList>>);

impl Collector for RouteCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let routes = self.0.lock().unwrap_or_else(|e| e.into_inner()).in_order.clone();
        let mut requests = encoder.encode_descriptor(
            "requests",
            // `register` ends help texts with a full stop; a collector must itself.
            "Requests answered, by route, listener and status.",
            None,
            MetricType::Counter,
        )?;
        for r in &routes {
            for (status, n) in r.statuses() {
                let labels = RequestLabels {
                    route: r.name.clone(),
                    listener: r.listener,
                    status,
                };
                requests
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let mut durations = encoder.encode_descriptor(
            "request_duration_seconds",
            "Time to the response headers, by route and listener.",
            None,
            MetricType::Histogram,
        )?;
        for r in &routes {
            let (sum, count, buckets) = r.durations();
            if count == 0 && !r.configured {
                continue;
            }
            let labels = RouteListenerLabels {
                route: r.name.clone(),
                listener: r.listener,
            };
            durations
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    /// The shards render exactly as prometheus-client's own counter and
    /// histogram families fed the same requests.
    #[test]
    fn route_metrics_render_as_prometheus_client_families_do() {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        let requests: Family<RequestLabels, Counter> = Family::default();
        let duration = Family::<RouteListenerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let orders = Arc::new(RouteMetrics::new("orders", "https", true, 3));
        let idle = Arc::new(RouteMetrics::new("idle", "decision", true, 3));
        let unmatched = Arc::new(RouteMetrics::new("-", "https", false, 3));
        let seen = [
            (200, 0.0001),
            (200, 0.0005),
            (404, 0.0007),
            (599, 0.003),
            (200, 0.25),
            (502, 40.0),
            (200, 0.0),
        ];
        for (i, &(status, seconds)) in seen.iter().enumerate() {
            // Spread over the shards, as workers would.
            crate::shard::become_worker(i % 2);
            orders.record(status, seconds);
            let route: Arc<str> = "orders".into();
            let listener = "https";
            duration
                .get_or_create(&RouteListenerLabels {
                    route: route.clone(),
                    listener,
                })
                .observe(seconds);
            requests
                .get_or_create(&RequestLabels {
                    route,
                    listener,
                    status,
                })
                .inc();
        }
        crate::shard::become_worker(usize::MAX);
        let _ = duration.get_or_create(&RouteListenerLabels {
            route: "idle".into(),
            listener: "decision",
        });

        let render = |register: &dyn Fn(&mut Registry)| {
            let mut r = Registry::default();
            register(&mut r);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
            // Families list their series in hash order; the sums differ in
            // the last digits (nanoseconds against f64 seconds).
            let mut lines: Vec<String> = out.lines().filter(|l| !l.contains("_sum")).map(String::from).collect();
            lines.sort();
            (lines, out)
        };
        let mut routes = RouteList::default();
        [orders, idle, unmatched].into_iter().for_each(|r| routes.push(r));
        let routes = Arc::new(Mutex::new(routes));
        let (ours, text) = render(&|r| r.register_collector(Box::new(RouteCollector(routes.clone()))));
        let (theirs, _) = render(&|r| {
            r.register(
                "requests",
                "Requests answered, by route, listener and status",
                requests.clone(),
            );
            r.register(
                "request_duration_seconds",
                "Time to the response headers, by route and listener",
                duration.clone(),
            );
        });
        assert_eq!(ours, theirs);
        assert!(
            text.contains("requests_total{route=\"orders\",listener=\"https\",status=\"599\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("request_duration_seconds_sum{route=\"orders\",listener=\"https\"} 40.2543\n"),
            "{text}"
        );
        assert!(
            text.contains("request_duration_seconds_count{route=\"idle\",listener=\"decision\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("route=\"-\""), "{text}");
    }
}
