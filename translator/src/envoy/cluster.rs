//! Clusters (CDS): one outbound cluster per visible service port, the catch-all clusters, and the
//! inbound clusters of the proxy's own workload.
//!
//! Shapes follow istiod's `ClusterBuilder`: connect timeout 10s, LEAST_REQUEST, circuit breakers at
//! `u32::MAX` with `track_remaining`, an empty `common_lb_config`, `alt_stat_name` with the `;`
//! delimiter, and `filter_metadata.istio.services` naming the service.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig, LbConfig, LbPolicy,
    OriginalDstLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CoreHttpProtocolOptions,
    SocketAddress, TypedExtensionConfig, socket_address,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig, explicit_http_config,
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};

use super::endpoint::{EndpointFilter, locality_lb_endpoints};
use super::{CONNECT_TIMEOUT_SECS, Ctx, ads_config_source, any, policy, secs, tls, wire};
use crate::api::istio::{DestinationRuleSpec, SimpleLb};
use crate::model::config::{merge_subset_policy, port_level_policy};
use crate::model::{Labels, Location, NodeType, Protocol, Resolution, Service, ServiceOrigin, ServicePort};
use crate::names;
use crate::resources::{ResourceSet, TypeUrl};

/// Key under which upstream HTTP options live in `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// `Cluster.metadata` field number, for appending sorted metadata (see [`wire`]).
const CLUSTER_METADATA_TAG: u32 = 25;

/// Istio disables cleanup of inbound ORIGINAL_DST hosts: the largest duration Go's time package
/// can hold, in whole seconds.
const MAX_CLEANUP_INTERVAL_SECS: i64 = 9_223_372_035;

/// Istio's `PILOT_DNS_CARES_UDP_MAX_QUERIES` default.
const DNS_UDP_MAX_QUERIES: u32 = 100;
/// Istio's `PILOT_DNS_JITTER_DURATION` default.
const DNS_JITTER_MS: i64 = 100;
/// MeshConfig `dnsRefreshRate` default.
const DNS_REFRESH_SECS: i64 = 60;

/// A cluster plus what is encoded separately: its upstream HTTP options (shaped by several
/// policies before they are packed) and its `filter_metadata.istio`.
#[derive(Debug, Clone)]
pub struct ClusterOut {
    /// The cluster (its `metadata` and HTTP protocol options left empty). Boxed: a `Cluster` is
    /// several kilobytes, and clusters move through a few builder stages.
    pub cluster: Box<Cluster>,
    /// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`, if any.
    pub http: Option<HttpProtocolOptions>,
    /// `filter_metadata.istio`, encoded separately (see [`wire`]).
    pub metadata: Option<wire::Struct>,
}

impl ClusterOut {
    fn add_to(mut self, set: &mut ResourceSet) {
        set_http_options(&mut self.cluster, self.http.take());
        match &self.metadata {
            Some(m) => {
                let extra = wire::metadata_field(CLUSTER_METADATA_TAG, &[("istio", m)]);
                set.add_with_fields(TypeUrl::Cluster, self.cluster.name.clone(), &*self.cluster, &extra);
            }
            None => set.add(TypeUrl::Cluster, self.cluster.name.clone(), &*self.cluster),
        }
    }
}

/// Names the clusters of a service port are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMode {
    /// `outbound|<port>|<subset>|<host>`, with upstream TLS.
    Outbound,
    /// `outbound_.<port>_.<subset>_.<host>` for AUTO_PASSTHROUGH gateways: no TLS of their own,
    /// they forward the client's mTLS untouched.
    SniDnat,
}

/// An EDS cluster whose `ClusterLoadAssignment` the proxy needs.
#[derive(Debug, Clone)]
pub struct EdsTarget<'a> {
    /// EDS service name (the cluster name).
    pub name: String,
    /// The service.
    pub service: &'a Service,
    /// Its port.
    pub port: &'a ServicePort,
    /// Subset labels endpoints must carry.
    pub labels: Option<&'a Labels>,
}

