//! Endpoints (EDS): one `ClusterLoadAssignment` per EDS cluster, and the inline endpoints of DNS
//! clusters.
//!
//! As istiod: endpoints are grouped by locality (sorted), each `HEALTHY` with a load-balancing
//! weight (1 when unset), each locality weighted by the sum; endpoints that are not ready are left
//! out; endpoints of workloads with a sidecar carry `envoy.transport_socket_match: {tlsMode: istio}`
//! so auto-mTLS clusters can pick the Istio TLS socket for them, except on ports where the
//! workload's own PeerAuthentication is DISABLE ([`Endpoint::accepts_mtls`]).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::google::protobuf::{Struct, UInt32Value, Value, value};

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::cluster::EdsTarget;
use super::wire;
use crate::model::{Endpoint, Labels, Resolution, Service, ServicePort};
use crate::names;
use crate::resources::{Resource, ResourceSet, TypeUrl};

/// Filter metadata key Envoy matches `transport_socket_matches` against.
pub const TRANSPORT_SOCKET_MATCH_KEY: &str = "envoy.transport_socket_match";

/// Which endpoints a cluster can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointFilter {
    /// EDS: IP addresses only (hostnames from ServiceEntries cannot be sent over EDS).
    Eds,
    /// DNS clusters: hostnames allowed; the host itself when the service lists no endpoints.
    Dns,
}

/// Adds the `ClusterLoadAssignment` of every EDS cluster of the proxy (default and subset
/// clusters alike: a subset's endpoints are those carrying all its labels), and returns what each
/// was built from.
///
/// EDS is the most frequently pushed type, so assignments are written straight to protobuf wire
/// format ([`encode_locality_endpoints`]), the same bytes prost would produce from the structs
/// [`locality_lb_endpoints`] builds, without building them.
pub fn build_endpoints(targets: &[EdsTarget<'_>], set: &mut ResourceSet) -> Vec<EdsKey> {
    let mut buf = Vec::new();
    let mut keys = Vec::with_capacity(targets.len());
    for t in targets {
        set.insert(TypeUrl::Endpoint, encode_assignment(&t.name, t.service, t.port, t.labels, &mut buf));
        keys.push(EdsKey {
            name: t.name.clone(),
            hostname: t.service.hostname.clone(),
            namespace: t.service.namespace.clone(),
            port: t.port.port,
            port_name: t.port.name.clone(),
            labels: t.labels.cloned(),
        });
    }
    keys
}

/// Everything a `ClusterLoadAssignment` is built from besides its service's endpoints: with the
/// service, [`assignment`] rebuilds it exactly as [`build_endpoints`] did.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdsKey {
    /// The cluster (and EDS service) name.
    pub name: String,
    /// The service's host.
    pub hostname: String,
    /// The service's namespace.
    pub namespace: String,
    /// The service port's number.
    pub port: u16,
    /// The service port's name.
    pub port_name: String,
    /// Subset labels endpoints must carry.
    pub labels: Option<Labels>,
}

/// The `ClusterLoadAssignment` of `key` from `service` (the service `key` names, in the current
/// world); `None` if the service no longer has that port.
pub fn assignment(key: &EdsKey, service: &Service) -> Option<Resource> {
    let port = service.ports.iter().find(|p| p.port == key.port && p.name == key.port_name)?;
    let mut buf = Vec::new();
    Some(encode_assignment(&key.name, service, port, key.labels.as_ref(), &mut buf))
}

fn encode_assignment(
    name: &str,
    service: &Service,
    port: &ServicePort,
    labels: Option<&Labels>,
    buf: &mut Vec<u8>,
) -> Resource {
    buf.clear();
    encode_locality_endpoints(service, port, labels, buf);
    let head = ClusterLoadAssignment { cluster_name: name.to_string(), ..Default::default() };
    Resource::encode_with_fields(name, &head, buf)
}

/// Field numbers of the messages [`encode_locality_endpoints`] writes.
mod tags {
    pub const CLA_ENDPOINTS: u32 = 2;
    pub const LLE_LOCALITY: u32 = 1;
    pub const LLE_LB_ENDPOINTS: u32 = 2;
    pub const LLE_WEIGHT: u32 = 3;
    pub const LOCALITY_REGION: u32 = 1;
    pub const LOCALITY_ZONE: u32 = 2;
    pub const LOCALITY_SUB_ZONE: u32 = 3;
    pub const LB_ENDPOINT: u32 = 1;
    pub const LB_HEALTH: u32 = 2;
    pub const LB_METADATA: u32 = 3;
    pub const LB_WEIGHT: u32 = 4;
    pub const ENDPOINT_ADDRESS: u32 = 1;
    pub const ADDRESS_SOCKET: u32 = 1;
    pub const SOCKET_ADDRESS: u32 = 2;
    pub const SOCKET_PORT: u32 = 3;
    pub const WRAPPER_VALUE: u32 = 1;
}

