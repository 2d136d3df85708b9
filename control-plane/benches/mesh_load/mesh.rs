//! Istio's load-test mesh as the YAML files a user would apply, in the layout `sailplane discovery
//! --config DIR` watches: `namespaces.yaml`, then per service `ns-N/svc-I.yaml` (Service, and unless
//! `plain`, VirtualService and DestinationRule) and `ns-N/svc-I-pods.yaml` (its Pods, which are its
//! endpoints). Files are replaced atomically (write a hidden file, rename), as an editor or a
//! ConfigMap mount would.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::ads::Pod;

/// Namespaces the services are spread over.
pub const NAMESPACES: usize = 20;
/// The service port.
pub const PORT: u16 = 8080;

/// Mesh shape.
#[derive(Debug, Clone, Copy)]
pub struct Mesh {
    /// Number of services.
    pub services: usize,
    /// Pods (endpoints) per service: v1, v2, v1, ...
    pub pods: usize,
    /// No VirtualServices or DestinationRules (one cluster per service).
    pub plain: bool,
}

/// Service `i`'s name and namespace.
pub fn name(i: usize) -> (String, String) {
    (format!("svc-{i}"), format!("ns-{}", i % NAMESPACES))
}

/// The host name of service `i`.
pub fn host(i: usize) -> String {
    let (svc, ns) = name(i);
    format!("{svc}.{ns}.svc.cluster.local")
}

/// Istio's outbound cluster name for service `i` (also its EDS name).
pub fn cluster(i: usize) -> String {
    format!("outbound|{PORT}||{}", host(i))
}

/// Pod `j` of service `i` at `generation` (every generation moves the pod to a new IP).
pub fn pod_ip(i: usize, j: usize, generation: u32) -> String {
    let g = generation as usize % 100;
    format!("10.{}.{}.{}", 1 + i / 250, i % 250, 10 + j + 2 * g)
}

/// Writes `text` to `path` atomically.
pub fn write_atomic(path: &Path, text: &str) {
    let dir = path.parent().unwrap();
    let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Multi-document YAML (JSON documents are YAML).
pub fn docs(objects: &[Value]) -> String {
    objects.iter().map(|o| format!("---\n{o}\n")).collect()
}

fn service_file(dir: &Path, i: usize) -> PathBuf {
    let (svc, ns) = name(i);
    dir.join(&ns).join(format!("{svc}.yaml"))
}

fn pods_file(dir: &Path, i: usize) -> PathBuf {
    let (svc, ns) = name(i);
    dir.join(&ns).join(format!("{svc}-pods.yaml"))
}

/// Service, VirtualService (90/10 over subsets v1/v2, retries, timeout) and DestinationRule
/// (subsets, connection pool, outlier detection) of service `i`, as in `translator/benches`.
pub fn service_objects(i: usize, plain: bool) -> Vec<Value> {
    let (svc, ns) = name(i);
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc, "namespace": ns},
        "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250), "selector": {"app": svc},
            "ports": [{"name": "http", "port": PORT, "targetPort": 8080}]}
    })];
    if plain {
        return out;
    }
    out.push(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": svc, "namespace": ns},
        "spec": {"hosts": [svc], "http": [{
            "timeout": "5s",
            "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,connect-failure"},
            "route": [
                {"destination": {"host": svc, "subset": "v1"}, "weight": 90},
                {"destination": {"host": svc, "subset": "v2"}, "weight": 10}
            ]}]}
    }));
    out.push(destination_rule(i, 100, true));
    out
}

/// A DestinationRule for service `i` with `max_connections`, with or without subsets.
pub fn destination_rule(i: usize, max_connections: u32, subsets: bool) -> Value {
    let (svc, ns) = name(i);
    let mut spec = json!({"host": svc,
        "trafficPolicy": {
            "connectionPool": {"tcp": {"maxConnections": max_connections}, "http": {"http1MaxPendingRequests": 50}},
            "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"}}});
    if subsets {
        spec["subsets"] =
            json!([{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]);
    }
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": svc, "namespace": ns}, "spec": spec})
}

/// The pods of service `i`, pod `j` at `generations[j]`; all Running and Ready.
pub fn pod_objects(i: usize, generations: &[u32]) -> Vec<Value> {
    let (svc, ns) = name(i);
    generations
        .iter()
        .enumerate()
        .map(|(j, g)| {
            let version = if j % 2 == 0 { "v1" } else { "v2" };
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{svc}-{version}-{j}"), "namespace": ns,
                    "labels": {"app": svc, "version": version, "security.istio.io/tlsMode": "istio"}},
                "spec": {"serviceAccountName": svc, "containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": pod_ip(i, j, *g),
                    "conditions": [{"type": "Ready", "status": "True"}]}
            })
        })
        .collect()
}

impl Mesh {
    /// Writes the whole mesh under `dir`.
    pub fn write(&self, dir: &Path) {
        let namespaces: Vec<Value> = (0..NAMESPACES)
            .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n}")}}))
            .collect();
        for n in 0..NAMESPACES {
            std::fs::create_dir_all(dir.join(format!("ns-{n}"))).unwrap();
        }
        std::fs::write(dir.join("namespaces.yaml"), docs(&namespaces)).unwrap();
        for i in 0..self.services {
            std::fs::write(service_file(dir, i), docs(&service_objects(i, self.plain))).unwrap();
            std::fs::write(pods_file(dir, i), docs(&pod_objects(i, &vec![0; self.pods]))).unwrap();
        }
    }

    /// Rewrites the pods of service `i`.
    pub fn write_pods(&self, dir: &Path, i: usize, generations: &[u32]) {
        write_atomic(&pods_file(dir, i), &docs(&pod_objects(i, generations)));
    }
}

/// Writes (or rewrites) an extra DestinationRule file for service `i` (P2's one-cluster change).
pub fn write_extra_destination_rule(dir: &Path, i: usize, max_connections: u32) {
    let (svc, ns) = name(i);
    write_atomic(&dir.join(&ns).join(format!("{svc}-dr.yaml")), &docs(&[destination_rule(i, max_connections, false)]));
}

/// Client `j` of a mesh of `services`: a pod of service `j % services`, with its own IP, name and
/// `pod-template-hash` (every client is a distinct workload instance).
pub fn client_pod(j: usize, services: usize) -> Pod {
    let i = j % services;
    let (svc, ns) = name(i);
    let version = if (j / services).is_multiple_of(2) { "v1" } else { "v2" };
    let hash = format!("{:010x}", (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24);
    let hash = &hash[hash.len() - 10..];
    Pod {
        name: format!("{svc}-{version}-{hash}-{:05}", j % 100_000),
        namespace: ns,
        ip: format!("10.{}.{}.{}", 128 + j / 65_536, (j / 256) % 256, j % 256),
        labels: vec![
            ("app".into(), svc.clone()),
            ("version".into(), version.into()),
            ("pod-template-hash".into(), hash.to_string()),
            ("security.istio.io/tlsMode".into(), "istio".into()),
        ],
        service_account: svc.clone(),
        workload: format!("{svc}-{version}"),
    }
}
