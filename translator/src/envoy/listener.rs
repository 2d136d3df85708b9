//! Listeners (LDS) of a sidecar: per-port outbound listeners, `virtualOutbound` (15001) and
//! `virtualInbound` (15006).
//!
//! The outbound part follows istiod's `buildSidecarOutboundListeners`: services are visited in
//! hostname order; each service port becomes filter chains on a listener keyed by bind address and
//! port (`0.0.0.0` for HTTP, the VIP for TCP and sniffed ports); a later service on the same key
//! either shares the listener (HTTP: virtual hosts come over RDS), merges non-conflicting TCP chains,
//! or is dropped (identical TCP match: first wins). Mixed HTTP and TCP on one key turns into
//! protocol sniffing.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::{CidrRange, Metadata, TrafficDirection};
use envoy_types::pb::envoy::config::core::v3::{Http2ProtocolOptions, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, ListenerFilterChainMatchPredicate, filter,
    listener_filter,
    listener_filter_chain_match_predicate::{MatchSet, Rule},
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
    http_connection_manager::{ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails},
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::hcm::{base_hcm, hcm_filter};
use super::http_route::{destination_cluster, virtual_service_metadata};
use super::route::inbound_route_config;
use super::{Ctx, InboundTarget, ads_config_source, any, proto_duration, secs, socket_addr, tls};
use crate::api::istio::RouteDestination;
use crate::model::config::{VirtualServiceConfig, port_level_policy};
use crate::model::host::MESH_GATEWAY;
use crate::model::mtls::{EffectiveMtls, Mtls, workload_mtls};
use crate::model::{
    InterceptionMode, OutboundTrafficPolicy, Protocol, Resolution, Service, ServiceOrigin, ServicePort,
};
use crate::names;
use crate::resources::{ResourceSet, TypeUrl};

/// Filter names Envoy knows these configs by.
pub(crate) const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";

/// Transport protocols set by the TLS inspector (`raw_buffer` when it saw no TLS).
const RAW_BUFFER: &str = "raw_buffer";
const TLS: &str = "tls";
/// ALPN the HTTP inspector reports for plaintext HTTP (HTTP/1.0 is off by default in Istio).
const PLAINTEXT_HTTP_ALPNS: [&str; 2] = ["http/1.1", "h2c"];
/// ALPNs of Istio mTLS clients.
const MTLS_HTTP_ALPNS: [&str; 3] = ["istio-http/1.0", "istio-http/1.1", "istio-h2"];
const MTLS_TCP_ALPNS: [&str; 2] = ["istio-peer-exchange", "istio"];
pub(crate) const ALL_ISTIO_MTLS_ALPNS: [&str; 5] =
    ["istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"];

/// Adds the proxy's listeners to `set` and returns the RDS names they reference.
pub fn build_listeners(ctx: &Ctx<'_>, set: &mut ResourceSet) -> BTreeSet<String> {
    let mut routes = BTreeSet::new();
    let redirect = ctx.proxy.interception != InterceptionMode::None;
    if ctx.part.outbound() {
        for l in outbound_listeners(ctx, &mut routes) {
            set.add(TypeUrl::Listener, l.name.clone(), &l);
        }
        if redirect {
            let vo = virtual_outbound_listener(ctx);
            set.add(TypeUrl::Listener, vo.name.clone(), &vo);
        }
    }
    if ctx.part.inbound() && redirect {
        let vi = virtual_inbound_listener(ctx, &InboundTls::for_proxy(ctx));
        set.add(TypeUrl::Listener, vi.name.clone(), &vi);
    }
    routes
}

/// How the listener treats a port (istiod's `ListenerProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListenerProtocol {
    Http,
    Tcp,
    /// Not declared: sniff with the HTTP inspector.
    Auto,
}

fn listener_protocol(p: Protocol) -> ListenerProtocol {
    if p.is_http() {
        ListenerProtocol::Http
    } else if p == Protocol::Unspecified {
        ListenerProtocol::Auto
    } else {
        ListenerProtocol::Tcp
    }
}

/// What a filter chain does.
#[derive(Debug, Clone)]
enum ChainKind {
    /// An HTTP connection manager reading route configuration `rds`.
    Http { rds: String, protocol: Protocol },
    /// Network filters (a tcp_proxy).
    Tcp(Vec<Filter>),
}

/// A filter chain before it becomes Envoy config (istiod's `filterChainOpts`).
#[derive(Debug, Clone)]
struct ChainOpts {
    sni_hosts: Vec<String>,
    cidrs: Vec<String>,
    application_protocols: Vec<String>,
    transport_protocol: String,
    kind: ChainKind,
    /// The VirtualService the chain comes from (`filter_metadata.istio.config`).
    metadata: Option<Metadata>,
}

impl ChainOpts {
    fn new(kind: ChainKind) -> Self {
        ChainOpts {
            sni_hosts: Vec::new(),
            cidrs: Vec::new(),
            application_protocols: Vec::new(),
            transport_protocol: String::new(),
            kind,
            metadata: None,
        }
    }

    fn is_match_all(&self) -> bool {
        (self.sni_hosts.is_empty() || self.sni_hosts.iter().any(|s| s == "*"))
            && self.application_protocols.is_empty()
            && self.transport_protocol.is_empty()
            && self.cidrs.is_empty()
    }

    /// Whether two chains would have identical matches (Envoy rejects that).
    fn conflicts_with(&self, other: &ChainOpts) -> bool {
        let sni = |c: &ChainOpts| c.sni_hosts.iter().filter(|s| *s != "*").cloned().collect::<BTreeSet<_>>();
        let cidr = |c: &ChainOpts| {
            c.cidrs.iter().filter(|s| *s != "*" && !s.starts_with("0.0.0.0")).cloned().collect::<BTreeSet<_>>()
        };
        self.transport_protocol == other.transport_protocol
            && self.application_protocols == other.application_protocols
            && sni(self) == sni(other)
            && cidr(self) == cidr(other)
    }

    fn to_match(&self) -> Option<FilterChainMatch> {
        if self.is_match_all() {
            return None;
        }
        let mut m = FilterChainMatch {
            application_protocols: self.application_protocols.clone(),
            transport_protocol: self.transport_protocol.clone(),
            ..Default::default()
        };
        if !self.sni_hosts.iter().any(|s| s == "*") {
            let mut sni = self.sni_hosts.clone();
            sni.sort();
            m.server_names = sni;
        }
        let mut cidrs = self.cidrs.clone();
        cidrs.sort();
        m.prefix_ranges = cidrs.iter().filter_map(|c| cidr_range(c)).collect();
        Some(m)
    }
}

