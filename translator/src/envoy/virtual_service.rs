//! Small VirtualService queries shared by the sidecar and gateway builders.

use crate::api::istio::VirtualServiceSpec;

/// Every destination host a VirtualService routes or mirrors to (already resolved to FQDNs).
pub fn destination_hosts(spec: &VirtualServiceSpec) -> impl Iterator<Item = &str> {
    let http = spec.http.iter().flat_map(|r| {
        r.route
            .iter()
            .filter_map(|d| d.destination.as_ref())
            .chain(r.mirror.iter())
            .chain(r.mirrors.iter().filter_map(|m| m.destination.as_ref()))
    });
    let tcp = spec.tcp.iter().flat_map(|r| r.route.iter().filter_map(|d| d.destination.as_ref()));
    let tls = spec.tls.iter().flat_map(|r| r.route.iter().filter_map(|d| d.destination.as_ref()));
    http.chain(tcp).chain(tls).map(|d| d.host.as_str())
}
