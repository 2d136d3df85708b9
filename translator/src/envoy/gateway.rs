//! Gateway proxies (node type `router`): listeners and routes from the Gateways that select them
//! and the VirtualServices bound to those Gateways.
//!
//! As istiod (`MergeGateways`, `buildGatewayListeners`, `buildGatewayHTTPRouteConfig`):
//! - A Gateway applies to a proxy whose labels include its `selector`, in any namespace.
//! - Servers are grouped by listener port: the server port translated through the gateway's own
//!   Service (the `targetPort` of the Service port equal to the server port), else the server port.
//!   Listeners are `<bind>_<port>` (bind `0.0.0.0` unless the server sets one), bound to the port.
//! - Plain HTTP servers of a port share one HTTP connection manager reading RDS `http.<port>`;
//!   HTTPS servers terminating TLS get one filter chain each (SNI from the server hosts, a
//!   `DownstreamTlsContext`) reading RDS `https.<port>.<portName>.<gateway>.<namespace>`; TCP and
//!   TLS servers get tcp_proxy chains from VirtualService `tcp` routes, PASSTHROUGH servers SNI
//!   chains from `tls` routes, AUTO_PASSTHROUGH servers one SNI chain per mesh service cluster
//!   (`outbound_.<port>_.<subset>_.<host>`).
//! - Route configurations: one virtual host per host a bound VirtualService shares with a server
//!   (`<host>:<serverPort>`); the routes of every such VirtualService are appended in age order and
//!   catch-all routes moved last; `httpsRedirect` sets `require_tls: ALL`; virtual hosts with the
//!   same routes collapse into one with several domains; with none, a 404 `blackhole` host.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Http1ProtocolOptions;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteConfiguration, VirtualHost, virtual_host::TlsRequirementType,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, Rds,
    http_connection_manager::{ForwardClientCertDetails, RouteSpecifier, SetCurrentClientCertDetails},
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::hcm::{base_hcm, hcm_filter};
use super::http_route::{self, RouteOpts, sort_catch_all_last};
use super::listener::{ALL_ISTIO_MTLS_ALPNS, network_filters, single_destination_filter, tls_inspector};
use super::route::{MAX_DIRECT_RESPONSE_BODY_BYTES, add_route_configuration};
use super::tls::{ServerKind, downstream_transport_socket, gateway_tls_context};
use super::{Ctx, ads_config_source, secs, socket_addr};
use crate::api::istio::{Server, ServerTlsMode};
use crate::model::config::{GatewayConfig, VirtualServiceConfig};
use crate::model::{Labels, Location, Protocol, host};
use crate::names;
use crate::resources::ResourceSet;

/// istiod's `defaultGatewayTransportSocketConnectTimeout`: a TLS handshake must finish in 15s.
const TRANSPORT_SOCKET_CONNECT_TIMEOUT_SECS: i64 = 15;

/// One server of a Gateway that selects the proxy.
#[derive(Debug, Clone)]
pub struct ServerRef<'a> {
    /// The server.
    pub server: &'a Server,
    /// Its Gateway.
    pub gateway: &'a GatewayConfig,
    /// `namespace/name` of the Gateway (what VirtualServices bind to).
    pub gateway_name: String,
    /// The RDS name of an HTTP or TLS-terminating HTTPS server.
    pub route_name: Option<String>,
}

