//! PeerAuthentication resolution: the mutual-TLS mode a workload accepts, per port.
//!
//! As istiod (`ComposePeerAuthentication`): three levels, each the oldest policy of its kind
//! (creation time, then namespace/name): mesh (no selector, in the root namespace), namespace (no
//! selector, in the workload's namespace) and workload (a selector matching the workload's labels,
//! outside the root namespace). Resolution starts at PERMISSIVE and walks mesh, namespace,
//! workload; a level whose mode is UNSET (or absent) inherits. `portLevelMtls` is read only from
//! the workload-level policy, keyed by the workload (target) port; an UNSET port inherits the
//! workload's resolved mode.

use std::collections::BTreeMap;

use crate::api::istio::{MtlsMode, MutualTls, PeerAuthentication};

use super::config::Config;
use super::{Labels, Service, World};

/// A resolved mutual-TLS mode (UNSET never survives resolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Mtls {
    /// Plaintext only.
    Disable,
    /// Plaintext or mutual TLS.
    #[default]
    Permissive,
    /// Mutual TLS only.
    Strict,
}

/// The modes a workload accepts: one for the workload, overrides per target port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EffectiveMtls {
    /// Mode of every port without an override.
    pub mode: Mtls,
    /// Modes of target ports named in the workload policy's `portLevelMtls`.
    pub ports: BTreeMap<u32, Mtls>,
}

impl EffectiveMtls {
    /// The mode of target port `port`.
    pub fn port(&self, port: u16) -> Mtls {
        self.ports.get(&u32::from(port)).copied().unwrap_or(self.mode)
    }
}

/// The explicit mode of `mtls`, `None` when UNSET or absent (inherit).
fn explicit(mtls: Option<&MutualTls>) -> Option<Mtls> {
    match mtls.and_then(|m| m.mode)? {
        MtlsMode::Unset => None,
        MtlsMode::Disable => Some(Mtls::Disable),
        MtlsMode::Permissive => Some(Mtls::Permissive),
        MtlsMode::Strict => Some(Mtls::Strict),
    }
}

/// Whether a policy applies to a whole namespace (no selector, or an empty one).
fn namespace_wide(pa: &PeerAuthentication) -> bool {
    pa.spec.selector.as_ref().is_none_or(|s| s.match_labels.is_empty())
}

/// The mode of the mesh and namespace levels for `namespace`, ignoring workload policies. istiod
/// uses it for a service's namespace to decide whether auto-mTLS applies at all.
pub fn namespace_mtls(world: &World, namespace: &str) -> Mtls {
    namespace_mode(&world.config, &world.mesh.root_namespace, namespace)
}

fn namespace_mode(config: &Config, root: &str, namespace: &str) -> Mtls {
    let mut mode = Mtls::Permissive;
    // Lists are oldest first, so the first namespace-wide policy of a level wins.
    if let Some(m) = config.peer_authentications_in(root).find(|p| namespace_wide(p)) {
        mode = explicit(m.spec.mtls.as_ref()).unwrap_or(mode);
    }
    if namespace != root
        && let Some(n) = config.peer_authentications_in(namespace).find(|p| namespace_wide(p))
    {
        mode = explicit(n.spec.mtls.as_ref()).unwrap_or(mode);
    }
    mode
}

/// The effective mutual-TLS modes of a workload in `namespace` with `labels`.
pub fn workload_mtls(world: &World, namespace: &str, labels: &Labels) -> EffectiveMtls {
    resolve(&world.config, &world.mesh.root_namespace, namespace, labels)
}

/// [`workload_mtls`] from the configuration and the root namespace (for the world builder).
pub fn resolve(config: &Config, root: &str, namespace: &str, labels: &Labels) -> EffectiveMtls {
    if config.peer_authentications.is_empty() {
        return EffectiveMtls::default();
    }
    let mode = namespace_mode(config, root, namespace);
    if namespace == root {
        // istiod ignores selector policies of the root namespace.
        return EffectiveMtls { mode, ports: BTreeMap::new() };
    }
    let workload = config.peer_authentications_in(namespace).find(|p| {
        p.spec
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty() && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
    });
    let Some(workload) = workload else {
        return EffectiveMtls { mode, ports: BTreeMap::new() };
    };
    let mode = explicit(workload.spec.mtls.as_ref()).unwrap_or(mode);
    let ports = workload
        .spec
        .port_level_mtls
        .iter()
        .flatten()
        .map(|(port, m)| (*port, explicit(Some(m)).unwrap_or(mode)))
        .collect();
    EffectiveMtls { mode, ports }
}