/// `10.0.0.0/8` (or a bare IP, as a host route) as an Envoy `CidrRange`; `0.0.0.0` is skipped.
pub(crate) fn cidr_range(c: &str) -> Option<CidrRange> {
    let (ip, len) = match c.split_once('/') {
        Some((ip, len)) => (ip, len.parse().ok()?),
        None => (c, if c.contains(':') { 128 } else { 32 }),
    };
    if ip == names::WILDCARD_ADDRESS {
        return None;
    }
    Some(CidrRange { address_prefix: ip.to_string(), prefix_len: Some(UInt32Value { value: len }) })
}

/// One outbound listener being assembled (istiod's `outboundListenerEntry`).
#[derive(Debug)]
struct Entry {
    bind: String,
    port: u16,
    bind_to_port: bool,
    /// Protocol of the listener so far; `Unspecified` once HTTP and TCP are mixed or sniffed.
    protocol: Protocol,
    chains: Vec<ChainOpts>,
}

/// istiod's conflict kinds between a new service port and an existing listener on the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conflict {
    None,
    HttpOverTcp,
    TcpOverHttp,
    TcpOverTcp,
    TcpOverAuto,
    AutoOverHttp,
    AutoOverTcp,
}

pub(crate) fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    Filter {
        name: TCP_PROXY.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(&TcpProxy {
            stat_prefix: stat_prefix.to_string(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
            ..Default::default()
        }))),
    }
}

/// Static L4 match conditions (istiod's `matchTCP`/`matchTLS`): gateways (`mesh` for sidecars),
/// source labels and namespace, and the listener port.
fn l4_match(
    ctx: &Ctx<'_>,
    gateways: &[String],
    source_labels: &crate::model::Labels,
    source_namespace: Option<&str>,
    match_port: Option<u32>,
    port: u16,
) -> bool {
    let gateway_ok = gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY);
    let labels_ok = source_labels.iter().all(|(k, v)| ctx.proxy.labels.get(k) == Some(v));
    let port_ok = match_port.is_none_or(|p| p == 0 || p == u32::from(port));
    let ns_ok = source_namespace.is_none_or(|ns| ns.is_empty() || ns == ctx.proxy.namespace);
    gateway_ok && labels_ok && port_ok && ns_ok
}

/// A tcp_proxy to one cluster, with the idle timeout and connection lifetime of the destination's
/// DestinationRule (istiod's `buildOutboundNetworkFiltersWithSingleDestination`).
pub(crate) fn single_destination_filter(ctx: &Ctx<'_>, cluster: &str, host: &str, port: u16) -> Filter {
    let mut proxy = TcpProxy {
        stat_prefix: cluster.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
    };
    if let Some(rule) = ctx.destination_rule(host) {
        let policy = port_level_policy(rule.spec.traffic_policy.as_ref(), port);
        if let Some(tcp) = policy.as_deref().and_then(|p| p.connection_pool.as_ref()).and_then(|c| c.tcp.as_ref()) {
            proxy.max_downstream_connection_duration = tcp.max_connection_duration.as_deref().and_then(proto_duration);
            proxy.idle_timeout = tcp.idle_timeout.as_deref().and_then(proto_duration);
        }
    }
    Filter { name: TCP_PROXY.to_string(), config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))) }
}

/// The tcp_proxy of a VirtualService `tcp`/`tls` route: one destination, or weighted clusters
/// (weight 0 dropped) with the VirtualService as stat prefix (istiod's `buildOutboundNetworkFilters`).
pub(crate) fn network_filters(
    ctx: &Ctx<'_>,
    vs: &VirtualServiceConfig,
    routes: &[RouteDestination],
    port: u16,
) -> Vec<Filter> {
    if let [single] = routes
        && let Some(d) = &single.destination
    {
        let cluster = destination_cluster(d, ctx.service(&d.host), port);
        return vec![single_destination_filter(ctx, &cluster, &d.host, port)];
    }
    let clusters = routes
        .iter()
        .filter(|r| r.weight > 0)
        .filter_map(|r| {
            let d = r.destination.as_ref()?;
            Some(tcp_proxy::weighted_cluster::ClusterWeight {
                name: destination_cluster(d, ctx.service(&d.host), port),
                weight: u32::try_from(r.weight).unwrap_or(0),
                ..Default::default()
            })
        })
        .collect();
    let proxy = TcpProxy {
        stat_prefix: format!("{}.{}", vs.meta.name, vs.meta.namespace),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster { clusters })),
        ..Default::default()
    };
    vec![Filter { name: TCP_PROXY.to_string(), config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))) }]
}

