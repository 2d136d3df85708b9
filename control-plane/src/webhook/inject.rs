//! Sidecar injection: which pods get a proxy, and the JSON Patch that adds it.
//!
//! The injected pod looks like an Istio-injected one, so tools and habits carry over: an init
//! container `istio-init` installs the capture rules ([`super::iptables`]), a container
//! `istio-proxy` runs `sailplane agent --run-envoy` (the agent fetches the workload certificate with
//! the pod's projected service-account token, audience `istio-ca`, serves it to Envoy over SDS and
//! supervises Envoy), the volumes `istio-envoy`, `istio-token` and `istiod-ca-cert` (the mesh root
//! from the `istio-ca-root-cert` ConfigMap) are added, the pod is labelled
//! `security.istio.io/tlsMode=istio` (clients use mTLS to it) and annotated
//! `sidecar.istio.io/status` (so a second pass does nothing).
//!
//! Honoured, as in Istio: the namespace label `istio-injection`, the pod label or annotation
//! `sidecar.istio.io/inject`, `proxy.istio.io/config` (YAML or JSON ProxyConfig; its
//! `proxyMetadata` becomes the proxy's environment, on top of the mesh's
//! `defaultConfig.proxyMetadata`), `sidecar.istio.io/userVolume` and `userVolumeMount` (JSON object
//! `{"name": {...}}` or JSON array `[{"name": ...}]`), `sidecar.istio.io/proxyImage`, and the
//! `traffic.sidecar.istio.io/*` capture annotations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Volume, VolumeMount};
use serde_json::{Map, Value, json};

use super::iptables::{self, CaptureRules};

/// Pod label or annotation forcing injection on (`true`) or off (`false`).
pub const INJECT: &str = "sidecar.istio.io/inject";
/// Annotation recording what was injected; its presence means "already injected".
pub const STATUS: &str = "sidecar.istio.io/status";
/// Annotation with a ProxyConfig (YAML or JSON).
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";
/// Annotation with extra pod volumes.
pub const USER_VOLUME: &str = "sidecar.istio.io/userVolume";
/// Annotation with extra proxy volume mounts.
pub const USER_VOLUME_MOUNT: &str = "sidecar.istio.io/userVolumeMount";
/// Annotation overriding the proxy image.
pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
/// Namespace label enabling (`enabled`) or disabling (`disabled`) injection.
pub const NAMESPACE_LABEL: &str = "istio-injection";
/// Label telling clients the pod accepts Istio mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Canonical service name label (telemetry).
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// Canonical service revision label (telemetry).
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
/// The proxy container.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The capture init container.
pub const INIT_CONTAINER: &str = "istio-init";
/// Namespaces never injected, whatever their labels (Istio's list).
pub const IGNORED_NAMESPACES: [&str; 4] = ["kube-system", "kube-public", "kube-node-lease", "local-path-storage"];

const CAPTURE_ANNOTATIONS: [&str; 6] = [
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
];

/// Where the injected pieces live inside the proxy container.
const ENVOY_DIR: &str = "/etc/istio/proxy";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";

/// Injection settings that come from flags and the mesh config.
#[derive(Debug, Clone)]
pub struct InjectorConfig {
    /// Proxy image: `sailplane` (entrypoint-independent: the command is set), `envoy` on PATH,
    /// `sh` and `iptables-restore`.
    pub image: String,
    /// `imagePullPolicy` of the injected containers (the cluster default when `None`).
    pub image_pull_policy: Option<String>,
    /// Host name of the control plane's Service (`istiod.istio-system.svc`).
    pub discovery_host: String,
    /// Its plaintext xDS port.
    pub xds_port: u16,
    /// Its CA (secure gRPC) port.
    pub ca_port: u16,
    /// Mesh trust domain.
    pub trust_domain: String,
    /// Mesh `defaultConfig.proxyMetadata`, under each pod's own.
    pub proxy_metadata: BTreeMap<String, String>,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        Self {
            image: "sailplane:latest".into(),
            image_pull_policy: None,
            discovery_host: "istiod.istio-system.svc".into(),
            xds_port: 15010,
            ca_port: 15012,
            trust_domain: "cluster.local".into(),
            proxy_metadata: BTreeMap::new(),
        }
    }
}

