//! Routes (RDS): outbound route configurations by name, and the inline inbound route config.
//!
//! Outbound listeners of HTTP ports share one route configuration per port (`"9080"`) holding a
//! virtual host per service on that port (`<fqdn>:<port>`) and a last catch-all virtual host
//! (`allow_any` or `block_all`). A sniffed port with its own listener (`<VIP>_<port>`) gets a
//! route configuration named `<fqdn>:<port>` holding only that service, matching any authority.
//!
//! VirtualServices (istiod's `BuildSidecarVirtualHostWrapper`): each applicable VirtualService, in
//! age order, contributes virtual hosts for the registry services its hosts name (and for hosts
//! outside the registry); a virtual host name (`host:port`) or domain already taken by an older
//! VirtualService is dropped, so the oldest VirtualService for a host wins. Services without a
//! VirtualService get the `default` route.

use std::collections::{BTreeSet, HashMap, HashSet};

use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    route::Action,
    route_action::{ClusterSpecifier, MaxStreamDuration},
    route_match::PathSpecifier,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use super::http_route::{self, RouteOpts};
use super::{Ctx, secs};
use crate::model::config::VirtualServiceConfig;
use crate::model::host::{self, MESH_GATEWAY};
use crate::model::{OutboundTrafficPolicy, Service, ServicePort};
use crate::names;
use crate::resources::{ResourceSet, TypeUrl};

/// Istio's `max_direct_response_body_size_bytes` (1 MiB, the limit its webhook enforces).
pub(crate) const MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 1024 * 1024;

/// `RouteConfiguration.virtual_hosts`, `VirtualHost.routes`, `Route.typed_per_filter_config`.
const RC_VIRTUAL_HOSTS_TAG: u32 = 2;
const VH_ROUTES_TAG: u32 = 3;
const ROUTE_TYPED_PER_FILTER_CONFIG_TAG: u32 = 13;

/// Adds the route configurations named by the proxy's listeners.
pub fn build_routes(ctx: &Ctx<'_>, route_names: &BTreeSet<String>, set: &mut ResourceSet) {
    for name in route_names {
        let rc = outbound_route_config(ctx, name);
        add_route_configuration(set, rc);
    }
}

/// Adds a route configuration with deterministic bytes.
///
/// prost keeps `typed_per_filter_config` in a `HashMap` whose iteration order differs between map
/// instances; a route with fault injection and CORS has two entries. Such routes are written here
/// field by field with the map entries sorted by filter name (see [`super::wire`]); everything
/// else is encoded by prost as usual.
pub fn add_route_configuration(set: &mut ResourceSet, mut rc: RouteConfiguration) {
    let unordered = rc.virtual_hosts.iter().any(|vh| vh.routes.iter().any(|r| r.typed_per_filter_config.len() > 1));
    if !unordered {
        set.add(TypeUrl::Route, rc.name.clone(), &rc);
        return;
    }
    let mut extra = Vec::new();
    for mut vh in std::mem::take(&mut rc.virtual_hosts) {
        let routes = std::mem::take(&mut vh.routes);
        let mut body = vh.encode_to_vec();
        for r in routes {
            length_delimited(&mut body, VH_ROUTES_TAG, &encode_route(r));
        }
        length_delimited(&mut extra, RC_VIRTUAL_HOSTS_TAG, &body);
    }
    set.add_with_fields(TypeUrl::Route, rc.name.clone(), &rc, &extra);
}

