//! Per-Envoy-resource-type builders: one proxy's listeners, routes, clusters and endpoints.
//!
//! [`build`] runs the builders in the order Envoy consumes their output (CDS, EDS, LDS, RDS). Each
//! builder makes prost structs for one resource at a time and encodes it once into the
//! [`ResourceSet`]; nothing keeps structs around.
//!
//! Sidecars: clusters (with DestinationRule policy and subsets, [`cluster`], [`policy`]),
//! endpoints, per-port listeners (with VirtualService tcp/tls routes, [`listener`]; their HTTP
//! connection managers from [`hcm`]) and route configurations (with VirtualService http routes,
//! [`route`], [`http_route`]), scoped by the Sidecar resource ([`scope`]). Each HTTP feature (its
//! route settings and its connection-manager filter) has one file under [`http`]. Gateways (node
//! type `router`): listeners and routes from the Gateways that select them ([`gateway`]). mTLS:
//! [`tls::apply_upstream_tls`] (client TLS of clusters, auto-mTLS), [`listener::InboundTls`]
//! (server TLS of inbound chains per PeerAuthentication mode, resolved in [`crate::model::mtls`]).

pub mod bootstrap;
pub mod cluster;
pub mod endpoint;
pub mod gateway;
pub mod hcm;
pub mod http;
pub mod http_route;
pub mod listener;
pub mod policy;
pub mod route;
pub mod scope;
pub mod tls;
pub mod virtual_service;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use xxhash_rust::xxh3::Xxh3DefaultBuilder;

use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address, config_source, socket_address,
};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use crate::model::config::VirtualServiceConfig;
use crate::model::{MeshConfig, NodeType, OutboundTrafficPolicy, ProxyProfile, Service, ServicePort, World};
use crate::resources::{ResourceSet, TypeUrl};

pub use bootstrap::{BootstrapError, static_bootstrap};

/// Which side of a proxy's configuration a translation produces (see [`crate::model::classes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Everything.
    All,
    /// Sidecars: clusters, endpoints, route configurations and listeners except the inbound ones.
    /// Gateways: everything.
    Outbound,
    /// Sidecars: the `inbound|…` clusters and `virtualInbound`. Gateways: nothing.
    Inbound,
    /// Sidecars: the outbound listeners and route configurations only (what a VirtualService
    /// change rebuilds). Gateways: everything.
    Routes,
}

impl Part {
    /// Whether the outbound side is built.
    pub const fn outbound(self) -> bool {
        matches!(self, Part::All | Part::Outbound | Part::Routes)
    }

    /// Whether the inbound side is built.
    pub const fn inbound(self) -> bool {
        matches!(self, Part::All | Part::Inbound)
    }
}

/// Everything a builder needs about one translation: the world, the proxy, the services and
/// VirtualServices that proxy can see (oldest first, then by hostname, the order istiod resolves
/// conflicts in), and the DestinationRule of each visible service.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The mesh.
    pub world: &'a World,
    /// The proxy being configured.
    pub proxy: &'a ProxyProfile,
    /// The side being built.
    pub part: Part,
    /// Mesh settings.
    pub mesh: &'a MeshConfig,
    /// The proxy's Sidecar resource (sidecars only).
    pub scope: scope::Scope<'a>,
    /// What happens to traffic for unknown destinations (Sidecar resource over mesh config).
    pub outbound_policy: OutboundTrafficPolicy,
    /// Services visible from the proxy (exportTo, Sidecar imports), oldest first, then by hostname.
    pub services: Vec<&'a Service>,
    /// VirtualServices that apply to this sidecar (bound to `mesh`, visible, imported), oldest
    /// first. Empty for gateways: their VirtualServices are chosen per Gateway server.
    pub virtual_services: Vec<&'a VirtualServiceConfig>,
    /// Which of the world's VirtualServices are in `virtual_services` (by world position).
    vs_visible: Vec<bool>,
    /// Position of each service in `services`, by hostname.
    by_host: HashMap<&'a str, usize, Xxh3DefaultBuilder>,
    /// DestinationRule of each service in `services` (same positions).
    rules: Vec<Option<scope::ResolvedRule<'a>>>,
    /// Encoded upstream TLS shared by the clusters of one service.
    pub(crate) tls_cache: tls::TlsCache,
}