/// Whether a pod gets a sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Inject.
    Inject,
    /// Leave the pod alone, and why.
    Skip(String),
}

/// A pod whose annotations cannot be honoured: injection is refused with this message rather than
/// silently giving a proxy that is not what the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// An annotation's value is invalid.
    #[error("annotation {annotation}: {message}")]
    Annotation {
        /// The annotation.
        annotation: String,
        /// What is wrong.
        message: String,
    },
    /// The object is not a pod.
    #[error("not a pod: {0}")]
    NotAPod(String),
}

fn annotation_error(annotation: &str, message: impl Into<String>) -> InjectError {
    InjectError::Annotation { annotation: annotation.to_string(), message: message.into() }
}

/// Istio's reading of `sidecar.istio.io/inject`: `y`, `yes`, `true`, `on` (any case) mean yes,
/// empty means "not set", anything else means no.
fn inject_value(v: &str) -> Option<bool> {
    let v = v.trim().to_ascii_lowercase();
    if v.is_empty() { None } else { Some(matches!(v.as_str(), "y" | "yes" | "true" | "on")) }
}

/// Decides whether `pod` in `namespace` is injected. `namespace_labels` is `None` when the namespace
/// is not known to the control plane (not yet seen): the webhook configuration's selectors already
/// sent only pods of enabled namespaces or pods asking for injection, so such pods are injected unless
/// they opt out.
pub fn decide(pod: &Pod, namespace: &str, namespace_labels: Option<&BTreeMap<String, String>>) -> Decision {
    if IGNORED_NAMESPACES.contains(&namespace) {
        return Decision::Skip(format!("namespace {namespace} is never injected"));
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Decision::Skip("pod uses the host network".into());
    }
    let meta = &pod.metadata;
    let already = meta.annotations.as_ref().is_some_and(|a| a.contains_key(STATUS))
        || spec.is_some_and(|s| s.containers.iter().any(|c| c.name == PROXY_CONTAINER));
    if already {
        return Decision::Skip("pod already has a sidecar".into());
    }
    // The label wins over the annotation, as in Istio (the webhook selectors only see labels).
    let pod_says = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT))
        .and_then(|v| inject_value(v))
        .or_else(|| meta.annotations.as_ref().and_then(|a| a.get(INJECT)).and_then(|v| inject_value(v)));
    if pod_says == Some(false) {
        return Decision::Skip(format!("{INJECT} is false"));
    }
    let Some(ns_labels) = namespace_labels else { return Decision::Inject };
    match ns_labels.get(NAMESPACE_LABEL).map(String::as_str) {
        Some("enabled") => Decision::Inject,
        Some(other) => Decision::Skip(format!("namespace {namespace} has {NAMESPACE_LABEL}={other}")),
        None if pod_says == Some(true) => Decision::Inject,
        None => Decision::Skip(format!(
            "namespace {namespace} has no {NAMESPACE_LABEL}=enabled label and the pod does not set {INJECT}=true"
        )),
    }
}

/// Escapes a map key for a JSON Pointer (RFC 6901).
fn pointer_key(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `proxyMetadata` of the `proxy.istio.io/config` annotation.
fn annotation_proxy_metadata(text: &str) -> Result<BTreeMap<String, String>, InjectError> {
    let value: Value =
        serde_yaml_ng::from_str(text).map_err(|e| annotation_error(PROXY_CONFIG, format!("invalid yaml: {e}")))?;
    let Some(config) = value.as_object() else {
        if value.is_null() {
            return Ok(BTreeMap::new());
        }
        return Err(annotation_error(PROXY_CONFIG, "expected a ProxyConfig mapping"));
    };
    let mut out = BTreeMap::new();
    match config.get("proxyMetadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let s = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(annotation_error(PROXY_CONFIG, format!("proxyMetadata.{k}: expected a string"))),
                };
                out.insert(k.clone(), s);
            }
        }
        Some(_) => return Err(annotation_error(PROXY_CONFIG, "proxyMetadata: expected a mapping")),
    }
    Ok(out)
}