fn length_delimited(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// A route with its per-filter configuration entries written in filter-name order.
fn encode_route(mut r: Route) -> Vec<u8> {
    if r.typed_per_filter_config.len() <= 1 {
        return r.encode_to_vec();
    }
    let mut entries: Vec<(String, envoy_types::pb::google::protobuf::Any)> =
        r.typed_per_filter_config.drain().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = r.encode_to_vec();
    for (k, v) in entries {
        let value = v.encode_to_vec();
        let mut entry = Vec::with_capacity(k.len() + value.len() + 2 * encoded_len_varint(value.len() as u64));
        length_delimited(&mut entry, 1, k.as_bytes());
        length_delimited(&mut entry, 2, &value);
        length_delimited(&mut out, ROUTE_TYPED_PER_FILTER_CONFIG_TAG, &entry);
    }
    out
}

/// Splits an outbound route name: `"9080"` (shared per port) or `"<host>:9080"` (one sniffed
/// service). `None` for names Sailplane never generates.
fn parse_route_name(name: &str) -> Option<(u16, Option<&str>)> {
    match name.rsplit_once(':') {
        None => name.parse().ok().map(|p| (p, None)),
        Some((host, port)) => port.parse().ok().map(|p| (p, Some(host))),
    }
}

/// The route configuration `name` for the proxy. Unknown names get an empty configuration, as
/// istiod answers them (Envoy would otherwise wait for it).
pub fn outbound_route_config(ctx: &Ctx<'_>, name: &str) -> RouteConfiguration {
    let Some((port, sniffed_host)) = parse_route_name(name) else {
        return RouteConfiguration {
            name: name.to_string(),
            validate_clusters: Some(BoolValue { value: false }),
            ..Default::default()
        };
    };
    let mut vhosts = outbound_vhosts(ctx, port);
    match sniffed_host {
        Some(host) => {
            // Only the virtual host of the sniffed service; it alone is on this listener, so any
            // authority matches.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let wanted = names::vhost(host, port);
            vhosts.retain(|vh| vh.name == wanted);
            if vhosts.len() == 1 {
                vhosts[0].domains = vec!["*".to_string()];
            }
        }
        None => {
            vhosts = sorted_by_name(vhosts);
            vhosts.push(catch_all_vhost(ctx));
        }
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vhosts,
        validate_clusters: Some(BoolValue { value: false }),
        max_direct_response_body_size_bytes: Some(UInt32Value { value: MAX_DIRECT_RESPONSE_BODY_BYTES }),
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

/// Virtual hosts sorted by name. A `VirtualHost` is large: sorting positions and moving each host
/// once is much cheaper than a sort that moves hosts around.
pub(crate) fn sorted_by_name(v: Vec<VirtualHost>) -> Vec<VirtualHost> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|a, b| v[*a].name.cmp(&v[*b].name));
    let mut slots: Vec<Option<VirtualHost>> = v.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Ports of a service a sidecar routes as HTTP (declared HTTP or sniffed).
fn http_or_sniffed(p: &ServicePort) -> bool {
    p.protocol.is_http() || p.protocol == crate::model::Protocol::Unspecified
}

/// Virtual hosts one VirtualService contributes to a port's route configuration.
struct Wrapper<'a> {
    /// Hosts of the VirtualService outside the registry.
    hosts: Vec<&'a str>,
    /// Registry services it names with an HTTP or sniffed port equal to the listener port.
    services: Vec<&'a Service>,
    routes: Vec<Route>,
}

/// For each service a wildcard VirtualService host matches: the VirtualService with the most
/// specific such host (the oldest among equal hosts), istiod's `mostSpecificWildcardVsIndex`.
fn wildcard_owners<'a>(ctx: &Ctx<'a>) -> HashMap<&'a str, *const VirtualServiceConfig> {
    let mut by_host: HashMap<&'a str, &'a VirtualServiceConfig> = HashMap::new();
    for vs in &ctx.virtual_services {
        for h in vs.spec.hosts.iter().filter(|h| host::is_wildcard(h)) {
            by_host.entry(h.as_str()).or_insert(*vs);
        }
    }
    let mut out = HashMap::new();
    if by_host.is_empty() {
        return out;
    }
    for svc in &ctx.services {
        if let Some(h) = host::most_specific(&svc.hostname, by_host.keys().copied()) {
            out.insert(svc.hostname.as_str(), by_host[h] as *const VirtualServiceConfig);
        }
    }
    out
}