/// Adds every cluster of the proxy to `set` and returns the EDS clusters to answer. Gateways
/// with an AUTO_PASSTHROUGH server (`sni_dnat`) also get the SNI-named clusters of mesh services.
pub fn build_clusters<'c>(ctx: &'c Ctx<'_>, set: &mut ResourceSet, sni_dnat: bool) -> Vec<EdsTarget<'c>> {
    let mut eds = Vec::with_capacity(ctx.services.len());
    if ctx.part.outbound() {
        for (i, svc) in ctx.services.iter().enumerate() {
            let rule = ctx.service_rule(i);
            let spec = rule.map(|r| r.spec.as_ref());
            let config_path = rule.map(|r| r.primary().config_path());
            for port in &svc.ports {
                service_clusters(ctx, svc, port, spec, config_path.as_deref(), ClusterMode::Outbound, &mut eds, set);
                if sni_dnat && svc.location == Location::MeshInternal {
                    service_clusters(ctx, svc, port, spec, config_path.as_deref(), ClusterMode::SniDnat, &mut eds, set);
                }
            }
        }
        let blackhole = blackhole_cluster();
        set.add(TypeUrl::Cluster, blackhole.name.clone(), &blackhole);
    }
    if ctx.proxy.node_type == NodeType::Router {
        // Gateways have no original-destination listeners, so no passthrough clusters.
        return eds;
    }
    if ctx.part.outbound() {
        let passthrough = passthrough_cluster(names::PASSTHROUGH_CLUSTER);
        set.add(TypeUrl::Cluster, passthrough.name.clone(), &passthrough);
        let inbound_passthrough = inbound_passthrough_cluster();
        set.add(TypeUrl::Cluster, inbound_passthrough.name.clone(), &inbound_passthrough);
    }
    if ctx.part.inbound() {
        for c in inbound_clusters(ctx) {
            c.add_to(set);
        }
    }
    eds
}

/// The default cluster of a service port and one cluster per DestinationRule subset (istiod's
/// `buildOutboundClusters` + `applyDestinationRule`).
#[allow(clippy::too_many_arguments)]
fn service_clusters<'a>(
    ctx: &Ctx<'_>,
    svc: &'a Service,
    port: &'a ServicePort,
    rule: Option<&'a DestinationRuleSpec>,
    config_path: Option<&str>,
    mode: ClusterMode,
    eds: &mut Vec<EdsTarget<'a>>,
    set: &mut ResourceSet,
) {
    let name_of = |subset: &str| match mode {
        ClusterMode::Outbound => names::outbound_cluster(port.port, subset, &svc.hostname),
        ClusterMode::SniDnat => names::sni_cluster(port.port, subset, &svc.hostname),
    };
    let dtype = discovery_type(ctx.proxy.node_type, svc);
    let Some(mut default) = service_cluster(ctx, svc, port, name_of(""), dtype, None) else {
        return;
    };
    let policy = port_level_policy(rule.and_then(|r| r.traffic_policy.as_ref()), port.port);
    policy::apply_traffic_policy(&mut default, policy.as_deref(), port);
    if mode == ClusterMode::Outbound {
        tls::apply_upstream_tls(
            ctx,
            &mut default,
            svc,
            port,
            policy.as_deref().and_then(|p| p.tls.as_ref()),
            &names::sni_cluster(port.port, "", &svc.hostname),
        );
    }
    let parent_type = cluster_type(&default.cluster);
    let external = svc.location == Location::MeshExternal;
    // The service's telemetry metadata is the same for the default and every subset cluster.
    let services = wire::Value::list(&[service_metadata(svc)]);
    default.metadata = Some(cluster_metadata(&services, config_path, external, None));
    finish(default, svc, port, None, eds, set);
    let Some(rule) = rule else { return };
    for subset in &rule.subsets {
        let subset_policy = merge_subset_policy(policy.as_deref(), subset.traffic_policy.as_ref(), port.port);
        let passthrough = subset.traffic_policy.as_ref().and_then(|t| t.load_balancer.as_ref()).and_then(|l| l.simple)
            == Some(SimpleLb::Passthrough);
        let ctype = if passthrough { DiscoveryType::OriginalDst } else { parent_type };
        let Some(mut c) = service_cluster(ctx, svc, port, name_of(&subset.name), ctype, Some(&subset.labels)) else {
            continue;
        };
        policy::apply_traffic_policy(&mut c, subset_policy.as_deref(), port);
        if mode == ClusterMode::Outbound {
            tls::apply_upstream_tls(
                ctx,
                &mut c,
                svc,
                port,
                subset_policy.as_deref().and_then(|p| p.tls.as_ref()),
                &names::sni_cluster(port.port, &subset.name, &svc.hostname),
            );
        }
        // istiod marks only the default cluster of a MESH_EXTERNAL service as external.
        c.metadata = Some(cluster_metadata(&services, config_path, false, Some(&subset.name)));
        finish(c, svc, port, Some(&subset.labels), eds, set);
    }
}

