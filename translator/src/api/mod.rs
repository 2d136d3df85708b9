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
// Objects are parsed once and held in one list per source; boxing the large Kubernetes kinds would
// cost every consumer a deref for no measurable gain.
#[allow(clippy::large_enum_variant)]
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
    /// `networking.istio.io/WorkloadEntry`
    WorkloadEntry(istio::WorkloadEntry),
    /// `networking.istio.io/VirtualService`
    VirtualService(istio::VirtualService),
    /// `networking.istio.io/DestinationRule`
    DestinationRule(istio::DestinationRule),
    /// `networking.istio.io/Gateway`
    Gateway(istio::Gateway),
    /// `networking.istio.io/Sidecar`
    Sidecar(istio::Sidecar),
    /// `security.istio.io/PeerAuthentication`
    PeerAuthentication(istio::PeerAuthentication),
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
            Object::WorkloadEntry(o) => ("WorkloadEntry", &o.metadata),
            Object::VirtualService(o) => ("VirtualService", &o.metadata),
            Object::DestinationRule(o) => ("DestinationRule", &o.metadata),
            Object::Gateway(o) => ("Gateway", &o.metadata),
            Object::Sidecar(o) => ("Sidecar", &o.metadata),
            Object::PeerAuthentication(o) => ("PeerAuthentication", &o.metadata),
        };
        let namespace = if kind == "Namespace" {
            String::new()
        } else {
            meta.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
        };
        ObjectKey { kind: kind.to_string(), namespace, name: meta.name.clone().unwrap_or_default() }
    }
}

/// `apiVersion`s accepted for the Istio networking kinds (same schema in each).
pub const ISTIO_NETWORKING_VERSIONS: [&str; 3] =
    ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"];

/// `apiVersion`s accepted for the Istio security kinds.
pub const ISTIO_SECURITY_VERSIONS: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

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
                format!(
                    "unsupported apiVersion {api_version:?} for kind {kind} (expected one of {})",
                    versions.join(", ")
                ),
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
        "ServiceEntry" => want(&ISTIO_NETWORKING_VERSIONS)
            .and_then(|_| spec_required(&object, &doc))
            .and_then(|_| typed(&object, doc).map(Object::ServiceEntry)),
        "WorkloadEntry" => want(&ISTIO_NETWORKING_VERSIONS)
            .and_then(|_| spec_required(&object, &doc))
            .and_then(|_| typed(&object, doc).map(Object::WorkloadEntry)),
        "VirtualService" => {
            want(&ISTIO_NETWORKING_VERSIONS).and_then(|_| typed(&object, doc).map(Object::VirtualService))
        }
        "DestinationRule" => {
            want(&ISTIO_NETWORKING_VERSIONS).and_then(|_| typed(&object, doc).map(Object::DestinationRule))
        }
        "Gateway" => want(&ISTIO_NETWORKING_VERSIONS).and_then(|_| typed(&object, doc).map(Object::Gateway)),
        "Sidecar" => want(&ISTIO_NETWORKING_VERSIONS).and_then(|_| typed(&object, doc).map(Object::Sidecar)),
        "PeerAuthentication" => {
            want(&ISTIO_SECURITY_VERSIONS).and_then(|_| typed(&object, doc).map(Object::PeerAuthentication))
        }
        _ => Err(Diagnostic::error(object, "kind", format!("unknown kind {kind:?} (apiVersion {api_version:?})"))),
    }
}

/// ServiceEntry and WorkloadEntry declare `spec` required in their CRDs; the apiserver refuses an
/// object without one, so Sailplane does too (instead of reading it as an empty spec).
fn spec_required(object: &str, doc: &serde_json::Value) -> Result<(), Diagnostic> {
    match doc.get("spec") {
        Some(v) if !v.is_null() => Ok(()),
        _ => Err(Diagnostic::error(object, "spec", "required value")),
    }
}

fn typed<T: DeserializeOwned>(object: &str, doc: serde_json::Value) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Diagnostic::error(object, path, kube_style(&e.into_inner().to_string()))
    })
}

