//! Discovery responses assembled by hand in protobuf wire format.
//!
//! Resources already are encoded `google.protobuf.Any` bytes, so a response is those bytes framed as
//! length-delimited fields: no prost struct is built and nothing is re-encoded per stream. The field
//! numbers below are those of `envoy.service.discovery.v3` (checked against envoy-types' generated
//! code, and by the tests at the bottom, which decode every assembled message with prost).
//!
//! A state-of-the-world response is split in two: a per-snapshot `body` (every field except the
//! nonce), shared by all streams through [`Bytes`], and a small per-stream `head` holding the gRPC
//! message prefix and the nonce. Protobuf allows fields in any order, so the nonce may come first.

use bytes::{BufMut, Bytes, BytesMut};
use sailplane_translator::Resource;

/// `DiscoveryResponse.version_info`.
const SOTW_VERSION_INFO: u32 = 1;
/// `DiscoveryResponse.resources` (repeated `Any`).
const SOTW_RESOURCES: u32 = 2;
/// `DiscoveryResponse.type_url`.
const SOTW_TYPE_URL: u32 = 4;
/// `DiscoveryResponse.nonce`.
const SOTW_NONCE: u32 = 5;
/// `DiscoveryResponse.control_plane`.
const SOTW_CONTROL_PLANE: u32 = 6;

/// `DeltaDiscoveryResponse.system_version_info`.
const DELTA_SYSTEM_VERSION_INFO: u32 = 1;
/// `DeltaDiscoveryResponse.resources` (repeated `Resource`).
const DELTA_RESOURCES: u32 = 2;
/// `DeltaDiscoveryResponse.type_url`.
const DELTA_TYPE_URL: u32 = 4;
/// `DeltaDiscoveryResponse.nonce`.
const DELTA_NONCE: u32 = 5;
/// `DeltaDiscoveryResponse.removed_resources`.
const DELTA_REMOVED_RESOURCES: u32 = 6;
/// `DeltaDiscoveryResponse.control_plane` (7 here, unlike the state-of-the-world 6).
const DELTA_CONTROL_PLANE: u32 = 7;

/// `discovery.v3.Resource.version`.
const RESOURCE_VERSION: u32 = 1;
/// `discovery.v3.Resource.resource` (`Any`).
const RESOURCE_RESOURCE: u32 = 2;
/// `discovery.v3.Resource.name`.
const RESOURCE_NAME: u32 = 3;

/// `config.core.v3.ControlPlane.identifier`.
const CONTROL_PLANE_IDENTIFIER: u32 = 1;

/// Size of the gRPC length prefix: one compression flag byte and a big-endian u32 length.
pub(crate) const GRPC_PREFIX_LEN: usize = 5;

/// Bodies up to this size are copied into the head so a response goes out as one frame; larger
/// bodies are sent as a second, shared chunk (HTTP/2 writes it without a copy).
const MERGE_LIMIT: usize = 16 * 1024;

/// Number of bytes a varint takes.
pub(crate) const fn varint_len(v: u64) -> usize {
    // Each byte carries 7 bits; at least one byte even for 0.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn put_varint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Size of a length-delimited field of `len` payload bytes (tag, length, payload).
const fn field_len(field: u32, len: usize) -> usize {
    varint_len(((field as u64) << 3) | 2) + varint_len(len as u64) + len
}

fn put_field(buf: &mut impl BufMut, field: u32, payload: &[u8]) {
    put_varint(buf, (u64::from(field) << 3) | 2);
    put_varint(buf, payload.len() as u64);
    buf.put_slice(payload);
}

/// Omits empty strings, as proto3 does.
fn str_field_len(field: u32, s: &str) -> usize {
    if s.is_empty() { 0 } else { field_len(field, s.len()) }
}

fn put_str_field(buf: &mut impl BufMut, field: u32, s: &str) {
    if !s.is_empty() {
        put_field(buf, field, s.as_bytes());
    }
}

/// Which response message a field is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `DiscoveryResponse`.
    Sotw,
    /// `DeltaDiscoveryResponse`.
    Delta,
}

/// The encoded `control_plane` field (`ControlPlane { identifier }`), appended to every response.
pub(crate) fn control_plane_field(api: Api, identifier: &str) -> Bytes {
    if identifier.is_empty() {
        return Bytes::new();
    }
    let field = match api {
        Api::Sotw => SOTW_CONTROL_PLANE,
        Api::Delta => DELTA_CONTROL_PLANE,
    };
    let inner_len = field_len(CONTROL_PLANE_IDENTIFIER, identifier.len());
    let mut buf = Vec::with_capacity(field_len(field, inner_len));
    put_varint(&mut buf, (u64::from(field) << 3) | 2);
    put_varint(&mut buf, inner_len as u64);
    put_str_field(&mut buf, CONTROL_PLANE_IDENTIFIER, identifier);
    Bytes::from(buf)
}

