//! Cross-object checks (`istioctl analyze` style): references between VirtualServices, services,
//! DestinationRules and Gateways, and VirtualServices competing for one host on sidecars.
//!
//! Host names and gateway references are resolved and matched by [`crate::model::host`], the
//! rules translation uses, so a reference this check accepts is one translation follows.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::istio::{Destination, VirtualService};
use crate::api::{DEFAULT_NAMESPACE, Object};
use crate::diag::Diagnostic;
use crate::model::CLUSTER_DOMAIN;
use crate::model::host::{self, GatewayRef, resolve_short_name};

use super::common::{Report, at, idx};
use super::virtual_service::is_gateway_only;

struct Index<'a> {
    /// Hosts of Kubernetes Services and ServiceEntries.
    registry: BTreeSet<String>,
    /// DestinationRules: resolved host and subset names.
    rules: Vec<(String, BTreeSet<&'a str>)>,
    /// Gateways as `ns/name`.
    gateways: BTreeSet<String>,
    /// VirtualServices as `ns/name`.
    virtual_services: BTreeSet<String>,
}

impl<'a> Index<'a> {
    fn build(objs: &[&'a Object]) -> Self {
        let mut idx = Index {
            registry: BTreeSet::new(),
            rules: Vec::new(),
            gateways: BTreeSet::new(),
            virtual_services: BTreeSet::new(),
        };
        for o in objs {
            let key = o.key();
            match o {
                Object::Service(_) => {
                    idx.registry.insert(format!("{}.{}.svc.{CLUSTER_DOMAIN}", key.name, key.namespace));
                }
                Object::ServiceEntry(se) => {
                    // ServiceEntry hosts are taken as written; Istio does not qualify them.
                    idx.registry.extend(se.spec.hosts.iter().cloned());
                }
                Object::DestinationRule(dr) => {
                    let subsets = dr.spec.subsets.iter().map(|s| s.name.as_str()).collect();
                    idx.rules.push((resolve_short_name(&dr.spec.host, &key.namespace), subsets));
                }
                Object::Gateway(_) => {
                    idx.gateways.insert(format!("{}/{}", key.namespace, key.name));
                }
                Object::VirtualService(_) => {
                    idx.virtual_services.insert(format!("{}/{}", key.namespace, key.name));
                }
                _ => {}
            }
        }
        idx
    }

    fn host_known(&self, host: &str) -> bool {
        self.registry.contains(host) || self.registry.iter().any(|h| host::is_wildcard(h) && host::subset_of(host, h))
    }

    fn subset_known(&self, host: &str, subset: &str) -> bool {
        self.rules.iter().any(|(h, subsets)| host::matches(h, host) && subsets.contains(subset))
    }
}

/// Checks references between the objects of one configuration and conflicts among them. Objects
/// of the kinds involved that are not in `objs` count as missing.
pub fn validate_set(objs: &[&Object]) -> Vec<Diagnostic> {
    let index = Index::build(objs);
    let mut out = Vec::new();
    // Mesh-bound hosts: resolved host -> VirtualServices (`ns/name`) defining it.
    let mut mesh_hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in objs {
        let Object::VirtualService(vs) = o else { continue };
        let key = o.key();
        let ns = if key.namespace.is_empty() { DEFAULT_NAMESPACE } else { key.namespace.as_str() };
        let mut r = Report::new(key.to_string());
        check_references(&mut r, ns, vs, &index);
        out.extend(r.finish());
        if !is_gateway_only(&vs.spec) {
            for h in &vs.spec.hosts {
                mesh_hosts
                    .entry(resolve_short_name(h, ns))
                    .or_default()
                    .push(format!("{}/{}", key.namespace, key.name));
            }
        }
    }
    for o in objs {
        let Object::VirtualService(vs) = o else { continue };
        let key = o.key();
        if is_gateway_only(&vs.spec) {
            continue;
        }
        let mut r = Report::new(key.to_string());
        for (i, h) in vs.spec.hosts.iter().enumerate() {
            let owners = &mesh_hosts[&resolve_short_name(h, &key.namespace)];
            let owners: BTreeSet<&String> = owners.iter().collect();
            if owners.len() > 1 {
                let names: Vec<&str> = owners.iter().map(|s| s.as_str()).collect();
                r.warn(
                    idx("spec.hosts", i),
                    format!(
                        "the virtual services {} associated with mesh gateway define the same host {h:?}; only one applies to sidecars. merge them into a single resource",
                        names.join(", ")
                    ),
                );
            }
        }
        out.extend(r.finish());
    }
    out
}

fn check_references(r: &mut Report, ns: &str, vs: &VirtualService, index: &Index<'_>) {
    let spec = &vs.spec;
    let mut gateway_refs: Vec<(String, &String)> =
        spec.gateways.iter().enumerate().map(|(i, g)| (idx("spec.gateways", i), g)).collect();
    for (i, http) in spec.http.iter().enumerate() {
        let path = idx("spec.http", i);
        for (j, d) in http.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                check_destination(r, &at(&idx(&at(&path, "route"), j), "destination"), ns, dest, index);
            }
        }
        if let Some(m) = &http.mirror {
            check_destination(r, &at(&path, "mirror"), ns, m, index);
        }
        for (j, m) in http.mirrors.iter().enumerate() {
            if let Some(dest) = &m.destination {
                check_destination(r, &at(&idx(&at(&path, "mirrors"), j), "destination"), ns, dest, index);
            }
        }
        for (j, m) in http.r#match.iter().enumerate() {
            let mpath = at(&idx(&at(&path, "match"), j), "gateways");
            gateway_refs.extend(m.gateways.iter().enumerate().map(|(k, g)| (idx(&mpath, k), g)));
        }
        if let Some(d) = &http.delegate {
            let target = format!("{}/{}", d.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(ns), d.name);
            if !index.virtual_services.contains(&target) {
                r.error(at(&path, "delegate"), format!("referenced virtual service not found: {target:?}"));
            }
        }
    }
    for (section, routes) in [
        (
            "spec.tcp",
            spec.tcp
                .iter()
                .map(|t| (&t.route, t.r#match.iter().map(|m| &m.gateways).collect::<Vec<_>>()))
                .collect::<Vec<_>>(),
        ),
        (
            "spec.tls",
            spec.tls
                .iter()
                .map(|t| (&t.route, t.r#match.iter().map(|m| &m.gateways).collect::<Vec<_>>()))
                .collect::<Vec<_>>(),
        ),
    ] {
        for (i, (route, match_gateways)) in routes.into_iter().enumerate() {
            let path = idx(section, i);
            for (j, d) in route.iter().enumerate() {
                if let Some(dest) = &d.destination {
                    check_destination(r, &at(&idx(&at(&path, "route"), j), "destination"), ns, dest, index);
                }
            }
            for (j, gws) in match_gateways.into_iter().enumerate() {
                let mpath = at(&idx(&at(&path, "match"), j), "gateways");
                gateway_refs.extend(gws.iter().enumerate().map(|(k, g)| (idx(&mpath, k), g)));
            }
        }
    }
    for (path, g) in gateway_refs {
        let reference = GatewayRef::parse(g);
        if reference == GatewayRef::Mesh || g.is_empty() {
            continue;
        }
        let target = reference.resolve(ns);
        if !index.gateways.contains(&target) {
            r.error(path, format!("referenced gateway not found: {target:?}"));
        }
    }
}

fn check_destination(r: &mut Report, path: &str, ns: &str, dest: &Destination, index: &Index<'_>) {
    if dest.host.is_empty() || host::is_wildcard(&dest.host) {
        return;
    }
    let host = resolve_short_name(&dest.host, ns);
    if !index.host_known(&host) {
        r.warn(at(path, "host"), format!("referenced host not found: {host:?}"));
    }
    if let Some(subset) = dest.subset.as_deref().filter(|s| !s.is_empty())
        && !index.subset_known(&host, subset)
    {
        r.error(
            at(path, "subset"),
            format!("referenced host+subset in destinationrule not found: \"{host}+{subset}\""),
        );
    }
}
