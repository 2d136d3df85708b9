//! The Envoy bootstrap of one proxy, as `sailplane bootstrap` prints it and `sailplane agent`
//! extends it (SDS socket, mTLS to the control plane).
//!
//! Input: the proxy's identity (node type, IP, pod, namespace, service account, labels, interception
//! mode) and where the control plane listens. Output: an Envoy bootstrap in YAML that connects to
//! Sailplane over ADS (state-of-the-world or Delta) and identifies itself exactly like an Istio
//! sidecar or gateway would, so the control plane can tell which configuration it needs.
//!
//! The YAML is written from a template rather than serialised from a map, so that it keeps Envoy's
//! usual field order and carries comments explaining the traps (a user reads this file). Every value
//! that comes from a flag is inserted as a JSON string literal, which is also a valid YAML scalar, so
//! no input can break the document's structure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use sailplane_translator::model::{InterceptionMode, NodeType};

pub use crate::xds::XdsApi;

/// Flags of `sailplane bootstrap`. Every flag has a default, so the bare command prints a working
/// bootstrap for a sidecar on this machine talking to a control plane on 127.0.0.1:15010.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// Proxy kind: `sidecar` for an application proxy, `router` for a gateway.
    #[arg(long, default_value_t = NodeType::Sidecar)]
    pub node_type: NodeType,

    /// The workload's IP address (node id and `INSTANCE_IPS`).
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: IpAddr,

    /// Pod name. Defaults to this machine's host name (first label), or `local`.
    #[arg(long)]
    pub pod: Option<String>,

    /// Namespace of the workload.
    #[arg(long, default_value = "default")]
    pub namespace: String,

    /// Service account of the workload (short name).
    #[arg(long, default_value = "default")]
    pub service_account: String,

    /// Workload labels as `key=value,key=value`.
    #[arg(long, value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Traffic interception mode. REDIRECT (the default) expects iptables to redirect traffic to
    /// 15001/15006 as in a Kubernetes pod; use NONE on a laptop or VM without iptables, where outbound
    /// listeners bind 127.0.0.1:<service port>.
    #[arg(long, default_value_t = InterceptionMode::Redirect)]
    pub interception_mode: InterceptionMode,

    /// Address of Sailplane's plaintext xDS port, `host:port` (`[v6]:port` for IPv6).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_address: String,

    /// ADS variant: `sotw` (state of the world) or `delta` (incremental).
    #[arg(long, value_enum, default_value_t = XdsApi::Sotw)]
    pub xds_api: XdsApi,

    /// Port of Envoy's admin interface (bound on 127.0.0.1).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,

    /// Cluster DNS domain (last part of the node id).
    #[arg(long, default_value = "cluster.local")]
    pub domain: String,

    /// Envoy node cluster. Defaults to `<app label or pod>.<namespace>`, as Istio's agent does.
    #[arg(long)]
    pub cluster: Option<String>,

    /// Write the bootstrap to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("label {s:?} is not of the form key=value")),
    }
}

/// The host name's first label, lowercased, when it is usable as a pod name.
fn default_pod() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let first = host.trim().split('.').next().unwrap_or_default().to_ascii_lowercase();
    let usable = !first.is_empty() && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if usable { first } else { "local".to_string() }
}