/// The shared part of a state-of-the-world response: every field but the nonce.
///
/// `resources` is iterated twice (size, then write) so the body is allocated exactly once.
pub(crate) fn sotw_body<'a, I>(version: &str, type_url: &str, resources: I, control_plane: &[u8]) -> Bytes
where
    I: Iterator<Item = &'a Resource> + Clone,
{
    let len = str_field_len(SOTW_VERSION_INFO, version)
        + resources.clone().map(|r| field_len(SOTW_RESOURCES, r.any.len())).sum::<usize>()
        + str_field_len(SOTW_TYPE_URL, type_url)
        + control_plane.len();
    let mut buf = Vec::with_capacity(len);
    put_str_field(&mut buf, SOTW_VERSION_INFO, version);
    for r in resources {
        put_field(&mut buf, SOTW_RESOURCES, &r.any);
    }
    put_str_field(&mut buf, SOTW_TYPE_URL, type_url);
    buf.put_slice(control_plane);
    debug_assert_eq!(buf.len(), len);
    Bytes::from(buf)
}

/// One gRPC message on the wire: a per-stream head and, for large bodies, the shared body.
#[derive(Debug)]
pub(crate) struct Framed {
    /// gRPC prefix, nonce field and (for small bodies) the body itself.
    pub head: Bytes,
    /// The shared body, when it was too large to copy into `head`.
    pub body: Option<Bytes>,
}

impl Framed {
    /// Total bytes on the wire (gRPC prefix included).
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.body.as_ref().map_or(0, Bytes::len)
    }
}

/// Frames a shared state-of-the-world body with this stream's nonce.
pub(crate) fn sotw_frame(body: &Bytes, nonce: &str) -> Framed {
    let nonce_len = str_field_len(SOTW_NONCE, nonce);
    let msg_len = nonce_len + body.len();
    let merge = body.len() <= MERGE_LIMIT;
    let head_len = GRPC_PREFIX_LEN + nonce_len + if merge { body.len() } else { 0 };
    let mut head = BytesMut::with_capacity(head_len);
    put_grpc_prefix(&mut head, msg_len);
    put_str_field(&mut head, SOTW_NONCE, nonce);
    if merge {
        head.put_slice(body);
    }
    Framed { head: head.freeze(), body: (!merge).then(|| body.clone()) }
}

fn put_grpc_prefix(buf: &mut impl BufMut, msg_len: usize) {
    buf.put_u8(0);
    // A message over 4 GiB cannot be framed; snapshots are far below that.
    buf.put_u32(u32::try_from(msg_len).unwrap_or(u32::MAX));
}

/// Size of one `discovery.v3.Resource` message (without its field header).
fn delta_resource_len(r: &Resource) -> usize {
    str_field_len(RESOURCE_NAME, &r.name)
        + str_field_len(RESOURCE_VERSION, &r.version)
        + field_len(RESOURCE_RESOURCE, r.any.len())
}