/// Rewrites serde's decoding errors into the words the Kubernetes apiserver and Istio use for the
/// same problem, so a message reads the same whichever tool found it:
/// `unknown variant `BLAH`, expected one of ...` becomes `unsupported value: "BLAH": supported
/// values: "UNSET", ...`, and `invalid type: string "x", expected u32` becomes
/// `type conversion error from string "x" to u32`.
fn kube_style(message: &str) -> String {
    // serde_json appends " at line L column C" for text input; values carry no position.
    let message = message.split(" at line ").next().unwrap_or(message);
    let backticked = |s: &str| s.replace('`', "\"");
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((value, expected)) = rest.split_once(", expected ")
    {
        let expected = expected.strip_prefix("one of ").unwrap_or(expected);
        return format!("unsupported value: {}: supported values: {}", backticked(value), backticked(expected));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((got, expected)) = rest.split_once(", expected ")
        {
            return format!("type conversion error from {} to {}", backticked(got), backticked(expected));
        }
    }
    backticked(message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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

    #[rstest::rstest]
    #[case("networking.istio.io/v1", "VirtualService", true)]
    #[case("networking.istio.io/v1beta1", "DestinationRule", true)]
    #[case("networking.istio.io/v1alpha3", "Gateway", true)]
    #[case("networking.istio.io/v1alpha3", "Sidecar", true)]
    #[case("networking.istio.io/v1beta1", "WorkloadEntry", true)]
    #[case("security.istio.io/v1", "PeerAuthentication", true)]
    #[case("security.istio.io/v1beta1", "PeerAuthentication", true)]
    #[case("security.istio.io/v1alpha1", "PeerAuthentication", false)]
    #[case("networking.istio.io/v2", "VirtualService", false)]
    fn istio_api_versions(#[case] api_version: &str, #[case] kind: &str, #[case] accepted: bool) {
        let doc =
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x", "namespace": "ns"}, "spec": {}});
        let parsed = parse_object(doc);
        assert_eq!(parsed.is_ok(), accepted, "{parsed:?}");
        if let Ok(o) = parsed {
            assert_eq!(o.key().to_string(), format!("{kind} ns/x"));
        }
    }

    #[test]
    fn virtual_service_fields_use_istio_names() {
        let doc = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {"hosts": ["r"], "http": [{
                "match": [{"uri": {"prefix": "/a"}, "ignoreUriCase": true, "withoutHeaders": {"x": {"exact": "1"}}}],
                "route": [{"destination": {"host": "r", "subset": "v1", "port": {"number": 80}}, "weight": 100}],
                "redirect": null,
                "mirrors": [{"destination": {"host": "m"}, "percentage": {"value": 5.0}}],
                "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx"},
                "rewrite": {"uriRegexRewrite": {"match": "^/a", "rewrite": "/b"}}
            }]}
        });
        let Object::VirtualService(vs) = parse_object(doc).unwrap() else { panic!("not a VirtualService") };
        let http = &vs.spec.http[0];
        assert_eq!(http.r#match[0].ignore_uri_case, Some(true));
        assert_eq!(http.route[0].destination.as_ref().unwrap().port.unwrap().number, 80);
        assert_eq!(http.mirrors[0].percentage.unwrap().value, 5.0);
        assert_eq!(http.rewrite.as_ref().unwrap().uri_regex_rewrite.as_ref().unwrap().rewrite, "/b");
    }

    #[test]
    fn unknown_nested_field_is_named() {
        let doc = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {"host": "r", "trafficPolicy": {"loadBalancer": {"simpel": "ROUND_ROBIN"}}}
        });
        let err = parse_object(doc).unwrap_err();
        assert_eq!(err.field, "spec.trafficPolicy.loadBalancer.simpel");
        assert!(err.message.starts_with("unknown field \"simpel\""), "{}", err.message);
    }

    #[test]
    fn bad_enum_value_lists_the_supported_ones() {
        let doc = json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "g", "namespace": "default"},
            "spec": {"servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"], "tls": {"mode": "SIMPEL"}}]}
        });
        let err = parse_object(doc).unwrap_err();
        assert_eq!(err.field, "spec.servers[0].tls.mode");
        assert!(err.message.contains("unsupported value: \"SIMPEL\""), "{}", err.message);
        assert!(err.message.contains("\"OPTIONAL_MUTUAL\""), "{}", err.message);
    }

    #[rstest::rstest]
    #[case("ServiceEntry")]
    #[case("WorkloadEntry")]
    fn spec_is_required_where_the_crd_says_so(#[case] kind: &str) {
        let doc = json!({"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": {"name": "x"}});
        let err = parse_object(doc).unwrap_err();
        assert_eq!((err.field.as_str(), err.message.as_str()), ("spec", "required value"));
    }
}
