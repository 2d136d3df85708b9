//! Sidecar rules (Istio's `ValidateSidecar`).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::istio::{CaptureMode, OutboundTrafficMode, Port, SidecarSpec};

use super::common::{
    Proto, Report, at, check_selector_labels, idx, validate_fqdn, validate_ip, validate_namespace_slash_host,
    validate_port, validate_port_name, validate_protocol, validate_unix_address,
};
use super::destination_rule::check_connection_pool;
use super::gateway::check_server_tls;
use super::virtual_service::check_destination;

const UNIX_PREFIX: &str = "unix://";

pub(crate) fn check(r: &mut Report, namespace: &str, spec: &SidecarSpec) {
    if let Some(sel) = &spec.workload_selector {
        check_selector_labels(r, "spec.workloadSelector.labels", &sel.labels);
        if sel.labels.is_empty() {
            r.warn(
                "spec.workloadSelector",
                "sidecar: workload selector specified without labels, will be applied to all services in namespace",
            );
        }
    }
    if spec.egress.is_empty()
        && spec.ingress.is_empty()
        && spec.outbound_traffic_policy.is_none()
        && spec.inbound_connection_pool.is_none()
    {
        r.error("spec", "sidecar: empty configuration provided");
        return;
    }

    let mut ports = BTreeSet::new();
    for (i, ing) in spec.ingress.iter().enumerate() {
        let path = idx("spec.ingress", i);
        let Some(port) = &ing.port else {
            r.error(at(&path, "port"), "sidecar: port is required for ingress listeners");
            continue;
        };
        if port.target_port.is_some_and(|t| t > 0) {
            r.error(at(&path, "port.targetPort"), "targetPort has no impact on Sidecars");
        }
        check_port_and_bind(r, &path, port, ing.bind.as_deref().unwrap_or_default());
        if !ports.insert(port.number) {
            r.error(at(&path, "port.number"), "sidecar: ports on IP bound listeners must be unique");
        }
        if let Some(ep) = ing.default_endpoint.as_deref().filter(|e| !e.is_empty()) {
            check_default_endpoint(r, &at(&path, "defaultEndpoint"), ep);
        }
        if let Some(tls) = &ing.tls {
            let tpath = at(&path, "tls");
            if !tls.subject_alt_names.is_empty() {
                r.error(at(&tpath, "subjectAltNames"), "sidecar: subjectAltNames is not supported in ingress tls");
            }
            if tls.https_redirect == Some(true) {
                r.error(at(&tpath, "httpsRedirect"), "sidecar: httpsRedirect is not supported");
            }
            if tls.credential_name.as_deref().is_some_and(|c| !c.is_empty()) {
                r.error(at(&tpath, "credentialName"), "sidecar: credentialName is not currently supported");
            }
            if let Some(
                mode @ (crate::api::istio::ServerTlsMode::IstioMutual
                | crate::api::istio::ServerTlsMode::AutoPassthrough),
            ) = tls.mode
            {
                r.error(
                    at(&tpath, "mode"),
                    format!("configuration is invalid: cannot set mode to {} in sidecar ingress tls", mode.as_str()),
                );
            }
            check_server_tls(r, &tpath, tls);
        }
        if let Some(cp) = &ing.connection_pool {
            check_connection_pool(r, &at(&path, "connectionPool"), cp);
            if cp.http.is_some() && !Proto::parse(&port.protocol).is_http() {
                r.warn(
                    at(&path, "connectionPool.http"),
                    format!(
                        "sidecar: HTTP connection pool settings are configured for port {} ({:?}) but its protocol is not HTTP ({}); only TCP settings will apply",
                        port.number, port.name, port.protocol
                    ),
                );
            }
        }
    }
    if let Some(cp) = &spec.inbound_connection_pool {
        check_connection_pool(r, "spec.inboundConnectionPool", cp);
    }

    let mut ports = BTreeSet::new();
    let mut uds = BTreeSet::new();
    let mut catch_all_found = false;
    for (i, eg) in spec.egress.iter().enumerate() {
        let path = idx("spec.egress", i);
        let bind = eg.bind.as_deref().unwrap_or_default();
        match &eg.port {
            None => {
                if catch_all_found {
                    r.error(at(&path, "port"), "sidecar: egress can have only one listener with empty port");
                    continue;
                }
                if i == spec.egress.len() - 1 {
                    catch_all_found = true;
                } else {
                    r.error(
                        at(&path, "port"),
                        "sidecar: the egress listener with empty port should be the last listener in the list",
                    );
                }
            }
            Some(port) => {
                if port.target_port.is_some_and(|t| t > 0) {
                    r.error(at(&path, "port.targetPort"), "targetPort has no impact on Sidecars");
                }
                check_egress_port(r, &path, port, bind, eg.capture_mode);
                if port.number == 0 {
                    if !uds.insert(bind.to_string()) {
                        r.error(at(&path, "bind"), "sidecar: unix domain socket values for listeners must be unique");
                    }
                } else if !ports.insert(port.number) {
                    r.error(at(&path, "port.number"), "sidecar: ports on IP bound listeners must be unique");
                }
            }
        }
        if eg.hosts.is_empty() {
            r.error(at(&path, "hosts"), "sidecar: egress listener must contain at least one host");
            continue;
        }
        let mut by_ns: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (j, h) in eg.hosts.iter().enumerate() {
            let hpath = idx(&at(&path, "hosts"), j);
            if let Some((ns, svc)) = h.split_once('/') {
                let ns = if ns == "." { namespace.to_string() } else { ns.to_string() };
                let entry = by_ns.entry(ns).or_default();
                let dup = if svc == "*" { !entry.is_empty() } else { entry.contains(svc) || entry.contains("*") };
                if dup {
                    r.warn(hpath.clone(), format!("duplicated egress host: {h}"));
                }
                entry.insert(svc.to_string());
            }
            for e in validate_namespace_slash_host(h, false) {
                r.error(hpath.clone(), e);
            }
        }
        if by_ns.get("*").is_some_and(|s| s.contains("*")) && by_ns.len() != 1 {
            r.warn(at(&path, "hosts"), "`*/*` host select all resources, no other hosts can be added");
        }
    }

    if let Some(otp) = &spec.outbound_traffic_policy
        && let Some(proxy) = &otp.egress_proxy
    {
        let path = "spec.outboundTrafficPolicy.egressProxy";
        if otp.mode.unwrap_or(OutboundTrafficMode::RegistryOnly) != OutboundTrafficMode::AllowAny {
            r.error(path, "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode");
        } else {
            r.check(at(path, "host"), validate_fqdn(&proxy.host));
            if proxy.port.is_none() {
                r.error(at(path, "port"), "sidecar: egress_proxy port must be non-nil");
            } else {
                check_destination(r, path, proxy);
            }
        }
    }
}