/// A whole Delta response, gRPC prefix included, in one buffer. Delta responses differ per stream
/// (they depend on what the client holds), so there is nothing to share beyond the resources.
pub(crate) fn delta_message(
    system_version: &str,
    type_url: &str,
    resources: &[&Resource],
    removed: &[&str],
    nonce: &str,
    control_plane: &[u8],
) -> Bytes {
    let msg_len = str_field_len(DELTA_SYSTEM_VERSION_INFO, system_version)
        + resources.iter().map(|r| field_len(DELTA_RESOURCES, delta_resource_len(r))).sum::<usize>()
        + str_field_len(DELTA_TYPE_URL, type_url)
        + str_field_len(DELTA_NONCE, nonce)
        // Removed names are repeated strings: an empty name must still be written.
        + removed.iter().map(|n| field_len(DELTA_REMOVED_RESOURCES, n.len())).sum::<usize>()
        + control_plane.len();
    let mut buf = Vec::with_capacity(GRPC_PREFIX_LEN + msg_len);
    put_grpc_prefix(&mut buf, msg_len);
    put_str_field(&mut buf, DELTA_SYSTEM_VERSION_INFO, system_version);
    for r in resources {
        put_varint(&mut buf, (u64::from(DELTA_RESOURCES) << 3) | 2);
        put_varint(&mut buf, delta_resource_len(r) as u64);
        put_str_field(&mut buf, RESOURCE_NAME, &r.name);
        put_str_field(&mut buf, RESOURCE_VERSION, &r.version);
        put_field(&mut buf, RESOURCE_RESOURCE, &r.any);
    }
    put_str_field(&mut buf, DELTA_TYPE_URL, type_url);
    put_str_field(&mut buf, DELTA_NONCE, nonce);
    for n in removed {
        put_field(&mut buf, DELTA_REMOVED_RESOURCES, n.as_bytes());
    }
    buf.put_slice(control_plane);
    debug_assert_eq!(buf.len(), GRPC_PREFIX_LEN + msg_len);
    Bytes::from(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::core::v3::ControlPlane;
    use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;
    use rstest::rstest;

    use super::*;

    fn cluster(name: &str, pad: usize) -> Resource {
        let c = Cluster { name: name.to_string(), alt_stat_name: "x".repeat(pad), ..Default::default() };
        Resource::encode(name, &c)
    }

    /// Strips the gRPC prefix, checking flag and length.
    fn unframe(wire: &[u8]) -> &[u8] {
        assert_eq!(wire[0], 0, "uncompressed");
        let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
        assert_eq!(len, wire.len() - GRPC_PREFIX_LEN);
        &wire[GRPC_PREFIX_LEN..]
    }

    #[rstest]
    #[case(0)]
    #[case(1)]
    #[case(127)]
    #[case(128)]
    #[case(16_383)]
    #[case(16_384)]
    #[case(u64::MAX)]
    fn varint_len_matches_encoding(#[case] v: u64) {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        assert_eq!(buf.len(), varint_len(v));
        assert_eq!(prost::encoding::decode_varint(&mut buf.as_slice()).unwrap(), v);
    }

    #[rstest]
    #[case::empty(0, 0)]
    #[case::small(3, 10)]
    #[case::large_body_split(200, 200)]
    fn sotw_matches_prost(#[case] n: usize, #[case] pad: usize) {
        let resources: Vec<Resource> = (0..n).map(|i| cluster(&format!("c{i}"), pad)).collect();
        let cp = control_plane_field(Api::Sotw, "sailplane-test");
        let body = sotw_body("v1", "type.googleapis.com/envoy.config.cluster.v3.Cluster", resources.iter(), &cp);
        let framed = sotw_frame(&body, "nonce-7");
        assert_eq!(framed.body.is_some(), body.len() > MERGE_LIMIT);
        let mut wire = framed.head.to_vec();
        if let Some(b) = &framed.body {
            // The large body is the very same allocation, not a copy.
            assert_eq!(b.as_ptr(), body.as_ptr());
            wire.extend_from_slice(b);
        }
        assert_eq!(wire.len(), framed.len());
        let got = DiscoveryResponse::decode(unframe(&wire)).unwrap();
        let want = DiscoveryResponse {
            version_info: "v1".into(),
            resources: resources.iter().map(|r| Any::decode(r.any.clone()).unwrap()).collect(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            nonce: "nonce-7".into(),
            control_plane: Some(ControlPlane { identifier: "sailplane-test".into() }),
            ..Default::default()
        };
        assert_eq!(got, want);
        // Byte-exact against prost up to field order: same length.
        assert_eq!(want.encoded_len(), wire.len() - GRPC_PREFIX_LEN);
    }

    #[test]
    fn delta_matches_prost() {
        use envoy_types::pb::envoy::service::discovery::v3::Resource as DeltaResource;
        let resources: Vec<Resource> = (0..4).map(|i| cluster(&format!("c{i}"), i * 50)).collect();
        let refs: Vec<&Resource> = resources.iter().collect();
        let cp = control_plane_field(Api::Delta, "cp");
        let wire = delta_message("sys-1", "t/u", &refs, &["gone-a", "gone-b"], "n1", &cp);
        let got = DeltaDiscoveryResponse::decode(unframe(&wire)).unwrap();
        let want = DeltaDiscoveryResponse {
            system_version_info: "sys-1".into(),
            resources: resources
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(Any::decode(r.any.clone()).unwrap()),
                    ..Default::default()
                })
                .collect(),
            type_url: "t/u".into(),
            removed_resources: vec!["gone-a".into(), "gone-b".into()],
            nonce: "n1".into(),
            control_plane: Some(ControlPlane { identifier: "cp".into() }),
            ..Default::default()
        };
        assert_eq!(got, want);
        assert_eq!(want.encoded_len(), wire.len() - GRPC_PREFIX_LEN);
    }

    #[test]
    fn empty_delta_is_valid() {
        let wire = delta_message("", "t", &[], &[], "n", &[]);
        let got = DeltaDiscoveryResponse::decode(unframe(&wire)).unwrap();
        assert_eq!(got.nonce, "n");
        assert!(got.resources.is_empty());
    }
}