/// Virtual hosts of every visible service with an HTTP or sniffed port `port`, VirtualService
/// ones first (oldest VirtualService first), with names and domains already claimed removed.
fn outbound_vhosts(ctx: &Ctx<'_>, port: u16) -> Vec<VirtualHost> {
    let mesh = [MESH_GATEWAY];
    let opts = RouteOpts { listen_port: port, gateway_names: &mesh, is_tls: false };
    let owners = wildcard_owners(ctx);
    let mut covered: HashSet<&str, Xxh3DefaultBuilder> = HashSet::default();
    let mut wrappers: Vec<Wrapper<'_>> = Vec::new();
    for vs in &ctx.virtual_services {
        let routes = http_route::virtual_service_routes(ctx, vs, &opts);
        if routes.is_empty() {
            continue;
        }
        let mut hosts = Vec::new();
        let mut services: Vec<&Service> = Vec::new();
        for h in &vs.spec.hosts {
            if !host::is_wildcard(h) {
                match ctx.service(h) {
                    Some(s) => services.push(s),
                    None => hosts.push(h.as_str()),
                }
                continue;
            }
            let mut found = false;
            for svc in &ctx.services {
                if !host::matches(&svc.hostname, h) {
                    continue;
                }
                found = true;
                if owners.get(svc.hostname.as_str()).copied() == Some(*vs as *const VirtualServiceConfig) {
                    services.push(svc);
                }
            }
            if !found {
                hosts.push(h.as_str());
            }
        }
        let mut any_http_port = false;
        let mut on_port = Vec::new();
        for svc in services {
            let http: Vec<&ServicePort> = svc.ports.iter().filter(|p| http_or_sniffed(p)).collect();
            if http.is_empty() {
                continue;
            }
            any_http_port = true;
            covered.insert(svc.hostname.as_str());
            if http.iter().any(|p| p.port == port) {
                on_port.push(svc);
            }
        }
        // Hosts outside the registry ride along with the VirtualService's services on their ports;
        // a VirtualService naming no registry service with an HTTP port lands on port 80 only (as
        // in istiod).
        let applies = if any_http_port { !on_port.is_empty() } else { port == 80 };
        if !applies {
            continue;
        }
        wrappers.push(Wrapper { hosts, services: on_port, routes });
    }

    let defaults: Vec<(&Service, &ServicePort)> = ctx
        .services
        .iter()
        .filter(|s| !covered.contains(s.hostname.as_str()))
        .filter_map(|s| s.port(port).filter(|p| http_or_sniffed(p)).map(|p| (*s, p)))
        .collect();

    // Hosts that are real FQDNs: an expanded short name equal to one of them must not shadow it.
    // (istiod also lists `<host>:<port>` here, which no expanded short name can equal.)
    let mut known_fqdn: HashSet<&str, Xxh3DefaultBuilder> = HashSet::default();
    known_fqdn.extend(wrappers.iter().flat_map(|w| w.services.iter().map(|s| s.hostname.as_str())));
    known_fqdn.extend(defaults.iter().map(|(s, _)| s.hostname.as_str()));
    let mut b = VhostBuilder {
        proxy_ns: &ctx.proxy.namespace,
        port,
        names: HashSet::default(),
        claimed: HashSet::with_capacity_and_hasher(defaults.len() * 5, Xxh3DefaultBuilder::new()),
        known_fqdn,
        out: Vec::with_capacity(defaults.len() + wrappers.len()),
    };
    for w in wrappers {
        let targets: Vec<(&str, Option<&Service>)> = w
            .hosts
            .iter()
            .map(|h| (*h, None))
            .chain(w.services.iter().map(|s| (s.hostname.as_str(), Some(*s))))
            .collect();
        // The routes are cloned for every virtual host but the last, which takes them.
        let mut routes = Some(w.routes);
        let last = targets.len().saturating_sub(1);
        for (i, (h, svc)) in targets.into_iter().enumerate() {
            b.push(h, svc, || {
                if i == last { routes.take().unwrap_or_default() } else { routes.clone().unwrap_or_default() }
            });
        }
    }
    for (svc, sp) in defaults {
        b.push(&svc.hostname, Some(svc), || service_vhost_routes(ctx, svc, sp));
    }
    b.out
}

/// Builds virtual hosts, dropping duplicate names and domains (istiod's `dedupeDomains`).
struct VhostBuilder<'b> {
    proxy_ns: &'b str,
    port: u16,
    names: HashSet<String, Xxh3DefaultBuilder>,
    claimed: HashSet<String, Xxh3DefaultBuilder>,
    known_fqdn: HashSet<&'b str, Xxh3DefaultBuilder>,
    out: Vec<VirtualHost>,
}

impl VhostBuilder<'_> {
    fn push(&mut self, hostname: &str, svc: Option<&Service>, routes: impl FnOnce() -> Vec<Route>) {
        let name = names::vhost(hostname, self.port);
        if self.names.contains(&name) {
            return;
        }
        self.names.insert(name.clone());
        let (domains, alt) = match svc {
            Some(s) => vhost_domains(s, self.proxy_ns),
            None => (vec![ipv6_compliant(hostname)], Vec::new()),
        };
        let mut kept = Vec::with_capacity(domains.len());
        for d in domains {
            // Hostnames are lowercase already (ServiceEntry hosts are lowered when read); only
            // allocate for the rare mixed-case domain.
            let lower = if d.bytes().any(|b| b.is_ascii_uppercase()) { d.to_ascii_lowercase() } else { d.clone() };
            if self.claimed.contains(&lower) || (alt.contains(&d) && self.known_fqdn.contains(d.as_str())) {
                continue;
            }
            self.claimed.insert(lower);
            kept.push(d);
        }
        if kept.is_empty() {
            return;
        }
        self.out.push(VirtualHost {
            name,
            domains: kept,
            routes: routes(),
            include_request_attempt_count: true,
            ..Default::default()
        });
    }
}