impl ServerRef<'_> {
    fn port(&self) -> u16 {
        self.server.port.as_ref().and_then(|p| u16::try_from(p.number).ok()).unwrap_or(0)
    }

    fn protocol(&self) -> Protocol {
        self.server.port.as_ref().and_then(|p| Protocol::parse(&p.protocol)).unwrap_or(Protocol::Tcp)
    }

    fn tls_mode(&self) -> Option<ServerTlsMode> {
        self.server.tls.as_ref().map(|t| t.mode.unwrap_or(ServerTlsMode::Passthrough))
    }

    fn is_passthrough(&self) -> bool {
        matches!(self.tls_mode(), Some(ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough))
    }

    /// HTTP, or HTTPS terminating TLS (istiod's `IsHTTPServer`).
    fn is_http(&self) -> bool {
        let p = self.protocol();
        p.is_http() || (p == Protocol::Https && self.server.tls.is_some() && !self.is_passthrough())
    }

    /// TLS settings on a non-HTTP server (istiod's `IsTLSServer`).
    fn is_tls(&self) -> bool {
        self.server.tls.is_some() && !self.protocol().is_http()
    }

    fn https_redirect(&self) -> bool {
        self.server.tls.as_ref().and_then(|t| t.https_redirect) == Some(true)
    }

    /// Server hosts without their namespace part, deduplicated and sorted (SNI names).
    fn sni_hosts(&self) -> Vec<String> {
        let set: BTreeSet<&str> =
            self.server.hosts.iter().map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h)).collect();
        set.into_iter().map(str::to_string).collect()
    }
}

/// The servers of one listener.
#[derive(Debug, Clone)]
struct PortServers<'a> {
    bind: String,
    /// Plain-text servers (the first decides the port's protocol).
    plaintext: bool,
    servers: Vec<ServerRef<'a>>,
}

/// Every Gateway selecting the proxy, merged (istiod's `MergedGateway`).
#[derive(Debug, Clone, Default)]
pub struct MergedGateway<'a> {
    ports: BTreeMap<u16, PortServers<'a>>,
    routes: BTreeMap<String, Vec<ServerRef<'a>>>,
    /// Whether any server is AUTO_PASSTHROUGH (the proxy then needs SNI-DNAT clusters).
    pub auto_passthrough: bool,
}

fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The listener port of a server port: the `targetPort` of the proxy's own Service port equal to
/// it (oldest Service first), else the server port itself (istiod's legacy-selector `resolvePorts`).
fn listener_port(ctx: &Ctx<'_>, own: &[&crate::model::Service], number: u16) -> u16 {
    for svc in own {
        if let Some(p) = svc.port(number)
            && let Some(t) = ctx.own_target_port(svc, p)
        {
            return t;
        }
    }
    number
}

/// Merges the Gateways selecting the proxy, oldest first. A server conflicting with an earlier
/// one on the same port (mixed plain text and TLS, a different plain-text protocol, a TLS host
/// already served, a duplicate HTTPS port name) is skipped, as istiod does.
pub fn merge<'a>(ctx: &Ctx<'a>) -> MergedGateway<'a> {
    let mut out = MergedGateway::default();
    let own = ctx.own_services();
    let mut tls_hosts: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
    for gw in &ctx.world.config.gateways {
        if !selects(&gw.spec.selector, &ctx.proxy.labels) {
            continue;
        }
        let gateway_name = gw.meta.key();
        for server in &gw.spec.servers {
            let Some(port) = server.port.as_ref().and_then(|p| u16::try_from(p.number).ok()).filter(|p| *p != 0) else {
                continue;
            };
            let lport = listener_port(ctx, &own, port);
            let mut s = ServerRef { server, gateway: gw, gateway_name: gateway_name.clone(), route_name: None };
            if server.tls.is_some() {
                let known = tls_hosts.entry(lport).or_default();
                if server.hosts.iter().any(|h| known.contains(h.as_str())) {
                    continue;
                }
                known.extend(server.hosts.iter().map(String::as_str));
            }
            let protocol = s.protocol();
            let http_route = || names::gateway_http_route(lport);
            let https_route = || {
                let port_name = server.port.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
                names::gateway_https_route(port, port_name, &gw.meta.name, &gw.meta.namespace)
            };
            match out.ports.get_mut(&lport) {
                Some(existing) if existing.plaintext => {
                    let current = existing.servers[0].protocol();
                    if current != protocol || !protocol.is_http() {
                        continue;
                    }
                    s.route_name = Some(http_route());
                    out.routes.entry(http_route()).or_default().push(s);
                }
                Some(existing) => {
                    if s.is_http() {
                        let name = if protocol.is_http() { http_route() } else { https_route() };
                        if out.routes.contains_key(&name) {
                            continue;
                        }
                        s.route_name = Some(name.clone());
                        out.routes.insert(name, vec![s.clone()]);
                    }
                    if server.tls.is_none() {
                        continue;
                    }
                    existing.servers.push(s);
                }
                None => {
                    if s.is_http() {
                        let name = if protocol.is_http() { http_route() } else { https_route() };
                        s.route_name = Some(name.clone());
                        out.routes.insert(name, vec![s.clone()]);
                    }
                    out.ports.insert(
                        lport,
                        PortServers {
                            bind: server
                                .bind
                                .clone()
                                .filter(|b| !b.is_empty())
                                .unwrap_or_else(|| names::WILDCARD_ADDRESS.to_string()),
                            plaintext: !s.is_tls(),
                            servers: vec![s],
                        },
                    );
                }
            }
        }
    }
    out.auto_passthrough =
        out.ports.values().flat_map(|p| p.servers.iter()).any(|s| s.tls_mode() == Some(ServerTlsMode::AutoPassthrough));
    out
}