fn cluster_type(c: &Cluster) -> DiscoveryType {
    match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).unwrap_or(DiscoveryType::Eds),
        _ => DiscoveryType::Eds,
    }
}

/// Points an EDS cluster at ADS under its own name, records the EDS answer it needs, and adds it.
fn finish<'a>(
    mut c: ClusterOut,
    svc: &'a Service,
    port: &'a ServicePort,
    labels: Option<&'a Labels>,
    eds: &mut Vec<EdsTarget<'a>>,
    set: &mut ResourceSet,
) {
    if cluster_type(&c.cluster) == DiscoveryType::Eds {
        c.cluster.eds_cluster_config =
            Some(EdsClusterConfig { eds_config: ads_config_source(), service_name: c.cluster.name.clone() });
        eds.push(EdsTarget { name: c.cluster.name.clone(), service: svc, port, labels });
    } else {
        c.cluster.eds_cluster_config = None;
    }
    c.add_to(set);
}

/// `filter_metadata.istio` of an outbound cluster: `config` (the DestinationRule), `external`,
/// `services`, `subset` (keys in sorted order, see [`wire`]).
fn cluster_metadata(
    services: &wire::Value,
    config: Option<&str>,
    external: bool,
    subset: Option<&str>,
) -> wire::Struct {
    let mut fields: Vec<(&str, wire::Value)> = Vec::with_capacity(4);
    if let Some(c) = config {
        fields.push(("config", wire::Value::string(c)));
    }
    if external {
        fields.push(("external", wire::Value::bool(true)));
    }
    fields.push(("services", services.clone()));
    if let Some(s) = subset {
        fields.push(("subset", wire::Value::string(s)));
    }
    wire::Struct::new(&fields)
}

/// The Envoy discovery type for a service, as istiod's `convertResolution`.
pub fn discovery_type(node: NodeType, svc: &Service) -> DiscoveryType {
    match svc.resolution {
        Resolution::Static => DiscoveryType::Eds,
        Resolution::Dns => DiscoveryType::StrictDns,
        Resolution::DnsRoundRobin => DiscoveryType::LogicalDns,
        // Gateways cannot use original-destination clusters; they fall back to EDS.
        Resolution::Passthrough if node == NodeType::Router => DiscoveryType::Eds,
        Resolution::Passthrough => DiscoveryType::OriginalDst,
    }
}

/// Istio's default circuit breakers: everything at `u32::MAX` (Envoy's default of 3 retries is
/// too low during pod churn), tracking remaining capacity.
fn default_circuit_breakers() -> Option<CircuitBreakers> {
    Some(CircuitBreakers { thresholds: vec![policy::default_thresholds()], ..Default::default() })
}

/// A cluster with the settings every Istio service cluster shares.
fn base_cluster(name: String, dtype: DiscoveryType) -> Cluster {
    Cluster {
        alt_stat_name: names::delimited_stat_prefix(&name),
        name,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(dtype as i32)),
        common_lb_config: Some(CommonLbConfig::default()),
        connect_timeout: secs(CONNECT_TIMEOUT_SECS),
        circuit_breakers: default_circuit_breakers(),
        ..Default::default()
    }
}