/// Brackets IPv6 literals, as Host headers carry them.
fn ipv6_compliant(h: &str) -> String {
    if h.contains(':') { format!("[{h}]") } else { h.to_string() }
}

/// Domains of a service's virtual host seen from a proxy in `proxy_ns` (ports are not appended:
/// route configurations set `ignore_port_in_host_matching`), and the subset of them that are
/// expanded short names.
///
/// `reviews.default.svc.cluster.local` from `default`: the FQDN, `reviews`, `reviews.default.svc`,
/// `reviews.default`; from another namespace: the FQDN, `reviews.default`, `reviews.default.svc`.
/// Headless Kubernetes services add `*.`-prefixed forms (pods are addressed by name); then the VIPs.
pub fn vhost_domains(svc: &Service, proxy_ns: &str) -> (Vec<String>, Vec<String>) {
    let host = svc.hostname.as_str();
    let alt = alt_hosts(host, proxy_ns);
    let mut domains = Vec::with_capacity(2 + alt.len() * 2 + svc.addresses.len());
    domains.push(ipv6_compliant(host));
    domains.extend(alt.iter().cloned());
    if svc.is_headless_kubernetes() {
        let n = domains.len();
        for i in 0..n {
            let wild = format!("*.{}", domains[i]);
            domains.push(wild);
        }
    }
    for a in &svc.addresses {
        // CIDR "addresses" of ServiceEntries are not Host header values.
        if !a.is_empty() && a != names::WILDCARD_ADDRESS && !a.contains('/') {
            domains.push(ipv6_compliant(a));
        }
    }
    (domains, alt)
}

/// Short names of a Kubernetes-style host relative to the proxy's namespace (istiod's
/// `generateAltVirtualHostsForKubernetesService`). Hosts outside `.svc.<cluster domain>` have none:
/// expanding them could collide with real service names.
fn alt_hosts(host: &str, proxy_ns: &str) -> Vec<String> {
    let in_cluster = host.strip_suffix(crate::model::CLUSTER_DOMAIN).is_some_and(|h| h.ends_with(".svc."));
    if !in_cluster {
        return Vec::new();
    }
    let Some(ih) = host.find(".svc.") else { return Vec::new() };
    let Some(ns) = host.find('.') else { return Vec::new() };
    if ih == 0 || ns + 1 > ih {
        return Vec::new();
    }
    let name_ns = &host[..ih];
    if &host[ns + 1..ih] == proxy_ns {
        vec![host[..ns].to_string(), format!("{name_ns}.svc"), name_ns.to_string()]
    } else {
        vec![name_ns.to_string(), format!("{name_ns}.svc")]
    }
}

/// The `default` route of a service without a VirtualService (with the hash policy of its
/// DestinationRule's consistent hashing, if any).
pub fn service_vhost_routes(ctx: &Ctx<'_>, svc: &Service, port: &ServicePort) -> Vec<Route> {
    let mut r = default_outbound_route(
        &names::outbound_cluster(port.port, "", &svc.hostname),
        &names::trace_operation(&svc.hostname, port.port),
    );
    if let Some(h) = super::http::hash_policy::service_hash(ctx, svc, port.port)
        && let Some(Action::Route(a)) = r.action.as_mut()
    {
        a.hash_policy.push(h);
    }
    vec![r]
}