/// VirtualServices bound to `gateway` and visible from the proxy's namespace, oldest first.
fn bound<'a>(ctx: &Ctx<'a>, gateway: &str) -> Vec<&'a VirtualServiceConfig> {
    ctx.world
        .config
        .virtual_services_for_gateway(gateway)
        .filter(|vs| vs.export_to.visible_from(&ctx.proxy.namespace))
        .map(|vs| vs.as_ref())
        .collect()
}

/// Adds the proxy's gateway listeners to `set`.
pub fn build_listeners(ctx: &Ctx<'_>, merged: &MergedGateway<'_>, set: &mut ResourceSet) {
    let mut tls_hosts: BTreeSet<String> = BTreeSet::new();
    for (port, ps) in &merged.ports {
        let mut chains: Vec<GatewayChain> = Vec::new();
        let first = &ps.servers[0];
        let name = names::listener(&ps.bind, *port);
        if ps.plaintext && first.protocol().is_http() {
            let rds = first.route_name.clone().unwrap_or_else(|| names::gateway_http_route(*port));
            let stat = names::delimited_stat_prefix(&format!("outbound_{name}"));
            chains.push(GatewayChain::new(vec![hcm_filter(&gateway_hcm(&stat, &rds, first.protocol()))]));
        } else {
            tls_hosts.clear();
            for s in &ps.servers {
                chains.extend(server_chains(ctx, s, &name, &mut tls_hosts));
            }
        }
        if chains.is_empty() {
            // istiod omits a listener without filter chains.
            continue;
        }
        let needs_inspector = chains.iter().any(|c| {
            !c.sni_hosts.is_empty()
                || c.tls
                    .as_ref()
                    .and_then(|t| t.common_tls_context.as_ref())
                    .is_some_and(|c| !c.alpn_protocols.is_empty())
        });
        let listener = Listener {
            name: name.clone(),
            address: socket_addr(&ps.bind, *port),
            traffic_direction: TrafficDirection::Outbound as i32,
            listener_filters: if needs_inspector { vec![tls_inspector(None)] } else { Vec::new() },
            filter_chains: chains.into_iter().map(GatewayChain::into_filter_chain).collect(),
            max_connections_to_accept_per_socket_event: Some(UInt32Value { value: 1 }),
            ..Default::default()
        };
        set.add(crate::resources::TypeUrl::Listener, name, &listener);
    }
}

/// A gateway filter chain before it becomes Envoy config.
struct GatewayChain {
    sni_hosts: Vec<String>,
    alpn: Vec<String>,
    tls: Option<DownstreamTlsContext>,
    filters: Vec<Filter>,
}

impl GatewayChain {
    fn new(filters: Vec<Filter>) -> Self {
        GatewayChain { sni_hosts: Vec::new(), alpn: Vec::new(), tls: None, filters }
    }

    fn into_filter_chain(self) -> FilterChain {
        let wildcard = self.sni_hosts.iter().any(|h| h == "*");
        let filter_chain_match = if (self.sni_hosts.is_empty() || wildcard) && self.alpn.is_empty() {
            None
        } else {
            let mut server_names = if wildcard { Vec::new() } else { self.sni_hosts };
            server_names.sort();
            Some(FilterChainMatch { server_names, application_protocols: self.alpn, ..Default::default() })
        };
        FilterChain {
            filter_chain_match,
            transport_socket: self.tls.as_ref().map(downstream_transport_socket),
            transport_socket_connect_timeout: secs(TRANSPORT_SOCKET_CONNECT_TIMEOUT_SECS),
            filters: self.filters,
            ..Default::default()
        }
    }
}

