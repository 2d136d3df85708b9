//! Kubernetes and Istio objects as YAML text, for config directories.

/// The FQDN of Service `name` in `ns`.
pub fn fqdn(name: &str, ns: &str) -> String {
    format!("{name}.{ns}.svc.cluster.local")
}

/// Istio's outbound cluster name for `fqdn:port`.
pub fn outbound_cluster(port: u16, fqdn: &str) -> String {
    format!("outbound|{port}||{fqdn}")
}

/// A ClusterIP Service with one HTTP port `port` (named `http`) forwarding to `target_port`. The
/// cluster IP is derived from the port so that services in one test never share one.
pub fn mk_service(name: &str, ns: &str, port: u16, target_port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app: {name}
spec:
  clusterIP: 10.96.{hi}.{lo}
  selector:
    app: {name}
  ports:
  - name: http
    port: {port}
    targetPort: {target_port}
    protocol: TCP
"#,
        hi = port / 256,
        lo = port % 256,
    )
}

/// An EndpointSlice of Service `service` with ready endpoints at `addresses`, all on `port` (the
/// slice's port named `http`, matching [`mk_service`]).
pub fn mk_endpoint_slice(name: &str, service: &str, ns: &str, addresses: &[&str], port: u16) -> String {
    let endpoints: String =
        addresses.iter().map(|a| format!("- addresses: [\"{a}\"]\n  conditions:\n    ready: true\n")).collect();
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: {ns}
  labels:
    kubernetes.io/service-name: {service}
addressType: IPv4
ports:
- name: http
  port: {port}
  protocol: TCP
endpoints:
{endpoints}"#
    )
}

/// A Service and its EndpointSlice in one multi-document file.
pub fn mk_service_with_endpoints(name: &str, ns: &str, port: u16, addresses: &[&str], target_port: u16) -> String {
    format!(
        "{}---\n{}",
        mk_service(name, ns, port, target_port),
        mk_endpoint_slice(&format!("{name}-1"), name, ns, addresses, target_port)
    )
}

/// A Secret YAML (stringData) with `data` pairs.
pub fn mk_secret(ns: &str, name: &str, kind: &str, data: &[(&str, &str)]) -> String {
    let data: String = data.iter().map(|(k, v)| format!("  {k}: {}\n", serde_json::Value::from(*v))).collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: {kind}\nstringData:\n{data}"
    )
}
