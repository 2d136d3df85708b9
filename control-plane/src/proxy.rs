//! A connected proxy as the control plane sees it: identity from the Envoy node, and the
//! translation-relevant [`ProxyProfile`] derived from it.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use sailplane_translator::model::{InterceptionMode, Labels, NodeType, ProxyProfile};

/// Everything known about one proxy from its node description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    /// The full Envoy node id (`sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local`).
    pub id: String,
    /// The node's cluster (`reviews.default`).
    pub cluster: String,
    /// IP addresses (`INSTANCE_IPS` metadata, else the IP of the node id).
    pub ips: Vec<String>,
    /// Pod name (from the node id).
    pub pod: String,
    /// What the translator may see.
    pub profile: ProxyProfile,
}

/// Why a node description was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The request carried no node.
    #[error("the first request of a stream must carry a node")]
    Missing,
    /// The node id does not have Istio's four `~`-separated fields.
    #[error("node id {0:?} is not of the form <sidecar|router>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>")]
    BadId(String),
}

/// Node metadata of proxies without a workload certificate (`sailplane bootstrap` sets it: no node
/// agent serves that Envoy SDS), see [`ProxyProfile::no_workload_cert`].
pub const NO_WORKLOAD_CERT_KEY: &str = "SAILPLANE_NO_WORKLOAD_CERT";

impl ProxyInfo {
    /// Reads a proxy from its node. The id must be in Istio's form
    /// `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`; metadata keys follow Istio's agent
    /// (`NAMESPACE`, `LABELS`, `SERVICE_ACCOUNT`, `INSTANCE_IPS`, `INTERCEPTION_MODE`).
    pub fn from_node(node: Option<&Node>) -> Result<ProxyInfo, NodeError> {
        let node = node.ok_or(NodeError::Missing)?;
        let parts: Vec<&str> = node.id.split('~').collect();
        if parts.len() != 4 {
            return Err(NodeError::BadId(node.id.clone()));
        }
        let node_type: NodeType = parts[0].parse().map_err(|_| NodeError::BadId(node.id.clone()))?;
        let (pod, id_namespace) = parts[2].rsplit_once('.').unwrap_or((parts[2], ""));
        let dns_namespace = parts[3].split('.').next().unwrap_or_default();
        let meta = node.metadata.as_ref();
        let namespace = meta_str(meta, "NAMESPACE")
            .or_else(|| (!id_namespace.is_empty()).then(|| id_namespace.to_string()))
            .unwrap_or_else(|| dns_namespace.to_string());
        if namespace.is_empty() {
            return Err(NodeError::BadId(node.id.clone()));
        }
        let ips = meta_str(meta, "INSTANCE_IPS")
            .map(|s| s.split(',').map(|ip| ip.trim().to_string()).filter(|ip| !ip.is_empty()).collect())
            .unwrap_or_else(|| vec![parts[1].to_string()]);
        let interception = match meta_str(meta, "INTERCEPTION_MODE").as_deref() {
            Some("NONE") => InterceptionMode::None,
            _ => InterceptionMode::Redirect,
        };
        let labels = meta_labels(meta, "LABELS");
        let service_account = meta_str(meta, "SERVICE_ACCOUNT").unwrap_or_else(|| "default".to_string());
        let no_workload_cert = meta_str(meta, NO_WORKLOAD_CERT_KEY).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(ProxyInfo {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            ips,
            pod: pod.to_string(),
            profile: ProxyProfile { node_type, namespace, labels, service_account, interception, no_workload_cert },
        })
    }
}

fn meta_value<'a>(meta: Option<&'a Struct>, key: &str) -> Option<&'a Kind> {
    meta?.fields.get(key)?.kind.as_ref()
}

fn meta_str(meta: Option<&Struct>, key: &str) -> Option<String> {
    match meta_value(meta, key)? {
        Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn meta_labels(meta: Option<&Struct>, key: &str) -> Labels {
    match meta_value(meta, key) {
        Some(Kind::StructValue(s)) => s
            .fields
            .iter()
            .filter_map(|(k, v)| match &v.kind {
                Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                _ => None,
            })
            .collect::<BTreeMap<_, _>>(),
        _ => Labels::new(),
    }
}

/// Builds a node metadata `Struct` from string pairs and labels (used by bootstrap and tests).
pub fn node_metadata(pairs: &[(&str, String)], labels: &Labels) -> Struct {
    let mut fields: BTreeMap<String, Value> =
        pairs.iter().map(|(k, v)| (k.to_string(), Value { kind: Some(Kind::StringValue(v.clone())) })).collect();
    let label_fields =
        labels.iter().map(|(k, v)| (k.clone(), Value { kind: Some(Kind::StringValue(v.clone())) })).collect();
    fields.insert("LABELS".into(), Value { kind: Some(Kind::StructValue(Struct { fields: label_fields })) });
    Struct { fields: fields.into_iter().collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_node_id() {
        let node = Node {
            id: "sidecar~10.1.0.7~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local".into(),
            cluster: "reviews.bookinfo".into(),
            ..Default::default()
        };
        let p = ProxyInfo::from_node(Some(&node)).unwrap();
        assert_eq!(p.profile.namespace, "bookinfo");
        assert_eq!(p.pod, "reviews-v1-abc");
        assert_eq!(p.ips, vec!["10.1.0.7".to_string()]);
        assert_eq!(p.profile.node_type, NodeType::Sidecar);
        assert_eq!(p.profile.interception, InterceptionMode::Redirect);
        assert!(!p.profile.no_workload_cert, "Istio's agents serve certificates");
    }

    #[test]
    fn metadata_overrides_and_labels() {
        let mut labels = Labels::new();
        labels.insert("app".into(), "gw".into());
        let node = Node {
            id: "router~10.1.0.9~gw-1.istio-system~istio-system.svc.cluster.local".into(),
            metadata: Some(node_metadata(
                &[
                    ("INTERCEPTION_MODE", "NONE".into()),
                    ("SERVICE_ACCOUNT", "gw-sa".into()),
                    (NO_WORKLOAD_CERT_KEY, "true".into()),
                ],
                &labels,
            )),
            ..Default::default()
        };
        let p = ProxyInfo::from_node(Some(&node)).unwrap();
        assert_eq!(p.profile.node_type, NodeType::Router);
        assert_eq!(p.profile.interception, InterceptionMode::None);
        assert_eq!(p.profile.labels.get("app").map(String::as_str), Some("gw"));
        assert_eq!(p.profile.service_account, "gw-sa");
        assert!(p.profile.no_workload_cert);
    }

    #[test]
    fn bad_ids_are_refused() {
        let node = Node { id: "just-a-name".into(), ..Default::default() };
        assert!(matches!(ProxyInfo::from_node(Some(&node)), Err(NodeError::BadId(_))));
        assert_eq!(ProxyInfo::from_node(None), Err(NodeError::Missing));
    }
}
