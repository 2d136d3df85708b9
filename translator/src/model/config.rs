//! Routing and policy configuration as translation reads it: VirtualServices, DestinationRules,
//! Gateways, Sidecars, WorkloadEntries and PeerAuthentications.
//!
//! Objects arrive here validated (the world builder skips invalid ones) and are normalized once per
//! world, as istiod does when it builds its push context: short host names resolved against the
//! object's namespace, gateway references made `namespace/name`, delegate VirtualServices merged
//! into their roots, `exportTo` parsed. Lookups a proxy needs (VirtualServices by gateway,
//! DestinationRules by namespace and host) are indexed here, so translation never scans the whole
//! configuration.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::api::istio::{
    Destination, DestinationRuleSpec, GatewaySpec, HttpMatchRequest, HttpRoute, PeerAuthentication, SidecarSpec,
    StringMatch, TrafficPolicy, VirtualServiceSpec, WorkloadEntrySpec,
};

use super::Labels;
use super::host::{self, MESH_GATEWAY, resolve_gateway_name, resolve_short_name};

/// Identity and age of a configuration object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConfigMeta {
    /// Creation timestamp (RFC 3339; empty sorts first).
    pub created: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ConfigMeta {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Istio's config reference in Envoy metadata (`filter_metadata.istio.config`):
    /// `/apis/networking.istio.io/v1/namespaces/<ns>/<kind-in-kebab-case>/<name>`.
    pub fn config_path(&self, kebab_kind: &str) -> String {
        format!("/apis/networking.istio.io/v1/namespaces/{}/{kebab_kind}/{}", self.namespace, self.name)
    }
}

/// Namespaces an object is visible to (`exportTo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ExportTo {
    /// Every namespace (`*`, or no `exportTo`).
    #[default]
    All,
    /// Only these namespaces (`.` already resolved; `~` gives the empty set).
    Namespaces(BTreeSet<String>),
}

impl ExportTo {
    /// Parses an `exportTo` list of an object in `namespace`.
    pub fn parse(list: &[String], namespace: &str) -> ExportTo {
        if list.is_empty() || list.iter().any(|e| e == "*") {
            return ExportTo::All;
        }
        ExportTo::Namespaces(
            list.iter()
                .filter(|e| *e != "~")
                .map(|e| if e == "." { namespace.to_string() } else { e.clone() })
                .collect(),
        )
    }

    /// Whether a proxy in `namespace` may see the object.
    pub fn visible_from(&self, namespace: &str) -> bool {
        match self {
            ExportTo::All => true,
            ExportTo::Namespaces(ns) => ns.contains(namespace),
        }
    }
}

/// A VirtualService with hosts, gateways and destinations resolved, delegates merged in.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualServiceConfig {
    /// Identity.
    pub meta: ConfigMeta,
    /// The normalized spec.
    pub spec: VirtualServiceSpec,
    /// Visibility.
    pub export_to: ExportTo,
    /// Gateways the rules bind to (`mesh` or `namespace/name`; `[mesh]` when none were given).
    pub gateways: Vec<String>,
}

impl VirtualServiceConfig {
    /// Whether the rules apply to sidecars.
    pub fn binds_mesh(&self) -> bool {
        self.gateways.iter().any(|g| g == MESH_GATEWAY)
    }

    /// `filter_metadata.istio.config` of Envoy objects made from this VirtualService.
    pub fn config_path(&self) -> String {
        self.meta.config_path("virtual-service")
    }
}

/// A DestinationRule with its host resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRuleConfig {
    /// Identity.
    pub meta: ConfigMeta,
    /// The host it applies to (FQDN or wildcard).
    pub host: String,
    /// The spec as written.
    pub spec: DestinationRuleSpec,
    /// Visibility.
    pub export_to: ExportTo,
    /// `workloadSelector.matchLabels` (the rule applies only to these proxies of its namespace).
    pub selector: Option<Labels>,
}