/// Upstream HTTP options for a port: HTTP/2 for `http2`/`grpc` ports; for unnamed (sniffed) ports on
/// sidecars, whatever the downstream spoke.
fn upstream_http_options(node: NodeType, protocol: Protocol) -> Option<HttpProtocolOptions> {
    let upstream = if matches!(protocol, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb) {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                Http2ProtocolOptions::default(),
            )),
        })
    } else if node == NodeType::Sidecar && protocol == Protocol::Unspecified {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http_protocol_options: Some(Http1ProtocolOptions::default()),
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..Default::default()
        })
    } else {
        return None;
    };
    Some(HttpProtocolOptions { upstream_protocol_options: Some(upstream), ..Default::default() })
}

fn set_http_options(c: &mut Cluster, opts: Option<HttpProtocolOptions>) {
    if let Some(o) = opts {
        c.typed_extension_protocol_options.insert(HTTP_PROTOCOL_OPTIONS_KEY.to_string(), any(&o));
    }
}

/// `{host, name, namespace}` of a service, as Istio's telemetry metadata lists it. ServiceEntry
/// services are named after their host.
fn service_metadata(svc: &Service) -> wire::Value {
    let name = match svc.origin {
        ServiceOrigin::Kubernetes => svc.name.as_str(),
        ServiceOrigin::ServiceEntry => svc.hostname.as_str(),
    };
    wire::Value::structure(&[
        ("host", wire::Value::string(&svc.hostname)),
        ("name", wire::Value::string(name)),
        ("namespace", wire::Value::string(&svc.namespace)),
    ])
}

/// One outbound cluster of a service port, before any DestinationRule: discovery from the
/// resolution, inline endpoints for DNS (filtered by subset `labels`), upstream HTTP options from
/// the port protocol. `None` for a DNS cluster without endpoints (istiod drops those: they could
/// never connect).
// istiod still sets the DNS fields Envoy deprecated in favour of the DNS cluster extension; Envoy
// 1.40 accepts them and Istio tooling reads them there.
#[allow(deprecated)]
pub fn service_cluster(
    ctx: &Ctx<'_>,
    svc: &Service,
    port: &ServicePort,
    name: String,
    dtype: DiscoveryType,
    labels: Option<&Labels>,
) -> Option<ClusterOut> {
    let node = ctx.proxy.node_type;
    let mut c = base_cluster(name, dtype);
    match dtype {
        DiscoveryType::Eds => {
            c.lb_policy = LbPolicy::LeastRequest as i32;
        }
        DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            let mut endpoints = locality_lb_endpoints(svc, port, EndpointFilter::Dns, labels);
            if dtype == DiscoveryType::LogicalDns {
                // Envoy accepts exactly one endpoint in a LOGICAL_DNS cluster (validation allows one
                // per ServiceEntry, but a workloadSelector can still select several).
                endpoints.truncate(1);
                if let Some(l) = endpoints.first_mut() {
                    l.lb_endpoints.truncate(1);
                    l.load_balancing_weight = l.lb_endpoints.first().and_then(|e| e.load_balancing_weight);
                }
            }
            if endpoints.is_empty() {
                return None;
            }
            // Proxies here are IPv4 (Istio picks the family from the proxy's addresses).
            c.dns_lookup_family = DnsLookupFamily::V4Only as i32;
            c.typed_dns_resolver_config = Some(TypedExtensionConfig {
                name: "envoy.network.dns_resolver.cares".to_string(),
                typed_config: Some(any(&CaresDnsResolverConfig {
                    udp_max_queries: Some(UInt32Value { value: DNS_UDP_MAX_QUERIES }),
                    ..Default::default()
                })),
            });
            c.dns_jitter = super::millis(DNS_JITTER_MS);
            c.dns_refresh_rate = secs(DNS_REFRESH_SECS);
            c.respect_dns_ttl = true;
            c.load_assignment =
                Some(ClusterLoadAssignment { cluster_name: c.name.clone(), endpoints, ..Default::default() });
            c.lb_policy = LbPolicy::LeastRequest as i32;
        }
        _ => {
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            // A ServiceEntry with resolution NONE and a targetPort sends to the original IP on the
            // target port (Istio's ENABLE_RESOLUTION_NONE_TARGET_PORT, on by default).
            if let Some(tp) =
                port.target_port.filter(|tp| *tp != port.port && svc.origin == ServiceOrigin::ServiceEntry)
            {
                c.lb_config = Some(LbConfig::OriginalDstLbConfig(OriginalDstLbConfig {
                    upstream_port_override: Some(UInt32Value { value: u32::from(tp) }),
                    ..Default::default()
                }));
            }
        }
    }
    Some(ClusterOut { cluster: Box::new(c), http: upstream_http_options(node, port.protocol), metadata: None })
}