/// The HTTP connection manager of a gateway (istiod's `buildGatewayConnectionManager`): the
/// gateway is the edge, so it trusts no forwarded addresses and sanitizes client certificate
/// headers.
fn gateway_hcm(stat_prefix: &str, rds: &str, protocol: Protocol) -> HttpConnectionManager {
    HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: ads_config_source(),
            route_config_name: rds.to_string(),
        })),
        use_remote_address: Some(BoolValue { value: true }),
        forward_client_cert_details: ForwardClientCertDetails::SanitizeSet as i32,
        set_current_client_cert_details: Some(SetCurrentClientCertDetails {
            subject: Some(BoolValue { value: true }),
            cert: true,
            dns: true,
            uri: true,
            ..Default::default()
        }),
        server_name: "istio-envoy".to_string(),
        http_protocol_options: Some(Http1ProtocolOptions::default()),
        ..base_hcm(stat_prefix, protocol)
    }
}

/// Filter chains of one server on a non-HTTP listener.
fn server_chains(
    ctx: &Ctx<'_>,
    s: &ServerRef<'_>,
    listener: &str,
    tls_hosts: &mut BTreeSet<String>,
) -> Vec<GatewayChain> {
    let Some(tls) = &s.server.tls else {
        // Opaque TCP: the first matching VirtualService tcp route.
        return tcp_route_filters(ctx, s).map(GatewayChain::new).into_iter().collect();
    };
    if s.is_http() {
        let rds = s.route_name.clone().unwrap_or_default();
        let stat = match s.server.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => names::delimited_stat_prefix(&format!("outbound_{listener}")),
        };
        let mut chain = GatewayChain::new(vec![hcm_filter(&gateway_hcm(&stat, &rds, Protocol::Http))]);
        chain.sni_hosts = s.sni_hosts();
        chain.tls = gateway_tls_context(tls, ServerKind::Http);
        return vec![chain];
    }
    if !s.is_passthrough() {
        // TLS terminated in front of TCP routes.
        let Some(filters) = tcp_route_filters(ctx, s) else { return Vec::new() };
        let mut chain = GatewayChain::new(filters);
        chain.sni_hosts = s.sni_hosts();
        chain.tls = gateway_tls_context(tls, ServerKind::Tcp);
        return vec![chain];
    }
    if s.tls_mode() == Some(ServerTlsMode::AutoPassthrough) {
        return auto_passthrough_chains(ctx, &s.sni_hosts());
    }
    passthrough_chains(ctx, s, tls_hosts)
}

/// Whether a VirtualService shares a host with a server (istiod's `pickMatchingGatewayHosts`).
fn vs_matches_server(vs: &VirtualServiceConfig, server: &Server) -> bool {
    vs.spec.hosts.iter().any(|vh| {
        server.hosts.iter().any(|gh| {
            let gh = match gh.split_once('/') {
                Some((ns, h)) if ns == vs.meta.namespace => h,
                Some(_) => return false,
                None => gh.as_str(),
            };
            host::matches(gh, vh)
        })
    })
}

fn l4_gateway_match(match_port: Option<u32>, gateways: &[String], server_port: u16, gateway: &str) -> bool {
    match_port.is_none_or(|p| p == 0 || p == u32::from(server_port))
        && (gateways.is_empty() || gateways.iter().any(|g| g == gateway))
}

/// The tcp_proxy of the first VirtualService `tcp` route matching the server.
fn tcp_route_filters(ctx: &Ctx<'_>, s: &ServerRef<'_>) -> Option<Vec<Filter>> {
    let port = s.port();
    for vs in bound(ctx, &s.gateway_name) {
        if !vs_matches_server(vs, s.server) {
            continue;
        }
        for tcp in &vs.spec.tcp {
            let matched = tcp.r#match.is_empty()
                || tcp.r#match.iter().any(|m| l4_gateway_match(m.port, &m.gateways, port, &s.gateway_name));
            if matched && !tcp.route.is_empty() {
                return Some(network_filters(ctx, vs, &tcp.route, port));
            }
        }
    }
    None
}