/// Where traffic to unknown destinations goes: `PassthroughCluster` or `BlackHoleCluster`.
fn catch_all_cluster(ctx: &Ctx<'_>) -> &'static str {
    match ctx.outbound_policy {
        OutboundTrafficPolicy::AllowAny => names::PASSTHROUGH_CLUSTER,
        OutboundTrafficPolicy::RegistryOnly => names::BLACKHOLE_CLUSTER,
    }
}

fn catch_all_filters(ctx: &Ctx<'_>) -> Vec<Filter> {
    let c = catch_all_cluster(ctx);
    vec![tcp_proxy_filter(c, c)]
}

struct OutboundBuilder<'c, 'a> {
    ctx: &'c Ctx<'a>,
    entries: BTreeMap<(String, u16), Entry>,
}

impl OutboundBuilder<'_, '_> {
    /// istiod's `buildSidecarOutboundListener` for one service port.
    fn add(&mut self, svc: &Service, port: &ServicePort, preset_bind: Option<&str>, bind_to_port: bool) {
        self.add_for_address(svc, port, preset_bind, bind_to_port, svc.addresses.first().map(String::as_str));
    }

    /// `add` for one of the service's addresses (istiod makes one service per ServiceEntry
    /// address, so each address gets its own listener or CIDR chain).
    fn add_for_address(
        &mut self,
        svc: &Service,
        port: &ServicePort,
        preset_bind: Option<&str>,
        bind_to_port: bool,
        address: Option<&str>,
    ) {
        let lp = listener_protocol(port.protocol);
        let mut bind = preset_bind.unwrap_or_default().to_string();
        let mut cidr: Option<String> = None;
        match lp {
            ListenerProtocol::Tcp | ListenerProtocol::Auto => {
                if bind.is_empty() {
                    let addr = address.unwrap_or(names::WILDCARD_ADDRESS);
                    if addr.contains('/') {
                        // A CIDR cannot be a listener address: listen on 0.0.0.0 and match it.
                        bind = names::WILDCARD_ADDRESS.to_string();
                        cidr = Some(addr.to_string());
                    } else {
                        bind = addr.to_string();
                    }
                }
            }
            ListenerProtocol::Http => {
                if bind.is_empty() {
                    bind = names::WILDCARD_ADDRESS.to_string();
                }
            }
        }
        let key = (bind.clone(), port.port);
        let current_protocol = self.entries.get(&key).map(|e| e.protocol);
        let mut entry_protocol = port.protocol;
        let mut conflict = Conflict::None;
        let chains = match lp {
            ListenerProtocol::Http => {
                if let Some(cur) = current_protocol {
                    if cur.is_tcp() {
                        conflict = Conflict::HttpOverTcp;
                    } else {
                        // Already an HTTP (or sniffing) listener: this service's virtual host
                        // arrives through the shared route configuration.
                        return;
                    }
                }
                let mut opts = vec![self.http_chain(svc, port, lp, &bind)];
                if bind == names::WILDCARD_ADDRESS {
                    // On 0.0.0.0 the listener is shared with unknown destinations: only plaintext
                    // HTTP goes to the HCM; anything else falls through to the default chain.
                    for o in &mut opts {
                        o.application_protocols = PLAINTEXT_HTTP_ALPNS.iter().map(|s| s.to_string()).collect();
                        o.transport_protocol = RAW_BUFFER.to_string();
                    }
                    entry_protocol = Protocol::Unspecified;
                }
                opts
            }
            ListenerProtocol::Tcp => {
                if let Some(cur) = current_protocol {
                    conflict = if cur.is_http() {
                        Conflict::TcpOverHttp
                    } else if cur.is_tcp() {
                        Conflict::TcpOverTcp
                    } else {
                        Conflict::TcpOverAuto
                    };
                }
                self.tcp_chains(svc, port, &bind, cidr.as_deref())
            }
            ListenerProtocol::Auto => {
                if let Some(cur) = current_protocol {
                    if cur.is_http() {
                        conflict = Conflict::AutoOverHttp;
                    } else if cur.is_tcp() {
                        conflict = Conflict::AutoOverTcp;
                    } else {
                        return;
                    }
                }
                let mut opts = self.tcp_chains(svc, port, &bind, cidr.as_deref());
                let mut http = self.http_chain(svc, port, lp, &bind);
                http.application_protocols = PLAINTEXT_HTTP_ALPNS.iter().map(|s| s.to_string()).collect();
                http.transport_protocol = RAW_BUFFER.to_string();
                opts.push(http);
                entry_protocol = Protocol::Unspecified;
                opts
            }
        };
        // Server-first protocols break under the inspectors: never mix them with anything else.
        if let Some(cur) = current_protocol {
            let server_first = |p: Protocol| matches!(p, Protocol::Mongo | Protocol::Mysql);
            if (server_first(port.protocol) || server_first(cur)) && port.protocol != cur {
                return;
            }
        }
        match conflict {
            Conflict::None | Conflict::AutoOverHttp => {
                self.entries
                    .insert(key, Entry { bind, port: port.port, bind_to_port, protocol: entry_protocol, chains });
            }
            Conflict::HttpOverTcp | Conflict::TcpOverHttp | Conflict::AutoOverTcp => {
                if let Some(e) = self.entries.get_mut(&key) {
                    merge_chains(e, chains);
                    e.protocol = Protocol::Unspecified;
                }
            }
            Conflict::TcpOverTcp | Conflict::TcpOverAuto => {
                if let Some(e) = self.entries.get_mut(&key) {
                    merge_chains(e, chains);
                }
            }
        }
    }

    fn http_chain(&self, svc: &Service, port: &ServicePort, lp: ListenerProtocol, bind: &str) -> ChainOpts {
        // A sniffed service with its own listener gets its own route configuration; otherwise the
        // port's shared one.
        let rds = if lp == ListenerProtocol::Auto && bind != names::WILDCARD_ADDRESS {
            names::sniffed_route_config(&svc.hostname, port.port)
        } else {
            names::route_config(port.port)
        };
        ChainOpts::new(ChainKind::Http { rds, protocol: port.protocol })
    }

    /// TCP chains of a service port (istiod's `buildSidecarOutboundTCPListenerOpts`): for TLS
    /// ports, SNI chains from the VirtualServices' `tls` routes; for other ports, chains from their
    /// `tcp` routes (a route without destination-subnet matches ends the list); then, unless a
    /// VirtualService already covers everything, the chain to the service's own cluster.
    fn tcp_chains(&self, svc: &Service, port: &ServicePort, bind: &str, cidr: Option<&str>) -> Vec<ChainOpts> {
        let ctx = self.ctx;
        let cidrs: Vec<String> = cidr.map(|c| vec![c.to_string()]).unwrap_or_default();
        let configs = ctx.virtual_services_for_host(&svc.hostname);
        let mut out = Vec::new();
        let default_filters = || {
            // A sidecar-defined port may differ from the service's; a one-port service is meant.
            let p = if svc.ports.len() == 1 { svc.ports[0].port } else { port.port };
            let cluster = names::outbound_cluster(p, "", &svc.hostname);
            let target = svc.ports.iter().find(|sp| sp.port == p).unwrap_or(port);
            let mut filters: Vec<Filter> =
                super::tls::sniffed_tcp_alpn_override(ctx, svc, target).into_iter().collect();
            filters.push(single_destination_filter(ctx, &cluster, &svc.hostname, p));
            filters
        };
        if matches!(port.protocol, Protocol::Tls | Protocol::Https) {
            let mut handled = BTreeSet::new();
            for vs in &configs {
                for tls in &vs.spec.tls {
                    for m in &tls.r#match {
                        if !l4_match(
                            ctx,
                            &m.gateways,
                            &m.source_labels,
                            m.source_namespace.as_deref(),
                            m.port,
                            port.port,
                        ) {
                            continue;
                        }
                        let key = format!("{}|{}", m.sni_hosts.join(","), m.destination_subnets.join(","));
                        if !handled.insert(key) {
                            continue;
                        }
                        let mut chain = ChainOpts::new(ChainKind::Tcp(network_filters(ctx, vs, &tls.route, port.port)));
                        chain.sni_hosts = m.sni_hosts.clone();
                        chain.cidrs = if m.destination_subnets.is_empty() {
                            cidrs.clone()
                        } else {
                            m.destination_subnets.clone()
                        };
                        chain.metadata = Some(virtual_service_metadata(vs));
                        out.push(chain);
                    }
                }
            }
            if out.is_empty() {
                let mut chain = ChainOpts::new(ChainKind::Tcp(default_filters()));
                chain.cidrs = cidrs;
                // Without a VIP to tell services apart, a TLS port is routed by SNI.
                let listen = svc.addresses.first().map_or(names::WILDCARD_ADDRESS, String::as_str);
                let listen = if listen.contains('/') { "" } else { listen };
                if cidr.is_some()
                    || listen.is_empty()
                    || (listen == names::WILDCARD_ADDRESS && bind == names::WILDCARD_ADDRESS)
                {
                    chain.sni_hosts = vec![svc.hostname.clone()];
                }
                out.push(chain);
            }
            return out;
        }
        let mut default_added = false;
        'vs: for vs in &configs {
            for tcp in &vs.spec.tcp {
                if tcp.r#match.is_empty() {
                    let mut chain = ChainOpts::new(ChainKind::Tcp(network_filters(ctx, vs, &tcp.route, port.port)));
                    chain.cidrs = cidrs.clone();
                    chain.metadata = Some(virtual_service_metadata(vs));
                    out.push(chain);
                    default_added = true;
                    break 'vs;
                }
                let mut subnets: Vec<String> = Vec::new();
                for m in &tcp.r#match {
                    if !l4_match(ctx, &m.gateways, &m.source_labels, m.source_namespace.as_deref(), m.port, port.port) {
                        continue;
                    }
                    if m.destination_subnets.is_empty() {
                        let mut chain = ChainOpts::new(ChainKind::Tcp(network_filters(ctx, vs, &tcp.route, port.port)));
                        chain.cidrs = cidrs.clone();
                        chain.metadata = Some(virtual_service_metadata(vs));
                        out.push(chain);
                        default_added = true;
                        break 'vs;
                    }
                    subnets.extend(m.destination_subnets.iter().cloned());
                }
                if !subnets.is_empty() {
                    let mut chain = ChainOpts::new(ChainKind::Tcp(network_filters(ctx, vs, &tcp.route, port.port)));
                    chain.cidrs = subnets.clone();
                    out.push(chain);
                    // The service's own chain would have the same match; Envoy rejects duplicates.
                    let mut a = subnets;
                    a.sort();
                    let mut b = cidrs.clone();
                    b.sort();
                    if a == b {
                        default_added = true;
                    }
                }
            }
        }
        if !default_added {
            let mut chain = ChainOpts::new(ChainKind::Tcp(default_filters()));
            chain.cidrs = cidrs;
            out.push(chain);
        }
        out
    }

    fn into_listeners(self, routes: &mut BTreeSet<String>) -> Vec<Listener> {
        let ctx = self.ctx;
        self.entries.into_values().map(|e| outbound_listener_from_entry(ctx, e, routes)).collect()
    }
}