fn put_bytes(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_len(buf, tag, bytes.len());
    buf.extend_from_slice(bytes);
}

/// Key and length of a length-delimited field whose body follows.
fn put_len(buf: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// Encoded size of a length-delimited field with a one-byte key and a `len`-byte body.
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_varint(buf: &mut Vec<u8>, tag: u32, v: u64) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(v, buf);
}

/// `{value: v}` of a `UInt32Value` field (present even when 0).
fn put_u32_wrapper(buf: &mut Vec<u8>, tag: u32, v: u32) {
    let body = if v == 0 { 0 } else { 1 + encoded_len_varint(u64::from(v)) };
    put_len(buf, tag, body);
    if v != 0 {
        put_varint(buf, tags::WRAPPER_VALUE, u64::from(v));
    }
}

/// The `endpoints` field (2) of a `ClusterLoadAssignment` for one service port, byte for byte what
/// prost encodes for [`locality_lb_endpoints`] with [`EndpointFilter::Eds`]. Nested lengths are
/// computed up front, so each endpoint is written once, with no temporary buffers.
pub fn encode_locality_endpoints(svc: &Service, port: &ServicePort, labels: Option<&Labels>, out: &mut Vec<u8>) {
    // Locality label -> (encoded lb_endpoints fields, summed weight).
    let mut by_locality: BTreeMap<&str, (Vec<u8>, u32)> = BTreeMap::new();
    let metadata = tls_mode_metadata();
    for ep in eds_endpoints(svc, labels) {
        let Some(p) = svc.endpoint_port(ep, port) else { continue };
        let socket = field_len(ep.address.len()) + if p != 0 { 1 + encoded_len_varint(u64::from(p)) } else { 0 };
        let address = field_len(socket);
        let endpoint = field_len(address);
        let weight = ep.weight.max(1);
        let sidecar = ep.accepts_mtls(p);
        let lb = field_len(endpoint)
            + 2
            + if sidecar { metadata.len() } else { 0 }
            + field_len(1 + encoded_len_varint(u64::from(weight)));
        let entry = by_locality.entry(ep.locality.as_deref().unwrap_or_default()).or_default();
        let buf = &mut entry.0;
        buf.reserve(field_len(lb));
        put_len(buf, tags::LLE_LB_ENDPOINTS, lb);
        put_len(buf, tags::LB_ENDPOINT, endpoint);
        put_len(buf, tags::ENDPOINT_ADDRESS, address);
        put_len(buf, tags::ADDRESS_SOCKET, socket);
        put_bytes(buf, tags::SOCKET_ADDRESS, ep.address.as_bytes());
        if p != 0 {
            put_varint(buf, tags::SOCKET_PORT, u64::from(p));
        }
        put_varint(buf, tags::LB_HEALTH, HealthStatus::Healthy as u64);
        if sidecar {
            buf.extend_from_slice(metadata);
        }
        put_u32_wrapper(buf, tags::LB_WEIGHT, weight);
        entry.1 = entry.1.saturating_add(weight);
    }
    for (label, (endpoints, weight)) in by_locality {
        let mut parts = label.splitn(3, '/');
        let region = parts.next().unwrap_or_default();
        let zone = parts.next().unwrap_or_default();
        let sub_zone = parts.next().unwrap_or_default();
        let part_len = |p: &str| if p.is_empty() { 0 } else { field_len(p.len()) };
        let loc = part_len(region) + part_len(zone) + part_len(sub_zone);
        let weight_len = if weight == 0 { 0 } else { 1 + encoded_len_varint(u64::from(weight)) };
        let lle = field_len(loc) + endpoints.len() + field_len(weight_len);
        out.reserve(field_len(lle));
        put_len(out, tags::CLA_ENDPOINTS, lle);
        put_len(out, tags::LLE_LOCALITY, loc);
        for (tag, part) in
            [(tags::LOCALITY_REGION, region), (tags::LOCALITY_ZONE, zone), (tags::LOCALITY_SUB_ZONE, sub_zone)]
        {
            if !part.is_empty() {
                put_bytes(out, tag, part.as_bytes());
            }
        }
        out.extend_from_slice(&endpoints);
        put_u32_wrapper(out, tags::LLE_WEIGHT, weight);
    }
}

/// `metadata` (field 3 of `LbEndpoint`): `{envoy.transport_socket_match: {tlsMode: istio}}`.
fn tls_mode_metadata() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let s = wire::Struct::new(&[("tlsMode", wire::Value::string("istio"))]);
        wire::metadata_field(tags::LB_METADATA, &[(TRANSPORT_SOCKET_MATCH_KEY, &s)])
    })
}

