//! Per-type builders: one proxy's listeners, routes, clusters and endpoints.
//!
//! [`build`] runs the builders in the order Envoy consumes their output (CDS, EDS, LDS, RDS). Each
//! builder makes prost structs for one resource at a time and encodes it once into the
//! [`ResourceSet`]; nothing keeps structs around.
//!
//! The service-discovery slice lives here: default clusters, endpoints, per-port listeners, default
//! routes. Routing features (VirtualService, DestinationRule, mTLS) patch in at marked seams:
//! [`route::service_vhost_routes`] (routes of a service's virtual host),
//! [`cluster::outbound_cluster`] (traffic policy), [`listener::InboundTls`] (server TLS).

pub mod bootstrap;
pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod route;

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address, config_source, socket_address,
};
use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use crate::model::{MeshConfig, NodeType, ProxyProfile, Service, ServicePort, World};
use crate::resources::ResourceSet;

pub use bootstrap::{BootstrapError, static_bootstrap};

/// Everything a builder needs about one translation: the world, the proxy, and the services that
/// proxy can see (oldest first, then by hostname, the order istiod resolves conflicts in).
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The mesh.
    pub world: &'a World,
    /// The proxy being configured.
    pub proxy: &'a ProxyProfile,
    /// Mesh settings.
    pub mesh: &'a MeshConfig,
    /// Services visible from the proxy's namespace, oldest first, then by hostname.
    pub services: Vec<&'a Service>,
}

impl<'a> Ctx<'a> {
    /// The context for `proxy` in `world`.
    pub fn new(world: &'a World, proxy: &'a ProxyProfile) -> Self {
        let mut services: Vec<&Service> = world.visible_services(&proxy.namespace).map(|s| s.as_ref()).collect();
        // istiod visits services oldest first (then by hostname); conflicts go to the first. The
        // world is sorted by hostname, so a stable sort on the timestamp alone is enough (and close
        // to linear when timestamps are equal or absent).
        services.sort_by(|a, b| a.created.cmp(&b.created));
        Ctx {
            world,
            proxy,
            mesh: &world.mesh,
            services,
        }
    }

    /// Whether the proxy is an application sidecar.
    pub fn is_sidecar(&self) -> bool {
        self.proxy.node_type == NodeType::Sidecar
    }

    /// The proxy's own service ports ("service targets"): ports of services in its namespace whose
    /// selector matches its labels, one per target port (the oldest service, then the first by
    /// hostname, wins, as istiod keeps the first), sorted by target port.
    pub fn inbound_targets(&self) -> Vec<InboundTarget<'a>> {
        let mut by_port: BTreeMap<u16, InboundTarget<'a>> = BTreeMap::new();
        if self.proxy.labels.is_empty() {
            return Vec::new();
        }
        let mut own: Vec<&'a Service> = self
            .world
            .services
            .iter()
            .map(|s| s.as_ref())
            .filter(|svc| {
                svc.namespace == self.proxy.namespace
                    && svc
                        .selector
                        .as_ref()
                        .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| self.proxy.labels.get(k) == Some(v)))
            })
            .collect();
        own.sort_by(|a, b| a.created.cmp(&b.created));
        for svc in own {
            for port in &svc.ports {
                let Some(target_port) = self.own_target_port(svc, port) else { continue };
                match by_port.get_mut(&target_port) {
                    Some(existing) => existing.also.push((svc, port)),
                    None => {
                        by_port.insert(
                            target_port,
                            InboundTarget {
                                service: svc,
                                port,
                                target_port,
                                also: Vec::new(),
                            },
                        );
                    }
                }
            }
        }
        by_port.into_values().collect()
    }

    /// The port the proxy's own workload serves `port` of `svc` on.
    fn own_target_port(&self, svc: &Service, port: &ServicePort) -> Option<u16> {
        if let Some(tp) = port.target_port {
            return Some(tp);
        }
        let Some(name) = &port.target_port_name else {
            return Some(port.port);
        };
        // A named target port resolves per pod: use an endpoint or pod that looks like this proxy.
        let same = |labels: &crate::model::Labels, ns: &str| ns == self.proxy.namespace && *labels == self.proxy.labels;
        svc.endpoints
            .iter()
            .find(|e| same(&e.labels, &e.namespace))
            .and_then(|e| e.ports.get(&port.key()).copied())
            .or_else(|| {
                self.world
                    .workloads
                    .values()
                    .find(|w| same(&w.labels, &w.namespace))
                    .and_then(|w| w.named_ports.get(name).copied())
            })
    }
}

