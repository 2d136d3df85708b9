//! What one proxy can see: the Sidecar resource that applies to it, the services and
//! VirtualServices it imports, and the DestinationRule for each destination host (istiod's
//! `SidecarScope`).
//!
//! A sidecar's Sidecar resource is, in order: the oldest one in its namespace whose
//! `workloadSelector` matches its labels, else the oldest one in its namespace without a selector,
//! else the oldest one without a selector in the root namespace (the mesh-wide default). Its egress
//! `hosts` (`ns/host`, `./host`, `*/host`, `~/host`) limit the services and VirtualServices the
//! proxy gets; services that selected VirtualServices route to are imported too. Gateways never use
//! Sidecar resources.

use std::borrow::Cow;

use crate::api::istio::{DestinationRuleSpec, OutboundTrafficMode};
use crate::model::config::{DestinationRuleConfig, SidecarConfig, VirtualServiceConfig, merge_destination_rules};
use crate::model::{Labels, NodeType, OutboundTrafficPolicy, ProxyProfile, Service, World, host};

/// Namespace part of a Sidecar egress host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NamespaceSelector {
    /// `*/...`
    Any,
    /// `ns/...` (and `./...`, resolved to the proxy's namespace)
    Exact(String),
    /// `~/...`: imports nothing
    Nothing,
}

/// One egress import `ns/host`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    namespace: NamespaceSelector,
    host: String,
}

impl Import {
    fn parse(h: &str, proxy_ns: &str) -> Import {
        let (ns, host) = h.split_once('/').unwrap_or(("*", h));
        let namespace = match ns {
            "*" => NamespaceSelector::Any,
            "~" => NamespaceSelector::Nothing,
            "." => NamespaceSelector::Exact(proxy_ns.to_string()),
            other => NamespaceSelector::Exact(other.to_string()),
        };
        Import { namespace, host: host.to_ascii_lowercase() }
    }

    fn covers_namespace(&self, ns: &str) -> bool {
        match &self.namespace {
            NamespaceSelector::Any => true,
            NamespaceSelector::Exact(n) => n == ns,
            NamespaceSelector::Nothing => false,
        }
    }

    fn covers(&self, ns: &str, hostname: &str) -> bool {
        self.covers_namespace(ns) && host::matches(&self.host, hostname)
    }
}

/// The proxy's Sidecar resource, parsed.
#[derive(Debug, Clone, Default)]
pub struct Scope<'a> {
    /// The Sidecar resource in effect, if any.
    pub sidecar: Option<&'a SidecarConfig>,
    /// Union of the egress imports of every egress listener (`None`: no Sidecar, import all).
    imports: Option<Vec<Import>>,
}

impl<'a> Scope<'a> {
    /// The scope of `proxy` in `world`.
    pub fn new(world: &'a World, proxy: &ProxyProfile) -> Scope<'a> {
        if proxy.node_type != NodeType::Sidecar {
            return Scope::default();
        }
        let Some(sidecar) = select_sidecar(world, &proxy.namespace, &proxy.labels) else {
            return Scope::default();
        };
        // A Sidecar without egress listeners imports everything (istiod's default `*/*`).
        let imports = (!sidecar.spec.egress.is_empty()).then(|| {
            sidecar
                .spec
                .egress
                .iter()
                .flat_map(|l| l.hosts.iter())
                .map(|h| Import::parse(h, &proxy.namespace))
                .collect()
        });
        Scope { sidecar: Some(sidecar), imports }
    }

    /// Whether the egress hosts import a service.
    pub fn imports_service(&self, svc: &Service) -> bool {
        match &self.imports {
            None => true,
            Some(i) => i.iter().any(|i| i.covers(&svc.namespace, &svc.hostname)),
        }
    }

    /// Whether the egress hosts import a VirtualService (any of its hosts, in its namespace).
    pub fn imports_virtual_service(&self, vs: &VirtualServiceConfig) -> bool {
        match &self.imports {
            None => true,
            Some(i) => i.iter().any(|i| {
                i.covers_namespace(&vs.meta.namespace) && vs.spec.hosts.iter().any(|h| host::matches(&i.host, h))
            }),
        }
    }

    /// `outboundTrafficPolicy` of the Sidecar resource over the mesh's.
    pub fn outbound_policy(&self, mesh: OutboundTrafficPolicy) -> OutboundTrafficPolicy {
        match self.sidecar.and_then(|s| s.spec.outbound_traffic_policy.as_ref()).and_then(|p| p.mode) {
            Some(OutboundTrafficMode::AllowAny) => OutboundTrafficPolicy::AllowAny,
            Some(OutboundTrafficMode::RegistryOnly) => OutboundTrafficPolicy::RegistryOnly,
            None => mesh,
        }
    }
}

fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Sidecar resource for a sidecar in `namespace` with `labels`.
fn select_sidecar<'a>(world: &'a World, namespace: &str, labels: &Labels) -> Option<&'a SidecarConfig> {
    let config = &world.config;
    let with_selector = config.sidecars_in(namespace).find(|s| {
        s.spec.workload_selector.as_ref().is_some_and(|w| !w.labels.is_empty() && selects(&w.labels, labels))
    });
    let default_of = |ns: &str| {
        config.sidecars_in(ns).find(|s| s.spec.workload_selector.as_ref().is_none_or(|w| w.labels.is_empty()))
    };
    with_selector
        .or_else(|| default_of(namespace))
        .or_else(|| default_of(&world.mesh.root_namespace))
        .map(|s| s.as_ref())
}

