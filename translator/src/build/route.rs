//! Routes (RDS): outbound route configurations by name, and the inline inbound route config.
//!
//! Outbound listeners of HTTP ports share one route configuration per port (`"9080"`) holding a
//! virtual host per service on that port (`<fqdn>:<port>`) and a last catch-all virtual host
//! (`allow_any` or `block_all`). A sniffed port with its own listener (`<VIP>_<port>`) gets a
//! route configuration named `<fqdn>:<port>` holding only that service, matching any authority.

use std::collections::{BTreeSet, HashSet};

use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    retry_policy::{self, RetryHostPredicate},
    route::Action,
    route_action::{ClusterSpecifier, MaxStreamDuration},
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use super::{Ctx, any, secs};
use crate::model::{OutboundTrafficPolicy, Service, ServicePort};
use crate::names;
use crate::resources::{ResourceSet, TypeUrl};

/// Istio's `max_direct_response_body_size_bytes` (1 MiB, the limit its webhook enforces).
const MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 1024 * 1024;

/// Adds the route configurations named by the proxy's listeners.
pub fn build_routes(ctx: &Ctx<'_>, route_names: &BTreeSet<String>, set: &mut ResourceSet) {
    for name in route_names {
        let rc = outbound_route_config(ctx, name);
        set.add(TypeUrl::Route, name.clone(), &rc);
    }
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
            vhosts.retain(|vh| vh.domains.iter().any(|d| d == name || d == host));
            if vhosts.len() == 1 {
                vhosts[0].domains = vec!["*".to_string()];
            }
        }
        None => {
            vhosts.sort_by(|a, b| a.name.cmp(&b.name));
            vhosts.push(catch_all_vhost(ctx));
        }
    }
    RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vhosts,
        validate_clusters: Some(BoolValue { value: false }),
        max_direct_response_body_size_bytes: Some(UInt32Value {
            value: MAX_DIRECT_RESPONSE_BODY_BYTES,
        }),
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

/// Virtual hosts of every visible service with an HTTP or sniffed port `port`, in hostname order,
/// with domains already claimed by an earlier virtual host removed.
fn outbound_vhosts(ctx: &Ctx<'_>, port: u16) -> Vec<VirtualHost> {
    let services: Vec<(&Service, &ServicePort)> = ctx
        .services
        .iter()
        .filter_map(|s| s.port(port).map(|p| (*s, p)))
        .filter(|(_, p)| p.protocol.is_http() || p.protocol == crate::model::Protocol::Unspecified)
        .collect();
    // Hosts that are real FQDNs: an expanded short name equal to one of them must not shadow it.
    // (istiod also lists `<host>:<port>` here, which no expanded short name can equal.)
    let mut known_fqdn: HashSet<&str, _> = HashSet::with_capacity_and_hasher(services.len(), Xxh3DefaultBuilder::new());
    known_fqdn.extend(services.iter().map(|(s, _)| s.hostname.as_str()));
    let mut claimed: HashSet<String, _> = HashSet::with_capacity_and_hasher(services.len() * 5, Xxh3DefaultBuilder::new());
    let mut out = Vec::with_capacity(services.len());
    for (svc, sp) in services {
        let (domains, alt) = vhost_domains(svc, &ctx.proxy.namespace);
        let mut kept = Vec::with_capacity(domains.len());
        for d in domains {
            // Hostnames are lowercase already (ServiceEntry hosts are lowered when read); only
            // allocate for the rare mixed-case domain.
            let lower = if d.bytes().any(|b| b.is_ascii_uppercase()) { d.to_ascii_lowercase() } else { d.clone() };
            if claimed.contains(&lower) || (alt.contains(&d) && known_fqdn.contains(d.as_str())) {
                continue;
            }
            claimed.insert(lower);
            kept.push(d);
        }
        if kept.is_empty() {
            continue;
        }
        out.push(VirtualHost {
            name: names::vhost(&svc.hostname, sp.port),
            domains: kept,
            routes: service_vhost_routes(ctx, svc, sp),
            include_request_attempt_count: true,
            ..Default::default()
        });
    }
    out
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
    let in_cluster = host
        .strip_suffix(crate::model::CLUSTER_DOMAIN)
        .is_some_and(|h| h.ends_with(".svc."));
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

/// Routes of a service's virtual host.
///
/// Seam for VirtualService: a service without one gets the single `default` route.
pub fn service_vhost_routes(_ctx: &Ctx<'_>, svc: &Service, port: &ServicePort) -> Vec<Route> {
    vec![default_outbound_route(
        &names::outbound_cluster(port.port, "", &svc.hostname),
        &names::trace_operation(&svc.hostname, port.port),
    )]
}

/// Istio's default retry policy: 2 retries on connection failures, refused streams and gRPC
/// `unavailable`/`cancelled`, preferring hosts not yet tried. istiod no longer retries 503s by
/// default (`EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`), but keeps `retriable-status-codes` in
/// `retry_on` so a VirtualService can add codes.
pub fn default_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".to_string(),
        num_retries: Some(UInt32Value { value: 2 }),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
                &PreviousHostsPredicate::default(),
            ))),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn match_all() -> Option<RouteMatch> {
    Some(RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
        ..Default::default()
    })
}

/// The `default` route of a service without a VirtualService: everything to its cluster, no
/// timeout, Istio's default retries.
#[allow(deprecated)]
pub fn default_outbound_route(cluster: &str, operation: &str) -> Route {
    Route {
        name: names::DEFAULT_ROUTE.to_string(),
        r#match: match_all(),
        decorator: Some(Decorator {
            operation: operation.to_string(),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.to_string())),
            timeout: secs(0),
            retry_policy: Some(default_retry_policy()),
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
        decorator: Some(Decorator {
            operation: operation.to_string(),
            ..Default::default()
        }),
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
    match ctx.mesh.outbound_traffic_policy {
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
                action: Some(Action::DirectResponse(DirectResponseAction {
                    status: 502,
                    ..Default::default()
                })),
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
        let origin = if host.ends_with(".svc.cluster.local") { ServiceOrigin::Kubernetes } else { ServiceOrigin::ServiceEntry };
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