impl DestinationRuleConfig {
    /// `filter_metadata.istio.config` of clusters this rule shaped.
    pub fn config_path(&self) -> String {
        self.meta.config_path("destination-rule")
    }
}

/// A Gateway with server hosts normalized (`./h` made `<ns>/h`, `*/h` made `h`, `*/*` made `*`).
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Identity.
    pub meta: ConfigMeta,
    /// The normalized spec.
    pub spec: GatewaySpec,
}

/// A Sidecar resource.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarConfig {
    /// Identity.
    pub meta: ConfigMeta,
    /// The spec.
    pub spec: SidecarSpec,
}

/// A WorkloadEntry.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadEntryConfig {
    /// Identity.
    pub meta: ConfigMeta,
    /// The spec.
    pub spec: WorkloadEntrySpec,
}

/// Indexes over the configuration (positions into the [`Config`] lists).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigIndex {
    /// VirtualServices bound to the mesh (sidecars), oldest first.
    pub mesh_virtual_services: Vec<usize>,
    /// VirtualServices by bound gateway (`namespace/name`), oldest first.
    pub virtual_services_by_gateway: HashMap<String, Vec<usize>>,
    /// VirtualServices by exact (non-wildcard) host, oldest first.
    pub virtual_services_by_host: HashMap<String, Vec<usize>>,
    /// VirtualServices with a wildcard host, oldest first.
    pub wildcard_virtual_services: Vec<usize>,
    /// DestinationRules by namespace.
    pub destination_rules: HashMap<String, DestinationRuleIndex>,
    /// Sidecars by namespace, oldest first.
    pub sidecars_by_namespace: HashMap<String, Vec<usize>>,
    /// WorkloadEntries by namespace.
    pub workload_entries_by_namespace: HashMap<String, Vec<usize>>,
    /// PeerAuthentications by namespace, oldest first.
    pub peer_authentications_by_namespace: HashMap<String, Vec<usize>>,
}

/// The DestinationRules of one namespace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DestinationRuleIndex {
    /// Rules by host (as resolved), oldest first.
    pub by_host: HashMap<String, Vec<usize>>,
    /// The wildcard hosts among the keys of `by_host`, sorted.
    pub wildcard_hosts: Vec<String>,
}

/// All routing and policy configuration of a world, oldest first (then `namespace/name`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// Root VirtualServices (those with hosts), delegates merged in.
    pub virtual_services: Vec<Arc<VirtualServiceConfig>>,
    /// DestinationRules.
    pub destination_rules: Vec<Arc<DestinationRuleConfig>>,
    /// Gateways.
    pub gateways: Vec<Arc<GatewayConfig>>,
    /// Sidecars.
    pub sidecars: Vec<Arc<SidecarConfig>>,
    /// WorkloadEntries.
    pub workload_entries: Vec<Arc<WorkloadEntryConfig>>,
    /// PeerAuthentications, oldest first (resolved per workload by [`super::mtls`]).
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    /// Lookup indexes.
    pub index: ConfigIndex,
}

impl Config {
    /// VirtualServices bound to the mesh, oldest first.
    pub fn mesh_virtual_services(&self) -> impl Iterator<Item = &Arc<VirtualServiceConfig>> {
        self.index.mesh_virtual_services.iter().map(|i| &self.virtual_services[*i])
    }

    /// VirtualServices bound to gateway `gateway` (`namespace/name`), oldest first.
    pub fn virtual_services_for_gateway(&self, gateway: &str) -> impl Iterator<Item = &Arc<VirtualServiceConfig>> {
        self.index.virtual_services_by_gateway.get(gateway).into_iter().flatten().map(|i| &self.virtual_services[*i])
    }

    /// DestinationRules of `namespace`.
    pub fn destination_rules_in(&self, namespace: &str) -> Option<&DestinationRuleIndex> {
        self.index.destination_rules.get(namespace)
    }