/// The DestinationRule(s) that apply to one destination host, merged.
#[derive(Debug, Clone)]
pub struct ResolvedRule<'a> {
    /// The rules, oldest first; the first names the result in metadata, as istiod's merged rule
    /// keeps the first rule's identity.
    pub rules: Vec<&'a DestinationRuleConfig>,
    /// The merged spec.
    pub spec: Cow<'a, DestinationRuleSpec>,
}

impl<'a> ResolvedRule<'a> {
    fn from_rules(rules: Vec<&'a DestinationRuleConfig>) -> Option<ResolvedRule<'a>> {
        let first = *rules.first()?;
        let spec =
            if rules.len() == 1 { Cow::Borrowed(&first.spec) } else { Cow::Owned(merge_destination_rules(&rules)) };
        Some(ResolvedRule { rules, spec })
    }

    /// The rule whose identity the merged rule carries.
    pub fn primary(&self) -> &'a DestinationRuleConfig {
        self.rules[0]
    }
}

/// istiod's DestinationRule lookup for a proxy in `proxy_ns` with `labels` and a destination `host`
/// declared in `service_ns`: rules in the proxy's namespace, then rules of the service's namespace
/// exported to the proxy, then exported rules of the root namespace. In each namespace the most
/// specific host wins; same-host rules merge. A rule with a `workloadSelector` applies only to the
/// proxies it selects in its own namespace, and wins there over rules without one.
pub fn lookup_destination_rule<'a>(
    world: &'a World,
    proxy_ns: &str,
    labels: &Labels,
    host: &str,
    service_ns: Option<&str>,
) -> Option<ResolvedRule<'a>> {
    let config = &world.config;
    if config.destination_rules.is_empty() {
        return None;
    }
    let root = world.mesh.root_namespace.as_str();
    let mut scopes: [Option<&str>; 3] = [Some(proxy_ns), service_ns, Some(root)];
    // Root-namespace proxies read their own namespace first too; later duplicates are skipped.
    if scopes[1] == Some(proxy_ns) {
        scopes[1] = None;
    }
    if scopes[2] == Some(proxy_ns) || scopes[2] == service_ns {
        scopes[2] = None;
    }
    for (i, ns) in scopes.iter().enumerate() {
        let Some(ns) = ns else { continue };
        let local = i == 0;
        if let Some(found) = lookup_in_namespace(world, ns, proxy_ns, labels, host, local) {
            return Some(found);
        }
    }
    None
}

