//! xDS server metrics, with istiod's names.
//!
//! prometheus-client appends `_total` to counters in the text exposition, so the counters appear as
//! `pilot_xds_pushes_total` and `pilot_total_xds_rejects_total`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sailplane_translator::TypeUrl;
use sailplane_translator::resources::PerType;

/// The `type` label (`cds`, `eds`, `lds`, `rds`, `sds`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TypeLabel {
    /// Short type name.
    pub r#type: &'static str,
}

type HistogramFamily = Family<TypeLabel, Histogram, fn() -> Histogram>;

/// Metrics of the xDS server.
#[derive(Debug)]
pub struct XdsMetrics {
    /// `pilot_xds`: connected streams.
    pub connected: Gauge,
    /// `pilot_xds_pushes` by type: responses sent.
    pub pushes: Family<TypeLabel, Counter>,
    /// `pilot_xds_config_size_bytes` by type: size of each response.
    pub config_size: HistogramFamily,
    /// `pilot_total_xds_rejects` by type: NACKs received.
    pub rejects: Family<TypeLabel, Counter>,
    /// `pilot_proxy_convergence_time`: seconds from a config change to the proxy's ACK of it.
    pub convergence: Histogram,
    // Per-type handles, resolved once so the hot path does no label lookup.
    push_by_type: PerType<Counter>,
    size_by_type: PerType<Histogram>,
    reject_by_type: PerType<Counter>,
}

fn size_histogram() -> Histogram {
    // istiod's buckets.
    Histogram::new([1.0, 10_000.0, 1_000_000.0, 4_000_000.0, 10_000_000.0, 40_000_000.0])
}

impl XdsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::build();
        registry.register("pilot_xds", "Number of endpoints connected to this pilot using XDS", m.connected.clone());
        registry.register(
            "pilot_xds_pushes",
            "Pilot build and send errors for lds, rds, cds and eds",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_xds_config_size_bytes",
            "Distribution of configuration sizes pushed to clients",
            m.config_size.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "Total number of XDS responses from pilot rejected by proxy",
            m.rejects.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Delay in seconds between config change and a proxy receiving all required configuration",
            m.convergence.clone(),
        );
        m
    }

    /// Metrics registered nowhere (tests, benchmarks).
    pub fn unregistered() -> Self {
        Self::build()
    }

    fn build() -> Self {
        let pushes = Family::<TypeLabel, Counter>::default();
        let config_size: HistogramFamily = Family::new_with_constructor(size_histogram);
        let rejects = Family::<TypeLabel, Counter>::default();
        let label = |t: TypeUrl| TypeLabel { r#type: t.short() };
        let push_by_type = PerType::from_fn(|t| pushes.get_or_create_owned(&label(t)));
        let size_by_type = PerType::from_fn(|t| config_size.get_or_create_owned(&label(t)));
        let reject_by_type = PerType::from_fn(|t| rejects.get_or_create_owned(&label(t)));
        XdsMetrics {
            connected: Gauge::default(),
            pushes,
            config_size,
            rejects,
            convergence: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0,
            ]),
            push_by_type,
            size_by_type,
            reject_by_type,
        }
    }

    pub(crate) fn connect(&self) {
        self.connected.inc();
    }

    pub(crate) fn disconnect(&self) {
        self.connected.dec();
    }

    pub(crate) fn push(&self, t: TypeUrl, bytes: usize) {
        self.push_by_type[t].inc();
        self.size_by_type[t].observe(bytes as f64);
    }

    pub(crate) fn reject(&self, t: TypeUrl) {
        self.reject_by_type[t].inc();
    }

    pub(crate) fn converged(&self, elapsed: Duration) {
        self.convergence.observe(elapsed.as_secs_f64());
    }

    /// Responses of type `t` sent so far.
    pub fn pushes_of(&self, t: TypeUrl) -> u64 {
        self.push_by_type[t].get()
    }

    /// NACKs of type `t` received so far.
    pub fn rejects_of(&self, t: TypeUrl) -> u64 {
        self.reject_by_type[t].get()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_istio_names() {
        let mut registry = Registry::default();
        let m = XdsMetrics::new(&mut registry);
        m.connect();
        m.push(TypeUrl::Cluster, 1234);
        m.reject(TypeUrl::Listener);
        m.converged(Duration::from_millis(20));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "pilot_xds 1",
            "pilot_xds_pushes_total{type=\"cds\"} 1",
            "pilot_total_xds_rejects_total{type=\"lds\"} 1",
            "pilot_xds_config_size_bytes_sum{type=\"cds\"} 1234",
            "pilot_proxy_convergence_time_count 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert_eq!(m.pushes_of(TypeUrl::Cluster), 1);
        assert_eq!(m.rejects_of(TypeUrl::Listener), 1);
    }
}
