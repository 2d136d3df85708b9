//! `admission.k8s.io/v1` AdmissionReview: the request the API server sends to a webhook and the
//! response it expects back. Only the fields Sailplane reads or writes are typed; the API server
//! ignores absent optional fields.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only AdmissionReview version served (the API server asks for it when the webhook
/// configuration lists `admissionReviewVersions: [v1]`).
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// An AdmissionReview, request or response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    /// `admission.k8s.io/v1`.
    pub api_version: String,
    /// `AdmissionReview`.
    pub kind: String,
    /// Set by the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    /// Set by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

/// Group, version and kind of the object under review.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    /// API group (empty for the core group).
    #[serde(default)]
    pub group: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
}

/// What the API server asks about.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Echoed in the response.
    pub uid: String,
    /// Kind of the object.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// Namespace of the object (the object itself often has none yet at CREATE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the object (empty for `generateName` objects at CREATE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(default)]
    pub operation: String,
    /// The object as it would be stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    /// The object as it is stored now (UPDATE, DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_object: Option<Value>,
    /// Whether the request is a dry run (no side effects allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// A `metav1.Status` explaining a denial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// HTTP-like code the API server reports (400 for invalid input).
    pub code: u16,
    /// Human-readable message shown to the user (`kubectl apply` prints it).
    pub message: String,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The webhook's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Why not, when denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Base64 of a JSON Patch (RFC 6902) to apply to the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// `JSONPatch` when `patch` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Warnings `kubectl` shows even when allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl AdmissionResponse {
    /// Allowed, unchanged.
    pub fn allow(uid: &str) -> Self {
        Self { uid: uid.to_string(), allowed: true, status: None, patch: None, patch_type: None, warnings: Vec::new() }
    }

    /// Denied with `message` (code 400, reason `BadRequest`: the object is what is wrong).
    pub fn deny(uid: &str, message: impl Into<String>) -> Self {
        Self {
            allowed: false,
            status: Some(Status { code: 400, message: message.into(), reason: Some("BadRequest".into()) }),
            ..Self::allow(uid)
        }
    }

    /// Allowed with a JSON Patch (an array of operations).
    pub fn patched(uid: &str, ops: &Value) -> Self {
        let bytes = ops.to_string();
        Self {
            patch: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            patch_type: Some("JSONPatch".into()),
            ..Self::allow(uid)
        }
    }

    /// The decoded patch, if any (for logs and tests).
    pub fn patch_ops(&self) -> Option<Value> {
        let b64 = self.patch.as_ref()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

impl AdmissionReview {
    /// The review carrying `response`, in the request's version.
    pub fn answer(response: AdmissionResponse) -> Self {
        Self {
            api_version: API_VERSION.into(),
            kind: "AdmissionReview".into(),
            request: None,
            response: Some(response),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn request_parses_and_patch_round_trips() {
        let review: AdmissionReview = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": "ns", "operation": "CREATE", "object": {"metadata": {}},
                        "userInfo": {"username": "x"}}
        }))
        .unwrap();
        let req = review.request.unwrap();
        assert_eq!((req.uid.as_str(), req.kind.kind.as_str(), req.operation.as_str()), ("u1", "Pod", "CREATE"));
        let ops = json!([{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}]);
        let resp = AdmissionResponse::patched("u1", &ops);
        assert_eq!(resp.patch_ops().unwrap(), ops);
        let out = serde_json::to_value(AdmissionReview::answer(resp)).unwrap();
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert_eq!(out["response"]["allowed"], true);
        assert!(out.get("request").is_none());
    }
}
