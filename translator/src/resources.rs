//! Encoded xDS resources: what the translator hands to the snapshot cache.
//!
//! Resources are kept as encoded `google.protobuf.Any` bytes, never as prost structs: a struct costs
//! about 13 times its encoded size, and encoded bytes can be shared by every stream without a
//! re-encode. The version of a resource is a hash of those bytes, so re-translating identical config
//! yields identical versions and pushes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::{Message, Name};

/// The xDS resource types Sailplane serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    /// `envoy.config.cluster.v3.Cluster` (CDS)
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS)
    Endpoint,
    /// `envoy.config.listener.v3.Listener` (LDS)
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS)
    Route,
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS)
    Secret,
}

impl TypeUrl {
    /// All types in the order Envoy wants them pushed: CDS, EDS, LDS, RDS, SDS.
    pub const ALL: [TypeUrl; 5] =
        [TypeUrl::Cluster, TypeUrl::Endpoint, TypeUrl::Listener, TypeUrl::Route, TypeUrl::Secret];

    /// The full type URL as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            TypeUrl::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    /// Parses a wire type URL.
    pub fn parse(s: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Short name used in logs, metrics and debug output (`cds`, `eds`, ...).
    pub const fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "cds",
            TypeUrl::Endpoint => "eds",
            TypeUrl::Listener => "lds",
            TypeUrl::Route => "rds",
            TypeUrl::Secret => "sds",
        }
    }

    /// Whether a state-of-the-world response for this type always carries every resource
    /// (LDS and CDS), rather than only the names the client asked for.
    pub const fn sotw_sends_all(self) -> bool {
        matches!(self, TypeUrl::Cluster | TypeUrl::Listener)
    }

    /// Index into per-type arrays.
    pub const fn index(self) -> usize {
        self as usize
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

/// Resources of one type, by name.
pub type ResourceMap = BTreeMap<String, Arc<Resource>>;

/// Everything one proxy should hold, per type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceSet {
    by_type: [ResourceMap; 5],
}

impl ResourceSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a resource of type `t`.
    pub fn insert(&mut self, t: TypeUrl, r: Resource) {
        self.by_type[t.index()].insert(r.name.clone(), Arc::new(r));
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
        &self.by_type[t.index()]
    }

    /// A resource by type and name.
    pub fn get(&self, t: TypeUrl, name: &str) -> Option<&Arc<Resource>> {
        self.by_type[t.index()].get(name)
    }

    /// Total number of resources.
    pub fn len(&self) -> usize {
        self.by_type.iter().map(BTreeMap::len).sum()
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
        self.by_type.iter().flat_map(|m| m.values()).map(|r| r.any.len()).sum()
    }
}