    /// Sidecars of `namespace`, oldest first.
    pub fn sidecars_in(&self, namespace: &str) -> impl Iterator<Item = &Arc<SidecarConfig>> {
        self.index.sidecars_by_namespace.get(namespace).into_iter().flatten().map(|i| &self.sidecars[*i])
    }

    /// WorkloadEntries of `namespace`.
    pub fn workload_entries_in(&self, namespace: &str) -> impl Iterator<Item = &Arc<WorkloadEntryConfig>> {
        self.index
            .workload_entries_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|i| &self.workload_entries[*i])
    }

    /// PeerAuthentications of `namespace`, oldest first.
    pub fn peer_authentications_in(&self, namespace: &str) -> impl Iterator<Item = &Arc<PeerAuthentication>> {
        self.index
            .peer_authentications_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|i| &self.peer_authentications[*i])
    }

    /// Fills [`Config::index`] from the lists.
    pub fn reindex(&mut self) {
        let mut index = ConfigIndex::default();
        for (i, vs) in self.virtual_services.iter().enumerate() {
            if vs.binds_mesh() {
                index.mesh_virtual_services.push(i);
            }
            let mut seen = BTreeSet::new();
            for g in vs.gateways.iter().filter(|g| *g != MESH_GATEWAY) {
                if seen.insert(g.as_str()) {
                    index.virtual_services_by_gateway.entry(g.clone()).or_default().push(i);
                }
            }
            let mut wildcard = false;
            for h in &vs.spec.hosts {
                if host::is_wildcard(h) {
                    wildcard = true;
                } else {
                    let list = index.virtual_services_by_host.entry(h.clone()).or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
            if wildcard {
                index.wildcard_virtual_services.push(i);
            }
        }
        for (i, dr) in self.destination_rules.iter().enumerate() {
            let ns = index.destination_rules.entry(dr.meta.namespace.clone()).or_default();
            let list = ns.by_host.entry(dr.host.clone()).or_default();
            if list.is_empty() && host::is_wildcard(&dr.host) {
                ns.wildcard_hosts.push(dr.host.clone());
            }
            list.push(i);
        }
        for ns in index.destination_rules.values_mut() {
            ns.wildcard_hosts.sort();
        }
        for (i, s) in self.sidecars.iter().enumerate() {
            index.sidecars_by_namespace.entry(s.meta.namespace.clone()).or_default().push(i);
        }
        for (i, w) in self.workload_entries.iter().enumerate() {
            index.workload_entries_by_namespace.entry(w.meta.namespace.clone()).or_default().push(i);
        }
        for (i, p) in self.peer_authentications.iter().enumerate() {
            // Objects without a namespace live in `default`, as everywhere in the world builder.
            let ns = p
                .metadata
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| crate::api::DEFAULT_NAMESPACE.to_string());
            index.peer_authentications_by_namespace.entry(ns).or_default().push(i);
        }
        self.index = index;
    }
}

/// Resolves the short names of a VirtualService in `namespace` (Istio's
/// `resolveVirtualServiceShortnames`); hosts are also lowercased.
pub fn normalize_virtual_service(spec: &mut VirtualServiceSpec, namespace: &str) {
    for h in &mut spec.hosts {
        *h = resolve_short_name(h, namespace).to_ascii_lowercase();
    }
    for g in &mut spec.gateways {
        *g = resolve_gateway_name(g, namespace);
    }
    let dest = |d: &mut Destination| d.host = resolve_short_name(&d.host, namespace);
    for r in &mut spec.http {
        for m in &mut r.r#match {
            for g in &mut m.gateways {
                *g = resolve_gateway_name(g, namespace);
            }
        }
        for d in &mut r.route {
            if let Some(d) = d.destination.as_mut() {
                dest(d);
            }
        }
        if let Some(m) = r.mirror.as_mut() {
            dest(m);
        }
        for m in &mut r.mirrors {
            if let Some(d) = m.destination.as_mut() {
                dest(d);
            }
        }
    }
    for r in &mut spec.tcp {
        for m in &mut r.r#match {
            for g in &mut m.gateways {
                *g = resolve_gateway_name(g, namespace);
            }
        }
        for d in &mut r.route {
            if let Some(d) = d.destination.as_mut() {
                dest(d);
            }
        }
    }
    for r in &mut spec.tls {
        for m in &mut r.r#match {
            for g in &mut m.gateways {
                *g = resolve_gateway_name(g, namespace);
            }
        }
        for d in &mut r.route {
            if let Some(d) = d.destination.as_mut() {
                dest(d);
            }
        }
    }
}

