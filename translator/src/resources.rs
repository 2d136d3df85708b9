//! Encoded xDS resources: what the translator hands to the snapshot cache.
//!
//! Resources are kept as encoded `google.protobuf.Any` bytes, never as prost structs: a struct costs
//! about 13 times its encoded size, and encoded bytes can be shared by every stream without a
//! re-encode. The version of a resource is a hash of those bytes, so re-translating identical config
//! yields identical versions and pushes nothing.

use std::sync::Arc;

use bytes::Bytes;
use prost::{Message, Name};
pub use sailplane_proto::{DumpLayout, DumpSection};

/// How a type's resources are addressed in requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addressing {
    /// The client asks for everything (an empty first request or `*`): LDS and CDS. A
    /// state-of-the-world response always carries every resource of the type.
    Wildcard,
    /// The client names what it wants: EDS, RDS, SDS. A response carries the named resources only.
    Named,
}

/// Where a type's resources come from on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the proxy's snapshot, shared by every proxy whose inputs are equal.
    PerSnapshot,
    /// From the stream itself, because what a proxy may receive depends on who it proved to be
    /// (its verified certificate), not only on its configuration.
    PerStream(StreamSource),
}

/// Which per-stream source serves a type (the xDS server holds one of each per stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSource {
    /// `kubernetes://` secrets, as the proxy's identity may read them.
    Secrets,
}

/// One row of the xDS type table.
#[derive(Debug, Clone, Copy)]
pub struct TypeInfo {
    /// The full type URL as it appears on the wire.
    pub url: &'static str,
    /// Short name used in logs, metrics and debug output (`cds`, `eds`, ...).
    pub short: &'static str,
    /// How requests address resources of this type.
    pub addressing: Addressing,
    /// Where a stream takes this type's resources from.
    pub served: Served,
    /// The section of Envoy's admin `/config_dump` that holds this type.
    pub dump: DumpSection,
}

/// Defines [`TypeUrl`] and its table from one list of rows, in push order, so that a new type is one
/// row: [`TypeUrl::ALL`], [`TypeUrl::COUNT`] and [`PerType`] follow from the list, and every `match`
/// on [`TypeUrl`] elsewhere (they are exhaustive on purpose) stops compiling until it handles the new
/// type.
macro_rules! xds_types {
    ($( $(#[$doc:meta])* $variant:ident => $info:expr, )+) => {
        /// The xDS resource types Sailplane serves, in the order Envoy wants them pushed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum TypeUrl {
            $( $(#[$doc])* $variant, )+
        }

        impl TypeUrl {
            /// Every type, in push order.
            pub const ALL: [TypeUrl; [$(stringify!($variant)),+].len()] = [$(TypeUrl::$variant),+];

            /// The number of types.
            pub const COUNT: usize = TypeUrl::ALL.len();

            /// This type's row of the table.
            pub const fn info(self) -> &'static TypeInfo {
                match self {
                    $( TypeUrl::$variant => &$info, )+
                }
            }
        }
    };
}

xds_types! {
    /// `envoy.config.cluster.v3.Cluster` (CDS)
    Cluster => TypeInfo {
        url: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        short: "cds",
        addressing: Addressing::Wildcard,
        served: Served::PerSnapshot,
        dump: DumpSection {
            dump_type: "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            field: "dynamic_active_clusters",
            resource_key: "cluster",
            layout: DumpLayout::Versioned,
        },
    },
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS)
    Endpoint => TypeInfo {
        url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        short: "eds",
        addressing: Addressing::Named,
        served: Served::PerSnapshot,
        dump: DumpSection {
            dump_type: "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            field: "dynamic_endpoint_configs",
            resource_key: "endpoint_config",
            layout: DumpLayout::Versioned,
        },
    },
    /// `envoy.config.listener.v3.Listener` (LDS)
    Listener => TypeInfo {
        url: "type.googleapis.com/envoy.config.listener.v3.Listener",
        short: "lds",
        addressing: Addressing::Wildcard,
        served: Served::PerSnapshot,
        dump: DumpSection {
            dump_type: "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            field: "dynamic_listeners",
            resource_key: "listener",
            layout: DumpLayout::NamedActiveState,
        },
    },
    /// `envoy.config.route.v3.RouteConfiguration` (RDS)
    Route => TypeInfo {
        url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        short: "rds",
        addressing: Addressing::Named,
        served: Served::PerSnapshot,
        dump: DumpSection {
            dump_type: "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            field: "dynamic_route_configs",
            resource_key: "route_config",
            layout: DumpLayout::Versioned,
        },
    },
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS)
    Secret => TypeInfo {
        url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        short: "sds",
        addressing: Addressing::Named,
        served: Served::PerStream(StreamSource::Secrets),
        dump: DumpSection {
            dump_type: "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            field: "dynamic_active_secrets",
            resource_key: "secret",
            layout: DumpLayout::NamedVersioned,
        },
    },
}