/// Items of a `userVolume`/`userVolumeMount` annotation: the object form `{"name": {...}}` (names in
/// sorted order, as Istio's template ranges over the map) or the array form `[{"name": ...}]`.
fn named_items(annotation: &str, text: &str) -> Result<Vec<Map<String, Value>>, InjectError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| annotation_error(annotation, format!("invalid JSON: {e}")))?;
    let shape = r#"expected a JSON object {"name": {...}} or a JSON array [{"name": "...", ...}]"#;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries
                .into_iter()
                .map(|(name, spec)| match spec {
                    Value::Object(mut m) => {
                        m.insert("name".into(), Value::String(name));
                        Ok(m)
                    }
                    _ => Err(annotation_error(annotation, format!("{name}: {shape}"))),
                })
                .collect()
        }
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(m) if m.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) => Ok(m),
                _ => Err(annotation_error(annotation, format!("[{i}]: each item needs a non-empty \"name\""))),
            })
            .collect(),
        _ => Err(annotation_error(annotation, shape)),
    }
}

/// Go's JSON decoding (which Istio uses) matches field names case-insensitively, so Istio's own
/// documented `{"mountPath": ..., "readonly": true}` works; the same spellings are accepted here.
fn canonical_mount_keys(mut m: Map<String, Value>) -> Map<String, Value> {
    const FIELDS: [&str; 7] =
        ["name", "mountPath", "readOnly", "recursiveReadOnly", "subPath", "subPathExpr", "mountPropagation"];
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        if let Some(canon) = FIELDS.iter().find(|f| f.eq_ignore_ascii_case(&k))
            && *canon != k
            && let Some(v) = m.remove(&k)
        {
            m.insert((*canon).to_string(), v);
        }
    }
    m
}

fn user_volumes(annotations: &BTreeMap<String, String>) -> Result<Vec<Value>, InjectError> {
    let Some(text) = annotations.get(USER_VOLUME) else { return Ok(Vec::new()) };
    named_items(USER_VOLUME, text)?
        .into_iter()
        .map(|m| {
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let volume: Volume = serde_json::from_value(Value::Object(m))
                .map_err(|e| annotation_error(USER_VOLUME, format!("{name}: {e}")))?;
            serde_json::to_value(volume).map_err(|e| annotation_error(USER_VOLUME, format!("{name}: {e}")))
        })
        .collect()
}

fn user_volume_mounts(annotations: &BTreeMap<String, String>) -> Result<Vec<Value>, InjectError> {
    let Some(text) = annotations.get(USER_VOLUME_MOUNT) else { return Ok(Vec::new()) };
    named_items(USER_VOLUME_MOUNT, text)?
        .into_iter()
        .map(|m| {
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let mount: VolumeMount = serde_json::from_value(Value::Object(canonical_mount_keys(m)))
                .map_err(|e| annotation_error(USER_VOLUME_MOUNT, format!("{name}: {e}")))?;
            if mount.mount_path.is_empty() {
                return Err(annotation_error(USER_VOLUME_MOUNT, format!("{name}: mountPath is required")));
            }
            serde_json::to_value(mount).map_err(|e| annotation_error(USER_VOLUME_MOUNT, format!("{name}: {e}")))
        })
        .collect()
}

