//! Introspection's series (`portcullis_introspection_*`), one set per
//! provider, resolved once when the provider is built so a cache hit costs
//! one atomic add and no label lookup.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderOnly {
    provider: String,
}

type HistogramFamily = Family<ProviderOnly, Histogram, fn() -> Histogram>;

pub(super) struct Families {
    calls: Family<CallLabels, Counter>,
    duration: HistogramFamily,
    hits: Family<ProviderOnly, Counter>,
}

/// Create and register the families (once, with the other metrics).
pub(super) fn register(r: &mut Registry) -> Families {
    let f = Families {
        calls: Family::default(),
        duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14))),
        hits: Family::default(),
    };
    r.register(
        "introspection_requests",
        "Token introspection calls, by provider and result (active, inactive, error)",
        f.calls.clone(),
    );
    r.register(
        "introspection_duration_seconds",
        "Time token introspection calls took, by provider",
        f.duration.clone(),
    );
    r.register(
        "introspection_cache_hits",
        "Opaque tokens answered from the introspection cache, by provider",
        f.hits.clone(),
    );
    f
}

/// One provider's introspection series (created at zero).
#[derive(Debug, Clone)]
pub(crate) struct IntrospectionMetrics {
    hits: Counter,
    active: Counter,
    inactive: Counter,
    error: Counter,
    duration: Histogram,
}

impl IntrospectionMetrics {
    pub(crate) fn new(provider: &str) -> Self {
        let f = &super::metrics().introspection;
        let call = |result| {
            f.calls
                .get_or_create(&CallLabels {
                    provider: provider.to_string(),
                    result,
                })
                .clone()
        };
        let only = ProviderOnly {
            provider: provider.to_string(),
        };
        IntrospectionMetrics {
            hits: f.hits.get_or_create(&only).clone(),
            active: call("active"),
            inactive: call("inactive"),
            error: call("error"),
            duration: f.duration.get_or_create(&only).clone(),
        }
    }

    pub(crate) fn cache_hit(&self) {
        self.hits.inc();
    }

    /// A call's result (`active`, `inactive` or `error`) and how long it took.
    pub(crate) fn call(&self, result: &str, took: Duration) {
        match result {
            "active" => &self.active,
            "inactive" => &self.inactive,
            _ => &self.error,
        }
        .inc();
        self.duration.observe(took.as_secs_f64());
    }
}