/// SNI chains from the `tls` routes of bound VirtualServices; an SNI name already routed on this
/// listener is skipped (Envoy rejects identical chain matches).
fn passthrough_chains(ctx: &Ctx<'_>, s: &ServerRef<'_>, tls_hosts: &mut BTreeSet<String>) -> Vec<GatewayChain> {
    let port = s.port();
    let bind = s.server.bind.clone().unwrap_or_default();
    let mut out = Vec::new();
    for vs in bound(ctx, &s.gateway_name) {
        if !vs_matches_server(vs, s.server) {
            continue;
        }
        for tls in &vs.spec.tls {
            if tls.route.is_empty() {
                continue;
            }
            for m in &tls.r#match {
                if !l4_gateway_match(m.port, &m.gateways, port, &s.gateway_name) {
                    continue;
                }
                let keys: Vec<String> = m.sni_hosts.iter().map(|h| format!("{bind}|{h}")).collect();
                if keys.iter().any(|k| tls_hosts.contains(k)) {
                    continue;
                }
                tls_hosts.extend(keys);
                let mut chain = GatewayChain::new(network_filters(ctx, vs, &tls.route, port));
                chain.sni_hosts = m.sni_hosts.clone();
                out.push(chain);
            }
        }
    }
    out
}

/// One SNI chain per port (and DestinationRule subset) of every mesh service a server host covers,
/// each to the cluster named by the SNI (istiod's `builtAutoPassthroughFilterChains`). Clients
/// connect with Istio mTLS, so the chains also require an Istio ALPN.
fn auto_passthrough_chains(ctx: &Ctx<'_>, hosts: &[String]) -> Vec<GatewayChain> {
    let mut out = Vec::new();
    for svc in &ctx.services {
        if svc.location == Location::MeshExternal || !hosts.iter().any(|h| host::subset_of(&svc.hostname, h)) {
            continue;
        }
        let rule = ctx.destination_rule(&svc.hostname);
        let subsets: Vec<&str> = std::iter::once("")
            .chain(rule.iter().flat_map(|r| r.spec.subsets.iter().map(|s| s.name.as_str())))
            .collect();
        for port in &svc.ports {
            for subset in &subsets {
                let cluster = names::sni_cluster(port.port, subset, &svc.hostname);
                let mut chain =
                    GatewayChain::new(vec![single_destination_filter(ctx, &cluster, &svc.hostname, port.port)]);
                chain.sni_hosts = vec![cluster];
                chain.alpn = ALL_ISTIO_MTLS_ALPNS.iter().map(|s| s.to_string()).collect();
                out.push(chain);
            }
        }
    }
    out
}

/// A virtual host being assembled, with the VirtualServices its routes came from (istiod collapses
/// virtual hosts whose route lists are the same objects; the origin list stands for that identity).
struct GatewayVhost {
    vhost: VirtualHost,
    origins: Vec<usize>,
}

/// Adds the gateway route configurations (one per RDS name of the merged servers).
pub fn build_routes(ctx: &Ctx<'_>, merged: &MergedGateway<'_>, set: &mut ResourceSet) {
    for (name, servers) in &merged.routes {
        add_route_configuration(set, route_config(ctx, name, servers));
    }
}

