//! DestinationRule traffic policy on clusters (istiod's `applyTrafficPolicy`): connection pool
//! (circuit breakers, connect and idle timeouts, requests per connection, HTTP/2 upgrade), outlier
//! detection and load balancing. Upstream TLS is left to [`super::tls`].
//!
//! The policy handed in is already resolved for the port (a `portLevelSettings` entry replaces the
//! top level wholesale) and, for subset clusters, merged with the subset's policy.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig,
    RingHashLbConfig, RoundRobinLbConfig, SlowStartConfig, common_lb_config,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, OutlierDetection as EnvoyOutlier, UpstreamConnectionOptions, circuit_breakers::Thresholds,
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CoreHttpProtocolOptions, RuntimeDouble,
    TcpKeepalive,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig, explicit_http_config,
};
use envoy_types::pb::envoy::r#type::v3::Percent as EnvoyPercent;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};

use super::cluster::ClusterOut;
use super::proto_duration;
use super::{CONNECT_TIMEOUT_SECS, secs};
use crate::api::istio::{
    ConnectionPoolSettings, H2UpgradePolicy, LoadBalancerSettings, OutlierDetection, SimpleLb,
    TcpKeepalive as IstioKeepalive, TrafficPolicy,
};
use crate::model::ServicePort;

/// Applies `policy` to a cluster (outbound direction). `None` leaves Istio's defaults in place.
pub fn apply_traffic_policy(c: &mut ClusterOut, policy: Option<&TrafficPolicy>, port: &ServicePort) {
    let Some(p) = policy else {
        return;
    };
    if let Some(cp) = &p.connection_pool {
        apply_connection_pool(c, cp);
        if should_h2_upgrade(cp) {
            c.http = Some(HttpProtocolOptions {
                upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                    protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                })),
                ..c.http.take().unwrap_or_default()
            });
        }
    }
    if let Some(o) = &p.outlier_detection {
        apply_outlier_detection(c, o);
    }
    apply_load_balancer(c, p.load_balancer.as_ref(), port);
}

fn u32_value(v: i32) -> Option<UInt32Value> {
    u32::try_from(v).ok().filter(|v| *v > 0).map(|value| UInt32Value { value })
}

/// Istio's default thresholds: everything at `u32::MAX` (Envoy's default of 3 retries is too low
/// during pod churn), tracking remaining capacity.
pub fn default_thresholds() -> Thresholds {
    let max = Some(UInt32Value { value: u32::MAX });
    Thresholds {
        max_connections: max,
        max_pending_requests: max,
        max_requests: max,
        max_retries: max,
        track_remaining: true,
        ..Default::default()
    }
}

/// istiod's `applyConnectionPool`.
fn apply_connection_pool(c: &mut ClusterOut, cp: &ConnectionPoolSettings) {
    let mut t = default_thresholds();
    let mut idle_timeout = None;
    let mut max_requests_per_connection = 0;
    let mut max_concurrent_streams = 0;
    let mut max_connection_duration = None;
    if let Some(h) = &cp.http {
        // Envoy applies max_requests to HTTP/2 and max_pending_requests to HTTP/1.1 clusters.
        if let Some(v) = h.http2_max_requests.and_then(u32_value) {
            t.max_requests = Some(v);
        }
        if let Some(v) = h.http1_max_pending_requests.and_then(u32_value) {
            t.max_pending_requests = Some(v);
        }
        if let Some(v) = h.max_retries.and_then(u32_value) {
            t.max_retries = Some(v);
        }
        idle_timeout = h.idle_timeout.as_deref().and_then(proto_duration);
        max_requests_per_connection = h.max_requests_per_connection.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        max_concurrent_streams = h.max_concurrent_streams.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    }
    c.cluster.connect_timeout = secs(CONNECT_TIMEOUT_SECS);
    if let Some(tcp) = &cp.tcp {
        if let Some(d) = tcp.connect_timeout.as_deref().and_then(proto_duration) {
            c.cluster.connect_timeout = Some(d);
        }
        if let Some(v) = tcp.max_connections.and_then(u32_value) {
            t.max_connections = Some(v);
        }
        max_connection_duration = tcp.max_connection_duration.as_deref().and_then(proto_duration);
        if idle_timeout.is_none() {
            idle_timeout = tcp.idle_timeout.as_deref().and_then(proto_duration);
        }
        if let Some(k) = &tcp.tcp_keepalive {
            apply_keepalive(c, k);
        }
    }
    c.cluster.circuit_breakers = Some(CircuitBreakers { thresholds: vec![t], ..Default::default() });
    if max_connection_duration.is_some()
        || idle_timeout.is_some()
        || max_requests_per_connection > 0
        || max_concurrent_streams > 0
    {
        let opts = c.http.get_or_insert_with(HttpProtocolOptions::default);
        let common = opts.common_http_protocol_options.get_or_insert_with(CoreHttpProtocolOptions::default);
        if idle_timeout.is_some() {
            common.idle_timeout = idle_timeout;
        }
        if max_requests_per_connection > 0 {
            common.max_requests_per_connection = Some(UInt32Value { value: max_requests_per_connection });
        }
        if max_connection_duration.is_some() {
            common.max_connection_duration = max_connection_duration;
        }
        if max_concurrent_streams > 0
            && let Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2)),
            })) = opts.upstream_protocol_options.as_mut()
        {
            h2.max_concurrent_streams = Some(UInt32Value { value: max_concurrent_streams });
        }
    }
    if cp.http.as_ref().and_then(|h| h.use_client_protocol) == Some(true) {
        // Speak upstream whatever the downstream spoke.
        let opts = c.http.get_or_insert_with(HttpProtocolOptions::default);
        opts.upstream_protocol_options =
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            }));
    }
}