/// Appends the chains of `incoming` whose matches do not collide with an existing chain.
fn merge_chains(e: &mut Entry, incoming: Vec<ChainOpts>) {
    for c in incoming {
        if !e.chains.iter().any(|x| x.conflicts_with(&c)) {
            e.chains.push(c);
        }
    }
}

fn outbound_listeners(ctx: &Ctx<'_>, routes: &mut BTreeSet<String>) -> Vec<Listener> {
    let none_mode = ctx.proxy.interception == InterceptionMode::None;
    let mut b = OutboundBuilder { ctx, entries: BTreeMap::new() };
    // Without iptables the proxy must really listen: on loopback, at the service port.
    let (preset, bind_to_port) = if none_mode { (Some(names::LOCALHOST_ADDRESS), true) } else { (None, false) };
    for svc in &ctx.services {
        for port in &svc.ports {
            let lp = listener_protocol(port.protocol);
            let headless_like = preset.is_none()
                && svc.resolution == Resolution::Passthrough
                && svc.addresses.is_empty()
                && lp != ListenerProtocol::Http;
            if headless_like {
                // No VIP to listen on: one listener per endpoint IP (istiod's headless-service pod
                // listeners). A ServiceEntry with nothing to enumerate falls back to 0.0.0.0.
                let ips: BTreeSet<&str> = svc
                    .endpoints
                    .iter()
                    .filter(|e| e.address.parse::<std::net::IpAddr>().is_ok() && svc.endpoint_port(e, port).is_some())
                    .map(|e| e.address.as_str())
                    .collect();
                if svc.origin != ServiceOrigin::Kubernetes && ips.is_empty() && svc.selector.is_none() {
                    b.add(svc, port, None, bind_to_port);
                } else {
                    for ip in ips {
                        b.add(svc, port, Some(ip), bind_to_port);
                    }
                }
                continue;
            }
            if preset.is_none()
                && svc.origin == ServiceOrigin::ServiceEntry
                && svc.addresses.len() > 1
                && lp != ListenerProtocol::Http
            {
                for a in &svc.addresses {
                    b.add_for_address(svc, port, None, bind_to_port, Some(a));
                }
                continue;
            }
            b.add(svc, port, preset, bind_to_port);
        }
    }
    b.into_listeners(routes)
}

fn outbound_listener_from_entry(ctx: &Ctx<'_>, e: Entry, routes: &mut BTreeSet<String>) -> Listener {
    let name = names::listener(&e.bind, e.port);
    let need_tls = e.chains.iter().any(|c| !c.sni_hosts.is_empty());
    let need_http = e.chains.iter().any(|c| !c.application_protocols.is_empty());
    let mut listener_filters = Vec::new();
    // The TLS inspector also runs when only the HTTP inspector is needed: with ALPN in a match but
    // no transport protocol, Envoy would inject one on its own.
    if need_tls || need_http {
        listener_filters.push(tls_inspector(None));
    }
    if need_http {
        listener_filters.push(http_inspector(None));
    }
    let mut l = Listener {
        name: name.clone(),
        address: socket_addr(&e.bind, e.port),
        traffic_direction: TrafficDirection::Outbound as i32,
        continue_on_listener_filters_timeout: true,
        // MeshConfig protocolDetectionTimeout defaults to 0s (wait for the inspector).
        listener_filters_timeout: secs(0),
        listener_filters,
        bind_to_port: (!e.bind_to_port).then_some(BoolValue { value: false }),
        ..Default::default()
    };
    let stat_prefix = names::outbound_hcm_stat_prefix(&name);
    for c in &e.chains {
        let filters = match &c.kind {
            ChainKind::Tcp(f) => f.clone(),
            ChainKind::Http { rds, protocol } => {
                routes.insert(rds.clone());
                vec![hcm_filter(&outbound_hcm(&stat_prefix, rds, *protocol))]
            }
        };
        let chain = FilterChain { filters, metadata: c.metadata.clone(), ..Default::default() };
        if c.is_match_all() {
            l.default_filter_chain = Some(chain);
        } else {
            l.filter_chains.push(FilterChain { filter_chain_match: c.to_match(), ..chain });
        }
    }
    if l.filter_chains.is_empty() {
        if let Some(d) = l.default_filter_chain.take() {
            l.filter_chains.push(d);
        }
    } else if l.default_filter_chain.is_none() {
        l.default_filter_chain = Some(FilterChain {
            filter_chain_match: Some(FilterChainMatch::default()),
            name: names::PASSTHROUGH_FILTER_CHAIN.to_string(),
            filters: catch_all_filters(ctx),
            ..Default::default()
        });
    }
    l
}