/// Endpoints usable over EDS: ready, IP addresses, carrying the subset labels.
fn eds_endpoints<'s>(svc: &'s Service, labels: Option<&'s Labels>) -> impl Iterator<Item = &'s Endpoint> {
    svc.endpoints.iter().filter(move |ep| {
        ep.ready && is_ip(&ep.address) && labels.is_none_or(|l| l.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
    })
}

/// The EDS answer for `outbound|<port>||<host>`: empty (but present) when nothing is ready, as
/// Envoy needs an answer for every EDS cluster to finish warming.
pub fn cluster_load_assignment(svc: &Service, port: &ServicePort) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: names::outbound_cluster(port.port, "", &svc.hostname),
        endpoints: locality_lb_endpoints(svc, port, EndpointFilter::Eds, None),
        ..Default::default()
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// Envoy locality from Istio's `region/zone/subzone` label.
fn locality(label: &str) -> Locality {
    let mut parts = label.splitn(3, '/');
    Locality {
        region: parts.next().unwrap_or_default().to_string(),
        zone: parts.next().unwrap_or_default().to_string(),
        sub_zone: parts.next().unwrap_or_default().to_string(),
    }
}

fn lb_endpoint(ep: &Endpoint, port: u16) -> LbEndpoint {
    let metadata = ep.accepts_mtls(port).then(|| {
        let mut fields = std::collections::HashMap::new();
        fields.insert("tlsMode".to_string(), Value { kind: Some(value::Kind::StringValue("istio".to_string())) });
        let mut filter_metadata = std::collections::HashMap::new();
        // One key per map: encoding stays deterministic despite prost's HashMaps.
        filter_metadata.insert(TRANSPORT_SOCKET_MATCH_KEY.to_string(), Struct { fields });
        Metadata { filter_metadata, ..Default::default() }
    });
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address: super::socket_addr(&ep.address, port),
            ..Default::default()
        })),
        health_status: HealthStatus::Healthy as i32,
        metadata,
        load_balancing_weight: Some(UInt32Value { value: ep.weight.max(1) }),
    }
}

