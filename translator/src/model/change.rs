//! What changed between two worlds, as far as reusing a previous translation is concerned.
//!
//! Endpoints change far more often than anything else (every pod start, stop and readiness flip).
//! Most of a proxy's configuration does not read them: only `ClusterLoadAssignment`s do, besides
//! a few exceptions listed in [`WorldChange::between`]. When two worlds differ in nothing but such
//! endpoints, everything else of every translation stays valid and only the assignments of the
//! changed services are rebuilt ([`crate::envoy::endpoint::assignment`]). The differential tests
//! check the result against a translation from scratch.

use std::collections::BTreeSet;

use super::config::{Config, ConfigIndex};
use super::{Resolution, Service, Workload, World};

/// How a world differs from the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorldChange {
    /// Equal worlds.
    Same,
    /// Only the endpoints of these services (`(namespace, hostname)`) differ, and no translation
    /// reads them outside their `ClusterLoadAssignment`s.
    Endpoints(BTreeSet<(String, String)>),
    /// Only VirtualServices differ: listeners and route configurations are rebuilt, clusters and
    /// endpoints are kept where nothing imports services through VirtualServices (no Sidecar
    /// resource: see [`crate::incremental::update`]).
    Routes,
    /// Anything else: translate again.
    Other,
}

impl WorldChange {
    /// Compares `new` with `old`.
    ///
    /// Endpoints are read outside EDS by DNS and passthrough services (inline endpoints of DNS
    /// clusters, listeners per endpoint IP of headless services) and by named target ports (the
    /// inbound side resolves them from endpoints); a change to those counts as `Other`. So does a
    /// change to a workload other than its IP addresses.
    pub fn between(old: &World, new: &World) -> WorldChange {
        if old.mesh != new.mesh
            || old.namespaces != new.namespaces
            || old.services.len() != new.services.len()
            || old.workloads.len() != new.workloads.len()
            || !old.workloads.iter().zip(&new.workloads).all(|((k1, w1), (k2, w2))| k1 == k2 && same_workload(w1, w2))
        {
            return WorldChange::Other;
        }
        if old.config != new.config {
            let routes_only = same_but_virtual_services(&old.config, &new.config)
                && old.services.len() == new.services.len()
                && old.services.iter().zip(&new.services).all(|(a, b)| std::sync::Arc::ptr_eq(a, b) || a == b);
            return if routes_only { WorldChange::Routes } else { WorldChange::Other };
        }
        let mut changed = BTreeSet::new();
        for (a, b) in old.services.iter().zip(&new.services) {
            if std::sync::Arc::ptr_eq(a, b) || a == b {
                continue;
            }
            if !same_but_endpoints(a, b) || !eds_only(a) {
                return WorldChange::Other;
            }
            changed.insert((b.namespace.clone(), b.hostname.clone()));
        }
        if changed.is_empty() { WorldChange::Same } else { WorldChange::Endpoints(changed) }
    }
}

/// Equal but for IP addresses (which reach translations only through endpoints). Destructured, so
/// a new field does not compile until it is placed on one side or the other.
fn same_workload(a: &Workload, b: &Workload) -> bool {
    let Workload { name, namespace, ips: _, labels, service_account, named_ports } = a;
    *name == b.name
        && *namespace == b.namespace
        && *labels == b.labels
        && *service_account == b.service_account
        && *named_ports == b.named_ports
}

/// Whether a service's endpoints are read only by its `ClusterLoadAssignment`s.
fn eds_only(s: &Service) -> bool {
    s.resolution == Resolution::Static && s.ports.iter().all(|p| p.target_port_name.is_none())
}

/// Equal but for endpoints (destructured, as [`same_workload`]).
fn same_but_endpoints(a: &Service, b: &Service) -> bool {
    let Service {
        hostname,
        namespace,
        name,
        addresses,
        ports,
        resolution,
        location,
        origin,
        selector,
        endpoints: _,
        service_accounts,
        export_to,
        created,
    } = a;
    *hostname == b.hostname
        && *namespace == b.namespace
        && *name == b.name
        && *addresses == b.addresses
        && *ports == b.ports
        && *resolution == b.resolution
        && *location == b.location
        && *origin == b.origin
        && *selector == b.selector
        && *service_accounts == b.service_accounts
        && *export_to == b.export_to
        && *created == b.created
}

/// Equal but for VirtualServices and their indexes (destructured, as [`same_workload`]).
fn same_but_virtual_services(a: &Config, b: &Config) -> bool {
    let Config {
        virtual_services: _,
        destination_rules,
        gateways,
        sidecars,
        workload_entries,
        peer_authentications,
        index,
    } = a;
    let ConfigIndex {
        mesh_virtual_services: _,
        virtual_services_by_gateway: _,
        virtual_services_by_host: _,
        wildcard_virtual_services: _,
        destination_rules: dr_index,
        sidecars_by_namespace,
        workload_entries_by_namespace,
        peer_authentications_by_namespace,
    } = index;
    *destination_rules == b.destination_rules
        && *gateways == b.gateways
        && *sidecars == b.sidecars
        && *workload_entries == b.workload_entries
        && *peer_authentications == b.peer_authentications
        && *dr_index == b.index.destination_rules
        && *sidecars_by_namespace == b.index.sidecars_by_namespace
        && *workload_entries_by_namespace == b.index.workload_entries_by_namespace
        && *peer_authentications_by_namespace == b.index.peer_authentications_by_namespace
}