pub(crate) fn tls_inspector(disabled: Option<ListenerFilterChainMatchPredicate>) -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR.to_string(),
        filter_disabled: disabled,
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(&TlsInspector {
            // Istio reads only the ClientHello start (Envoy's default buffer is 64 KiB).
            initial_read_buffer_size: Some(UInt32Value { value: 512 }),
            ..Default::default()
        }))),
    }
}

fn http_inspector(disabled: Option<ListenerFilterChainMatchPredicate>) -> ListenerFilter {
    ListenerFilter {
        name: HTTP_INSPECTOR.to_string(),
        filter_disabled: disabled,
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(&HttpInspector::default()))),
    }
}

fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: ORIGINAL_DST.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any(&OriginalDst::default()))),
        ..Default::default()
    }
}

/// Outbound HCM reading route configuration `rds` over ADS.
fn outbound_hcm(stat_prefix: &str, rds: &str, protocol: Protocol) -> HttpConnectionManager {
    HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: ads_config_source(),
            route_config_name: rds.to_string(),
        })),
        ..base_hcm(stat_prefix, protocol)
    }
}

/// Inbound HCM with an inline route configuration.
fn inbound_hcm(stat_prefix: &str, route: RouteConfiguration, protocol: Protocol) -> HttpConnectionManager {
    HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::RouteConfig(route)),
        server_name: "istio-envoy".to_string(),
        forward_client_cert_details: ForwardClientCertDetails::AppendForward as i32,
        set_current_client_cert_details: Some(SetCurrentClientCertDetails {
            subject: Some(BoolValue { value: true }),
            uri: true,
            dns: true,
            ..Default::default()
        }),
        http2_protocol_options: matches!(protocol, Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
            .then(Http2ProtocolOptions::default),
        ..base_hcm(stat_prefix, protocol)
    }
}

/// `virtualOutbound` on 0.0.0.0:15001: iptables sends all outbound traffic here; `use_original_dst`
/// hands each connection to the listener of its original destination, and the chains here catch
/// the rest.
fn virtual_outbound_listener(ctx: &Ctx<'_>) -> Listener {
    Listener {
        name: names::VIRTUAL_OUTBOUND_LISTENER.to_string(),
        address: socket_addr(names::WILDCARD_ADDRESS, names::VIRTUAL_OUTBOUND_PORT),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![
            FilterChain {
                // Traffic really addressed to 15001 would loop through this listener forever.
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value { value: u32::from(names::VIRTUAL_OUTBOUND_PORT) }),
                    ..Default::default()
                }),
                filters: vec![tcp_proxy_filter(names::BLACKHOLE_CLUSTER, names::BLACKHOLE_CLUSTER)],
                name: names::VIRTUAL_OUTBOUND_BLACKHOLE_CHAIN.to_string(),
                ..Default::default()
            },
            FilterChain {
                filters: catch_all_filters(ctx),
                name: names::VIRTUAL_OUTBOUND_CATCHALL_TCP_CHAIN.to_string(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// Server-side TLS of inbound chains: the workload's PeerAuthentication modes and the transport
/// sockets that terminate Istio mTLS (certificate `default`, validation `ROOTCA`, client
/// certificate required; see [`tls::inbound_mtls_socket`]).
///
/// Without sockets (`None`) the TLS-terminating rows of a table are left out; STRICT ports then
/// have no chain at all (connections are closed), PERMISSIVE ports serve plaintext only.
#[derive(Debug, Clone, Default)]
pub struct InboundTls {
    /// Transport socket for chains terminating mTLS HTTP.
    pub http: Option<TransportSocket>,
    /// Transport socket for chains terminating mTLS TCP.
    pub tcp: Option<TransportSocket>,
    /// The workload's modes (PERMISSIVE without PeerAuthentications).
    pub mtls: EffectiveMtls,
}

impl InboundTls {
    /// The server TLS of the proxy's workload: its resolved PeerAuthentication and Istio's mTLS
    /// sockets.
    pub fn for_proxy(ctx: &Ctx<'_>) -> InboundTls {
        // A proxy without a workload certificate has nothing to terminate mTLS with.
        let certs = !ctx.proxy.no_workload_cert;
        InboundTls {
            http: certs.then(|| tls::inbound_mtls_socket(tls::ServerKind::Http)),
            tcp: certs.then(|| tls::inbound_mtls_socket(tls::ServerKind::Tcp)),
            mtls: workload_mtls(ctx.world, &ctx.proxy.namespace, &ctx.proxy.labels),
        }
    }
}

/// One row of istiod's inbound filter-chain match tables.
#[derive(Debug, Clone, Copy)]
struct MatchOption {
    alpn: &'static [&'static str],
    transport: &'static str,
    http: bool,
    /// Terminates Istio mTLS.
    tls: bool,
}

/// istiod's match options for a listener protocol and mTLS mode (`getFilterChainMatchOptions`).
///
/// PERMISSIVE: Istio ALPNs over TLS terminate mTLS, plaintext is served, other TLS passes through
/// (TCP and sniffed ports). STRICT: only TLS, always terminated (mTLS HTTP ALPNs select the HCM
/// on sniffed ports, anything else over TLS is TCP); plaintext matches no chain and is closed.
/// DISABLE: plaintext only.
fn match_options(lp: ListenerProtocol, mode: Mtls) -> &'static [MatchOption] {
    const HTTP: &[MatchOption] = &[
        MatchOption { alpn: &ALL_ISTIO_MTLS_ALPNS, transport: TLS, http: true, tls: true },
        MatchOption { alpn: &[], transport: RAW_BUFFER, http: true, tls: false },
    ];
    const TCP: &[MatchOption] = &[
        MatchOption { alpn: &ALL_ISTIO_MTLS_ALPNS, transport: TLS, http: false, tls: true },
        MatchOption { alpn: &[], transport: RAW_BUFFER, http: false, tls: false },
        MatchOption { alpn: &[], transport: TLS, http: false, tls: false },
    ];
    const AUTO: &[MatchOption] = &[
        MatchOption { alpn: &MTLS_HTTP_ALPNS, transport: TLS, http: true, tls: true },
        MatchOption { alpn: &PLAINTEXT_HTTP_ALPNS, transport: RAW_BUFFER, http: true, tls: false },
        MatchOption { alpn: &MTLS_TCP_ALPNS, transport: TLS, http: false, tls: true },
        MatchOption { alpn: &[], transport: RAW_BUFFER, http: false, tls: false },
        MatchOption { alpn: &[], transport: TLS, http: false, tls: false },
    ];
    const HTTP_STRICT: &[MatchOption] = &[MatchOption { alpn: &[], transport: TLS, http: true, tls: true }];
    const TCP_STRICT: &[MatchOption] = &[MatchOption { alpn: &[], transport: TLS, http: false, tls: true }];
    const AUTO_STRICT: &[MatchOption] = &[
        MatchOption { alpn: &MTLS_HTTP_ALPNS, transport: TLS, http: true, tls: true },
        MatchOption { alpn: &[], transport: TLS, http: false, tls: true },
    ];
    const HTTP_PLAIN: &[MatchOption] = &[MatchOption { alpn: &[], transport: RAW_BUFFER, http: true, tls: false }];
    const TCP_PLAIN: &[MatchOption] = &[MatchOption { alpn: &[], transport: RAW_BUFFER, http: false, tls: false }];
    const AUTO_PLAIN: &[MatchOption] = &[
        MatchOption { alpn: &PLAINTEXT_HTTP_ALPNS, transport: RAW_BUFFER, http: true, tls: false },
        MatchOption { alpn: &[], transport: RAW_BUFFER, http: false, tls: false },
    ];
    match (lp, mode) {
        (ListenerProtocol::Http, Mtls::Permissive) => HTTP,
        (ListenerProtocol::Tcp, Mtls::Permissive) => TCP,
        (ListenerProtocol::Auto, Mtls::Permissive) => AUTO,
        (ListenerProtocol::Http, Mtls::Strict) => HTTP_STRICT,
        (ListenerProtocol::Tcp, Mtls::Strict) => TCP_STRICT,
        (ListenerProtocol::Auto, Mtls::Strict) => AUTO_STRICT,
        (ListenerProtocol::Http, Mtls::Disable) => HTTP_PLAIN,
        (ListenerProtocol::Tcp, Mtls::Disable) => TCP_PLAIN,
        (ListenerProtocol::Auto, Mtls::Disable) => AUTO_PLAIN,
    }
}

