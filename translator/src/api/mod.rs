//! Input objects: Kubernetes kinds (from `k8s-openapi`) and Istio kinds (typed here), and the
//! parser that turns one untyped document into a typed [`Object`] or a [`Diagnostic`].

pub mod istio;

use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::DeserializeOwned;

use crate::diag::Diagnostic;

/// Identity of an object: kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Kind (`Service`, `VirtualService`, ...).
    pub kind: String,
    /// Namespace (empty for cluster-scoped kinds).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A typed input object.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// `v1/Namespace`
    Namespace(core::Namespace),
    /// `v1/Service`
    Service(core::Service),
    /// `discovery.k8s.io/v1/EndpointSlice`
    EndpointSlice(discovery::EndpointSlice),
    /// `v1/Pod`
    Pod(core::Pod),
    /// `v1/Secret`
    Secret(core::Secret),
    /// `v1/ConfigMap`
    ConfigMap(core::ConfigMap),
    /// `networking.istio.io/ServiceEntry`
    ServiceEntry(istio::ServiceEntry),
}

/// The namespace objects without one land in.
pub const DEFAULT_NAMESPACE: &str = "default";

impl Object {
    /// The object's key. Namespaced objects without a namespace are placed in `default`.
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::EndpointSlice(o) => ("EndpointSlice", &o.metadata),
            Object::Pod(o) => ("Pod", &o.metadata),
            Object::Secret(o) => ("Secret", &o.metadata),
            Object::ConfigMap(o) => ("ConfigMap", &o.metadata),
            Object::ServiceEntry(o) => ("ServiceEntry", &o.metadata),
        };
        let namespace = if kind == "Namespace" {
            String::new()
        } else {
            meta.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
        };
        ObjectKey {
            kind: kind.to_string(),
            namespace,
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// `apiVersion`s accepted for the Istio networking kinds (same schema in each).
pub const ISTIO_NETWORKING_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

/// Turns one untyped document into a typed object.
///
/// Errors name the object (as far as it can be read) and the field path where decoding failed.
pub fn parse_object(doc: serde_json::Value) -> Result<Object, Diagnostic> {
    let kind = doc.get("kind").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let api_version = doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let meta = doc.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let namespace = meta.and_then(|m| m.get("namespace")).and_then(|v| v.as_str()).unwrap_or_default();
    let object = match (kind.is_empty(), name.is_empty(), namespace.is_empty()) {
        (true, _, _) => "<unknown kind>".to_string(),
        (false, true, _) => kind.clone(),
        (false, false, true) => format!("{kind} {name}"),
        (false, false, false) => format!("{kind} {namespace}/{name}"),
    };
    if kind.is_empty() {
        return Err(Diagnostic::error(object, "kind", "missing kind"));
    }
    if name.is_empty() {
        return Err(Diagnostic::error(object, "metadata.name", "missing name"));
    }
    let want = |versions: &[&str]| -> Result<(), Diagnostic> {
        if versions.contains(&api_version.as_str()) {
            Ok(())
        } else {
            Err(Diagnostic::error(
                object.clone(),
                "apiVersion",
                format!("unsupported apiVersion {api_version:?} for kind {kind} (expected one of {})", versions.join(", ")),
            ))
        }
    };
    match kind.as_str() {
        "Namespace" => want(&["v1"]).and_then(|_| typed(&object, doc).map(Object::Namespace)),
        "Service" => want(&["v1"]).and_then(|_| typed(&object, doc).map(Object::Service)),
        "EndpointSlice" => want(&["discovery.k8s.io/v1"]).and_then(|_| typed(&object, doc).map(Object::EndpointSlice)),
        "Pod" => want(&["v1"]).and_then(|_| typed(&object, doc).map(Object::Pod)),
        "Secret" => want(&["v1"]).and_then(|_| typed(&object, doc).map(Object::Secret)),
        "ConfigMap" => want(&["v1"]).and_then(|_| typed(&object, doc).map(Object::ConfigMap)),
        "ServiceEntry" => want(&ISTIO_NETWORKING_VERSIONS).and_then(|_| typed(&object, doc).map(Object::ServiceEntry)),
        _ => Err(Diagnostic::error(
            object,
            "kind",
            format!("unknown kind {kind:?} (apiVersion {api_version:?})"),
        )),
    }
}

fn typed<T: DeserializeOwned>(object: &str, doc: serde_json::Value) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Diagnostic::error(object, path, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrong_field_type_names_the_field() {
        let doc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"ports": [{"port": "eighty"}]}
        });
        let err = parse_object(doc).unwrap_err();
        assert_eq!(err.object, "Service default/reviews");
        assert_eq!(err.field, "spec.ports[0].port");
    }

    #[test]
    fn unknown_kind_is_reported() {
        let doc = json!({"apiVersion": "v1", "kind": "Gizmo", "metadata": {"name": "x"}});
        let err = parse_object(doc).unwrap_err();
        assert_eq!(err.field, "kind");
        assert!(err.message.contains("unknown kind"), "{}", err.message);
    }

    #[test]
    fn service_entry_rejects_unknown_fields() {
        let doc = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "ext", "namespace": "default"},
            "spec": {"hosts": ["a.example.com"], "resolutin": "DNS"}
        });
        let err = parse_object(doc).unwrap_err();
        assert_eq!(err.field, "spec.resolutin");
    }
}