/// Normalizes Gateway server hosts (Istio's `sanitizeServerHostNamespace`).
pub fn normalize_gateway(spec: &mut GatewaySpec, namespace: &str) {
    for s in &mut spec.servers {
        let mut out = Vec::with_capacity(s.hosts.len());
        for h in &s.hosts {
            match h.split_once('/') {
                Some((".", rest)) => out.push(format!("{namespace}/{rest}")),
                Some(("*", "*")) => {
                    out = vec!["*".to_string()];
                    break;
                }
                Some(("*", rest)) => out.push(rest.to_string()),
                _ => out.push(h.clone()),
            }
        }
        s.hosts = out;
    }
}

/// Merges delegate VirtualServices into their roots (Istio's `mergeVirtualServicesIfNeeded`): a
/// root route with `delegate` is replaced by the delegate's routes, each match merged with the
/// root's (a delegate match conflicting with every root match drops the route) and unset fields
/// taken from the root route. One level: a delegate's own delegates are not followed. Delegates
/// (VirtualServices without hosts) are consumed and not returned.
pub fn merge_delegates(all: Vec<VirtualServiceConfig>) -> Vec<VirtualServiceConfig> {
    let (roots, delegates): (Vec<_>, Vec<_>) = all.into_iter().partition(|vs| !vs.spec.hosts.is_empty());
    let by_key: BTreeMap<String, &VirtualServiceConfig> = delegates.iter().map(|d| (d.meta.key(), d)).collect();
    roots
        .into_iter()
        .map(|mut root| {
            if !root.spec.http.iter().any(|r| r.delegate.is_some()) {
                return root;
            }
            let mut http = Vec::with_capacity(root.spec.http.len());
            for r in std::mem::take(&mut root.spec.http) {
                let Some(d) = &r.delegate else {
                    http.push(r);
                    continue;
                };
                let ns = d.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(&root.meta.namespace);
                let Some(delegate) = by_key.get(&format!("{ns}/{}", d.name)) else {
                    // A missing delegate contributes no routes (istiod logs and skips it).
                    continue;
                };
                if !delegate.export_to.visible_from(&root.meta.namespace) {
                    continue;
                }
                for dr in &delegate.spec.http {
                    if dr.delegate.is_some() {
                        continue;
                    }
                    if let Some(merged) = merge_http_route(&r, dr.clone()) {
                        http.push(merged);
                    }
                }
            }
            root.spec.http = http;
            root
        })
        .collect()
}

fn merge_http_route(root: &HttpRoute, mut delegate: HttpRoute) -> Option<HttpRoute> {
    delegate.r#match = merge_matches(&root.r#match, std::mem::take(&mut delegate.r#match))?;
    delegate.name = match (root.name.as_deref(), delegate.name.take()) {
        (Some(r), Some(d)) if !r.is_empty() && !d.is_empty() => Some(format!("{r}-{d}")),
        (_, Some(d)) if !d.is_empty() => Some(d),
        (r, _) => r.map(str::to_string),
    };
    macro_rules! inherit {
        ($($f:ident),*) => { $( if delegate.$f.is_none() { delegate.$f = root.$f.clone(); } )* };
    }
    inherit!(
        rewrite,
        direct_response,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percent,
        mirror_percentage,
        cors_policy,
        headers
    );
    if delegate.mirrors.is_empty() {
        delegate.mirrors = root.mirrors.clone();
    }
    Some(delegate)
}