/// An inbound chain target: a service target port, or the passthrough (port 0).
struct InboundChain<'a> {
    target: Option<&'a InboundTarget<'a>>,
    target_port: u16,
    cluster: String,
    protocol: Protocol,
}

impl InboundChain<'_> {
    fn name(&self, http: bool) -> String {
        match self.target {
            Some(_) => names::listener(names::WILDCARD_ADDRESS, self.target_port),
            None if http => names::VIRTUAL_INBOUND_CATCHALL_HTTP_CHAIN.to_string(),
            None => names::VIRTUAL_INBOUND_LISTENER.to_string(),
        }
    }

    fn stat_prefix(&self) -> String {
        match self.target {
            Some(_) => names::inbound_hcm_stat_prefix(&self.name(true)),
            None => names::delimited_stat_prefix(&self.cluster),
        }
    }

    fn filter_chains(&self, tls: &InboundTls, mode: Mtls) -> Vec<FilterChain> {
        let (host, service_port) = match self.target {
            Some(t) => (t.service.hostname.as_str(), t.port.port),
            None => ("", 0),
        };
        match_options(listener_protocol(self.protocol), mode)
            .iter()
            .filter_map(|o| {
                let transport_socket = if o.tls {
                    // Without server certificates there is nothing to terminate mTLS with.
                    Some(if o.http { tls.http.clone()? } else { tls.tcp.clone()? })
                } else {
                    None
                };
                let filter_chain_match = Some(FilterChainMatch {
                    destination_port: (self.target_port > 0)
                        .then_some(UInt32Value { value: u32::from(self.target_port) }),
                    transport_protocol: o.transport.to_string(),
                    application_protocols: o.alpn.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                });
                let filters = if o.http {
                    let route = inbound_route_config(&self.cluster, service_port, host);
                    vec![hcm_filter(&inbound_hcm(&self.stat_prefix(), route, self.protocol))]
                } else {
                    vec![tcp_proxy_filter(&self.cluster, &self.cluster)]
                };
                Some(FilterChain {
                    filter_chain_match,
                    filters,
                    transport_socket,
                    name: self.name(o.http),
                    ..Default::default()
                })
            })
            .collect()
    }
}

/// `virtualInbound` on 0.0.0.0:15006: iptables sends all inbound traffic here; chains match the
/// original destination port (restored by original_dst), transport and ALPN.
pub fn virtual_inbound_listener(ctx: &Ctx<'_>, tls: &InboundTls) -> Listener {
    let targets = ctx.inbound_targets();
    let mut chains = vec![FilterChain {
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: u32::from(names::VIRTUAL_INBOUND_PORT) }),
            ..Default::default()
        }),
        filters: vec![tcp_proxy_filter(names::BLACKHOLE_CLUSTER, names::BLACKHOLE_CLUSTER)],
        name: names::VIRTUAL_INBOUND_BLACKHOLE_CHAIN.to_string(),
        ..Default::default()
    }];
    let passthrough = InboundChain {
        target: None,
        target_port: 0,
        cluster: names::INBOUND_PASSTHROUGH_CLUSTER.to_string(),
        protocol: Protocol::Unspecified,
    };
    chains.extend(passthrough.filter_chains(tls, tls.mtls.mode));
    // Ports with their own mode that no service declares get passthrough chains of their own, as
    // istiod's `ForPassthrough` does.
    for (port, mode) in &tls.mtls.ports {
        let Ok(port) = u16::try_from(*port) else { continue };
        if port == 0 || targets.iter().any(|t| t.target_port == port) {
            continue;
        }
        let chain = InboundChain {
            target: None,
            target_port: port,
            cluster: names::INBOUND_PASSTHROUGH_CLUSTER.to_string(),
            protocol: Protocol::Unspecified,
        };
        chains.extend(chain.filter_chains(tls, *mode));
    }
    for t in &targets {
        let chain = InboundChain {
            target: Some(t),
            target_port: t.target_port,
            cluster: names::inbound_cluster(t.target_port),
            protocol: t.port.protocol,
        };
        chains.extend(chain.filter_chains(tls, tls.mtls.port(t.target_port)));
    }
    let listener_filters = inbound_listener_filters(&chains);
    Listener {
        name: names::VIRTUAL_INBOUND_LISTENER.to_string(),
        address: socket_addr(names::WILDCARD_ADDRESS, names::VIRTUAL_INBOUND_PORT),
        traffic_direction: TrafficDirection::Inbound as i32,
        continue_on_listener_filters_timeout: true,
        max_connections_to_accept_per_socket_event: Some(UInt32Value { value: 1 }),
        filter_chains: chains,
        listener_filters,
        listener_filters_timeout: secs(0),
        ..Default::default()
    }
}

