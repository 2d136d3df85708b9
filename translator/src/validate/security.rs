//! PeerAuthentication rules (Istio's `ValidatePeerAuthentication` and the CRD's CEL rules).

use crate::api::istio::PeerAuthenticationSpec;

use super::common::{Report, check_match_labels_selector, key, validate_port};

pub(crate) fn check_peer_authentication(r: &mut Report, spec: &PeerAuthenticationSpec) {
    let has_labels = spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty());
    if let Some(ports) = &spec.port_level_mtls {
        // Port-level modes are keyed by workload port, so they need a workload selector.
        if !has_labels {
            r.error("spec.portLevelMtls", "portLevelMtls requires selector");
        }
        if ports.is_empty() {
            r.error("spec.portLevelMtls", "spec.portLevelMtls in body should have at least 1 properties");
        }
        for port in ports.keys() {
            r.check(key("spec.portLevelMtls", &port.to_string()), validate_port(i64::from(*port)));
        }
    }
    check_match_labels_selector(r, "spec.selector", spec.selector.as_ref());
}