fn apply_keepalive(c: &mut ClusterOut, k: &IstioKeepalive) {
    let secs_of = |d: &Option<String>| {
        d.as_deref()
            .and_then(proto_duration)
            .and_then(|d| u32::try_from(d.seconds).ok())
            .map(|value| UInt32Value { value })
    };
    c.cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
        tcp_keepalive: Some(TcpKeepalive {
            keepalive_probes: k.probes.filter(|p| *p > 0).map(|value| UInt32Value { value }),
            keepalive_time: secs_of(&k.time),
            keepalive_interval: secs_of(&k.interval),
        }),
        ..Default::default()
    });
}

/// The mesh default is DO_NOT_UPGRADE; only an explicit UPGRADE turns HTTP/2 on.
fn should_h2_upgrade(cp: &ConnectionPoolSettings) -> bool {
    cp.http.as_ref().and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade)
}

/// istiod's `applyOutlierDetection`: success-rate ejection off; each consecutive-error detector on
/// (enforced 100%) when its count is set; panic threshold from `minHealthPercent` (0 when unset,
/// as Kubernetes services often have few pods).
fn apply_outlier_detection(c: &mut ClusterOut, o: &OutlierDetection) {
    let mut out = EnvoyOutlier { enforcing_success_rate: Some(UInt32Value { value: 0 }), ..Default::default() };
    let enforce = |v: u32| Some(UInt32Value { value: if v > 0 { 100 } else { 0 } });
    if let Some(v) = o.consecutive_5xx_errors {
        out.consecutive_5xx = Some(UInt32Value { value: v });
        out.enforcing_consecutive_5xx = enforce(v);
    }
    if let Some(v) = o.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(UInt32Value { value: v });
        out.enforcing_consecutive_gateway_failure = enforce(v);
    }
    if let Some(d) = o.interval.as_deref().and_then(proto_duration) {
        out.interval = Some(d);
    }
    if let Some(d) = o.base_ejection_time.as_deref().and_then(proto_duration) {
        out.base_ejection_time = Some(d);
    }
    if let Some(v) = o.max_ejection_percent.and_then(u32_value) {
        out.max_ejection_percent = Some(v);
    }
    if o.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(v) = o.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = Some(UInt32Value { value: v });
            out.enforcing_consecutive_local_origin_failure = Some(UInt32Value { value: 100 });
        }
        out.enforcing_local_origin_success_rate = Some(UInt32Value { value: 0 });
    }
    c.cluster.outlier_detection = Some(out);
    let min_health = o.min_health_percent.unwrap_or(0);
    if min_health >= 0 {
        c.cluster.common_lb_config.get_or_insert_with(CommonLbConfig::default).healthy_panic_threshold =
            Some(EnvoyPercent { value: f64::from(min_health) });
    }
}

fn is_original_dst(c: &ClusterOut) -> bool {
    matches!(c.cluster.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::OriginalDst as i32)
}