fn route_config(ctx: &Ctx<'_>, name: &str, servers: &[ServerRef<'_>]) -> RouteConfiguration {
    let mut vhosts: BTreeMap<String, GatewayVhost> = BTreeMap::new();
    let mut cache: BTreeMap<(String, usize), Vec<Route>> = BTreeMap::new();
    for s in servers {
        let port = s.port();
        let gateway = [s.gateway_name.as_str()];
        let redirect = s.https_redirect();
        let vss = bound(ctx, &s.gateway_name);
        for vs in &vss {
            let server_hosts: Vec<&str> = s
                .server
                .hosts
                .iter()
                .filter_map(|h| match h.split_once('/') {
                    Some((ns, h)) if ns == vs.meta.namespace || ns == "*" => Some(h),
                    Some(_) => None,
                    None => Some(h.as_str()),
                })
                .collect();
            let hosts = intersection(&server_hosts, &vs.spec.hosts);
            if hosts.is_empty() {
                continue;
            }
            let id = vs_id(ctx, vs);
            let routes = cache
                .entry((s.gateway_name.clone(), id))
                .or_insert_with(|| {
                    http_route::virtual_service_routes(
                        ctx,
                        vs,
                        &RouteOpts { listen_port: port, gateway_names: &gateway, is_tls: s.server.tls.is_some() },
                    )
                })
                .clone();
            if routes.is_empty() {
                continue;
            }
            for h in hosts {
                let h = h.to_ascii_lowercase();
                let v = vhosts.entry(h.clone()).or_insert_with(|| GatewayVhost {
                    vhost: VirtualHost {
                        name: names::domain_port(&h, port),
                        domains: vec![h.clone()],
                        include_request_attempt_count: true,
                        ..Default::default()
                    },
                    origins: Vec::new(),
                });
                v.vhost.routes.extend(routes.iter().cloned());
                v.origins.push(id);
                if redirect {
                    v.vhost.require_tls = TlsRequirementType::All as i32;
                }
            }
        }
        if redirect {
            for h in s.sni_hosts() {
                let h = h.to_ascii_lowercase();
                let v = vhosts.entry(h.clone()).or_insert_with(|| GatewayVhost {
                    vhost: VirtualHost {
                        name: names::domain_port(&h, port),
                        domains: vec![h.clone()],
                        include_request_attempt_count: true,
                        ..Default::default()
                    },
                    origins: Vec::new(),
                });
                v.vhost.require_tls = TlsRequirementType::All as i32;
            }
        }
    }
    let mut virtual_hosts: Vec<VirtualHost> = if vhosts.is_empty() {
        let port = servers.first().map_or(0, ServerRef::port);
        vec![VirtualHost {
            name: names::domain_port("blackhole", port),
            domains: vec!["*".to_string()],
            // No routes: Envoy answers 404 NR.
            ..Default::default()
        }]
    } else {
        collapse(vhosts)
            .into_iter()
            .map(|mut v| {
                v.routes = sort_catch_all_last(std::mem::take(&mut v.routes));
                v
            })
            .collect()
    };
    virtual_hosts.sort_by(|a, b| a.name.cmp(&b.name));
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts,
        validate_clusters: Some(BoolValue { value: false }),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: Some(UInt32Value { value: MAX_DIRECT_RESPONSE_BODY_BYTES }),
        ..Default::default()
    }
}

/// Position of a VirtualService in the world (its identity for route collapsing).
fn vs_id(ctx: &Ctx<'_>, vs: &VirtualServiceConfig) -> usize {
    ctx.world.config.virtual_services.iter().position(|v| std::ptr::eq(v.as_ref(), vs)).unwrap_or(usize::MAX)
}

/// Hosts in both lists, the narrower of each matching pair (istiod's `Names.Intersection`).
fn intersection<'h>(server_hosts: &[&'h str], vs_hosts: &'h [String]) -> Vec<&'h str> {
    let mut out: Vec<&str> = Vec::new();
    for sh in server_hosts {
        for vh in vs_hosts {
            let pick = if host::subset_of(sh, vh) {
                Some(*sh)
            } else if host::subset_of(vh, sh) {
                Some(vh.as_str())
            } else {
                None
            };
            if let Some(p) = pick
                && !out.contains(&p)
            {
                out.push(p);
            }
        }
    }
    out
}