fn check_port_and_bind(r: &mut Report, path: &str, port: &Port, bind: &str) {
    if !port.name.is_empty() {
        r.check(at(path, "port.name"), validate_port_name(&port.name));
    }
    r.check(at(path, "port.protocol"), validate_protocol(&port.protocol));
    r.check(at(path, "port.number"), validate_port(i64::from(port.number)));
    if !bind.is_empty() {
        r.check(at(path, "bind"), validate_ip(bind));
    }
}

fn check_egress_port(r: &mut Report, path: &str, port: &Port, bind: &str, capture: Option<CaptureMode>) {
    if port.number != 0 {
        check_port_and_bind(r, path, port, bind);
        return;
    }
    if !port.name.is_empty() {
        r.check(at(path, "port.name"), validate_port_name(&port.name));
    }
    r.check(at(path, "port.protocol"), validate_protocol(&port.protocol));
    match bind.strip_prefix(UNIX_PREFIX) {
        None => r.error(at(path, "bind"), "sidecar: ports with 0 value must have a unix domain socket bind address"),
        Some(addr) => r.check(at(path, "bind"), validate_unix_address(addr)),
    }
    if !matches!(capture, None | Some(CaptureMode::Default | CaptureMode::None)) {
        r.error(at(path, "captureMode"), "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners");
    }
}

fn check_default_endpoint(r: &mut Report, path: &str, ep: &str) {
    if let Some(addr) = ep.strip_prefix(UNIX_PREFIX) {
        r.check(path, validate_unix_address(addr));
        return;
    }
    // Forms: 127.0.0.1:port, 0.0.0.0:port, [::1]:port, [::]:port, :port.
    let Some((host, port)) = ep.rsplit_once(':') else {
        r.error(path, format!("address {ep}: missing port in address"));
        return;
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if !host.is_empty() && !matches!(host, "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        r.error(
            path,
            "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,unix://filepath or unset",
        );
    }
    match port.parse::<i64>() {
        Ok(p) => r.check(path, validate_port(p)),
        Err(e) => r.error(path, format!("sidecar: defaultEndpoint port ({port}) is not a number: {e}")),
    }
}