/// istiod's `applyLoadBalancer`.
fn apply_load_balancer(c: &mut ClusterOut, lb: Option<&LoadBalancerSettings>, _port: &ServicePort) {
    // Locality weighting applies with `distribute`, or with failover settings when outlier
    // detection can detect the failure.
    if let Some(l) = lb.and_then(|l| l.locality_lb_setting.as_ref())
        && l.enabled != Some(false)
    {
        let failover =
            c.cluster.outlier_detection.is_some() && (!l.failover.is_empty() || !l.failover_priority.is_empty());
        if failover || !l.distribute.is_empty() {
            c.cluster.common_lb_config.get_or_insert_with(CommonLbConfig::default).locality_config_specifier =
                Some(common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    common_lb_config::LocalityWeightedLbConfig::default(),
                ));
        }
    }
    if is_original_dst(c) {
        c.cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        return;
    }
    let simple = lb.and_then(|l| l.simple);
    let slow_start = lb.and_then(slow_start);
    match simple {
        Some(SimpleLb::Random) => c.cluster.lb_policy = LbPolicy::Random as i32,
        Some(SimpleLb::RoundRobin) => {
            c.cluster.lb_policy = LbPolicy::RoundRobin as i32;
            if let Some(s) = slow_start {
                c.cluster.lb_config =
                    Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig { slow_start_config: Some(s) }));
            }
        }
        Some(SimpleLb::Passthrough) => {
            c.cluster.lb_policy = LbPolicy::ClusterProvided as i32;
            c.cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32));
            // A STATIC or DNS service with a PASSTHROUGH policy keeps no endpoints of its own.
            c.cluster.load_assignment = None;
            c.cluster.eds_cluster_config = None;
        }
        // LEAST_REQUEST is Istio's default (LEAST_CONN is its deprecated alias).
        Some(SimpleLb::LeastRequest | SimpleLb::LeastConn | SimpleLb::Unspecified) | None => {
            c.cluster.lb_policy = LbPolicy::LeastRequest as i32;
            if let Some(s) = slow_start {
                c.cluster.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                    slow_start_config: Some(s),
                    ..Default::default()
                }));
            }
        }
    }
    if let Some(h) = lb.and_then(|l| l.consistent_hash.as_ref()) {
        if let Some(m) = &h.maglev {
            c.cluster.lb_policy = LbPolicy::Maglev as i32;
            c.cluster.lb_config = m
                .table_size
                .filter(|t| *t != 0)
                .map(|value| LbConfig::MaglevLbConfig(MaglevLbConfig { table_size: Some(UInt64Value { value }) }));
        } else if let Some(r) = &h.ring_hash {
            c.cluster.lb_policy = LbPolicy::RingHash as i32;
            c.cluster.lb_config = r.minimum_ring_size.filter(|s| *s != 0).map(|value| {
                LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: Some(UInt64Value { value }),
                    ..Default::default()
                })
            });
        } else {
            // Envoy's own default ring size, or the deprecated top-level setting.
            c.cluster.lb_policy = LbPolicy::RingHash as i32;
            c.cluster.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value { value: h.minimum_ring_size.filter(|s| *s != 0).unwrap_or(1024) }),
                ..Default::default()
            }));
        }
    }
}