/// istiod's `populateListenerFilters` for the virtual inbound listener: original_dst, then the TLS
/// and HTTP inspectors, each disabled on the destination ports whose chains do not need it.
fn inbound_listener_filters(chains: &[FilterChain]) -> Vec<ListenerFilter> {
    let mut by_port: BTreeMap<u32, (bool, bool)> = BTreeMap::new();
    for c in chains {
        let m = c.filter_chain_match.as_ref();
        let port = m.and_then(|m| m.destination_port).map_or(0, |p| p.value);
        let tls = m.is_some_and(|m| m.transport_protocol == TLS);
        let http = m.is_some_and(|m| m.application_protocols.iter().any(|a| a == "http/1.1" || a == "h2c"));
        let e = by_port.entry(port).or_default();
        e.0 |= tls;
        e.1 |= http;
    }
    let mut out = vec![original_dst()];
    if by_port.values().any(|(tls, _)| *tls) {
        let default_on = by_port.get(&0).is_some_and(|(tls, _)| *tls);
        let ports: Vec<u32> =
            by_port.iter().filter(|(p, (tls, _))| **p != 0 && *tls != default_on).map(|(p, _)| *p).collect();
        let disabled = match (ports.is_empty(), default_on) {
            (true, _) => None,
            (false, true) => Some(exclude_ports(&ports)),
            (false, false) => {
                Some(ListenerFilterChainMatchPredicate { rule: Some(Rule::NotMatch(Box::new(exclude_ports(&ports)))) })
            }
        };
        out.push(tls_inspector(disabled));
    }
    if by_port.values().any(|(_, http)| *http) {
        let ports: Vec<u32> = by_port.iter().filter(|(_, (_, http))| !*http).map(|(p, _)| *p).collect();
        out.push(http_inspector((!ports.is_empty()).then(|| exclude_ports(&ports))));
    }
    out
}