impl<'a> Ctx<'a> {
    /// The context for `proxy` in `world`.
    pub fn new(world: &'a World, proxy: &'a ProxyProfile) -> Self {
        Self::for_part(world, proxy, Part::All)
    }

    /// The context for building `part` of `proxy`'s configuration. The inbound side of a sidecar
    /// needs none of the visible services, VirtualServices and DestinationRules, so they are left
    /// empty for it (and found in O(1) instead of O(services)).
    pub fn for_part(world: &'a World, proxy: &'a ProxyProfile, part: Part) -> Self {
        let ns = proxy.namespace.as_str();
        let scope = scope::Scope::new(world, proxy);
        let outbound = part.outbound() || proxy.node_type == NodeType::Router;
        let mut vs_visible = vec![false; if outbound { world.config.virtual_services.len() } else { 0 }];
        let virtual_services: Vec<&'a VirtualServiceConfig> = if proxy.node_type == NodeType::Sidecar && outbound {
            world
                .config
                .index
                .mesh_virtual_services
                .iter()
                .map(|i| (*i, world.config.virtual_services[*i].as_ref()))
                .filter(|(_, vs)| vs.export_to.visible_from(ns) && scope.imports_virtual_service(vs))
                .map(|(i, vs)| {
                    vs_visible[i] = true;
                    vs
                })
                .collect()
        } else {
            Vec::new()
        };
        // With a Sidecar resource, the services its VirtualServices route to are imported too.
        let mut destinations: HashSet<&'a str, Xxh3DefaultBuilder> = HashSet::default();
        if scope.sidecar.is_some() {
            for vs in &virtual_services {
                destinations.extend(virtual_service::destination_hosts(&vs.spec));
            }
        }
        let mut services: Vec<&'a Service> = world
            .visible_services(ns)
            .filter(|_| outbound)
            .map(|s| s.as_ref())
            .filter(|s| scope.imports_service(s) || destinations.contains(s.hostname.as_str()))
            .collect();
        // istiod visits services oldest first (then by hostname); conflicts go to the first. The
        // world is sorted by hostname, so a stable sort on the timestamp alone is enough (and close
        // to linear when timestamps are equal or absent).
        services.sort_by(|a, b| a.created.cmp(&b.created));
        let mut by_host: HashMap<&'a str, usize, Xxh3DefaultBuilder> =
            HashMap::with_capacity_and_hasher(services.len(), Xxh3DefaultBuilder::new());
        for (i, s) in services.iter().enumerate() {
            by_host.insert(s.hostname.as_str(), i);
        }
        let rules = if world.config.destination_rules.is_empty() {
            Vec::new()
        } else {
            services
                .iter()
                .map(|s| scope::lookup_destination_rule(world, ns, &proxy.labels, &s.hostname, Some(&s.namespace)))
                .collect()
        };
        Ctx {
            world,
            proxy,
            part,
            mesh: &world.mesh,
            outbound_policy: scope.outbound_policy(world.mesh.outbound_traffic_policy),
            scope,
            services,
            virtual_services,
            vs_visible,
            by_host,
            rules,
            tls_cache: tls::TlsCache::default(),
        }
    }

    /// The applicable VirtualServices (see [`Ctx::virtual_services`]) with a host matching
    /// `hostname`, oldest first (istiod's `getConfigsForHost`), found through the world's host index.
    pub fn virtual_services_for_host(&self, hostname: &str) -> Vec<&'a VirtualServiceConfig> {
        let index = &self.world.config.index;
        let mut ids: Vec<usize> = index
            .virtual_services_by_host
            .get(hostname)
            .into_iter()
            .flatten()
            .copied()
            .chain(index.wildcard_virtual_services.iter().copied().filter(|i| {
                self.world.config.virtual_services[*i]
                    .spec
                    .hosts
                    .iter()
                    .any(|h| crate::model::host::matches(h, hostname))
            }))
            .filter(|i| self.vs_visible.get(*i).copied().unwrap_or(false))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|i| self.world.config.virtual_services[i].as_ref()).collect()
    }

    /// The DestinationRule of `self.services[i]`.
    pub fn service_rule(&self, i: usize) -> Option<&scope::ResolvedRule<'a>> {
        self.rules.get(i).and_then(Option::as_ref)
    }

    /// The visible service with host `hostname`.
    pub fn service(&self, hostname: &str) -> Option<&'a Service> {
        self.by_host.get(hostname).map(|i| self.services[*i])
    }

    /// The DestinationRule for destination `hostname` (visible service or not).
    pub fn destination_rule(&self, hostname: &str) -> Option<Cow<'_, scope::ResolvedRule<'a>>> {
        match self.by_host.get(hostname) {
            Some(i) => self.rules.get(*i).and_then(Option::as_ref).map(Cow::Borrowed),
            None => {
                scope::lookup_destination_rule(self.world, &self.proxy.namespace, &self.proxy.labels, hostname, None)
                    .map(Cow::Owned)
            }
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
        for svc in self.own_services() {
            for port in &svc.ports {
                let Some(target_port) = self.own_target_port(svc, port) else { continue };
                match by_port.get_mut(&target_port) {
                    Some(existing) => existing.also.push((svc, port)),
                    None => {
                        by_port
                            .insert(target_port, InboundTarget { service: svc, port, target_port, also: Vec::new() });
                    }
                }
            }
        }
        by_port.into_values().collect()
    }

    /// Services in the proxy's namespace whose selector matches its labels, oldest first.
    pub fn own_services(&self) -> Vec<&'a Service> {
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
                    && svc.selector.as_ref().is_some_and(|sel| {
                        !sel.is_empty() && sel.iter().all(|(k, v)| self.proxy.labels.get(k) == Some(v))
                    })
            })
            .collect();
        own.sort_by(|a, b| a.created.cmp(&b.created));
        own
    }

    /// The port the proxy's own workload serves `port` of `svc` on.
    pub(crate) fn own_target_port(&self, svc: &Service, port: &ServicePort) -> Option<u16> {
        if let Some(tp) = port.target_port {
            return Some(tp);
        }
        let Some(name) = &port.target_port_name else {
            return Some(port.port);
        };
        // A named target port resolves per pod: use an endpoint or pod that looks like this proxy to
        // the inbound side's selectors (its inbound class, see `model::classes`).
        let keys = crate::model::LabelKeys::of(self.world).inbound;
        let own = crate::model::classes::project(&self.proxy.labels, &keys);
        let same = |labels: &crate::model::Labels, ns: &str| {
            ns == self.proxy.namespace && crate::model::classes::project(labels, &keys) == own
        };
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
    build_part(world, proxy, Part::All).set
}

