//! What the lab declares, and the Kubernetes objects it writes for the control plane: Namespaces,
//! Pods (with `podIP`, labels, service account and, when injected, `security.istio.io/tlsMode:
//! istio`), Services with their cluster IP, and EndpointSlices pointing at the pods.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// A pod: one network namespace with an echo app on `ports`, and optionally a sidecar.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Pod name (unique within its namespace).
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Labels (services select on them).
    pub labels: BTreeMap<String, String>,
    /// Service account (the SPIFFE identity's last part).
    pub service_account: String,
    /// Whether the pod starts with a sidecar (agent + Envoy + interception rules).
    pub injected: bool,
    /// Ports the echo app listens on (0.0.0.0).
    pub ports: Vec<u16>,
    /// An HTTPS port of the app, with its certificate and, when set, the CA client certificates
    /// must chain to (required then).
    pub tls: Option<(u16, crate::tls_echo::CertKey, Option<String>)>,
    /// Outside the cluster: no Pod object is written (a server the mesh reaches as an external
    /// host, e.g. through a ServiceEntry).
    pub external: bool,
    /// A gateway pod: Envoy runs as node type `router` in place of the app, with no interception
    /// rules (see [`super::gateway`]).
    pub gateway: bool,
}

impl PodSpec {
    /// A pod `name` in `namespace` with label `app=<name>`, service account `default`, no sidecar
    /// and an app on port 8080.
    pub fn new(name: &str, namespace: &str) -> PodSpec {
        PodSpec {
            name: name.to_string(),
            namespace: namespace.to_string(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            service_account: "default".to_string(),
            injected: false,
            ports: vec![8080],
            tls: None,
            external: false,
            gateway: false,
        }
    }

    /// Adds an HTTPS port serving `cert`, requiring client certificates from `client_ca_pem` if set.
    pub fn tls(mut self, port: u16, cert: crate::tls_echo::CertKey, client_ca_pem: Option<&str>) -> PodSpec {
        self.tls = Some((port, cert, client_ca_pem.map(str::to_string)));
        self
    }

    /// Marks the pod as outside the cluster (no Pod object; services never select it).
    pub fn external(mut self) -> PodSpec {
        self.external = true;
        self
    }

    /// Adds or replaces a label.
    pub fn label(mut self, key: &str, value: &str) -> PodSpec {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// Sets the service account.
    pub fn service_account(mut self, sa: &str) -> PodSpec {
        self.service_account = sa.to_string();
        self
    }

    /// Starts the pod with a sidecar.
    pub fn injected(mut self) -> PodSpec {
        self.injected = true;
        self
    }

    /// Sets the app's ports.
    pub fn ports(mut self, ports: &[u16]) -> PodSpec {
        self.ports = ports.to_vec();
        self
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One port of a Service.
#[derive(Debug, Clone)]
pub struct ServicePortSpec {
    /// Port name (`http`, `http-web`, `tcp-db`...: Istio infers the protocol from it).
    pub name: String,
    /// Service port (on the VIP).
    pub port: u16,
    /// Pod port.
    pub target_port: u16,
}

/// A ClusterIP Service selecting pods by labels.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod selector.
    pub selector: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<ServicePortSpec>,
}

impl ServiceSpec {
    /// Service `name` in `namespace` selecting `app=<name>`, with no ports yet.
    pub fn new(name: &str, namespace: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.to_string(),
            namespace: namespace.to_string(),
            selector: BTreeMap::from([("app".to_string(), name.to_string())]),
            ports: Vec::new(),
        }
    }

    /// Replaces the selector with `key=value`.
    pub fn selector(mut self, key: &str, value: &str) -> ServiceSpec {
        self.selector = BTreeMap::from([(key.to_string(), value.to_string())]);
        self
    }

    /// Adds a port `name` `port` -> `target_port`.
    pub fn port(mut self, name: &str, port: u16, target_port: u16) -> ServiceSpec {
        self.ports.push(ServicePortSpec { name: name.to_string(), port, target_port });
        self
    }

    /// `<name>.<namespace>.svc.cluster.local`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    /// Whether the service selects a pod.
    pub fn selects(&self, pod: &PodSpec) -> bool {
        !pod.external
            && pod.namespace == self.namespace
            && self.selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// A JSON string literal, which YAML reads as the same string.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn labels_flow(labels: &BTreeMap<String, String>) -> String {
    let items: Vec<String> = labels.iter().map(|(k, v)| format!("{}: {}", q(k), q(v))).collect();
    format!("{{{}}}", items.join(", "))
}

/// The label injection adds; endpoints of such pods get the `tlsMode: istio` metadata (auto-mTLS).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// The labels a pod carries as the control plane sees it (plus `tlsMode: istio` when injected).
pub fn effective_labels(pod: &PodSpec, injected: bool) -> BTreeMap<String, String> {
    let mut labels = pod.labels.clone();
    if injected {
        labels.insert(TLS_MODE_LABEL.to_string(), "istio".to_string());
    }
    labels
}

/// `Namespace` objects.
pub fn namespaces_yaml(namespaces: &[String]) -> String {
    let mut out = String::new();
    for ns in namespaces {
        let _ = write!(out, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n", q(ns));
    }
    out
}

/// The `Pod` object of a running lab pod.
pub fn pod_yaml(pod: &PodSpec, ip: Ipv4Addr, injected: bool) -> String {
    let ports: Vec<String> = pod.ports.iter().map(|p| format!("{{containerPort: {p}, protocol: TCP}}")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {labels}\nspec:\n  \
         serviceAccountName: {sa}\n  containers:\n  - name: app\n    ports: [{ports}]\nstatus:\n  phase: Running\n  \
         podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n",
        name = q(&pod.name),
        ns = q(&pod.namespace),
        labels = labels_flow(&effective_labels(pod, injected)),
        sa = q(&pod.service_account),
        ports = ports.join(", "),
        ip = q(&ip.to_string()),
    )
}

/// A `Service` with cluster IP `vip` and its `EndpointSlice` listing `endpoints` (pod name, IP).
pub fn service_yaml(svc: &ServiceSpec, vip: Ipv4Addr, endpoints: &[(String, Ipv4Addr)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{app: {name}}}\n\
         spec:\n  clusterIP: {vip}\n  selector: {selector}\n  ports:\n",
        name = q(&svc.name),
        ns = q(&svc.namespace),
        vip = q(&vip.to_string()),
        selector = labels_flow(&svc.selector),
    );
    for p in &svc.ports {
        let _ = writeln!(
            out,
            "  - {{name: {}, port: {}, targetPort: {}, protocol: TCP}}",
            q(&p.name),
            p.port,
            p.target_port
        );
    }
    let _ = write!(
        out,
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: {ns}\n  \
         labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n",
        slice = q(&format!("{}-lab", svc.name)),
        ns = q(&svc.namespace),
        name = q(&svc.name),
    );
    for p in &svc.ports {
        let _ = writeln!(out, "- {{name: {}, port: {}, protocol: TCP}}", q(&p.name), p.target_port);
    }
    if endpoints.is_empty() {
        out.push_str("endpoints: []\n");
    } else {
        out.push_str("endpoints:\n");
        for (pod, ip) in endpoints {
            let _ = write!(
                out,
                "- addresses: [{ip}]\n  conditions: {{ready: true}}\n  targetRef: {{kind: Pod, name: {pod}, namespace: {ns}}}\n",
                ip = q(&ip.to_string()),
                pod = q(pod),
                ns = q(&svc.namespace),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse_as_yaml() {
        let pod = PodSpec::new("hello", "back-end").injected();
        let ip = Ipv4Addr::new(10, 1, 2, 10);
        let p: serde_yaml_ng::Value = serde_yaml_ng::from_str(&pod_yaml(&pod, ip, true)).unwrap();
        assert_eq!(p["metadata"]["labels"][TLS_MODE_LABEL].as_str(), Some("istio"));
        assert_eq!(p["status"]["podIP"].as_str(), Some("10.1.2.10"));
        let svc = ServiceSpec::new("hello", "back-end").port("http", 8080, 80);
        let text = service_yaml(&svc, Ipv4Addr::new(10, 1, 2, 200), &[("hello".into(), ip)]);
        let docs: Vec<serde_yaml_ng::Value> =
            text.split("---\n").map(|d| serde_yaml_ng::from_str(d).unwrap()).collect();
        assert_eq!(docs[0]["spec"]["ports"][0]["targetPort"].as_u64(), Some(80));
        assert_eq!(docs[1]["ports"][0]["port"].as_u64(), Some(80));
        assert_eq!(docs[1]["endpoints"][0]["targetRef"]["name"].as_str(), Some("hello"));
        assert!(svc.selects(&pod));
    }
}