/// A predicate matching connections to any of `ports` (used to disable an inspector there).
fn exclude_ports(ports: &[u32]) -> ListenerFilterChainMatchPredicate {
    let mut rules: Vec<ListenerFilterChainMatchPredicate> = ports
        .iter()
        .map(|p| ListenerFilterChainMatchPredicate {
            rule: Some(Rule::DestinationPortRange(Int32Range {
                start: i32::try_from(*p).unwrap_or(i32::MAX),
                end: i32::try_from(*p + 1).unwrap_or(i32::MAX),
            })),
        })
        .collect();
    if rules.len() == 1 {
        rules.remove(0)
    } else {
        ListenerFilterChainMatchPredicate { rule: Some(Rule::OrMatch(MatchSet { rules })) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;

    use super::*;
    use crate::envoy::tests::{mk_service, mk_world, sidecar};
    use crate::model::World;

    fn listeners(services: Vec<Service>, interception: InterceptionMode) -> BTreeMap<String, Listener> {
        let world = mk_world(services);
        let proxy = ProxyProfile { interception, ..sidecar("default") };
        let ctx = Ctx::new(&world, &proxy);
        let mut routes = BTreeSet::new();
        outbound_listeners(&ctx, &mut routes).into_iter().map(|l| (l.name.clone(), l)).collect()
    }

    use crate::model::ProxyProfile;

    fn tcp_clusters(c: &FilterChain) -> Vec<String> {
        c.filters
            .iter()
            .filter_map(|f| match &f.config_type {
                Some(filter::ConfigType::TypedConfig(a)) if a.type_url.ends_with("TcpProxy") => {
                    let t = <TcpProxy as prost::Message>::decode(a.value.as_slice()).unwrap();
                    match t.cluster_specifier {
                        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => Some(c),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn tcp_services_without_vip_on_one_port_first_wins() {
        let l = listeners(
            vec![
                mk_service("b.example.com", &[], Resolution::Dns, &[("tcp", 9000, Protocol::Tcp)]),
                mk_service("a.example.com", &[], Resolution::Dns, &[("tcp", 9000, Protocol::Tcp)]),
            ],
            InterceptionMode::Redirect,
        );
        let l = &l["0.0.0.0_9000"];
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(tcp_clusters(&l.filter_chains[0]), vec!["outbound|9000||a.example.com"]);
    }

    #[test]
    fn http_and_tcp_on_the_wildcard_listener_become_sniffing() {
        let l = listeners(
            vec![
                mk_service(
                    "a.default.svc.cluster.local",
                    &["10.0.0.1"],
                    Resolution::Static,
                    &[("http", 7000, Protocol::Http)],
                ),
                mk_service("z.example.com", &[], Resolution::Dns, &[("tcp", 7000, Protocol::Tcp)]),
            ],
            InterceptionMode::Redirect,
        );
        let l = &l["0.0.0.0_7000"];
        // The HTTP chain matches plaintext HTTP; the TCP chain takes the rest instead of passthrough.
        assert_eq!(l.filter_chains.len(), 1);
        assert_eq!(
            l.filter_chains[0].filter_chain_match.as_ref().unwrap().application_protocols,
            vec!["http/1.1", "h2c"]
        );
        assert_eq!(tcp_clusters(l.default_filter_chain.as_ref().unwrap()), vec!["outbound|7000||z.example.com"]);
    }

    #[test]
    fn server_first_protocols_do_not_share_a_listener() {
        let l = listeners(
            vec![
                mk_service("a.example.com", &[], Resolution::Dns, &[("mysql", 3306, Protocol::Mysql)]),
                mk_service("b.example.com", &[], Resolution::Dns, &[("http", 3306, Protocol::Http)]),
            ],
            InterceptionMode::Redirect,
        );
        let l = &l["0.0.0.0_3306"];
        assert_eq!(l.filter_chains.len(), 1);
        assert!(l.listener_filters.is_empty(), "no inspector may run on a server-first port");
    }

    #[rstest]
    #[case(InterceptionMode::Redirect, Protocol::Http, "0.0.0.0_80", Some(false))]
    #[case(InterceptionMode::Redirect, Protocol::Tcp, "10.0.0.1_80", Some(false))]
    #[case(InterceptionMode::Redirect, Protocol::Unspecified, "10.0.0.1_80", Some(false))]
    #[case(InterceptionMode::None, Protocol::Http, "127.0.0.1_80", None)]
    #[case(InterceptionMode::None, Protocol::Tcp, "127.0.0.1_80", None)]
    fn listener_name_and_binding(
        #[case] mode: InterceptionMode,
        #[case] protocol: Protocol,
        #[case] name: &str,
        #[case] bind_to_port: Option<bool>,
    ) {
        let l = listeners(
            vec![mk_service("a.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, &[("p", 80, protocol)])],
            mode,
        );
        assert_eq!(l.keys().collect::<Vec<_>>(), vec![name]);
        assert_eq!(l[name].bind_to_port.map(|b| b.value), bind_to_port);
    }

    fn chain(port: u32, transport: &str, alpn: &[&str]) -> FilterChain {
        FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                destination_port: (port > 0).then_some(UInt32Value { value: port }),
                transport_protocol: transport.into(),
                application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn disabled_ports(f: &ListenerFilter) -> Option<(bool, Vec<i32>)> {
        let mut p = f.filter_disabled.as_ref()?;
        let mut negated = false;
        if let Some(Rule::NotMatch(inner)) = &p.rule {
            negated = true;
            p = inner;
        }
        let ports = match &p.rule {
            Some(Rule::DestinationPortRange(r)) => vec![r.start],
            Some(Rule::OrMatch(m)) => m
                .rules
                .iter()
                .map(|r| match &r.rule {
                    Some(Rule::DestinationPortRange(r)) => r.start,
                    _ => -1,
                })
                .collect(),
            _ => vec![],
        };
        Some((negated, ports))
    }

    #[test]
    fn inbound_inspectors_skip_ports_that_do_not_need_them() {
        let chains = vec![
            chain(15006, "", &[]),
            chain(0, RAW_BUFFER, &PLAINTEXT_HTTP_ALPNS),
            chain(0, RAW_BUFFER, &[]),
            chain(0, TLS, &[]),
            chain(8080, RAW_BUFFER, &[]),
            chain(9000, RAW_BUFFER, &[]),
            chain(9000, TLS, &[]),
        ];
        let f = inbound_listener_filters(&chains);
        assert_eq!(
            f.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            vec![ORIGINAL_DST, TLS_INSPECTOR, HTTP_INSPECTOR]
        );
        // TLS inspector on by default (passthrough needs it), off where no chain matches TLS.
        assert_eq!(disabled_ports(&f[1]), Some((false, vec![8080, 15006])));
        // HTTP inspector off wherever no chain matches plaintext HTTP ALPN.
        assert_eq!(disabled_ports(&f[2]), Some((false, vec![8080, 9000, 15006])));
    }

    #[test]
    fn inbound_tls_chains_appear_only_with_server_tls() {
        let tls = InboundTls {
            http: Some(TransportSocket::default()),
            tcp: Some(TransportSocket::default()),
            mtls: EffectiveMtls::default(),
        };
        let world = mk_world(vec![]);
        let proxy = sidecar("default");
        let ctx = Ctx::new(&world, &proxy);
        let plain = virtual_inbound_listener(&ctx, &InboundTls::default());
        let mtls = virtual_inbound_listener(&ctx, &tls);
        // Passthrough: PERMISSIVE has 5 options, 2 of them terminate mTLS; plus the blackhole chain.
        assert_eq!(plain.filter_chains.len(), 1 + 3);
        assert_eq!(mtls.filter_chains.len(), 1 + 5);
    }

    fn own_service(protocol: Protocol) -> (World, ProxyProfile) {
        let mut svc =
            mk_service("a.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, &[("p", 80, protocol)]);
        svc.selector = Some([("app".to_string(), "a".to_string())].into_iter().collect());
        svc.ports[0].target_port = Some(8080);
        let world = mk_world(vec![svc]);
        let proxy =
            ProxyProfile { labels: [("app".to_string(), "a".to_string())].into_iter().collect(), ..sidecar("default") };
        (world, proxy)
    }

    /// `(transport, alpn, terminates mTLS)` of the chains for target port 8080.
    fn port_chains(l: &Listener) -> Vec<(String, Vec<String>, bool)> {
        l.filter_chains
            .iter()
            .filter_map(|c| {
                let m = c.filter_chain_match.as_ref()?;
                (m.destination_port.map(|p| p.value) == Some(8080)).then(|| {
                    (m.transport_protocol.clone(), m.application_protocols.clone(), c.transport_socket.is_some())
                })
            })
            .collect()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[rstest]
    #[case(Protocol::Http, Mtls::Strict, vec![(TLS, vec![], true)])]
    #[case(Protocol::Tcp, Mtls::Strict, vec![(TLS, vec![], true)])]
    #[case(Protocol::Unspecified, Mtls::Strict, vec![(TLS, MTLS_HTTP_ALPNS.to_vec(), true), (TLS, vec![], true)])]
    #[case(Protocol::Http, Mtls::Disable, vec![(RAW_BUFFER, vec![], false)])]
    #[case(Protocol::Tcp, Mtls::Disable, vec![(RAW_BUFFER, vec![], false)])]
    #[case(Protocol::Unspecified, Mtls::Disable, vec![(RAW_BUFFER, PLAINTEXT_HTTP_ALPNS.to_vec(), false), (RAW_BUFFER, vec![], false)])]
    #[case(Protocol::Http, Mtls::Permissive, vec![(TLS, ALL_ISTIO_MTLS_ALPNS.to_vec(), true), (RAW_BUFFER, vec![], false)])]
    #[case(Protocol::Tcp, Mtls::Permissive,
        vec![(TLS, ALL_ISTIO_MTLS_ALPNS.to_vec(), true), (RAW_BUFFER, vec![], false), (TLS, vec![], false)])]
    fn inbound_chains_follow_the_port_mode(
        #[case] protocol: Protocol,
        #[case] mode: Mtls,
        #[case] want: Vec<(&str, Vec<&str>, bool)>,
    ) {
        let (world, proxy) = own_service(protocol);
        let ctx = Ctx::new(&world, &proxy);
        let mut tls = InboundTls::for_proxy(&ctx);
        tls.mtls.ports.insert(8080, mode);
        let l = virtual_inbound_listener(&ctx, &tls);
        let want: Vec<(String, Vec<String>, bool)> =
            want.into_iter().map(|(t, a, m)| (t.to_string(), s(&a), m)).collect();
        assert_eq!(port_chains(&l), want);
    }

    #[test]
    fn port_level_modes_without_a_service_get_passthrough_chains() {
        let (world, proxy) = own_service(Protocol::Http);
        let ctx = Ctx::new(&world, &proxy);
        let mut tls = InboundTls::for_proxy(&ctx);
        tls.mtls.ports.insert(9000, Mtls::Strict);
        let l = virtual_inbound_listener(&ctx, &tls);
        let chains: Vec<&FilterChain> = l
            .filter_chains
            .iter()
            .filter(|c| c.filter_chain_match.as_ref().and_then(|m| m.destination_port).map(|p| p.value) == Some(9000))
            .collect();
        assert_eq!(chains.len(), 2);
        assert!(chains.iter().all(|c| c.transport_socket.is_some()));
        assert!(
            chains
                .iter()
                .all(|c| c.name == names::VIRTUAL_INBOUND_LISTENER
                    || c.name == names::VIRTUAL_INBOUND_CATCHALL_HTTP_CHAIN)
        );
    }
}