/// One side of a proxy's translated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    /// The encoded resources.
    pub set: ResourceSet,
    /// What each `ClusterLoadAssignment` in `set` was built from, so one can be rebuilt alone when
    /// only its service's endpoints change ([`endpoint::assignment`]). Shared: a patched
    /// translation keeps the list of the one it was patched from.
    pub eds: std::sync::Arc<Vec<endpoint::EdsKey>>,
}

/// Translates `part` of the configuration of `proxy`. [`build`] is `build_part(.., Part::All)`; the
/// outbound and inbound parts are disjoint and together equal it.
pub fn build_part(world: &World, proxy: &ProxyProfile, part: Part) -> Translation {
    if proxy.node_type == NodeType::Router && !part.outbound() {
        return Translation::default();
    }
    let ctx = Ctx::for_part(world, proxy, part);
    let gateway = (!ctx.is_sidecar()).then(|| gateway::merge(&ctx));
    let mut set = ResourceSet::new();
    let mut keys = Vec::new();
    let mut eds = Vec::new();
    let mut route_names = BTreeSet::new();
    // One builder per type, in push order: CDS hands EDS the clusters that need endpoints, LDS hands
    // RDS the route configurations its listeners name. The match is exhaustive on purpose: a new
    // row in the type table does not compile until it says here how it is built.
    for t in TypeUrl::ALL {
        match (t, &gateway) {
            // Clusters and endpoints of sidecars are kept from the translation being updated.
            (TypeUrl::Cluster | TypeUrl::Endpoint, None) if part == Part::Routes => {}
            (TypeUrl::Cluster, _) => {
                let sni_dnat = gateway.as_ref().is_some_and(|g| g.auto_passthrough);
                eds = cluster::build_clusters(&ctx, &mut set, sni_dnat);
            }
            (TypeUrl::Endpoint, _) => keys = endpoint::build_endpoints(&eds, &mut set),
            (TypeUrl::Listener, None) => route_names = listener::build_listeners(&ctx, &mut set),
            (TypeUrl::Listener, Some(merged)) => gateway::build_listeners(&ctx, merged, &mut set),
            (TypeUrl::Route, None) => route::build_routes(&ctx, &route_names, &mut set),
            (TypeUrl::Route, Some(merged)) => gateway::build_routes(&ctx, merged, &mut set),
            // Served per stream, from what the proxy's verified identity may read; never translated.
            (TypeUrl::Secret, _) => {}
        }
    }
    Translation { set, eds: std::sync::Arc::new(keys) }
}

