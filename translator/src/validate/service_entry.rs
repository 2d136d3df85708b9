//! ServiceEntry and WorkloadEntry rules (Istio's `ValidateServiceEntry`, `ValidateWorkloadEntry` and
//! the CRD's CEL rules, whose messages are what `kubectl apply` shows).

use std::collections::BTreeSet;

use crate::api::istio::{SeResolution, ServiceEntrySpec, WorkloadEntrySpec};

use super::common::{
    Proto, Report, at, check_export_to, check_selector_labels, idx, is_ip, is_valid_endpoint_port_name, key,
    validate_fqdn, validate_ip_subnet, validate_labels, validate_partial_wildcard, validate_port, validate_port_name,
    validate_protocol, validate_wildcard_domain,
};

const UNIX_PREFIX: &str = "unix://";

pub(crate) fn check_service_entry(r: &mut Report, namespace: &str, spec: &ServiceEntrySpec) {
    if let Some(sel) = &spec.workload_selector {
        check_selector_labels(r, "spec.workloadSelector.labels", &sel.labels);
        if sel.labels.is_empty() {
            r.warn(
                "spec.workloadSelector",
                "service entry: workload selector specified without labels, will be applied to all services in namespace",
            );
        }
        if !spec.endpoints.is_empty() {
            r.error("spec", "only one of WorkloadSelector or Endpoints can be set");
        }
    }

    if spec.hosts.is_empty() {
        r.error("spec.hosts", "required value: service entry must have at least one host");
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        let path = idx("spec.hosts", i);
        if h == "*" {
            r.error(path, "hostname cannot be wildcard");
        } else {
            r.check(path.clone(), validate_wildcard_domain(h));
            if let Err(e) = validate_partial_wildcard(h) {
                r.warn(path, e);
            }
        }
    }

    let resolution = spec.resolution.unwrap_or(SeResolution::None);
    let mut cidr = false;
    for (i, a) in spec.addresses.iter().enumerate() {
        cidr |= a.contains('/');
        r.check(idx("spec.addresses", i), validate_ip_subnet(a));
    }
    if cidr && !matches!(resolution, SeResolution::None | SeResolution::Static) {
        r.error("spec.addresses", "CIDR addresses are allowed only for NONE/STATIC resolution types");
    }

    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let path = idx("spec.ports", i);
        if p.name.is_empty() {
            r.error(at(&path, "name"), "required value: port name is required");
        } else {
            if !names.insert(p.name.as_str()) {
                r.error(
                    at(&path, "name"),
                    format!("duplicate value: service entry port name {:?} already defined", p.name),
                );
            }
            r.check(at(&path, "name"), validate_port_name(&p.name));
        }
        if !numbers.insert(p.number) {
            r.error(
                at(&path, "number"),
                format!("port number cannot be duplicated: service entry port {} already defined", p.number),
            );
        }
        if let Some(t) = p.target_port {
            r.check(at(&path, "targetPort"), validate_port(i64::from(t)));
        }
        let protocol = p.protocol.as_deref().unwrap_or_default();
        if spec.addresses.is_empty() && (protocol.is_empty() || protocol == "TCP") {
            r.warn(
                path.clone(),
                "addresses are required for ports serving TCP (or unset) protocol when ISTIO_META_DNS_AUTO_ALLOCATE is not set on a proxy",
            );
        }
        r.check(at(&path, "protocol"), validate_protocol(protocol));
        r.check(at(&path, "number"), validate_port(i64::from(p.number)));
    }

    match resolution {
        SeResolution::None => {
            if !spec.endpoints.is_empty() {
                r.error("spec.endpoints", "NONE mode cannot set endpoints");
            }
            if spec.workload_selector.is_some() {
                r.warn("spec.workloadSelector", "workloadSelector should not be set when resolution mode is NONE");
            }
        }
        SeResolution::Static => {
            for (i, ep) in spec.endpoints.iter().enumerate() {
                check_workload_entry(r, &idx("spec.endpoints", i), ep, Some(&names), false);
            }
        }
        SeResolution::Dns | SeResolution::DnsRoundRobin => {
            if spec.endpoints.is_empty() {
                for (i, h) in spec.hosts.iter().enumerate() {
                    if validate_fqdn(h).is_err() && h != "*" {
                        r.error(
                            idx("spec.hosts", i),
                            format!(
                                "hosts must be FQDN if no endpoints are provided for resolution mode {}",
                                resolution.as_str()
                            ),
                        );
                    }
                }
            }
            if resolution == SeResolution::DnsRoundRobin && spec.endpoints.len() > 1 {
                r.error("spec.endpoints", "DNS_ROUND_ROBIN mode cannot have multiple endpoints");
            }
            for (i, ep) in spec.endpoints.iter().enumerate() {
                check_workload_entry(r, &idx("spec.endpoints", i), ep, Some(&names), true);
            }
            if !spec.addresses.is_empty()
                && spec.hosts.len() > 1
                && spec.ports.iter().any(|p| Proto::parse(p.protocol.as_deref().unwrap_or_default()).is_tcp())
            {
                r.warn(
                    "spec.hosts",
                    "service entry can not have more than one host specified simultaneously with address and tcp port",
                );
            }
        }
    }

    // Plain TCP cannot tell several hosts apart (no Host header, no SNI), unless NONE ignores hosts.
    if resolution != SeResolution::None && spec.hosts.len() > 1 {
        let opaque = spec.ports.iter().any(|p| {
            let proto = Proto::parse(p.protocol.as_deref().unwrap_or_default());
            !proto.is_http() && !proto.is_tls()
        });
        if opaque {
            r.error("spec.ports", "multiple hosts provided with non-HTTP, non-TLS ports");
        }
    }

    check_export_to(r, "spec.exportTo", namespace, &spec.export_to, true, false);
}