/// Every delegate match must find a compatible root match; each compatible pair becomes one merged
/// match. `None` means the delegate route conflicts with the root and is dropped.
fn merge_matches(root: &[HttpMatchRequest], delegate: Vec<HttpMatchRequest>) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate);
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for leaf in &delegate {
        let mut found = false;
        for r in root {
            if match_conflict(r, leaf) {
                continue;
            }
            out.push(merge_match(r, leaf));
            found = true;
        }
        if !found {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = match (root.name.as_deref(), leaf.name.as_deref()) {
        (Some(r), Some(l)) if !r.is_empty() && !l.is_empty() => Some(format!("{r}-{l}")),
        (_, Some(l)) if !l.is_empty() => Some(l.to_string()),
        (r, _) => r.map(str::to_string),
    };
    macro_rules! inherit {
        ($($f:ident),*) => { $( if out.$f.is_none() { out.$f = root.$f.clone(); } )* };
    }
    inherit!(uri, scheme, method, authority, port, source_namespace, stat_prefix);
    let merge_map = |r: &BTreeMap<String, StringMatch>, l: &BTreeMap<String, StringMatch>| {
        let mut m = r.clone();
        m.extend(l.iter().map(|(k, v)| (k.clone(), v.clone())));
        m
    };
    out.headers = merge_map(&root.headers, &leaf.headers);
    out.without_headers = merge_map(&root.without_headers, &leaf.without_headers);
    out.query_params = merge_map(&root.query_params, &leaf.query_params);
    let mut labels = root.source_labels.clone();
    labels.extend(leaf.source_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.source_labels = labels;
    if out.gateways.is_empty() {
        out.gateways = root.gateways.clone();
    }
    out
}

fn match_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [
        (&root.uri, &leaf.uri),
        (&root.scheme, &leaf.scheme),
        (&root.method, &leaf.method),
        (&root.authority, &leaf.authority),
    ];
    if pairs.iter().any(|(r, l)| string_match_conflict(r.as_ref(), l.as_ref())) {
        return true;
    }
    let map_conflict = |r: &BTreeMap<String, StringMatch>, l: &BTreeMap<String, StringMatch>| {
        l.iter().any(|(k, lv)| string_match_conflict(r.get(k), Some(lv)))
    };
    if map_conflict(&root.headers, &leaf.headers)
        || map_conflict(&root.without_headers, &leaf.without_headers)
        || map_conflict(&root.query_params, &leaf.query_params)
    {
        return true;
    }
    if root.ignore_uri_case.unwrap_or(false) != leaf.ignore_uri_case.unwrap_or(false) {
        return true;
    }
    if let (Some(r), Some(l)) = (root.port.filter(|p| *p > 0), leaf.port.filter(|p| *p > 0))
        && r != l
    {
        return true;
    }
    if let Some(r) = root.source_namespace.as_deref().filter(|s| !s.is_empty())
        && leaf.source_namespace.as_deref() != Some(r)
    {
        return true;
    }
    if leaf.source_labels.iter().any(|(k, v)| root.source_labels.get(k).is_some_and(|rv| rv != v)) {
        return true;
    }
    if !root.gateways.is_empty() && !leaf.gateways.is_empty() {
        let set: BTreeSet<&String> = root.gateways.iter().collect();
        if root.gateways.len() < leaf.gateways.len() || leaf.gateways.iter().any(|g| !set.contains(g)) {
            return true;
        }
    }
    false
}

/// Istio's `stringMatchConflict`: a delegate match must stay within the root's.
fn string_match_conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else { return false };
    let set = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.is_empty());
    if set(&root.regex) && (set(&leaf.regex) || set(&leaf.prefix) || set(&leaf.exact)) {
        return true;
    }
    if set(&leaf.regex) && (set(&root.regex) || set(&root.prefix) || set(&root.exact)) {
        return true;
    }
    if let Some(exact) = root.exact.as_deref().filter(|e| !e.is_empty())
        && (set(&leaf.prefix) || leaf.exact.as_deref() != Some(exact))
    {
        return true;
    }
    if let Some(prefix) = root.prefix.as_deref().filter(|p| !p.is_empty()) {
        if leaf.prefix.as_deref().is_some_and(|p| !p.is_empty() && !p.starts_with(prefix)) {
            return true;
        }
        if leaf.exact.as_deref().is_some_and(|e| !e.is_empty() && !e.starts_with(prefix)) {
            return true;
        }
    }
    false
}