fn capture_rules(annotations: &BTreeMap<String, String>) -> Result<CaptureRules, InjectError> {
    let mut rules = CaptureRules::default();
    for name in CAPTURE_ANNOTATIONS {
        let Some(v) = annotations.get(name) else { continue };
        let err = |e: iptables::ParseError| annotation_error(name, e.to_string());
        match name.rsplit('/').next().unwrap_or_default() {
            "includeInboundPorts" => rules.include_inbound_ports = iptables::parse_port_selection(v).map_err(err)?,
            "excludeInboundPorts" => rules.exclude_inbound_ports = iptables::parse_ports(v).map_err(err)?,
            "includeOutboundIPRanges" => {
                rules.include_outbound_ranges = iptables::parse_cidr_selection(v).map_err(err)?
            }
            "excludeOutboundIPRanges" => rules.exclude_outbound_ranges = iptables::parse_cidrs(v).map_err(err)?,
            "includeOutboundPorts" => rules.include_outbound_ports = iptables::parse_ports(v).map_err(err)?,
            _ => rules.exclude_outbound_ports = iptables::parse_ports(v).map_err(err)?,
        }
    }
    Ok(rules)
}

/// The workload name for the canonical-name label: the labels Istio looks at, else the pod's name,
/// else its `generateName` without the ReplicaSet hash (`reviews-v1-5d8f9c7b6d-` -> `reviews-v1`).
fn workload_name(pod: &Pod, labels: &BTreeMap<String, String>) -> String {
    for key in ["app.kubernetes.io/name", "app"] {
        if let Some(v) = labels.get(key) {
            return v.clone();
        }
    }
    if let Some(name) = pod.metadata.name.as_deref().filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    let generated = pod.metadata.generate_name.as_deref().unwrap_or_default().trim_end_matches('-');
    match labels.get("pod-template-hash") {
        Some(hash) => generated.strip_suffix(&format!("-{hash}")).unwrap_or(generated).to_string(),
        None => generated.to_string(),
    }
}

