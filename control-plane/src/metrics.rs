//! Control-plane metrics, in Prometheus text format, with istiod's metric names where one exists.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Metrics of the push stage; the xDS server registers its own next to them.
#[derive(Debug)]
pub struct Metrics {
    /// `pilot_debounce_time`: seconds from the first change of a burst to the push.
    pub debounce_time: Histogram,
    /// `sailplane_translations`: proxy-profile translations performed.
    pub translations: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let debounce_time = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        let translations = Counter::default();
        registry.register(
            "pilot_debounce_time",
            "Delay in seconds between the first config change and the push",
            debounce_time.clone(),
        );
        registry.register("sailplane_translations", "Proxy profile translations performed", translations.clone());
        Self { debounce_time, translations }
    }

    /// Metrics registered nowhere (tests).
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }
}