/// Splits `host:port` (or `[v6]:port`) into host and port.
fn split_address(addr: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = addr.rsplit_once(':').with_context(|| format!("--xds-address {addr:?} must be host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("--xds-address {addr:?} has an empty host");
    }
    let port: u16 =
        port.parse().with_context(|| format!("--xds-address {addr:?}: port {port:?} is not a number 0-65535"))?;
    Ok((host.to_string(), port))
}

/// A JSON string literal, which YAML reads as the same string whatever it contains.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Renders the Envoy bootstrap YAML for `args`.
pub fn render(args: &BootstrapArgs) -> anyhow::Result<String> {
    let pod = args.pod.clone().unwrap_or_else(default_pod);
    for (what, value) in [("--pod", &pod), ("--namespace", &args.namespace), ("--domain", &args.domain)] {
        // These three make up the node id; `~` or an empty value would make it unparsable for the
        // control plane, which refuses such a proxy.
        if value.is_empty() || value.contains('~') {
            bail!("{what} {value:?} must be non-empty and must not contain '~'");
        }
    }
    if args.namespace.contains('.') {
        bail!("--namespace {:?} must not contain '.'", args.namespace);
    }
    let (xds_host, xds_port) = split_address(&args.xds_address)?;
    // A literal IP needs a STATIC cluster; a name needs DNS resolution.
    let xds_cluster_type = if xds_host.parse::<IpAddr>().is_ok() { "STATIC" } else { "STRICT_DNS" };

    let labels: BTreeMap<&str, &str> = args.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ns = &args.namespace;
    let ip = args.ip.to_string();
    let node_id = format!("{}~{ip}~{pod}.{ns}~{ns}.svc.{}", args.node_type.as_str(), args.domain);
    let cluster = match &args.cluster {
        Some(c) => c.clone(),
        None => format!("{}.{ns}", labels.get("app").copied().unwrap_or(&pod)),
    };
    let labels_yaml = if labels.is_empty() {
        " {}".to_string()
    } else {
        let mut out = String::new();
        for (k, v) in &labels {
            // Infallible: writing to a String.
            let _ = write!(out, "\n      {}: {}", q(k), q(v));
        }
        out
    };

    Ok(format!(
        r#"# Envoy bootstrap generated by `sailplane bootstrap`.
node:
  # Istio's form: <sidecar|router>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>
  id: {id}
  cluster: {cluster}
  metadata:
    NAME: {pod}
    NAMESPACE: {ns}
    SERVICE_ACCOUNT: {sa}
    INSTANCE_IPS: {ip}
    INTERCEPTION_MODE: {mode}
    CLUSTER_ID: "Kubernetes"
    ISTIO_VERSION: "sailplane"
    # No node agent serves this Envoy a workload certificate: plaintext only (`sailplane agent`
    # writes a bootstrap without this line, with its SDS socket, for mTLS).
    {no_cert_key}: "true"
    LABELS:{labels}
admin:
  address:
    socket_address: {{ address: "127.0.0.1", port_value: {admin_port} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{ cluster_name: "xds-grpc" }}
  cds_config:
    ads: {{}}
    resource_api_version: V3
  lds_config:
    ads: {{}}
    resource_api_version: V3
static_resources:
  clusters:
  - name: "xds-grpc"
    type: {xds_cluster_type}
    connect_timeout: 1s
    load_assignment:
      cluster_name: "xds-grpc"
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {xds_host}, port_value: {xds_port} }}
    # gRPC needs HTTP/2; without it Envoy waits forever for its first configuration and logs nothing.
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
"#,
        id = q(&node_id),
        cluster = q(&cluster),
        pod = q(&pod),
        ns = q(ns),
        sa = q(&args.service_account),
        ip = q(&ip),
        mode = q(args.interception_mode.as_str()),
        labels = labels_yaml,
        no_cert_key = crate::proxy::NO_WORKLOAD_CERT_KEY,
        admin_port = args.admin_port,
        api_type = args.xds_api.api_type(),
        xds_host = q(&xds_host),
    ))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use anyhow::{Context, anyhow, ensure};
    use clap::Parser;
    use rstest::rstest;
    use serde_yaml_ng::Value;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BootstrapArgs,
    }

    fn parse(flags: &[&str]) -> anyhow::Result<BootstrapArgs> {
        let argv = std::iter::once("bootstrap").chain(flags.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.args).map_err(|e| anyhow!("flags {flags:?} did not parse: {e}"))
    }

    fn rendered(flags: &[&str]) -> anyhow::Result<Value> {
        let yaml = render(&parse(flags)?)?;
        serde_yaml_ng::from_str(&yaml).with_context(|| format!("rendered YAML does not parse:\n{yaml}"))
    }

    fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
        path.split('.').fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[key],
        })
    }

    fn s<'a>(v: &'a Value, path: &str) -> &'a str {
        get(v, path).as_str().unwrap_or_else(|| panic!("{path} is not a string: {:?}", get(v, path)))
    }

    #[test]
    fn node_identity_and_metadata() -> anyhow::Result<()> {
        let doc = rendered(&[
            "--ip",
            "10.1.0.7",
            "--pod",
            "reviews-v1-abc",
            "--namespace",
            "bookinfo",
            "--service-account",
            "reviews",
            "--labels",
            "app=reviews,version=v1",
            "--interception-mode",
            "NONE",
        ])?;
        assert_eq!(s(&doc, "node.id"), "sidecar~10.1.0.7~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local");
        assert_eq!(s(&doc, "node.cluster"), "reviews.bookinfo");
        assert_eq!(s(&doc, "node.metadata.NAMESPACE"), "bookinfo");
        assert_eq!(s(&doc, "node.metadata.SERVICE_ACCOUNT"), "reviews");
        assert_eq!(s(&doc, "node.metadata.INSTANCE_IPS"), "10.1.0.7");
        assert_eq!(s(&doc, "node.metadata.INTERCEPTION_MODE"), "NONE");
        assert_eq!(s(&doc, "node.metadata.CLUSTER_ID"), "Kubernetes");
        assert_eq!(s(&doc, "node.metadata.NAME"), "reviews-v1-abc");
        assert_eq!(s(&doc, "node.metadata.ISTIO_VERSION"), "sailplane");
        assert_eq!(s(&doc, "node.metadata.SAILPLANE_NO_WORKLOAD_CERT"), "true", "no agent: no certificate");
        assert_eq!(s(&doc, "node.metadata.LABELS.app"), "reviews");
        assert_eq!(s(&doc, "node.metadata.LABELS.version"), "v1");
        assert_eq!(s(&doc, "dynamic_resources.ads_config.api_type"), "GRPC");
        assert_eq!(s(&doc, "dynamic_resources.ads_config.transport_api_version"), "V3");
        assert_eq!(s(&doc, "dynamic_resources.cds_config.resource_api_version"), "V3");
        assert_eq!(s(&doc, "dynamic_resources.lds_config.resource_api_version"), "V3");
        Ok(())
    }

    #[test]
    fn defaults_give_a_local_sidecar() -> anyhow::Result<()> {
        let doc = rendered(&["--pod", "p"])?;
        assert_eq!(s(&doc, "node.id"), "sidecar~127.0.0.1~p.default~default.svc.cluster.local");
        assert_eq!(s(&doc, "node.cluster"), "p.default");
        assert_eq!(s(&doc, "node.metadata.INTERCEPTION_MODE"), "REDIRECT");
        assert!(get(&doc, "node.metadata.LABELS").as_mapping().is_some_and(|m| m.is_empty()));
        assert_eq!(get(&doc, "admin.address.socket_address.port_value").as_u64(), Some(15000));
        let xds = get(&doc, "static_resources.clusters.0");
        assert_eq!(s(xds, "name"), "xds-grpc");
        assert_eq!(s(xds, "type"), "STATIC");
        let sa = get(xds, "load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address");
        assert_eq!(s(sa, "address"), "127.0.0.1");
        assert_eq!(get(sa, "port_value").as_u64(), Some(15010));
        let http = get(xds, "typed_extension_protocol_options")
            .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
            .context("no HttpProtocolOptions on the xds cluster")?;
        assert!(get(http, "explicit_http_config.http2_protocol_options").is_mapping(), "xds-grpc needs HTTP/2");
        Ok(())
    }

    #[test]
    fn default_pod_is_a_dns_label() {
        let pod = default_pod();
        assert!(
            !pod.is_empty() && pod.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "default pod {pod:?}"
        );
    }

    #[test]
    fn router_delta_and_dns_xds_address() -> anyhow::Result<()> {
        let doc = rendered(&[
            "--node-type",
            "router",
            "--pod",
            "gw-1",
            "--namespace",
            "istio-system",
            "--xds-api",
            "delta",
            "--xds-address",
            "istiod.istio-system.svc:15010",
            "--cluster",
            "istio-ingressgateway",
            "--interception-mode",
            "none",
        ])?;
        assert_eq!(s(&doc, "node.id"), "router~127.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local");
        assert_eq!(s(&doc, "node.cluster"), "istio-ingressgateway");
        assert_eq!(s(&doc, "dynamic_resources.ads_config.api_type"), "DELTA_GRPC");
        assert_eq!(s(&doc, "static_resources.clusters.0.type"), "STRICT_DNS");
        assert_eq!(s(&doc, "node.metadata.INTERCEPTION_MODE"), "NONE");
        Ok(())
    }

    #[test]
    fn ipv6_addresses() -> anyhow::Result<()> {
        let doc = rendered(&["--pod", "p", "--ip", "fd00::7", "--xds-address", "[::1]:15010"])?;
        assert_eq!(s(&doc, "node.id"), "sidecar~fd00::7~p.default~default.svc.cluster.local");
        let sa = get(
            &doc,
            "static_resources.clusters.0.load_assignment.endpoints.0.lb_endpoints.0.endpoint.address.socket_address",
        );
        assert_eq!(s(sa, "address"), "::1");
        Ok(())
    }

    #[test]
    fn hostile_values_stay_scalars() -> anyhow::Result<()> {
        let doc = rendered(&["--pod", "p", "--labels", "a=x: y,b=\"q\" # c"])?;
        assert_eq!(s(&doc, "node.metadata.LABELS.a"), "x: y");
        assert_eq!(s(&doc, "node.metadata.LABELS.b"), "\"q\" # c");
        Ok(())
    }

    #[rstest]
    #[case(&["--pod", "a~b"])]
    #[case(&["--namespace", "a.b"])]
    #[case(&["--xds-address", "127.0.0.1"])]
    #[case(&["--xds-address", "127.0.0.1:99999"])]
    fn bad_flags_are_refused(#[case] flags: &[&str]) -> anyhow::Result<()> {
        ensure!(render(&parse(flags)?).is_err(), "flags {flags:?} should be refused");
        Ok(())
    }

    #[test]
    fn bad_label_is_a_usage_error() {
        assert!(Cli::try_parse_from(["bootstrap", "--labels", "novalue"]).is_err());
    }

    #[test]
    fn output_flag_writes_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("envoy.yaml");
        let path_str = path.to_str().context("temp path is not UTF-8")?;
        let args = parse(&["--pod", "p", "--output", path_str])?;
        crate::cli::bootstrap::run(&args)?;
        assert_eq!(std::fs::read_to_string(&path)?, render(&args)?);
        Ok(())
    }

    /// Envoy as the project's tests find it: `ENVOY_BIN`, the setup script's venv, then `PATH`.
    /// A missing Envoy fails the test: a skipped check would read as a pass.
    fn envoy_bin() -> PathBuf {
        crate::agent::envoy::locate(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).unwrap_or_else(|| {
            panic!("Envoy not found: set ENVOY_BIN, or run scripts/setup.sh to install it into .venv")
        })
    }

    #[rstest]
    #[case::sotw("sotw", "sidecar", "REDIRECT")]
    #[case::delta("delta", "sidecar", "NONE")]
    #[case::router_delta("delta", "router", "NONE")]
    fn envoy_accepts_the_bootstrap(#[case] api: &str, #[case] kind: &str, #[case] mode: &str) -> anyhow::Result<()> {
        let args = parse(&[
            "--xds-api",
            api,
            "--node-type",
            kind,
            "--interception-mode",
            mode,
            "--pod",
            "p",
            "--labels",
            "app=a",
        ])?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bootstrap.yaml");
        std::fs::write(&file, render(&args)?)?;
        let envoy = envoy_bin();
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&file)
            .output()
            .with_context(|| format!("running {}", envoy.display()))?;
        ensure!(
            out.status.success(),
            "envoy --mode validate rejected the {api} bootstrap ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