/// Merges same-host DestinationRules of one scope (Istio's `mergeDestinationRule`): the first rule
/// is the base; later rules add subsets with new names, and their top-level traffic policy only
/// when the base has none.
pub fn merge_destination_rules(rules: &[&DestinationRuleConfig]) -> DestinationRuleSpec {
    let mut spec = rules.first().map(|r| r.spec.clone()).unwrap_or_default();
    for r in rules.iter().skip(1) {
        for s in &r.spec.subsets {
            if !spec.subsets.iter().any(|x| x.name == s.name) {
                spec.subsets.push(s.clone());
            }
        }
        if spec.traffic_policy.is_none() {
            spec.traffic_policy = r.spec.traffic_policy.clone();
        }
    }
    spec
}

/// The policy for `port` (Istio's `GetPortLevelTrafficPolicy`): a matching `portLevelSettings`
/// entry replaces the top-level policy wholesale (unset fields take defaults, not the top level).
/// Without one, the top-level policy itself (its `portLevelSettings` are then irrelevant).
pub fn port_level_policy(policy: Option<&TrafficPolicy>, port: u16) -> Option<Cow<'_, TrafficPolicy>> {
    let p = policy?;
    let Some(pl) = p.port_level_settings.iter().find(|s| s.port.is_some_and(|sp| sp.number == u32::from(port))) else {
        return Some(Cow::Borrowed(p));
    };
    Some(Cow::Owned(TrafficPolicy {
        load_balancer: pl.load_balancer.clone(),
        connection_pool: pl.connection_pool.clone(),
        outlier_detection: pl.outlier_detection.clone(),
        tls: pl.tls.clone(),
        port_level_settings: Vec::new(),
        // Tunnel and PROXY protocol have no port-level form; they carry over.
        tunnel: p.tunnel.clone(),
        proxy_protocol: p.proxy_protocol.clone(),
        retry_budget: p.retry_budget.clone(),
    }))
}