/// A WorkloadEntry spec or a ServiceEntry endpoint. `service_ports` are the ServiceEntry's port
/// names (endpoints only); `allow_fqdn` is false for STATIC ServiceEntry endpoints.
pub(crate) fn check_workload_entry(
    r: &mut Report,
    path: &str,
    we: &WorkloadEntrySpec,
    service_ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
) {
    let addr = we.address.as_str();
    if addr.is_empty() {
        if we.network.is_empty() {
            r.error(at(path, "address"), "address is required");
            return;
        }
        r.warn(at(path, "address"), format!("address is unset with network {:?}", we.network));
    }
    let unix = addr.strip_prefix(UNIX_PREFIX);
    if let Some(sock) = unix {
        if !(sock.starts_with('/') || sock.starts_with('@')) {
            r.error(at(path, "address"), "UDS must be an absolute path or abstract socket");
        } else if sock.ends_with('/') {
            r.error(at(path, "address"), "UDS may not be a dir");
        }
        if !we.ports.is_empty() {
            r.error(at(path, "ports"), "UDS may not include ports");
        }
        if let Some(sp) = service_ports
            && sp.len() != 1
        {
            r.error(at(path, "address"), "exactly 1 service port required for unix endpoints");
        }
    } else if !addr.is_empty() && !is_ip(addr) {
        if !allow_fqdn {
            r.error(at(path, "address"), format!("endpoint address {addr:?} is not a valid IP address"));
        } else if validate_fqdn(addr).is_err() {
            r.error(at(path, "address"), format!("endpoint address {addr:?} is not a valid FQDN or an IP address"));
        }
    }
    for (name, port) in &we.ports {
        let ppath = key(&at(path, "ports"), name);
        if let Some(sp) = service_ports
            && !sp.contains(name.as_str())
        {
            r.error(ppath.clone(), format!("endpoint port {port} is not defined by the service entry"));
        }
        if !is_valid_endpoint_port_name(name) {
            r.error(at(path, "ports"), format!("invalid value: {name:?}: port name must be valid"));
        } else {
            r.check(ppath.clone(), validate_port_name(name).map_err(|e| format!("invalid value: {e}")));
        }
        r.check(ppath, validate_port(i64::from(*port)));
    }
    r.check(at(path, "labels"), validate_labels(&we.labels));
}