fn revision(labels: &BTreeMap<String, String>) -> String {
    for key in ["app.kubernetes.io/version", "version"] {
        if let Some(v) = labels.get(key) {
            return v.clone();
        }
    }
    "latest".into()
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

/// The JSON Patch (an array of operations) injecting the sidecar into `pod` (a Pod object as the
/// API server sends it). Call [`decide`] first.
pub fn patch(config: &InjectorConfig, pod_value: &Value) -> Result<Value, InjectError> {
    let pod: Pod = serde_json::from_value(pod_value.clone()).map_err(|e| InjectError::NotAPod(e.to_string()))?;
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();

    let mut metadata = config.proxy_metadata.clone();
    if let Some(text) = annotations.get(PROXY_CONFIG) {
        metadata.extend(annotation_proxy_metadata(text)?);
    }
    let rules = capture_rules(&annotations)?;
    let volumes = user_volumes(&annotations)?;
    let mounts = user_volume_mounts(&annotations)?;
    let image = annotations.get(PROXY_IMAGE).cloned().unwrap_or_else(|| config.image.clone());

    let mut new_labels: BTreeMap<String, String> = BTreeMap::new();
    new_labels.insert(TLS_MODE_LABEL.into(), "istio".into());
    if !labels.contains_key(CANONICAL_NAME) {
        new_labels.insert(CANONICAL_NAME.into(), workload_name(&pod, &labels));
    }
    if !labels.contains_key(CANONICAL_REVISION) {
        new_labels.insert(CANONICAL_REVISION.into(), revision(&labels));
    }
    let mut all_labels = labels.clone();
    all_labels.extend(new_labels.clone());
    // Label values cannot contain ',' or '=' (Kubernetes forbids them), so this list is unambiguous.
    let label_arg: Vec<String> = all_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();

    let mut args: Vec<String> = vec![
        "agent".into(),
        "--run-envoy".into(),
        "--interception-mode".into(),
        "REDIRECT".into(),
        "--xds-address".into(),
        format!("{}:{}", config.discovery_host, config.xds_port),
        "--token-file".into(),
        format!("{TOKEN_DIR}/istio-token"),
        "--sds-socket".into(),
        format!("{ENVOY_DIR}/SDS"),
        "--output".into(),
        format!("{ENVOY_DIR}/envoy-rev.yaml"),
    ];
    if !label_arg.is_empty() {
        args.push("--labels".into());
        args.push(label_arg.join(","));
    }

    let mut env: Vec<Value> = vec![
        json!({"name": "CA_ADDR", "value": format!("{}:{}", config.discovery_host, config.ca_port)}),
        json!({"name": "CA_ROOT_CA", "value": format!("{ROOT_CERT_DIR}/root-cert.pem")}),
        json!({"name": "TRUST_DOMAIN", "value": config.trust_domain}),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("INSTANCE_IP", "status.podIP"),
        field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
    ];
    // proxyMetadata is the proxy's environment (Istio: "Additional env variables for the proxy");
    // a key it shares with the defaults above replaces the default.
    for (k, v) in &metadata {
        let item = json!({"name": k, "value": v});
        match env.iter_mut().find(|e| e.get("name").and_then(Value::as_str) == Some(k.as_str())) {
            Some(existing) => *existing = item,
            None => env.push(item),
        }
    }

    let mut proxy_mounts = vec![
        json!({"name": "istio-envoy", "mountPath": ENVOY_DIR}),
        json!({"name": "istio-token", "mountPath": TOKEN_DIR}),
        json!({"name": "istiod-ca-cert", "mountPath": ROOT_CERT_DIR, "readOnly": true}),
    ];
    proxy_mounts.extend(mounts);

    let mut proxy = json!({
        "name": PROXY_CONTAINER,
        "image": image,
        "command": ["sailplane"],
        "args": args,
        "env": env,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": iptables::PROXY_UID,
            "runAsNonRoot": true,
            "runAsUser": iptables::PROXY_UID
        },
        "volumeMounts": proxy_mounts
    });
    let mut init = json!({
        "name": INIT_CONTAINER,
        "image": image,
        "command": ["sh", "-c", iptables::init_script(&rules)],
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0
        }
    });
    if let Some(policy) = &config.image_pull_policy {
        for c in [&mut proxy, &mut init] {
            if let Some(m) = c.as_object_mut() {
                m.insert("imagePullPolicy".into(), Value::String(policy.clone()));
            }
        }
    }

    let mut pod_volumes = vec![
        json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}}),
        json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}),
    ];
    pod_volumes.extend(volumes);
    let volume_names: Vec<Value> = pod_volumes.iter().filter_map(|v| v.get("name").cloned()).collect();
    let status = json!({
        "initContainers": [INIT_CONTAINER],
        "containers": [PROXY_CONTAINER],
        "volumes": volume_names,
        "imagePullSecrets": null,
        "revision": "default"
    });

    let spec = pod.spec.as_ref();
    let mut ops: Vec<Value> = Vec::new();
    // The capture rules go first, so other init containers already run behind them (as in Istio).
    if spec.and_then(|s| s.init_containers.as_ref()).is_some_and(|c| !c.is_empty()) {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]}));
    }
    ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": proxy}));
    if spec.and_then(|s| s.volumes.as_ref()).is_some() {
        for v in pod_volumes {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": pod_volumes}));
    }
    add_map_entries(&mut ops, "/metadata/labels", pod.metadata.labels.is_some(), &new_labels);
    let mut new_annotations = BTreeMap::new();
    new_annotations.insert(STATUS.to_string(), status.to_string());
    add_map_entries(&mut ops, "/metadata/annotations", pod.metadata.annotations.is_some(), &new_annotations);
    Ok(Value::Array(ops))
}

