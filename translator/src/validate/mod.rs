//! Validation of Istio objects with Istio's own rules.
//!
//! [`validate_object`] applies the per-object rules of Istio's validating webhook
//! (`pkg/config/validation` in istio/istio) and of the CRD schemas (required fields, ranges, CEL
//! rules), so config `kubectl apply` would refuse is refused here too, with the same words where
//! they help a search. [`validate_set`] adds the cross-object checks of `istioctl analyze` that
//! users rely on: unknown destination hosts and subsets, unknown gateways, and VirtualServices that
//! fight over a host on sidecars.
//!
//! Both are pure functions of their arguments. Every problem is a [`Diagnostic`] naming the object
//! (`Kind namespace/name`), the field (`spec.http[0].route[1].weight`) and a lowercase-first
//! message; errors mean Istio would reject the object, warnings mean it would accept it but
//! probably not do what was meant.

mod common;
mod destination_rule;
mod gateway;
mod security;
mod service_entry;
mod set;
mod sidecar;
mod virtual_service;

pub use set::validate_set;

use crate::api::Object;
use crate::diag::Diagnostic;

use common::Report;

/// Checks one object against Istio's rules for its kind. Kubernetes kinds have no rules here
/// (their parser already checked their shape) and yield nothing.
pub fn validate_object(obj: &Object) -> Vec<Diagnostic> {
    let key = obj.key();
    let mut r = Report::new(key.to_string());
    match obj {
        Object::VirtualService(vs) => virtual_service::check(&mut r, &key.namespace, &vs.spec),
        Object::DestinationRule(dr) => destination_rule::check(&mut r, &key.namespace, &dr.spec),
        Object::Gateway(gw) => gateway::check(&mut r, &key.name, &gw.spec),
        Object::Sidecar(sc) => sidecar::check(&mut r, &key.namespace, &sc.spec),
        Object::ServiceEntry(se) => service_entry::check_service_entry(&mut r, &key.namespace, &se.spec),
        Object::WorkloadEntry(we) => service_entry::check_workload_entry(&mut r, "spec", &we.spec, None, true),
        Object::PeerAuthentication(pa) => security::check_peer_authentication(&mut r, &pa.spec),
        Object::Namespace(_)
        | Object::Service(_)
        | Object::EndpointSlice(_)
        | Object::Pod(_)
        | Object::Secret(_)
        | Object::ConfigMap(_) => {}
    }
    r.finish()
}

#[cfg(test)]
mod tests;