/// A subset's policy over the (port-resolved) parent policy (Istio's `MergeSubsetTrafficPolicy`):
/// each field the subset sets replaces the parent's.
pub fn merge_subset_policy<'p>(
    parent: Option<&'p TrafficPolicy>,
    subset: Option<&'p TrafficPolicy>,
    port: u16,
) -> Option<Cow<'p, TrafficPolicy>> {
    let Some(sub) = port_level_policy(subset, port) else { return parent.map(Cow::Borrowed) };
    let Some(parent) = parent else { return Some(sub) };
    let mut out = parent.clone();
    macro_rules! over {
        ($($f:ident),*) => { $( if sub.$f.is_some() { out.$f = sub.$f.clone(); } )* };
    }
    over!(connection_pool, outlier_detection, load_balancer, tls, tunnel, proxy_protocol, retry_budget);
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn vs(ns: &str, name: &str, spec: serde_json::Value) -> VirtualServiceConfig {
        let mut spec: VirtualServiceSpec = serde_json::from_value(spec).unwrap();
        normalize_virtual_service(&mut spec, ns);
        let gateways = if spec.gateways.is_empty() { vec![MESH_GATEWAY.to_string()] } else { spec.gateways.clone() };
        VirtualServiceConfig {
            meta: ConfigMeta { created: String::new(), namespace: ns.into(), name: name.into() },
            export_to: ExportTo::parse(&spec.export_to, ns),
            spec,
            gateways,
        }
    }

    #[test]
    fn export_to_parsing() {
        assert_eq!(ExportTo::parse(&[], "a"), ExportTo::All);
        let e = ExportTo::parse(&[".".into(), "b".into()], "a");
        assert!(e.visible_from("a") && e.visible_from("b") && !e.visible_from("c"));
        assert!(!ExportTo::parse(&["~".into()], "a").visible_from("a"));
    }

    #[test]
    fn short_names_are_resolved_in_the_rule_namespace() {
        let v = vs(
            "prod",
            "r",
            json!({"hosts": ["Reviews"], "gateways": ["gw", "mesh"],
                "http": [{"route": [{"destination": {"host": "ratings"}}], "mirror": {"host": "m.other"}}]}),
        );
        assert_eq!(v.spec.hosts, vec!["reviews.prod.svc.cluster.local"]);
        assert_eq!(v.gateways, vec!["prod/gw", "mesh"]);
        let d = v.spec.http[0].route[0].destination.as_ref().unwrap();
        assert_eq!(d.host, "ratings.prod.svc.cluster.local");
        assert_eq!(v.spec.http[0].mirror.as_ref().unwrap().host, "m.other");
    }

    #[test]
    fn delegate_routes_merge_with_the_root_match() {
        let root = vs(
            "default",
            "root",
            json!({"hosts": ["a.com"], "http": [
                {"name": "r", "match": [{"uri": {"prefix": "/api"}}], "delegate": {"name": "d", "namespace": "team"}, "timeout": "3s"},
                {"route": [{"destination": {"host": "fallback"}}]}
            ]}),
        );
        let delegate = vs(
            "team",
            "d",
            json!({"http": [
                {"name": "v1", "match": [{"uri": {"prefix": "/api/v1"}}], "route": [{"destination": {"host": "v1"}}]},
                {"match": [{"uri": {"prefix": "/other"}}], "route": [{"destination": {"host": "x"}}]},
                {"route": [{"destination": {"host": "rest"}}], "timeout": "1s"}
            ]}),
        );
        let out = merge_delegates(vec![root, delegate]);
        assert_eq!(out.len(), 1);
        let http = &out[0].spec.http;
        // /other conflicts with /api and is dropped.
        assert_eq!(http.len(), 3);
        assert_eq!(http[0].name.as_deref(), Some("r-v1"));
        assert_eq!(http[0].r#match[0].uri.as_ref().unwrap().prefix.as_deref(), Some("/api/v1"));
        assert_eq!(http[0].timeout.as_deref(), Some("3s"));
        assert_eq!(http[0].route[0].destination.as_ref().unwrap().host, "v1.team.svc.cluster.local");
        assert_eq!(http[1].r#match[0].uri.as_ref().unwrap().prefix.as_deref(), Some("/api"));
        assert_eq!(http[1].timeout.as_deref(), Some("1s"));
        assert_eq!(http[2].route[0].destination.as_ref().unwrap().host, "fallback.default.svc.cluster.local");
    }

    #[test]
    fn port_level_settings_replace_the_top_level() {
        let p: TrafficPolicy = serde_json::from_value(json!({
            "loadBalancer": {"simple": "RANDOM"},
            "outlierDetection": {"consecutive5xxErrors": 3},
            "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "ROUND_ROBIN"}}]
        }))
        .unwrap();
        let at80 = port_level_policy(Some(&p), 80).unwrap().into_owned();
        assert!(at80.outlier_detection.is_none());
        assert_eq!(at80.load_balancer.unwrap().simple, Some(crate::api::istio::SimpleLb::RoundRobin));
        let at81 = port_level_policy(Some(&p), 81).unwrap().into_owned();
        assert!(at81.outlier_detection.is_some());
        let sub: TrafficPolicy = serde_json::from_value(json!({"loadBalancer": {"simple": "LEAST_REQUEST"}})).unwrap();
        let merged = merge_subset_policy(Some(&at81), Some(&sub), 81).unwrap().into_owned();
        assert!(merged.outlier_detection.is_some());
        assert_eq!(merged.load_balancer.unwrap().simple, Some(crate::api::istio::SimpleLb::LeastRequest));
    }
}