/// One inbound target port of the proxy's own workload.
#[derive(Debug, Clone)]
pub struct InboundTarget<'a> {
    /// The service the chain and cluster are built for.
    pub service: &'a Service,
    /// Its port.
    pub port: &'a ServicePort,
    /// The port the workload listens on.
    pub target_port: u16,
    /// Other service ports reaching the same target port (telemetry only).
    pub also: Vec<(&'a Service, &'a ServicePort)>,
}

/// Translates the world for one proxy.
pub fn build(world: &World, proxy: &ProxyProfile) -> ResourceSet {
    let ctx = Ctx::new(world, proxy);
    let mut set = ResourceSet::new();
    cluster::build_clusters(&ctx, &mut set);
    endpoint::build_endpoints(&ctx, &mut set);
    if ctx.is_sidecar() {
        let route_names = listener::build_listeners(&ctx, &mut set);
        route::build_routes(&ctx, &route_names, &mut set);
    }
    set
}

/// Packs a message into an `Any`.
pub(crate) fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// A whole-second duration.
pub(crate) fn secs(s: i64) -> Option<Duration> {
    Some(Duration { seconds: s, nanos: 0 })
}

/// A millisecond duration.
pub(crate) fn millis(ms: i64) -> Option<Duration> {
    Some(Duration {
        seconds: ms / 1000,
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    })
}

/// Istio's mesh-wide default `connectTimeout`.
pub(crate) const CONNECT_TIMEOUT_SECS: i64 = 10;

/// A TCP socket address.
pub(crate) fn socket_addr(ip: &str, port: u16) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    })
}

/// `{ads: {}, initial_fetch_timeout: 0s, resource_api_version: V3}`: how Istio points EDS and RDS
/// at the ADS stream. A zero fetch timeout makes Envoy wait for the answer instead of warming
/// without it.
pub(crate) fn ads_config_source() -> Option<ConfigSource> {
    Some(ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        initial_fetch_timeout: secs(0),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    })
}

/// Protobuf messages with sorted maps.
///
/// The envoy-types structs keep `Metadata.filter_metadata` and `Struct.fields` in `HashMap`s, whose
/// encoding order varies between map instances. Metadata with more than one key is built with these
/// wire-compatible mirrors instead and appended as raw fields
/// ([`ResourceSet::add_with_fields`]), so identical config encodes to identical bytes.
pub mod wire {
    use std::collections::BTreeMap;

    /// `envoy.config.core.v3.Metadata` (only `filter_metadata`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metadata {
        /// Filter metadata by filter name.
        #[prost(btree_map = "string, message", tag = "1")]
        pub filter_metadata: BTreeMap<String, Struct>,
    }

    /// `google.protobuf.Struct`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Struct {
        /// Fields by name.
        #[prost(btree_map = "string, message", tag = "1")]
        pub fields: BTreeMap<String, Value>,
    }

    /// `google.protobuf.ListValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListValue {
        /// Items.
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<Value>,
    }

    /// `google.protobuf.Value`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Value {
        /// The value.
        #[prost(oneof = "Kind", tags = "2, 3, 4, 5, 6")]
        pub kind: Option<Kind>,
    }

    /// `google.protobuf.Value.kind` (without `null_value`, which Sailplane never writes).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// A number.
        #[prost(double, tag = "2")]
        Number(f64),
        /// A string.
        #[prost(string, tag = "3")]
        String(String),
        /// A boolean.
        #[prost(bool, tag = "4")]
        Bool(bool),
        /// A nested struct.
        #[prost(message, tag = "5")]
        Struct(Struct),
        /// A list.
        #[prost(message, tag = "6")]
        List(ListValue),
    }

    impl Value {
        /// A string value.
        pub fn string(s: impl Into<String>) -> Value {
            Value { kind: Some(Kind::String(s.into())) }
        }
        /// A boolean value.
        pub fn bool(b: bool) -> Value {
            Value { kind: Some(Kind::Bool(b)) }
        }
        /// A struct value.
        pub fn structure(fields: BTreeMap<String, Value>) -> Value {
            Value { kind: Some(Kind::Struct(Struct { fields })) }
        }
        /// A list value.
        pub fn list(values: Vec<Value>) -> Value {
            Value { kind: Some(Kind::List(ListValue { values })) }
        }
    }

    /// Encodes `meta` as field `tag` of an enclosing message (for [`crate::ResourceSet::add_with_fields`]).
    pub fn field(tag: u32, meta: &Metadata) -> Vec<u8> {
        let mut buf = Vec::new();
        prost::encoding::message::encode(tag, meta, &mut buf);
        buf
    }
}

