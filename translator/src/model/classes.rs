//! Proxy classes: the part of a [`ProxyProfile`] that one side of its configuration depends on.
//!
//! A proxy's labels matter only through the selectors that match them. Restricting the labels to
//! the keys some selector of the world names keeps every selector's verdict, so the translation
//! is unchanged: pods that differ only in labels no selector reads (`pod-template-hash`, a pod
//! name label) are one class and share one translation.
//!
//! The two sides of a sidecar read different selectors, so they have separate classes:
//! - **outbound** (clusters, endpoints, route configurations, outbound listeners): DestinationRule
//!   and Sidecar `workloadSelector`s and VirtualService `sourceLabels`; for gateways also the Gateway
//!   `selector`s. With no such selector, every sidecar of a namespace shares the outbound side.
//! - **inbound** (`inbound|…` clusters, `virtualInbound`): the selectors of Services (which make the
//!   proxy's own service ports) and of PeerAuthentications, and Sidecar `workloadSelector`s.
//!
//! The service account is left out of both: nothing in the translation reads it. The differential
//! tests translate random profiles whole and by class and require equal bytes, so a builder that
//! starts reading a label key or field not listed here fails them.

use std::collections::BTreeSet;

use super::{Labels, NodeType, ProxyProfile, World};
use crate::api::istio::VirtualServiceSpec;

/// The label keys each side of a proxy's configuration can depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelKeys {
    /// Keys read by the outbound side of sidecars.
    pub outbound: BTreeSet<String>,
    /// Keys read by the inbound side of sidecars.
    pub inbound: BTreeSet<String>,
    /// Keys read for gateways (everything a gateway's translation reads).
    pub gateway: BTreeSet<String>,
}

impl LabelKeys {
    /// The keys of `world`'s selectors.
    pub fn of(world: &World) -> LabelKeys {
        let mut keys = LabelKeys::default();
        let config = &world.config;
        let mut outbound = |l: &Labels| keys.outbound.extend(l.keys().cloned());
        for dr in &config.destination_rules {
            if let Some(sel) = &dr.selector {
                outbound(sel);
            }
        }
        for vs in &config.virtual_services {
            for l in source_labels(&vs.spec) {
                outbound(l);
            }
        }
        for sc in &config.sidecars {
            if let Some(w) = &sc.spec.workload_selector {
                keys.outbound.extend(w.labels.keys().cloned());
                keys.inbound.extend(w.labels.keys().cloned());
            }
        }
        for pa in &config.peer_authentications {
            if let Some(sel) = &pa.spec.selector {
                keys.inbound.extend(sel.match_labels.keys().cloned());
            }
        }
        for svc in &world.services {
            if let Some(sel) = &svc.selector {
                keys.inbound.extend(sel.keys().cloned());
            }
        }
        keys.gateway = keys.outbound.clone();
        for gw in &config.gateways {
            keys.gateway.extend(gw.spec.selector.keys().cloned());
        }
        keys
    }
}

/// Every `sourceLabels` of a VirtualService's http, tls and tcp matches.
fn source_labels(spec: &VirtualServiceSpec) -> impl Iterator<Item = &Labels> {
    let http = spec.http.iter().flat_map(|r| r.r#match.iter().map(|m| &m.source_labels));
    let tls = spec.tls.iter().flat_map(|r| r.r#match.iter().map(|m| &m.source_labels));
    let tcp = spec.tcp.iter().flat_map(|r| r.r#match.iter().map(|m| &m.source_labels));
    http.chain(tls).chain(tcp)
}

/// `labels` restricted to `keys`.
pub fn project(labels: &Labels, keys: &BTreeSet<String>) -> Labels {
    labels.iter().filter(|(k, _)| keys.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl ProxyProfile {
    /// The profile the outbound side of this proxy's configuration is translated for (for a
    /// gateway: its whole configuration).
    pub fn outbound_class(&self, keys: &LabelKeys) -> ProxyProfile {
        let keys = match self.node_type {
            NodeType::Sidecar => &keys.outbound,
            NodeType::Router => &keys.gateway,
        };
        ProxyProfile { labels: project(&self.labels, keys), service_account: String::new(), ..self.clone() }
    }

    /// The profile the inbound side of this proxy's configuration is translated for. Gateways have
    /// no inbound side: theirs is one empty class.
    pub fn inbound_class(&self, keys: &LabelKeys) -> ProxyProfile {
        match self.node_type {
            NodeType::Sidecar => ProxyProfile {
                labels: project(&self.labels, &keys.inbound),
                service_account: String::new(),
                ..self.clone()
            },
            NodeType::Router => ProxyProfile { node_type: NodeType::Router, ..ProxyProfile::default() },
        }
    }
}