/// `BlackHoleCluster`: STATIC without endpoints, so every connection fails.
pub fn blackhole_cluster() -> Cluster {
    Cluster {
        name: names::BLACKHOLE_CLUSTER.to_string(),
        alt_stat_name: names::delimited_stat_prefix(names::BLACKHOLE_CLUSTER),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: secs(CONNECT_TIMEOUT_SECS),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    }
}

/// `PassthroughCluster` (and the base of `InboundPassthroughCluster`): ORIGINAL_DST, speaking
/// whatever HTTP version the downstream used, idle HTTP connections closed after 5 minutes.
pub fn passthrough_cluster(name: &str) -> Cluster {
    let mut c = Cluster {
        name: name.to_string(),
        // istiod keeps the PassthroughCluster stat name when it renames the cluster for inbound.
        alt_stat_name: names::delimited_stat_prefix(names::PASSTHROUGH_CLUSTER),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::OriginalDst as i32)),
        connect_timeout: secs(CONNECT_TIMEOUT_SECS),
        lb_policy: LbPolicy::ClusterProvided as i32,
        circuit_breakers: default_circuit_breakers(),
        ..Default::default()
    };
    let opts = HttpProtocolOptions {
        common_http_protocol_options: Some(CoreHttpProtocolOptions {
            idle_timeout: Some(Duration { seconds: 300, nanos: 0 }),
            ..Default::default()
        }),
        upstream_protocol_options: Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(
            UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(Http2ProtocolOptions::default()),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    set_http_options(&mut c, Some(opts));
    c
}

/// The source address inbound traffic to the app leaves from: iptables skips 127.0.0.6, so the
/// connection is not captured again.
fn inbound_bind_config() -> Option<BindConfig> {
    Some(BindConfig {
        source_address: Some(SocketAddress {
            address: names::INBOUND_PASSTHROUGH_BIND_IPV4.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `InboundPassthroughCluster`: traffic to ports of the workload no Service declares.
pub fn inbound_passthrough_cluster() -> Cluster {
    let mut c = passthrough_cluster(names::INBOUND_PASSTHROUGH_CLUSTER);
    c.upstream_bind_config = inbound_bind_config();
    c
}

/// One inbound cluster per target port of the proxy's own services (REDIRECT mode only: without
/// iptables there are no inbound listeners to use them).
///
/// istiod's default inbound traffic policy is PASSTHROUGH: the cluster is ORIGINAL_DST and the
/// request reaches the app on the pod IP it was addressed to, from 127.0.0.6.
pub fn inbound_clusters(ctx: &Ctx<'_>) -> Vec<ClusterOut> {
    if ctx.proxy.interception == crate::model::InterceptionMode::None {
        return Vec::new();
    }
    let targets = ctx.inbound_targets();
    targets
        .iter()
        .map(|t| {
            let name = names::inbound_cluster(t.target_port);
            let mut c = base_cluster(name, DiscoveryType::OriginalDst);
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.cleanup_interval = secs(MAX_CLEANUP_INTERVAL_SECS);
            c.upstream_bind_config = inbound_bind_config();
            // Telemetry metadata lists every own service behind this target port with the same
            // service port as the chosen one.
            let mut services = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            for (svc, sp) in std::iter::once((t.service, t.port)).chain(t.also.iter().copied()) {
                if sp.port == t.port.port && seen.insert(svc.hostname.as_str()) {
                    services.push(service_metadata(svc));
                }
            }
            ClusterOut {
                cluster: Box::new(c),
                http: upstream_http_options(NodeType::Sidecar, t.port.protocol),
                metadata: Some(wire::Struct::new(&[("services", wire::Value::list(&services))])),
            }
        })
        .collect()
}

/// Whether a cluster takes its endpoints from EDS.
pub fn is_eds(c: &Cluster) -> bool {
    matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;

    use super::*;
    use crate::envoy::tests::{mk_service, mk_world, sidecar};
    use crate::model::ProxyProfile;

    #[rstest]
    #[case(Resolution::Static, NodeType::Sidecar, DiscoveryType::Eds)]
    #[case(Resolution::Dns, NodeType::Sidecar, DiscoveryType::StrictDns)]
    #[case(Resolution::DnsRoundRobin, NodeType::Sidecar, DiscoveryType::LogicalDns)]
    #[case(Resolution::Passthrough, NodeType::Sidecar, DiscoveryType::OriginalDst)]
    #[case(Resolution::Passthrough, NodeType::Router, DiscoveryType::Eds)]
    fn discovery_types(#[case] r: Resolution, #[case] node: NodeType, #[case] want: DiscoveryType) {
        let s = mk_service("a.example.com", &[], r, &[("http", 80, Protocol::Http)]);
        assert_eq!(discovery_type(node, &s), want);
    }

    #[rstest]
    #[case(Protocol::Http, NodeType::Sidecar, None)]
    #[case(Protocol::Tcp, NodeType::Sidecar, None)]
    #[case(Protocol::Http2, NodeType::Sidecar, Some("explicit"))]
    #[case(Protocol::Grpc, NodeType::Router, Some("explicit"))]
    #[case(Protocol::Unspecified, NodeType::Sidecar, Some("downstream"))]
    #[case(Protocol::Unspecified, NodeType::Router, None)]
    fn upstream_protocol(#[case] p: Protocol, #[case] node: NodeType, #[case] want: Option<&str>) {
        let got = upstream_http_options(node, p).and_then(|o| o.upstream_protocol_options).map(|u| match u {
            UpstreamProtocolOptions::ExplicitHttpConfig(_) => "explicit",
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(_) => "downstream",
            UpstreamProtocolOptions::AutoConfig(_) => "auto",
        });
        assert_eq!(got, want);
    }

    #[test]
    fn passthrough_service_entry_target_port_overrides_upstream_port() {
        let mut s = mk_service("a.example.com", &[], Resolution::Passthrough, &[("tcp", 7000, Protocol::Tcp)]);
        s.ports[0].target_port = Some(7001);
        let world = mk_world(vec![s.clone()]);
        let proxy = sidecar("default");
        let ctx = Ctx::new(&world, &proxy);
        let c = *service_cluster(&ctx, &s, &s.ports[0], "c".into(), DiscoveryType::OriginalDst, None).unwrap().cluster;
        assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32);
        let Some(LbConfig::OriginalDstLbConfig(o)) = c.lb_config else { panic!("no original_dst_lb_config") };
        assert_eq!(o.upstream_port_override.unwrap().value, 7001);
    }

    #[test]
    fn external_services_are_marked_in_metadata() {
        let s = mk_service("a.example.com", &[], Resolution::Dns, &[("http", 80, Protocol::Http)]);
        let world = mk_world(vec![s.clone()]);
        let proxy = ProxyProfile::default();
        let ctx = Ctx::new(&world, &proxy);
        let mut set = ResourceSet::new();
        let eds = build_clusters(&ctx, &mut set, false);
        assert!(eds.is_empty());
        let want = wire::Struct::new(&[
            ("external", wire::Value::bool(true)),
            ("services", wire::Value::list(&[service_metadata(&s)])),
        ]);
        assert_eq!(cluster_metadata(&wire::Value::list(&[service_metadata(&s)]), None, true, None), want);
        let out = service_cluster(&ctx, &s, &s.ports[0], "c".into(), DiscoveryType::StrictDns, None).unwrap();
        assert_eq!(out.cluster.load_assignment.unwrap().endpoints.len(), 1);
    }
}