/// Slow start from `warmup` (or the deprecated `warmupDurationSecs`).
fn slow_start(lb: &LoadBalancerSettings) -> Option<SlowStartConfig> {
    if let Some(w) = &lb.warmup {
        let window = w.duration.as_deref().and_then(proto_duration)?;
        return Some(SlowStartConfig {
            slow_start_window: Some(window),
            aggression: w.aggression.map(|a| RuntimeDouble {
                default_value: a,
                // Envoy requires a runtime key; none is ever set at runtime.
                runtime_key: "upstream.slow_start.aggression".to_string(),
            }),
            min_weight_percent: w.minimum_percent.map(|value| EnvoyPercent { value }),
        });
    }
    let window = lb.warmup_duration_secs.as_deref().and_then(proto_duration)?;
    Some(SlowStartConfig { slow_start_window: Some(window), ..Default::default() })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use serde_json::json;

    use super::*;
    use crate::model::Protocol;

    fn cluster(dtype: DiscoveryType) -> ClusterOut {
        ClusterOut {
            cluster: Box::new(Cluster {
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(dtype as i32)),
                lb_policy: LbPolicy::LeastRequest as i32,
                common_lb_config: Some(CommonLbConfig::default()),
                ..Default::default()
            }),
            http: None,
            metadata: None,
        }
    }

    fn port() -> ServicePort {
        ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Http,
            target_port: None,
            target_port_name: None,
        }
    }

    fn policy(v: serde_json::Value) -> TrafficPolicy {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn connection_pool_sets_breakers_timeouts_and_http_options() {
        let mut c = cluster(DiscoveryType::Eds);
        let p = policy(json!({"connectionPool": {
            "tcp": {"maxConnections": 10, "connectTimeout": "2s", "tcpKeepalive": {"probes": 3, "time": "60s"}},
            "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 7, "maxRequestsPerConnection": 1, "idleTimeout": "30s",
                     "h2UpgradePolicy": "UPGRADE"}}}));
        apply_traffic_policy(&mut c, Some(&p), &port());
        let t = &c.cluster.circuit_breakers.as_ref().unwrap().thresholds[0];
        assert_eq!(t.max_connections.unwrap().value, 10);
        assert_eq!(t.max_pending_requests.unwrap().value, 5);
        assert_eq!(t.max_requests.unwrap().value, 7);
        assert_eq!(t.max_retries.unwrap().value, u32::MAX);
        assert_eq!(c.cluster.connect_timeout.unwrap().seconds, 2);
        let h = c.http.as_ref().unwrap();
        let common = h.common_http_protocol_options.as_ref().unwrap();
        assert_eq!(common.idle_timeout.unwrap().seconds, 30);
        assert_eq!(common.max_requests_per_connection.unwrap().value, 1);
        assert!(matches!(h.upstream_protocol_options, Some(UpstreamProtocolOptions::ExplicitHttpConfig(_))));
        let k = c.cluster.upstream_connection_options.as_ref().unwrap().tcp_keepalive.as_ref().unwrap();
        assert_eq!((k.keepalive_probes.unwrap().value, k.keepalive_time.unwrap().value), (3, 60));
    }

    #[test]
    fn outlier_detection_and_panic_threshold() {
        let mut c = cluster(DiscoveryType::Eds);
        let p = policy(json!({"outlierDetection": {"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 3,
            "interval": "5s", "baseEjectionTime": "30s", "maxEjectionPercent": 50}}));
        apply_traffic_policy(&mut c, Some(&p), &port());
        let o = c.cluster.outlier_detection.as_ref().unwrap();
        assert_eq!(o.enforcing_consecutive_5xx.unwrap().value, 0);
        assert_eq!(o.enforcing_consecutive_gateway_failure.unwrap().value, 100);
        assert_eq!(o.max_ejection_percent.unwrap().value, 50);
        assert_eq!(o.enforcing_success_rate.unwrap().value, 0);
        let panic = c.cluster.common_lb_config.as_ref().unwrap().healthy_panic_threshold.unwrap();
        assert_eq!(panic.value, 0.0);
    }

    #[test]
    fn load_balancers() {
        let lb = |v: serde_json::Value, dtype| {
            let mut c = cluster(dtype);
            apply_traffic_policy(&mut c, Some(&policy(json!({"loadBalancer": v}))), &port());
            *c.cluster
        };
        assert_eq!(lb(json!({"simple": "ROUND_ROBIN"}), DiscoveryType::Eds).lb_policy, LbPolicy::RoundRobin as i32);
        assert_eq!(lb(json!({"simple": "RANDOM"}), DiscoveryType::Eds).lb_policy, LbPolicy::Random as i32);
        assert_eq!(
            lb(json!({"simple": "RANDOM"}), DiscoveryType::OriginalDst).lb_policy,
            LbPolicy::ClusterProvided as i32
        );
        let p = lb(json!({"simple": "PASSTHROUGH"}), DiscoveryType::Eds);
        assert_eq!(p.cluster_discovery_type, Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)));
        let m =
            lb(json!({"consistentHash": {"httpHeaderName": "x", "maglev": {"tableSize": 65537}}}), DiscoveryType::Eds);
        assert_eq!(m.lb_policy, LbPolicy::Maglev as i32);
        let r = lb(json!({"consistentHash": {"useSourceIp": true}}), DiscoveryType::Eds);
        assert_eq!(r.lb_policy, LbPolicy::RingHash as i32);
        let Some(LbConfig::RingHashLbConfig(rh)) = r.lb_config else { panic!("no ring hash config") };
        assert_eq!(rh.minimum_ring_size.unwrap().value, 1024);
        let w = lb(
            json!({"simple": "LEAST_REQUEST", "warmup": {"duration": "60s", "minimumPercent": 10}}),
            DiscoveryType::Eds,
        );
        let Some(LbConfig::LeastRequestLbConfig(lr)) = w.lb_config else { panic!("no least request config") };
        assert_eq!(lr.slow_start_config.unwrap().slow_start_window.unwrap().seconds, 60);
    }
}