fn lookup_in_namespace<'a>(
    world: &'a World,
    ns: &str,
    proxy_ns: &str,
    labels: &Labels,
    host: &str,
    local: bool,
) -> Option<ResolvedRule<'a>> {
    let config = &world.config;
    let index = config.destination_rules_in(ns)?;
    // Rules of this namespace usable by the proxy, for one host key.
    let usable = |key: &str| -> Option<ResolvedRule<'a>> {
        let ids = index.by_host.get(key)?;
        let mut selected: Vec<&'a DestinationRuleConfig> = Vec::new();
        let mut plain: Vec<&'a DestinationRuleConfig> = Vec::new();
        for &i in ids {
            let dr = config.destination_rules[i].as_ref();
            if !dr.export_to.visible_from(proxy_ns) {
                continue;
            }
            match &dr.selector {
                Some(sel) if !sel.is_empty() => {
                    if local && selects(sel, labels) {
                        selected.push(dr);
                    }
                }
                _ => plain.push(dr),
            }
        }
        // A workload-specific rule wins over the namespace-wide ones (oldest first; not merged).
        if let Some(first) = selected.first() {
            return ResolvedRule::from_rules(vec![*first]);
        }
        ResolvedRule::from_rules(plain)
    };
    if let Some(r) = usable(host) {
        return Some(r);
    }
    // Most specific wildcard first: longest suffix.
    let mut wildcards: Vec<&String> =
        index.wildcard_hosts.iter().filter(|w| w.as_str() != host && host::matches(w, host)).collect();
    wildcards.sort_by_key(|w| std::cmp::Reverse(w.len()));
    wildcards.into_iter().find_map(|w| usable(w))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::api::parse_object;
    use crate::model::{MeshConfig, build_world};

    fn world(docs: Vec<serde_json::Value>) -> World {
        let objs: Vec<_> = docs.into_iter().map(|d| parse_object(d).unwrap()).collect();
        let (w, d) = build_world(&objs, &MeshConfig::default());
        assert!(d.is_empty(), "{d:?}");
        w
    }

    fn dr(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": ns}, "spec": spec})
    }

    fn lookup(w: &World, proxy_ns: &str, labels: &Labels, host: &str, svc_ns: &str) -> Option<String> {
        lookup_destination_rule(w, proxy_ns, labels, host, Some(svc_ns)).map(|r| r.primary().meta.key())
    }

    #[test]
    fn lookup_order_proxy_then_service_then_root_namespace() {
        let w = world(vec![
            dr("client", "local", json!({"host": "reviews.prod.svc.cluster.local"})),
            dr("prod", "owner", json!({"host": "reviews"})),
            dr("prod", "private", json!({"host": "ratings", "exportTo": ["."]})),
            dr("istio-system", "mesh", json!({"host": "*.svc.cluster.local"})),
        ]);
        let none = Labels::new();
        let reviews = "reviews.prod.svc.cluster.local";
        let ratings = "ratings.prod.svc.cluster.local";
        assert_eq!(lookup(&w, "client", &none, reviews, "prod").as_deref(), Some("client/local"));
        assert_eq!(lookup(&w, "other", &none, reviews, "prod").as_deref(), Some("prod/owner"));
        // Not exported: the root namespace's wildcard rule applies instead.
        assert_eq!(lookup(&w, "other", &none, ratings, "prod").as_deref(), Some("istio-system/mesh"));
        assert_eq!(lookup(&w, "prod", &none, ratings, "prod").as_deref(), Some("prod/private"));
    }

    #[test]
    fn same_host_rules_merge_and_selector_rules_win_for_their_workloads() {
        let w = world(vec![
            dr("prod", "a", json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]})),
            dr(
                "prod",
                "b",
                json!({"host": "reviews", "subsets": [{"name": "v2", "labels": {"version": "v2"}}],
                "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}),
            ),
            dr(
                "prod",
                "mine",
                json!({"host": "reviews", "workloadSelector": {"matchLabels": {"app": "x"}}, "exportTo": ["."]}),
            ),
        ]);
        let host = "reviews.prod.svc.cluster.local";
        let r = lookup_destination_rule(&w, "prod", &Labels::new(), host, Some("prod")).unwrap();
        assert_eq!(r.primary().meta.name, "a");
        let names: Vec<&str> = r.spec.subsets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["v1", "v2"]);
        assert!(r.spec.traffic_policy.is_some());
        let x: Labels = [("app".to_string(), "x".to_string())].into_iter().collect();
        assert_eq!(lookup(&w, "prod", &x, host, "prod").as_deref(), Some("prod/mine"));
        assert_eq!(lookup(&w, "other", &x, host, "prod").as_deref(), Some("prod/a"));
    }

    #[test]
    fn sidecar_selection_and_imports() {
        let sidecar = |ns: &str, name: &str, spec: serde_json::Value| json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": name, "namespace": ns}, "spec": spec});
        let w = world(vec![
            sidecar(
                "istio-system",
                "default",
                json!({"egress": [{"hosts": ["./*", "istio-system/*"]}],
                "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
            ),
            sidecar("prod", "ns-default", json!({"egress": [{"hosts": ["*/*.example.com"]}]})),
            sidecar(
                "prod",
                "for-x",
                json!({"workloadSelector": {"labels": {"app": "x"}}, "egress": [{"hosts": ["~/*"]}]}),
            ),
        ]);
        let proxy = |ns: &str, app: &str| ProxyProfile {
            namespace: ns.into(),
            labels: [("app".to_string(), app.to_string())].into_iter().collect(),
            ..ProxyProfile::default()
        };
        let mk = |host: &str, ns: &str| {
            let mut s = crate::envoy::tests::mk_service(host, &[], crate::model::Resolution::Static, &[]);
            s.namespace = ns.into();
            s
        };
        let p = proxy("prod", "y");
        let s = Scope::new(&w, &p);
        assert_eq!(s.sidecar.unwrap().meta.name, "ns-default");
        assert!(s.imports_service(&mk("api.example.com", "elsewhere")));
        assert!(!s.imports_service(&mk("a.prod.svc.cluster.local", "prod")));
        assert_eq!(s.outbound_policy(OutboundTrafficPolicy::AllowAny), OutboundTrafficPolicy::AllowAny);
        let p = proxy("prod", "x");
        let s = Scope::new(&w, &p);
        assert_eq!(s.sidecar.unwrap().meta.name, "for-x");
        assert!(!s.imports_service(&mk("api.example.com", "elsewhere")));
        let p = proxy("dev", "y");
        let s = Scope::new(&w, &p);
        assert_eq!(s.sidecar.unwrap().meta.key(), "istio-system/default");
        // `./*` in the root default means the proxy's own namespace.
        assert!(s.imports_service(&mk("a.dev.svc.cluster.local", "dev")));
        assert!(!s.imports_service(&mk("a.prod.svc.cluster.local", "prod")));
        assert_eq!(s.outbound_policy(OutboundTrafficPolicy::AllowAny), OutboundTrafficPolicy::RegistryOnly);
    }
}