/// Merges virtual hosts with identical routes (same VirtualServices, same TLS requirement) into
/// the alphabetically first one (istiod's `collapseDuplicateRoutes`).
fn collapse(vhosts: BTreeMap<String, GatewayVhost>) -> Vec<VirtualHost> {
    let mut out: Vec<GatewayVhost> = Vec::with_capacity(vhosts.len());
    for (_, v) in vhosts {
        let twin = out
            .iter_mut()
            .find(|p| !v.origins.is_empty() && p.origins == v.origins && p.vhost.require_tls == v.vhost.require_tls);
        match twin {
            Some(p) => p.vhost.domains.extend(v.vhost.domains),
            None => out.push(v),
        }
    }
    out.into_iter().map(|v| v.vhost).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;
    use serde_json::json;

    use super::*;
    use crate::api::parse_object;
    use crate::model::{MeshConfig, NodeType, ProxyProfile, build_world};

    fn gateway(name: &str, created: &str, app: &str, servers: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "gw", "creationTimestamp": created},
            "spec": {"selector": {"app": app}, "servers": servers}})
    }

    #[test]
    fn merge_keeps_the_first_protocol_per_port_and_skips_duplicate_tls_hosts() {
        let objs: Vec<_> = vec![
            gateway(
                "a",
                "2024-01-01T00:00:00Z",
                "gw",
                json!([
                    {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["a.com"]},
                    {"port": {"number": 443, "name": "https-a", "protocol": "HTTPS"}, "hosts": ["a.com"],
                     "tls": {"mode": "SIMPLE", "credentialName": "a"}}
                ]),
            ),
            gateway(
                "b",
                "2024-02-01T00:00:00Z",
                "gw",
                json!([
                    {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["b.com"]},
                    {"port": {"number": 80, "name": "tcp", "protocol": "TCP"}, "hosts": ["c.com"]},
                    {"port": {"number": 443, "name": "https-b", "protocol": "HTTPS"}, "hosts": ["a.com"],
                     "tls": {"mode": "SIMPLE", "credentialName": "b"}},
                    {"port": {"number": 443, "name": "https-c", "protocol": "HTTPS"}, "hosts": ["c.com"],
                     "tls": {"mode": "SIMPLE", "credentialName": "c"}}
                ]),
            ),
            // Selects other pods.
            gateway(
                "other",
                "2024-01-01T00:00:00Z",
                "elsewhere",
                json!([
                    {"port": {"number": 9000, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}
                ]),
            ),
        ]
        .into_iter()
        .map(|v| parse_object(v).unwrap())
        .collect();
        let (world, d) = build_world(&objs, &MeshConfig::default());
        assert!(d.is_empty(), "{d:?}");
        let proxy = ProxyProfile {
            node_type: NodeType::Router,
            namespace: "gw".into(),
            labels: [("app".to_string(), "gw".to_string())].into_iter().collect(),
            ..ProxyProfile::default()
        };
        let ctx = Ctx::new(&world, &proxy);
        let merged = merge(&ctx);
        assert_eq!(merged.ports.keys().copied().collect::<Vec<_>>(), vec![80, 443]);
        let routes: Vec<&str> = merged.routes.keys().map(String::as_str).collect();
        assert_eq!(routes, vec!["http.80", "https.443.https-a.a.gw", "https.443.https-c.b.gw"]);
        // Both HTTP servers share `http.80`; the TCP server on an HTTP port is dropped.
        assert_eq!(merged.routes["http.80"].len(), 2);
        // a.com is already served on 443: gateway b's https-b is dropped.
        let on_443: Vec<&str> =
            merged.ports[&443].servers.iter().map(|s| s.server.port.as_ref().unwrap().name.as_str()).collect();
        assert_eq!(on_443, vec!["https-a", "https-c"]);
        assert!(!merged.auto_passthrough);
    }

    #[rstest]
    #[case(&["*"], &["a.com"], &["a.com"])]
    #[case(&["*.com"], &["a.com", "b.org"], &["a.com"])]
    #[case(&["a.com", "b.com"], &["*.com"], &["a.com", "b.com"])]
    #[case(&["a.com"], &["b.com"], &[])]
    fn host_intersection(#[case] server: &[&str], #[case] vs: &[&str], #[case] want: &[&str]) {
        let vs: Vec<String> = vs.iter().map(|s| s.to_string()).collect();
        assert_eq!(intersection(server, &vs), want);
    }
}