/// Adds entries to a string map: the whole map when it does not exist, else one `add` per key
/// (`add` on an existing key replaces its value).
fn add_map_entries(ops: &mut Vec<Value>, path: &str, exists: bool, entries: &BTreeMap<String, String>) {
    if exists {
        for (k, v) in entries {
            ops.push(json!({"op": "add", "path": format!("{path}/{}", pointer_key(k)), "value": v}));
        }
    } else {
        ops.push(json!({"op": "add", "path": path, "value": entries}));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[rstest::rstest]
    #[case::enabled_namespace(json!({}), Some(&[("istio-injection", "enabled")][..]), true)]
    #[case::plain_namespace(json!({}), Some(&[][..]), false)]
    #[case::pod_label_true(json!({"labels": {"sidecar.istio.io/inject": "true"}}), Some(&[][..]), true)]
    #[case::pod_annotation_true(json!({"annotations": {"sidecar.istio.io/inject": "yes"}}), Some(&[][..]), true)]
    #[case::pod_false_wins(json!({"annotations": {"sidecar.istio.io/inject": "false"}}), Some(&[("istio-injection", "enabled")][..]), false)]
    #[case::label_over_annotation(json!({"labels": {"sidecar.istio.io/inject": "false"}, "annotations": {"sidecar.istio.io/inject": "true"}}), None, false)]
    #[case::disabled_namespace(json!({"labels": {"sidecar.istio.io/inject": "true"}}), Some(&[("istio-injection", "disabled")][..]), false)]
    #[case::unknown_namespace(json!({}), None, true)]
    #[case::already(json!({"annotations": {"sidecar.istio.io/status": "{}"}}), None, false)]
    fn decisions(#[case] meta: Value, #[case] ns: Option<&[(&str, &str)]>, #[case] inject: bool) {
        let p = pod(json!({"metadata": meta, "spec": {"containers": [{"name": "app"}]}}));
        let ns_labels = ns.map(labels);
        let d = decide(&p, "apps", ns_labels.as_ref());
        assert_eq!(d == Decision::Inject, inject, "{d:?}");
    }

    #[test]
    fn system_namespaces_and_host_network_are_never_injected() {
        let enabled = labels(&[("istio-injection", "enabled")]);
        let p = pod(json!({"metadata": {}, "spec": {"containers": [{"name": "app"}]}}));
        assert!(matches!(decide(&p, "kube-system", Some(&enabled)), Decision::Skip(_)));
        let host = pod(json!({"metadata": {}, "spec": {"hostNetwork": true, "containers": [{"name": "app"}]}}));
        assert!(matches!(decide(&host, "apps", Some(&enabled)), Decision::Skip(_)));
    }

    #[test]
    fn both_user_volume_forms_give_the_same_volumes() {
        let object = labels(&[(USER_VOLUME, r#"{"certs": {"secret": {"secretName": "c"}}, "a": {"emptyDir": {}}}"#)]);
        let array = labels(&[(
            USER_VOLUME,
            r#"[{"name": "a", "emptyDir": {}}, {"name": "certs", "secret": {"secretName": "c"}}]"#,
        )]);
        assert_eq!(user_volumes(&object).unwrap(), user_volumes(&array).unwrap());
        let mounts = labels(&[(USER_VOLUME_MOUNT, r#"{"certs": {"mountPath": "/c", "readonly": true}}"#)]);
        assert_eq!(
            user_volume_mounts(&mounts).unwrap(),
            vec![json!({"name": "certs", "mountPath": "/c", "readOnly": true})]
        );
    }

    #[test]
    fn bad_annotations_are_errors_naming_the_annotation() {
        for (k, v) in [
            (USER_VOLUME, "not json"),
            (USER_VOLUME, "[{\"secret\": {}}]"),
            (USER_VOLUME_MOUNT, "{\"x\": {\"readOnly\": true}}"),
            (PROXY_CONFIG, "proxyMetadata: [a, b]"),
            ("traffic.sidecar.istio.io/includeInboundPorts", "http"),
        ] {
            let p = json!({"metadata": {"annotations": {k: v}}, "spec": {"containers": [{"name": "app"}]}});
            let err = patch(&InjectorConfig::default(), &p).unwrap_err();
            assert!(err.to_string().starts_with(&format!("annotation {k}: ")), "{err}");
        }
    }

    #[test]
    fn keys_with_slashes_are_escaped() {
        assert_eq!(pointer_key("security.istio.io/tlsMode"), "security.istio.io~1tlsMode");
        assert_eq!(pointer_key("a~b"), "a~0b");
    }
}