/// Records on the endpoints of `service` the ports where their own workload's policy is
/// DISABLE: there they lose the `tlsMode: istio` metadata, so auto-mTLS clients send plaintext
/// (istiod's `mtlsChecker`). Only endpoints with a sidecar are looked at.
pub fn mark_disabled_endpoints(service: &mut Service, config: &Config, root: &str) {
    if config.peer_authentications.is_empty() {
        return;
    }
    for i in 0..service.endpoints.len() {
        let ep = &service.endpoints[i];
        if !ep.has_sidecar() {
            continue;
        }
        let mtls = resolve(config, root, &ep.namespace, &ep.labels);
        if mtls.mode != Mtls::Disable && !mtls.ports.values().any(|m| *m == Mtls::Disable) {
            continue;
        }
        let disabled: std::collections::BTreeSet<u16> = service
            .ports
            .iter()
            .filter_map(|sp| service.endpoint_port(ep, sp))
            .filter(|p| mtls.port(*p) == Mtls::Disable)
            .collect();
        service.endpoints[i].mtls_disabled_ports = disabled;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;
    use serde_json::json;

    use super::*;
    use crate::api::parse_object;
    use crate::model::{MeshConfig, build_world};

    fn pa(ns: &str, name: &str, created: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
            "spec": spec,
        })
    }

    fn world(objects: Vec<serde_json::Value>) -> World {
        let objects: Vec<_> = objects.into_iter().map(|o| parse_object(o).unwrap()).collect();
        let (world, diags) = build_world(&objects, &MeshConfig::default());
        assert!(diags.is_empty(), "{diags:?}");
        world
    }

    fn labels(l: &[(&str, &str)]) -> Labels {
        l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const T1: &str = "2024-01-01T00:00:00Z";
    const T2: &str = "2024-02-01T00:00:00Z";

    #[test]
    fn no_policy_is_permissive() {
        let w = world(vec![]);
        assert_eq!(workload_mtls(&w, "default", &labels(&[("app", "a")])), EffectiveMtls::default());
        assert_eq!(namespace_mtls(&w, "default"), Mtls::Permissive);
    }

    #[rstest]
    // Mesh level applies everywhere.
    #[case(vec![pa("istio-system", "m", T1, json!({"mtls": {"mode": "STRICT"}}))], Mtls::Strict)]
    // Namespace overrides mesh.
    #[case(vec![pa("istio-system", "m", T1, json!({"mtls": {"mode": "STRICT"}})),
                pa("default", "n", T1, json!({"mtls": {"mode": "DISABLE"}}))], Mtls::Disable)]
    // UNSET inherits from the level above.
    #[case(vec![pa("istio-system", "m", T1, json!({"mtls": {"mode": "STRICT"}})),
                pa("default", "n", T1, json!({"mtls": {"mode": "UNSET"}}))], Mtls::Strict)]
    #[case(vec![pa("istio-system", "m", T1, json!({})),
                pa("default", "n", T1, json!({}))], Mtls::Permissive)]
    // Oldest wins within a level, whatever the name order.
    #[case(vec![pa("default", "a", T2, json!({"mtls": {"mode": "DISABLE"}})),
                pa("default", "b", T1, json!({"mtls": {"mode": "STRICT"}}))], Mtls::Strict)]
    // Same age: the first by name wins.
    #[case(vec![pa("default", "b", T1, json!({"mtls": {"mode": "DISABLE"}})),
                pa("default", "a", T1, json!({"mtls": {"mode": "STRICT"}}))], Mtls::Strict)]
    // Workload overrides namespace; a selector that does not match is ignored.
    #[case(vec![pa("default", "n", T1, json!({"mtls": {"mode": "STRICT"}})),
                pa("default", "w", T1, json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "PERMISSIVE"}})),
                pa("default", "x", T1, json!({"selector": {"matchLabels": {"app": "b"}}, "mtls": {"mode": "DISABLE"}}))],
           Mtls::Permissive)]
    // Policies of other namespaces do not apply.
    #[case(vec![pa("other", "n", T1, json!({"mtls": {"mode": "STRICT"}}))], Mtls::Permissive)]
    // Selector policies in the root namespace are ignored by istiod.
    #[case(vec![pa("istio-system", "w", T1, json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"}}))],
           Mtls::Permissive)]
    fn levels(#[case] objects: Vec<serde_json::Value>, #[case] want: Mtls) {
        let w = world(objects);
        assert_eq!(workload_mtls(&w, "default", &labels(&[("app", "a")])).mode, want);
    }

    #[test]
    fn port_level_modes_key_on_the_target_port_and_inherit_the_workload_mode() {
        let w = world(vec![
            pa("istio-system", "m", T1, json!({"mtls": {"mode": "PERMISSIVE"}})),
            pa(
                "default",
                "w",
                T1,
                json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"},
                       "portLevelMtls": {"8080": {"mode": "DISABLE"}, "9090": {"mode": "UNSET"}}}),
            ),
        ]);
        let m = workload_mtls(&w, "default", &labels(&[("app", "a"), ("version", "v1")]));
        assert_eq!(m.port(8080), Mtls::Disable);
        assert_eq!(m.port(9090), Mtls::Strict);
        assert_eq!(m.port(7070), Mtls::Strict);
        // The namespace-level view ignores workload policies.
        assert_eq!(namespace_mtls(&w, "default"), Mtls::Permissive);
    }

    #[test]
    fn oldest_workload_policy_wins() {
        let w = world(vec![
            pa("default", "new", T2, json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "DISABLE"}})),
            pa("default", "old", T1, json!({"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"}})),
        ]);
        assert_eq!(workload_mtls(&w, "default", &labels(&[("app", "a")])).mode, Mtls::Strict);
    }
}