/// Endpoints of one service port, grouped by locality (sorted by locality label); with subset
/// `labels`, only endpoints carrying all of them.
pub fn locality_lb_endpoints(
    svc: &Service,
    port: &ServicePort,
    filter: EndpointFilter,
    labels: Option<&Labels>,
) -> Vec<LocalityLbEndpoints> {
    let mut by_locality: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    let wanted = |ep: &Endpoint| labels.is_none_or(|l| l.iter().all(|(k, v)| ep.labels.get(k) == Some(v)));
    for ep in &svc.endpoints {
        if !ep.ready || !wanted(ep) {
            continue;
        }
        if filter == EndpointFilter::Eds && !is_ip(&ep.address) {
            continue;
        }
        if ep.address.starts_with("unix://") {
            // Unix domain socket endpoints (VM workloads) are not supported yet.
            continue;
        }
        let Some(p) = svc.endpoint_port(ep, port) else { continue };
        by_locality.entry(ep.locality.as_deref().unwrap_or_default()).or_default().push(lb_endpoint(ep, p));
    }
    if by_locality.is_empty()
        && labels.is_none_or(|l| l.is_empty())
        && filter == EndpointFilter::Dns
        && matches!(svc.resolution, Resolution::Dns | Resolution::DnsRoundRobin)
        && svc.selector.is_none()
    {
        // A DNS ServiceEntry without endpoints resolves its own host (istiod synthesizes this
        // endpoint when it converts the ServiceEntry).
        let synthetic = Endpoint {
            address: svc.hostname.clone(),
            ports: BTreeMap::new(),
            labels: BTreeMap::new(),
            service_account: None,
            namespace: svc.namespace.clone(),
            weight: 0,
            locality: None,
            ready: true,
            mtls_disabled_ports: Default::default(),
        };
        let p = port.target_port.unwrap_or(port.port);
        by_locality.insert("", vec![lb_endpoint(&synthetic, p)]);
    }
    by_locality
        .into_iter()
        .map(|(label, lb_endpoints)| {
            let weight = lb_endpoints
                .iter()
                .map(|e| e.load_balancing_weight.map_or(0, |w| w.value))
                .fold(0u32, u32::saturating_add);
            LocalityLbEndpoints {
                locality: Some(locality(label)),
                lb_endpoints,
                load_balancing_weight: Some(UInt32Value { value: weight }),
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use prost::Message;
    use rstest::rstest;

    use super::*;
    use crate::model::{Location, Protocol, ServiceOrigin};

    fn ep(addr: &str, ready: bool, sidecar: bool, weight: u32, locality: Option<&str>) -> Endpoint {
        let mut labels = BTreeMap::new();
        if sidecar {
            labels.insert("security.istio.io/tlsMode".to_string(), "istio".to_string());
        }
        Endpoint {
            address: addr.to_string(),
            ports: [("http".to_string(), 8080)].into_iter().collect(),
            labels,
            service_account: None,
            namespace: "default".into(),
            weight,
            locality: locality.map(str::to_string),
            ready,
            mtls_disabled_ports: Default::default(),
        }
    }

    fn svc(resolution: Resolution, origin: ServiceOrigin, endpoints: Vec<Endpoint>) -> (Service, ServicePort) {
        let port = ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Http,
            target_port: None,
            target_port_name: None,
        };
        let s = Service {
            hostname: "a.default.svc.cluster.local".into(),
            namespace: "default".into(),
            name: "a".into(),
            addresses: vec![],
            ports: vec![port.clone()],
            resolution,
            location: Location::MeshInternal,
            origin,
            selector: None,
            endpoints,
            service_accounts: Default::default(),
            export_to: Default::default(),
            created: String::new(),
        };
        (s, port)
    }

    #[test]
    fn groups_by_locality_weights_and_skips_unready() {
        let (s, p) = svc(
            Resolution::Static,
            ServiceOrigin::Kubernetes,
            vec![
                ep("10.0.0.1", true, true, 0, Some("us/east/a")),
                ep("10.0.0.2", false, true, 0, Some("us/east/a")),
                ep("10.0.0.3", true, false, 5, Some("us/east/a")),
                ep("10.0.0.4", true, false, 0, None),
            ],
        );
        let cla = cluster_load_assignment(&s, &p);
        assert_eq!(cla.cluster_name, "outbound|80||a.default.svc.cluster.local");
        assert_eq!(cla.endpoints.len(), 2);
        // "" sorts before "us/east/a".
        assert_eq!(cla.endpoints[0].locality, Some(Locality::default()));
        assert_eq!(cla.endpoints[1].locality.as_ref().unwrap().zone, "east");
        assert_eq!(cla.endpoints[1].lb_endpoints.len(), 2);
        assert_eq!(cla.endpoints[1].load_balancing_weight.unwrap().value, 6);
        assert!(cla.endpoints[1].lb_endpoints[0].metadata.is_some());
        assert!(cla.endpoints[1].lb_endpoints[1].metadata.is_none());
    }

    #[test]
    fn hand_encoded_assignments_match_prost() {
        let (s, p) = svc(
            Resolution::Static,
            ServiceOrigin::Kubernetes,
            vec![
                ep("10.0.0.1", true, true, 0, Some("us/east/a")),
                ep("10.0.0.2", false, true, 0, Some("us/east/a")),
                ep("10.0.0.3", true, false, 5, Some("us/east")),
                ep("10.0.0.4", true, false, 0, None),
                ep("db.example.com", true, false, 0, None),
            ],
        );
        let mut sub = Labels::new();
        sub.insert("security.istio.io/tlsMode".into(), "istio".into());
        for labels in [None, Some(&sub)] {
            let want = ClusterLoadAssignment {
                cluster_name: "c".into(),
                endpoints: locality_lb_endpoints(&s, &p, EndpointFilter::Eds, labels),
                ..Default::default()
            };
            let mut got = ClusterLoadAssignment { cluster_name: "c".into(), ..Default::default() }.encode_to_vec();
            encode_locality_endpoints(&s, &p, labels, &mut got);
            assert_eq!(got, want.encode_to_vec());
        }
    }

    #[rstest]
    #[case(EndpointFilter::Eds, 0)]
    #[case(EndpointFilter::Dns, 1)]
    fn hostnames_only_in_dns_clusters(#[case] filter: EndpointFilter, #[case] want: usize) {
        let (s, p) =
            svc(Resolution::Dns, ServiceOrigin::ServiceEntry, vec![ep("db.example.com", true, false, 0, None)]);
        let n: usize = locality_lb_endpoints(&s, &p, filter, None).iter().map(|l| l.lb_endpoints.len()).sum();
        assert_eq!(n, want);
    }

    #[test]
    fn dns_service_without_endpoints_resolves_its_host() {
        let (s, mut p) = svc(Resolution::Dns, ServiceOrigin::ServiceEntry, vec![]);
        p.target_port = Some(8443);
        let l = locality_lb_endpoints(&s, &p, EndpointFilter::Dns, None);
        let lb_endpoint::HostIdentifier::Endpoint(e) = l[0].lb_endpoints[0].host_identifier.clone().unwrap() else {
            panic!("not an endpoint")
        };
        let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
            e.address.unwrap().address
        else {
            panic!("not a socket address")
        };
        assert_eq!(sa.address, "a.default.svc.cluster.local");
        assert_eq!(
            sa.port_specifier,
            Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(8443))
        );
    }
}
