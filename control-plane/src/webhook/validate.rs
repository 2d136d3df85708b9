//! Validation of Istio objects at admission: the same parser and rules as `sailplane analyze`, so
//! `kubectl apply` refuses exactly what `sailplane analyze` reports as an error, with the same words
//! (`Kind namespace/name: field: message`). Warnings are passed back as admission warnings, which
//! `kubectl` prints without refusing.

use sailplane_translator::Diagnostic;
use sailplane_translator::api::parse_object;
use sailplane_translator::diag::Severity;
use sailplane_translator::validate::validate_object;
use serde_json::Value;

use super::admission::{AdmissionRequest, AdmissionResponse};

/// API groups whose objects are validated; anything else is allowed untouched.
pub const VALIDATED_GROUPS: [&str; 2] = ["networking.istio.io", "security.istio.io"];

/// One diagnostic as `analyze` prints it, without the file and severity prefix.
pub fn message(d: &Diagnostic) -> String {
    let mut s = d.object.clone();
    if !d.field.is_empty() {
        s.push_str(": ");
        s.push_str(&d.field);
    }
    s.push_str(": ");
    s.push_str(&d.message);
    s.replace(['\n', '\r'], " ")
}

/// Reviews one request.
pub fn review(req: &AdmissionRequest) -> AdmissionResponse {
    if !matches!(req.operation.as_str(), "CREATE" | "UPDATE") || !VALIDATED_GROUPS.contains(&req.kind.group.as_str()) {
        return AdmissionResponse::allow(&req.uid);
    }
    let Some(object) = req.object.clone() else {
        return AdmissionResponse::deny(&req.uid, "configuration is invalid: request has no object");
    };
    let object = with_namespace(object, req.namespace.as_deref());
    let diagnostics = match parse_object(object) {
        Ok(obj) => validate_object(&obj),
        Err(d) => vec![d],
    };
    let (errors, warnings): (Vec<&Diagnostic>, Vec<&Diagnostic>) =
        diagnostics.iter().partition(|d| d.severity == Severity::Error);
    let mut response = if errors.is_empty() {
        AdmissionResponse::allow(&req.uid)
    } else {
        let lines: Vec<String> = errors.iter().map(|d| message(d)).collect();
        AdmissionResponse::deny(&req.uid, format!("configuration is invalid: {}", lines.join("; ")))
    };
    response.warnings = warnings.iter().map(|d| message(d)).collect();
    response
}

/// Objects under review may lack `metadata.namespace` (it comes from the request path); the key in
/// messages should still name it, as `analyze` would.
fn with_namespace(mut object: Value, namespace: Option<&str>) -> Value {
    if let (Some(ns), Some(meta)) = (namespace, object.get_mut("metadata").and_then(Value::as_object_mut))
        && !meta.contains_key("namespace")
    {
        meta.insert("namespace".into(), Value::String(ns.to_string()));
    }
    object
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::webhook::admission::GroupVersionKind;
    use serde_json::json;

    fn request(op: &str, group: &str, object: Value) -> AdmissionRequest {
        AdmissionRequest {
            uid: "u".into(),
            kind: GroupVersionKind { group: group.into(), version: "v1".into(), kind: "VirtualService".into() },
            namespace: Some("default".into()),
            operation: op.into(),
            object: Some(object),
            ..AdmissionRequest::default()
        }
    }

    #[test]
    fn invalid_objects_are_denied_and_deletes_pass() {
        let bad = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r"},
            "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}, "weight": -1}]}]}});
        let resp = review(&request("CREATE", "networking.istio.io", bad.clone()));
        assert!(!resp.allowed);
        let msg = resp.status.unwrap().message;
        assert!(
            msg.starts_with("configuration is invalid: VirtualService default/r: spec.http[0].route[0].weight"),
            "{msg}"
        );
        assert!(review(&request("DELETE", "networking.istio.io", bad.clone())).allowed);
        assert!(review(&request("CREATE", "", bad)).allowed, "other groups are not ours to judge");
    }
}
