//! Reads the Kubernetes manifests a user would `kubectl apply` (Namespaces, Deployments, Services,
//! and Istio objects) into a lab: Deployments become pods (`<name>-0`, `<name>-1`, ... per
//! replica, with the template's labels, service account and container ports; injected when the
//! namespace is labelled `istio-injection: enabled` or the template says
//! `sidecar.istio.io/inject: "true"`, and not when it says `"false"`), Services become lab services
//! (the lab assigns the cluster IP and writes the EndpointSlices), and every other object is passed
//! to the control plane as written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use super::LabSpec;
use super::objects::{PodSpec, ServicePortSpec, ServiceSpec};

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

fn port_of(v: &Value, what: &str) -> anyhow::Result<u16> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .with_context(|| format!("{what}: {v} is not a port number (named target ports are not supported by the lab)"))
}

/// Parses every document of `text`.
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).context("parsing YAML")?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

impl LabSpec {
    /// Adds the objects of manifest `text` (named `name` in errors and in the config directory).
    pub fn manifest(mut self, name: &str, text: &str) -> anyhow::Result<LabSpec> {
        let docs = documents(text).with_context(|| name.to_string())?;
        let injected_namespaces: BTreeSet<String> = docs
            .iter()
            .filter(|d| d["kind"] == "Namespace" && d["metadata"]["labels"]["istio-injection"] == "enabled")
            .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        let mut passthrough = String::new();
        for d in docs {
            let kind = d["kind"].as_str().unwrap_or_default();
            let meta = &d["metadata"];
            let obj_name = meta["name"].as_str().unwrap_or_default().to_string();
            let ns = meta["namespace"].as_str().unwrap_or("default").to_string();
            let what = format!("{name}: {kind} {ns}/{obj_name}");
            match kind {
                "Namespace" => {
                    self = self.namespace(&obj_name);
                    if injected_namespaces.contains(&obj_name) {
                        self.injected_namespaces.insert(obj_name);
                    }
                }
                "Deployment" => {
                    let template = &d["spec"]["template"];
                    let labels = str_map(&template["metadata"]["labels"]);
                    let inject = template["metadata"]["annotations"]["sidecar.istio.io/inject"].as_str();
                    let injected = match inject {
                        Some("true") => true,
                        Some("false") => false,
                        _ => self.injected_namespaces.contains(&ns),
                    };
                    let sa = template["spec"]["serviceAccountName"].as_str().unwrap_or("default");
                    let mut ports = Vec::new();
                    for c in template["spec"]["containers"].as_array().into_iter().flatten() {
                        for p in c["ports"].as_array().into_iter().flatten() {
                            ports.push(port_of(&p["containerPort"], &what)?);
                        }
                    }
                    let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
                    for r in 0..replicas {
                        let mut pod = PodSpec::new(&format!("{obj_name}-{r}"), &ns).service_account(sa).ports(&ports);
                        pod.labels = labels.clone();
                        // Istio's gateway injection template: Envoy as a router, no app, no capture.
                        pod.gateway = template["metadata"]["annotations"]["inject.istio.io/templates"] == "gateway";
                        pod.injected = injected && !pod.gateway;
                        self = self.pod(pod);
                    }
                }
                "Service" => {
                    let mut svc = ServiceSpec::new(&obj_name, &ns);
                    svc.selector = str_map(&d["spec"]["selector"]);
                    for p in d["spec"]["ports"].as_array().into_iter().flatten() {
                        let port = port_of(&p["port"], &what)?;
                        let target_port =
                            if p["targetPort"].is_null() { port } else { port_of(&p["targetPort"], &what)? };
                        let port_name = p["name"].as_str().unwrap_or_default().to_string();
                        svc.ports.push(ServicePortSpec { name: port_name, port, target_port });
                    }
                    if svc.ports.is_empty() {
                        bail!("{what}: no ports");
                    }
                    self = self.service(svc);
                }
                _ => {
                    passthrough.push_str("---\n");
                    passthrough.push_str(&serde_yaml_ng::to_string(&d).with_context(|| what.clone())?);
                }
            }
        }
        if !passthrough.is_empty() {
            self = self.yaml(name, &passthrough);
        }
        Ok(self)
    }

    /// Adds the manifest file at `path` (see [`LabSpec::manifest`]).
    pub fn manifest_file(self, path: &Path) -> anyhow::Result<LabSpec> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.file_name().and_then(|n| n.to_str()).context("manifest file name")?.to_string();
        self.manifest(&name, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_services_and_istio_objects() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web-sa
      containers: [{name: c, ports: [{containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: old, namespace: shop}
spec:
  template:
    metadata: {labels: {app: old}, annotations: {sidecar.istio.io/inject: "false"}}
    spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
"#;
        let spec = LabSpec::new().manifest("m.yaml", text).unwrap();
        assert_eq!(spec.pods.len(), 3);
        assert_eq!(spec.pods[1].name, "web-1");
        assert!(spec.pods[0].injected && !spec.pods[2].injected);
        assert_eq!(spec.pods[0].service_account, "web-sa");
        assert_eq!(spec.services[0].ports[0].target_port, 8080);
        assert_eq!(spec.istio.len(), 1);
        assert!(spec.istio[0].1.contains("PeerAuthentication"));
    }
}