/// A `wire::Struct` from string pairs.
pub(crate) fn string_struct<'s>(pairs: impl IntoIterator<Item = (&'s str, String)>) -> wire::Value {
    wire::Value::structure(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), wire::Value::string(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::model::{Endpoint, InterceptionMode, Location, Protocol, Resolution, ServiceOrigin};
    use crate::resources::TypeUrl;

    /// A service with one port per `(name, number, protocol)`.
    pub(crate) fn mk_service(host: &str, addresses: &[&str], resolution: Resolution, ports: &[(&str, u16, Protocol)]) -> Service {
        let kube = host.ends_with(".svc.cluster.local");
        Service {
            hostname: host.into(),
            namespace: if kube { host.split('.').nth(1).unwrap().into() } else { "default".into() },
            name: host.split('.').next().unwrap().into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ports: ports
                .iter()
                .map(|(n, p, proto)| ServicePort {
                    name: n.to_string(),
                    port: *p,
                    protocol: *proto,
                    target_port: None,
                    target_port_name: None,
                })
                .collect(),
            resolution,
            location: if kube { Location::MeshInternal } else { Location::MeshExternal },
            origin: if kube { ServiceOrigin::Kubernetes } else { ServiceOrigin::ServiceEntry },
            selector: None,
            endpoints: Vec::new(),
            service_accounts: Default::default(),
            export_to: Default::default(),
            created: String::new(),
        }
    }

    pub(crate) fn mk_world(services: Vec<Service>) -> World {
        let mut services: Vec<Arc<Service>> = services.into_iter().map(Arc::new).collect();
        services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        World {
            services,
            ..World::default()
        }
    }

    pub(crate) fn sidecar(ns: &str) -> ProxyProfile {
        ProxyProfile {
            namespace: ns.into(),
            ..ProxyProfile::default()
        }
    }

    #[test]
    fn identical_input_gives_identical_versions() {
        // Cluster metadata has several keys; prost would encode HashMaps in varying order.
        let mut svc = mk_service("a.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, &[("http", 80, Protocol::Http)]);
        svc.endpoints.push(Endpoint {
            address: "10.1.0.1".into(),
            ports: [("http".to_string(), 8080)].into_iter().collect(),
            labels: [("security.istio.io/tlsMode".to_string(), "istio".to_string())].into_iter().collect(),
            service_account: Some("sa".into()),
            namespace: "default".into(),
            weight: 0,
            locality: None,
            ready: true,
        });
        let ext = mk_service("api.example.com", &[], Resolution::Dns, &[("https", 443, Protocol::Tls)]);
        let world = mk_world(vec![svc, ext]);
        let first = build(&world, &sidecar("default"));
        for _ in 0..5 {
            assert_eq!(build(&world, &sidecar("default")), first);
        }
        assert!(first.get(TypeUrl::Cluster, "outbound|443||api.example.com").is_some());
        assert!(first.get(TypeUrl::Endpoint, "outbound|80||a.default.svc.cluster.local").is_some());
    }

    #[test]
    fn gateways_get_clusters_and_endpoints_only() {
        let world = mk_world(vec![mk_service("a.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, &[("http", 80, Protocol::Http)])]);
        let proxy = ProxyProfile {
            node_type: NodeType::Router,
            ..sidecar("istio-system")
        };
        let set = build(&world, &proxy);
        assert!(set.of(TypeUrl::Listener).is_empty());
        assert!(set.of(TypeUrl::Route).is_empty());
        let clusters: Vec<&str> = set.of(TypeUrl::Cluster).keys().map(String::as_str).collect();
        assert_eq!(clusters, vec!["BlackHoleCluster", "outbound|80||a.default.svc.cluster.local"]);
        assert_eq!(set.of(TypeUrl::Endpoint).len(), 1);
    }

    #[test]
    fn interception_none_has_no_virtual_listeners() {
        let world = mk_world(vec![mk_service("a.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, &[("http", 80, Protocol::Http)])]);
        let proxy = ProxyProfile {
            interception: InterceptionMode::None,
            ..sidecar("default")
        };
        let set = build(&world, &proxy);
        let listeners: Vec<&str> = set.of(TypeUrl::Listener).keys().map(String::as_str).collect();
        assert_eq!(listeners, vec!["127.0.0.1_80"]);
        assert!(set.get(TypeUrl::Route, "80").is_some());
    }

    #[test]
    fn every_rds_name_referenced_has_a_route_configuration() {
        let world = mk_world(vec![
            mk_service("a.default.svc.cluster.local", &["10.0.0.1"], Resolution::Static, &[("http", 80, Protocol::Http), ("", 8000, Protocol::Unspecified)]),
            mk_service("b.example.com", &[], Resolution::Dns, &[("web", 8000, Protocol::Unspecified)]),
        ]);
        let set = build(&world, &sidecar("default"));
        let routes: Vec<&str> = set.of(TypeUrl::Route).keys().map(String::as_str).collect();
        assert_eq!(routes, vec!["80", "8000", "a.default.svc.cluster.local:8000"]);
    }
}