impl TypeUrl {
    /// The full type URL as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        self.info().url
    }

    /// Parses a wire type URL.
    pub fn parse(s: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Short name used in logs, metrics and debug output (`cds`, `eds`, ...).
    pub const fn short(self) -> &'static str {
        self.info().short
    }

    /// Whether a state-of-the-world response for this type always carries every resource
    /// (LDS and CDS), rather than only the names the client asked for.
    pub const fn sotw_sends_all(self) -> bool {
        matches!(self.info().addressing, Addressing::Wildcard)
    }

    /// Whether a stream serves this type from its own state rather than from the snapshot.
    pub const fn per_stream(self) -> bool {
        matches!(self.info().served, Served::PerStream(_))
    }

    /// Position in push order: the index into [`PerType`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

// The enum's order is the table's order, so `index` can be the discriminant.
const _: () = {
    let mut i = 0;
    while i < TypeUrl::COUNT {
        assert!(TypeUrl::ALL[i].index() == i);
        i += 1;
    }
};

/// One value per xDS type, indexed by [`TypeUrl`]. Sized by the type table, so per-type state never
/// spells out the number of types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerType<T>([T; TypeUrl::COUNT]);

impl<T> PerType<T> {
    /// A value for each type, from `f`.
    pub fn from_fn(mut f: impl FnMut(TypeUrl) -> T) -> Self {
        PerType(TypeUrl::ALL.map(&mut f))
    }

    /// Every type with its value, in push order.
    pub fn iter(&self) -> impl Iterator<Item = (TypeUrl, &T)> {
        TypeUrl::ALL.into_iter().zip(self.0.iter())
    }

    /// Every type with its value, mutably, in push order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (TypeUrl, &mut T)> {
        TypeUrl::ALL.into_iter().zip(self.0.iter_mut())
    }

    /// The values, in push order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

impl<T: Default> Default for PerType<T> {
    fn default() -> Self {
        PerType::from_fn(|_| T::default())
    }
}

impl<T> std::ops::Index<TypeUrl> for PerType<T> {
    type Output = T;
    fn index(&self, t: TypeUrl) -> &T {
        &self.0[t.index()]
    }
}

impl<T> std::ops::IndexMut<TypeUrl> for PerType<T> {
    fn index_mut(&mut self, t: TypeUrl) -> &mut T {
        &mut self.0[t.index()]
    }
}

/// One encoded resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Resource name (cluster name, listener name, ...).
    pub name: String,
    /// Content hash of `any`, as lowercase hex.
    pub version: String,
    /// The resource packed as an encoded `google.protobuf.Any`.
    pub any: Bytes,
}

impl Resource {
    /// Encodes `msg` as an `Any` and hashes it.
    pub fn encode<M: Message + Name>(name: impl Into<String>, msg: &M) -> Resource {
        Self::encode_with_fields(name, msg, &[])
    }

    /// Encodes `msg` followed by `extra`, fields already in protobuf wire format.
    ///
    /// prost keeps protobuf maps (`Struct.fields`, `Metadata.filter_metadata`) in `HashMap`s and
    /// encodes them in iteration order, which differs between map instances. Builders encode such
    /// fields themselves in sorted order and pass them here, so equal config gives equal bytes (and
    /// an equal version). Protobuf parsers accept fields in any order.
    pub fn encode_with_fields<M: Message + Name>(name: impl Into<String>, msg: &M, extra: &[u8]) -> Resource {
        use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
        // The Any is written by hand in one buffer (type_url, then the message as field 2), so the
        // message is encoded once, not into a temporary and then copied.
        let type_url = M::type_url();
        let value_len = msg.encoded_len() + extra.len();
        let mut buf = Vec::with_capacity(
            2 + encoded_len_varint(type_url.len() as u64)
                + type_url.len()
                + encoded_len_varint(value_len as u64)
                + value_len,
        );
        encode_key(1, WireType::LengthDelimited, &mut buf);
        encode_varint(type_url.len() as u64, &mut buf);
        buf.extend_from_slice(type_url.as_bytes());
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(value_len as u64, &mut buf);
        // Writing into a Vec cannot run out of space.
        let _ = msg.encode(&mut buf);
        buf.extend_from_slice(extra);
        let bytes = Bytes::from(buf);
        let version = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes));
        Resource { name: name.into(), version, any: bytes }
    }

    /// The inner message bytes (the `value` of the `Any`).
    pub fn value_bytes(&self) -> Bytes {
        match envoy_types::pb::google::protobuf::Any::decode(self.any.clone()) {
            Ok(any) => Bytes::from(any.value),
            Err(_) => Bytes::new(),
        }
    }
}