fn match_all() -> Option<RouteMatch> {
    Some(RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".to_string())), ..Default::default() })
}

/// The `default` route of a service without a VirtualService: everything to its cluster, no
/// timeout, Istio's default retries.
#[allow(deprecated)]
pub fn default_outbound_route(cluster: &str, operation: &str) -> Route {
    Route {
        name: names::DEFAULT_ROUTE.to_string(),
        r#match: match_all(),
        decorator: Some(Decorator { operation: operation.to_string(), ..Default::default() }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
            timeout: secs(0),
            retry_policy: Some(super::http::retry::default_retry_policy(false)),
            // istiod still uses the deprecated field: its replacement regressed gRPC timeouts.
            max_grpc_timeout: secs(0),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The inbound route of a target port: everything to `inbound|<port>||`, no timeout, retried only
/// when the connection to the app was reset before the request went out.
pub fn default_inbound_route(cluster: &str, operation: &str) -> Route {
    Route {
        name: names::DEFAULT_ROUTE.to_string(),
        r#match: match_all(),
        decorator: Some(Decorator { operation: operation.to_string(), ..Default::default() }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
            timeout: secs(0),
            max_stream_duration: Some(MaxStreamDuration {
                max_stream_duration: secs(0),
                grpc_timeout_header_max: secs(0),
                ..Default::default()
            }),
            retry_policy: Some(RetryPolicy {
                retry_on: "reset-before-request".to_string(),
                num_retries: Some(UInt32Value { value: 2 }),
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The inline route configuration of an inbound HTTP chain: named after the cluster, one virtual
/// host `inbound|http|<servicePort>` matching every authority.
pub fn inbound_route_config(cluster: &str, service_port: u16, host: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: cluster.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: names::inbound_vhost(service_port),
            domains: vec!["*".to_string()],
            routes: vec![default_inbound_route(cluster, &names::trace_operation(host, service_port))],
            ..Default::default()
        }],
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// The last virtual host of a shared route configuration: unknown authorities go to
/// `PassthroughCluster` (ALLOW_ANY) or get a 502 (REGISTRY_ONLY).
#[allow(deprecated)]
pub fn catch_all_vhost(ctx: &Ctx<'_>) -> VirtualHost {
    match ctx.outbound_policy {
        OutboundTrafficPolicy::AllowAny => VirtualHost {
            name: names::ALLOW_ANY_VHOST.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: names::ALLOW_ANY_VHOST.to_string(),
                r#match: match_all(),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(names::PASSTHROUGH_CLUSTER.to_string())),
                    timeout: secs(0),
                    max_grpc_timeout: secs(0),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            include_request_attempt_count: true,
            ..Default::default()
        },
        OutboundTrafficPolicy::RegistryOnly => VirtualHost {
            name: names::BLOCK_ALL_VHOST.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![Route {
                name: names::BLOCK_ALL_VHOST.to_string(),
                r#match: match_all(),
                action: Some(Action::DirectResponse(DirectResponseAction { status: 502, ..Default::default() })),
                ..Default::default()
            }],
            include_request_attempt_count: true,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;

    use super::*;
    use crate::model::{Location, Protocol, Resolution, ServiceOrigin};

    fn svc(host: &str, addresses: &[&str], resolution: Resolution, origin: ServiceOrigin) -> Service {
        Service {
            hostname: host.into(),
            namespace: "default".into(),
            name: host.split('.').next().unwrap().into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 9080,
                protocol: Protocol::Http,
                target_port: None,
                target_port_name: None,
            }],
            resolution,
            location: Location::MeshInternal,
            origin,
            selector: None,
            endpoints: vec![],
            service_accounts: Default::default(),
            export_to: Default::default(),
            created: String::new(),
        }
    }

    #[rstest]
    #[case::same_namespace("reviews.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, "default",
        &["reviews.default.svc.cluster.local", "reviews", "reviews.default.svc", "reviews.default", "10.0.0.1"])]
    #[case::other_namespace("reviews.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, "prod",
        &["reviews.default.svc.cluster.local", "reviews.default", "reviews.default.svc", "10.0.0.1"])]
    #[case::headless("db.default.svc.cluster.local", &[], Resolution::Passthrough, "prod",
        &["db.default.svc.cluster.local", "db.default", "db.default.svc",
          "*.db.default.svc.cluster.local", "*.db.default", "*.db.default.svc"])]
    #[case::external("api.example.com", &["240.0.0.1", "10.0.0.0/8"], Resolution::Dns, "default",
        &["api.example.com", "240.0.0.1"])]
    #[case::ipv6_vip("a.default.svc.cluster.local", &["fd00::1"], Resolution::Static, "x",
        &["a.default.svc.cluster.local", "a.default", "a.default.svc", "[fd00::1]"])]
    fn domains(
        #[case] host: &str,
        #[case] addrs: &[&str],
        #[case] resolution: Resolution,
        #[case] proxy_ns: &str,
        #[case] want: &[&str],
    ) {
        let origin =
            if host.ends_with(".svc.cluster.local") { ServiceOrigin::Kubernetes } else { ServiceOrigin::ServiceEntry };
        let (got, _) = vhost_domains(&svc(host, addrs, resolution, origin), proxy_ns);
        assert_eq!(got, want);
    }

    #[rstest]
    #[case("9080", Some((9080, None)))]
    #[case("a.b.svc.cluster.local:8000", Some((8000, Some("a.b.svc.cluster.local"))))]
    #[case("http_proxy", None)]
    fn route_names(#[case] name: &str, #[case] want: Option<(u16, Option<&str>)>) {
        assert_eq!(parse_route_name(name), want);
    }

    #[test]
    fn routes_with_several_filter_configs_encode_identically() {
        use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
        use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
        use envoy_types::pb::google::protobuf::Any;
        let rc = || {
            let mut r = default_outbound_route("outbound|80||a", "a:80/*");
            for name in ["envoy.filters.http.fault", "envoy.filters.http.cors", "z.filter", "a.filter"] {
                let any = if name.contains("cors") {
                    super::super::any(&CorsPolicy::default())
                } else {
                    super::super::any(&HttpFault::default())
                };
                r.typed_per_filter_config.insert(name.to_string(), any);
            }
            RouteConfiguration {
                name: "80".into(),
                virtual_hosts: vec![VirtualHost {
                    name: "a:80".into(),
                    domains: vec!["a".into()],
                    routes: vec![r.clone(), default_outbound_route("outbound|80||b", "b:80/*")],
                    ..Default::default()
                }],
                ..Default::default()
            }
        };
        let mut first = ResourceSet::new();
        add_route_configuration(&mut first, rc());
        for _ in 0..8 {
            let mut again = ResourceSet::new();
            add_route_configuration(&mut again, rc());
            assert_eq!(again, first);
        }
        // The hand-written bytes decode to the same configuration.
        let r = first.get(TypeUrl::Route, "80").unwrap();
        let any = Any::decode(r.any.clone()).unwrap();
        let decoded = RouteConfiguration::decode(any.value.as_slice()).unwrap();
        assert_eq!(decoded, rc());
    }

    /// A route whose `typed_per_filter_config` map has several keys, the map built anew (so with a
    /// new hash order) for every encoding: the bytes and the version never change.
    #[test]
    fn per_filter_config_maps_encode_to_the_same_bytes_and_version() {
        use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
        use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
        let rc = || {
            let mut r = default_outbound_route("outbound|80||a", "a:80/*");
            r.typed_per_filter_config = HashMap::new();
            for name in [super::super::http::fault::FAULT_FILTER, super::super::http::cors::CORS_FILTER, "x.b", "x.a"] {
                let any = if name.contains("cors") {
                    super::super::any(&CorsPolicy { allow_methods: "GET".into(), ..Default::default() })
                } else {
                    super::super::any(&HttpFault::default())
                };
                r.typed_per_filter_config.insert(name.to_string(), any);
            }
            RouteConfiguration {
                name: "80".into(),
                virtual_hosts: vec![VirtualHost { name: "a:80".into(), routes: vec![r], ..Default::default() }],
                ..Default::default()
            }
        };
        let encode = || {
            let mut set = ResourceSet::new();
            add_route_configuration(&mut set, rc());
            set.get(TypeUrl::Route, "80").unwrap().as_ref().clone()
        };
        let first = encode();
        for _ in 0..50 {
            let again = encode();
            assert_eq!(again.any, first.any);
            assert_eq!(again.version, first.version);
        }
        // The control: prost alone writes such a map in the order of each instance.
        let plain: std::collections::HashSet<Vec<u8>> = (0..50).map(|_| rc().encode_to_vec()).collect();
        assert!(plain.len() > 1, "prost's map encoding no longer varies; the hand-written path may be unneeded");
    }

    #[test]
    fn default_route_matches_istio() {
        let r = default_outbound_route("outbound|80||a", "a:80/*");
        assert_eq!(r.name, "default");
        let Some(Action::Route(a)) = r.action else { panic!() };
        let p = a.retry_policy.unwrap();
        assert_eq!(p.num_retries.unwrap().value, 2);
        assert_eq!(p.host_selection_retry_max_attempts, 5);
        assert!(p.retriable_status_codes.is_empty());
        assert_eq!(a.timeout.unwrap().seconds, 0);
    }
}