/// Packs a message into an `Any`.
pub(crate) fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

/// A whole-second duration.
pub(crate) fn secs(s: i64) -> Option<Duration> {
    Some(Duration { seconds: s, nanos: 0 })
}

/// A validated duration string (`1.5s`, `100ms`) as a protobuf duration (`None` if it does not
/// parse).
pub fn proto_duration(s: &str) -> Option<Duration> {
    let d = crate::api::istio::parse_duration(s).ok()?;
    Some(Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

/// A millisecond duration.
pub(crate) fn millis(ms: i64) -> Option<Duration> {
    Some(Duration { seconds: ms / 1000, nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0) })
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

/// Hand-encoded `Metadata` / `google.protobuf.Struct` values.
///
/// The envoy-types structs keep `Metadata.filter_metadata` and `Struct.fields` in `HashMap`s, whose
/// encoding order varies between map instances. Metadata with more than one key is therefore
/// written here directly in wire format, keys in sorted order, and appended to the encoded resource
/// as a raw field ([`ResourceSet::add_with_fields`]): identical config encodes to identical bytes,
/// and writing bytes is also several times cheaper than building nested maps for prost.
pub mod wire {
    use prost::encoding::{WireType, encode_key, encode_varint};

    fn length_delimited(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(bytes.len() as u64, buf);
        buf.extend_from_slice(bytes);
    }

    /// Size of a length-delimited field with a one-byte key (field numbers below 16).
    fn field_len(len: usize) -> usize {
        1 + prost::encoding::encoded_len_varint(len as u64) + len
    }

    /// An encoded `google.protobuf.Value`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Value(Vec<u8>);

    impl Value {
        /// `string_value`.
        pub fn string(s: &str) -> Value {
            let mut b = Vec::with_capacity(s.len() + 3);
            length_delimited(&mut b, 3, s.as_bytes());
            Value(b)
        }

        /// `bool_value`.
        pub fn bool(v: bool) -> Value {
            let mut b = Vec::with_capacity(2);
            encode_key(4, WireType::Varint, &mut b);
            encode_varint(u64::from(v), &mut b);
            Value(b)
        }

        /// `struct_value` with `fields`, which must be sorted by key (checked in debug builds).
        pub fn structure(fields: &[(&str, Value)]) -> Value {
            let mut b = Vec::new();
            length_delimited(&mut b, 5, &Struct::new(fields).0);
            Value(b)
        }

        /// `list_value`.
        pub fn list(values: &[Value]) -> Value {
            let mut list = Vec::with_capacity(values.iter().map(|v| v.0.len() + 3).sum());
            for v in values {
                length_delimited(&mut list, 1, &v.0);
            }
            let mut b = Vec::with_capacity(list.len() + 4);
            length_delimited(&mut b, 6, &list);
            Value(b)
        }
    }

    /// An encoded `google.protobuf.Struct`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Struct(Vec<u8>);

    impl Struct {
        /// A struct of `fields`, which must be sorted by key (checked in debug builds).
        pub fn new(fields: &[(&str, Value)]) -> Struct {
            debug_assert!(fields.windows(2).all(|w| w[0].0 < w[1].0), "struct keys must be sorted");
            let entry_len = |k: &str, v: &Value| field_len(k.len()) + field_len(v.0.len());
            let total: usize = fields.iter().map(|(k, v)| field_len(entry_len(k, v))).sum();
            let mut b = Vec::with_capacity(total);
            for (k, v) in fields {
                encode_key(1, WireType::LengthDelimited, &mut b);
                encode_varint(entry_len(k, v) as u64, &mut b);
                length_delimited(&mut b, 1, k.as_bytes());
                length_delimited(&mut b, 2, &v.0);
            }
            Struct(b)
        }
    }

    /// `Metadata{filter_metadata}` written as field `tag` of the enclosing message. `filters` must
    /// be sorted by filter name (checked in debug builds).
    pub fn metadata_field(tag: u32, filters: &[(&str, &Struct)]) -> Vec<u8> {
        debug_assert!(filters.windows(2).all(|w| w[0].0 < w[1].0), "filter names must be sorted");
        let mut meta = Vec::new();
        let mut entry = Vec::new();
        for (name, st) in filters {
            entry.clear();
            length_delimited(&mut entry, 1, name.as_bytes());
            length_delimited(&mut entry, 2, &st.0);
            length_delimited(&mut meta, 1, &entry);
        }
        let mut out = Vec::with_capacity(meta.len() + 4);
        length_delimited(&mut out, tag, &meta);
        out
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]

        use envoy_types::pb::envoy::config::core::v3::Metadata;
        use envoy_types::pb::google::protobuf::value::Kind;
        use prost::Message;

        use super::*;

        /// Field 1 of a message is the Metadata itself.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Wrapper {
            #[prost(message, optional, tag = "1")]
            meta: Option<Metadata>,
        }

        /// Metadata with two filters of several fields each, from inputs built anew every time:
        /// the encoded resource (bytes and version) never changes and decodes to the same maps.
        #[test]
        fn metadata_maps_encode_to_the_same_bytes_and_version() {
            use std::collections::HashMap;

            use envoy_types::pb::envoy::config::cluster::v3::Cluster;
            use envoy_types::pb::google::protobuf::{Struct as PbStruct, Value as PbValue};

            use crate::resources::Resource;

            /// Metadata of the cluster, tag 25.
            const CLUSTER_METADATA: u32 = 25;
            let fields: [(&str, &str); 4] = [("alpha", "1"), ("beta", "2"), ("delta", "4"), ("gamma", "3")];
            let encode = || {
                let values: Vec<(&str, Value)> = fields.iter().map(|(k, v)| (*k, Value::string(v))).collect();
                let a = Struct::new(&values);
                let b = Struct::new(&[("on", Value::bool(true)), ("tags", Value::list(&[Value::string("x")]))]);
                let extra = metadata_field(CLUSTER_METADATA, &[("a.filter", &a), ("b.filter", &b)]);
                Resource::encode_with_fields("c", &Cluster { name: "c".into(), ..Default::default() }, &extra)
            };
            // The same metadata as prost's maps, built anew each time.
            let expected = || {
                let string = |s: &str| PbValue { kind: Some(Kind::StringValue(s.into())) };
                let a: HashMap<String, PbValue> = fields.iter().map(|(k, v)| (k.to_string(), string(v))).collect();
                let list = envoy_types::pb::google::protobuf::ListValue { values: vec![string("x")] };
                let b: HashMap<String, PbValue> = [
                    ("on".to_string(), PbValue { kind: Some(Kind::BoolValue(true)) }),
                    ("tags".to_string(), PbValue { kind: Some(Kind::ListValue(list)) }),
                ]
                .into_iter()
                .collect();
                let filter_metadata: HashMap<String, PbStruct> = [
                    ("a.filter".to_string(), PbStruct { fields: a }),
                    ("b.filter".to_string(), PbStruct { fields: b }),
                ]
                .into_iter()
                .collect();
                Metadata { filter_metadata, ..Default::default() }
            };
            let first = encode();
            for _ in 0..50 {
                let again = encode();
                assert_eq!(again.any, first.any);
                assert_eq!(again.version, first.version);
                let any = envoy_types::pb::google::protobuf::Any::decode(again.any.clone()).unwrap();
                let cluster = Cluster::decode(any.value.as_slice()).unwrap();
                assert_eq!(cluster.metadata, Some(expected()));
            }
        }

        #[test]
        fn decodes_as_envoy_metadata() {
            let svc = Value::structure(&[("host", Value::string("a.b")), ("name", Value::string("a"))]);
            let istio = Struct::new(&[("external", Value::bool(true)), ("services", Value::list(&[svc]))]);
            let bytes = metadata_field(1, &[("istio", &istio)]);
            let m = Wrapper::decode(bytes.as_slice()).unwrap().meta.unwrap();
            let istio = &m.filter_metadata["istio"].fields;
            assert_eq!(istio["external"].kind, Some(Kind::BoolValue(true)));
            let Some(Kind::ListValue(l)) = &istio["services"].kind else { panic!("not a list") };
            let Some(Kind::StructValue(s)) = &l.values[0].kind else { panic!("not a struct") };
            assert_eq!(s.fields["host"].kind, Some(Kind::StringValue("a.b".into())));
            assert_eq!(s.fields["name"].kind, Some(Kind::StringValue("a".into())));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::model::{Endpoint, InterceptionMode, Location, Protocol, Resolution, ServiceOrigin};
    use crate::resources::TypeUrl;

    /// A service with one port per `(name, number, protocol)`.
    pub(crate) fn mk_service(
        host: &str,
        addresses: &[&str],
        resolution: Resolution,
        ports: &[(&str, u16, Protocol)],
    ) -> Service {
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
        World { services, ..World::default() }
    }

    pub(crate) fn sidecar(ns: &str) -> ProxyProfile {
        ProxyProfile { namespace: ns.into(), ..ProxyProfile::default() }
    }

    #[test]
    fn identical_input_gives_identical_versions() {
        // Cluster metadata has several keys; prost would encode HashMaps in varying order.
        let mut svc = mk_service(
            "a.default.svc.cluster.local",
            &["10.0.0.1"],
            Resolution::Static,
            &[("http", 80, Protocol::Http)],
        );
        svc.endpoints.push(Endpoint {
            address: "10.1.0.1".into(),
            ports: [("http".to_string(), 8080)].into_iter().collect(),
            labels: [("security.istio.io/tlsMode".to_string(), "istio".to_string())].into_iter().collect(),
            service_account: Some("sa".into()),
            namespace: "default".into(),
            weight: 0,
            locality: None,
            ready: true,
            mtls_disabled_ports: Default::default(),
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
        let world = mk_world(vec![mk_service(
            "a.default.svc.cluster.local",
            &["10.0.0.1"],
            Resolution::Static,
            &[("http", 80, Protocol::Http)],
        )]);
        let proxy = ProxyProfile { node_type: NodeType::Router, ..sidecar("istio-system") };
        let set = build(&world, &proxy);
        assert!(set.of(TypeUrl::Listener).is_empty());
        assert!(set.of(TypeUrl::Route).is_empty());
        let clusters: Vec<&str> = set.of(TypeUrl::Cluster).keys().map(String::as_str).collect();
        assert_eq!(clusters, vec!["BlackHoleCluster", "outbound|80||a.default.svc.cluster.local"]);
        assert_eq!(set.of(TypeUrl::Endpoint).len(), 1);
    }

    #[test]
    fn interception_none_has_no_virtual_listeners() {
        let world = mk_world(vec![mk_service(
            "a.default.svc.cluster.local",
            &["10.0.0.1"],
            Resolution::Static,
            &[("http", 80, Protocol::Http)],
        )]);
        let proxy = ProxyProfile { interception: InterceptionMode::None, ..sidecar("default") };
        let set = build(&world, &proxy);
        let listeners: Vec<&str> = set.of(TypeUrl::Listener).keys().map(String::as_str).collect();
        assert_eq!(listeners, vec!["127.0.0.1_80"]);
        assert!(set.get(TypeUrl::Route, "80").is_some());
    }

    #[test]
    fn every_rds_name_referenced_has_a_route_configuration() {
        let world = mk_world(vec![
            mk_service(
                "a.default.svc.cluster.local",
                &["10.0.0.1"],
                Resolution::Static,
                &[("http", 80, Protocol::Http), ("", 8000, Protocol::Unspecified)],
            ),
            mk_service("b.example.com", &[], Resolution::Dns, &[("web", 8000, Protocol::Unspecified)]),
        ]);
        let set = build(&world, &sidecar("default"));
        let routes: Vec<&str> = set.of(TypeUrl::Route).keys().map(String::as_str).collect();
        assert_eq!(routes, vec!["80", "8000", "a.default.svc.cluster.local:8000"]);
    }
}