/// Resources of one type, by name: a persistent map, so a clone is O(1) and an edited copy shares
/// every unchanged node with the original. Proxy classes that differ in a few resources (their
/// inbound side, one changed endpoint assignment) share the rest of the map, not only the encoded
/// bytes.
pub type ResourceMap = imbl::OrdMap<String, Arc<Resource>>;

/// Everything one proxy should hold, per type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSet {
    by_type: PerType<ResourceMap>,
}

impl ResourceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a resource of type `t`.
    pub fn insert(&mut self, t: TypeUrl, r: Resource) {
        self.by_type[t].insert(r.name.clone(), Arc::new(r));
    }

    /// Adds (or replaces) an already shared resource of type `t`.
    pub fn insert_shared(&mut self, t: TypeUrl, r: Arc<Resource>) {
        self.by_type[t].insert(r.name.clone(), r);
    }

    /// Removes the resource of type `t` named `name`, if present.
    pub fn remove(&mut self, t: TypeUrl, name: &str) -> Option<Arc<Resource>> {
        self.by_type[t].remove(name)
    }

    /// Replaces every resource of type `t` with those of `other` (an O(1) map copy).
    pub fn replace_type(&mut self, t: TypeUrl, other: &ResourceSet) {
        self.by_type[t] = other.by_type[t].clone();
    }

    /// Adds every resource of `other` (replacing same-named ones). The maps are persistent, so the
    /// result shares all of `self`'s unchanged nodes.
    pub fn extend_from(&mut self, other: &ResourceSet) {
        for (t, map) in other.by_type.iter() {
            if map.is_empty() {
                continue;
            }
            if self.by_type[t].is_empty() {
                self.by_type[t] = map.clone();
                continue;
            }
            for (name, r) in map {
                self.by_type[t].insert(name.clone(), Arc::clone(r));
            }
        }
    }

    /// Whether type `t` of `self` and `other` is the same map (not merely equal): a clone that was
    /// not edited since. O(1); `false` says nothing about equality.
    pub fn same_map(&self, other: &ResourceSet, t: TypeUrl) -> bool {
        self.by_type[t].ptr_eq(&other.by_type[t])
    }

    /// Encodes and adds a message.
    pub fn add<M: Message + Name>(&mut self, t: TypeUrl, name: impl Into<String>, msg: &M) {
        self.insert(t, Resource::encode(name, msg));
    }

    /// Encodes and adds a message followed by pre-encoded fields (see [`Resource::encode_with_fields`]).
    pub fn add_with_fields<M: Message + Name>(&mut self, t: TypeUrl, name: impl Into<String>, msg: &M, extra: &[u8]) {
        self.insert(t, Resource::encode_with_fields(name, msg, extra));
    }

    /// Resources of type `t`.
    pub fn of(&self, t: TypeUrl) -> &ResourceMap {
        &self.by_type[t]
    }

    /// A resource by type and name.
    pub fn get(&self, t: TypeUrl, name: &str) -> Option<&Arc<Resource>> {
        self.by_type[t].get(name)
    }

    /// Total number of resources.
    pub fn len(&self) -> usize {
        self.by_type.values().map(ResourceMap::len).sum()
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A version for the whole of type `t`: a hash over its names and versions.
    pub fn type_version(&self, t: TypeUrl) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (name, r) in self.of(t) {
            h.update(name.as_bytes());
            h.update(&[0]);
            h.update(r.version.as_bytes());
            h.update(&[0]);
        }
        format!("{:016x}", h.digest())
    }

    /// Encoded size of all resources, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.by_type.values().flat_map(|m| m.values()).map(|r| r.any.len()).sum()
    }
}
