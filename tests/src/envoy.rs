//! A real Envoy process, bootstrapped by `sailplane bootstrap`, talking ADS to a [`ControlPlane`].

use std::fmt;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::control_plane::ControlPlane;
use crate::http::{self, Response};
use crate::wait::{CONVERGE, eventually};
use crate::{log_tail, paths, ports};

/// Which ADS variant Envoy uses (`sailplane bootstrap --xds-api`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsApi {
    /// State of the world.
    Sotw,
    /// Incremental (Delta).
    Delta,
}

impl fmt::Display for XdsApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdsApi::Sotw => "sotw",
            XdsApi::Delta => "delta",
        })
    }
}

/// Who the Envoy is: the flags given to `sailplane bootstrap`.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// ADS variant.
    pub xds_api: XdsApi,
    /// `sidecar` or `router`.
    pub node_type: String,
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Workload labels.
    pub labels: Vec<(String, String)>,
    /// `NONE` (outbound listeners on 127.0.0.1:<port>) or `REDIRECT`.
    pub interception_mode: String,
}

impl EnvoyOptions {
    /// A sidecar for pod `pod` in namespace `default`, without interception (what works on loopback).
    pub fn sidecar(pod: &str, xds_api: XdsApi) -> EnvoyOptions {
        EnvoyOptions {
            xds_api,
            node_type: "sidecar".into(),
            pod: pod.into(),
            namespace: "default".into(),
            labels: vec![("app".into(), pod.into())],
            interception_mode: "NONE".into(),
        }
    }

    /// The same, in namespace `ns`.
    pub fn in_namespace(mut self, ns: &str) -> EnvoyOptions {
        self.namespace = ns.into();
        self
    }

    /// The Istio node id these options produce.
    pub fn node_id(&self) -> String {
        let ns = &self.namespace;
        format!("{}~127.0.0.1~{}.{ns}~{ns}.svc.cluster.local", self.node_type, self.pod)
    }
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    child: Child,
    /// Admin port on 127.0.0.1.
    pub admin_port: u16,
    /// The node id Envoy announces.
    pub node_id: String,
    /// The bootstrap Envoy was started with.
    pub bootstrap: PathBuf,
    log: PathBuf,
    _scratch: TempDir,
}

impl Envoy {
    /// Writes a bootstrap with `sailplane bootstrap` pointing at `cp`, starts Envoy on it, and waits
    /// until its admin interface answers.
    pub async fn start(cp: &ControlPlane, opts: &EnvoyOptions) -> anyhow::Result<Envoy> {
        let scratch = tempfile::Builder::new().prefix("sailplane-envoy-").tempdir()?;
        let bootstrap = scratch.path().join("bootstrap.yaml");
        let admin_port = ports::free_port()?;
        let labels = opts.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let sailplane = paths::sailplane_bin()?;
        let mut cmd = Command::new(&sailplane);
        cmd.arg("bootstrap")
            .args(["--node-type", &opts.node_type])
            .args(["--ip", "127.0.0.1"])
            .args(["--pod", &opts.pod])
            .args(["--namespace", &opts.namespace])
            .args(["--interception-mode", &opts.interception_mode])
            .args(["--xds-address", &cp.xds_address()])
            .args(["--xds-api", &opts.xds_api.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .arg("--output")
            .arg(&bootstrap);
        if !labels.is_empty() {
            cmd.args(["--labels", &labels]);
        }
        let out = cmd.output().with_context(|| format!("running {} bootstrap", sailplane.display()))?;
        if !out.status.success() {
            bail!("sailplane bootstrap failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }

        let envoy = paths::envoy_bin()?;
        let log = scratch.path().join("envoy.log");
        let stdout = File::create(&log)?;
        let stderr = stdout.try_clone()?;
        let child = Command::new(&envoy)
            .arg("-c")
            .arg(&bootstrap)
            // Every Envoy on a host needs its own shared-memory region unless hot restart is off.
            .arg("--disable-hot-restart")
            .args(["--concurrency", "1"])
            // Removed listeners stop accepting at once; a short drain only ends old connections sooner.
            .args(["--drain-time-s", "1"])
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", envoy.display()))?;
        let mut proxy = Envoy { child, admin_port, node_id: opts.node_id(), bootstrap, log, _scratch: scratch };
        proxy.wait_admin().await?;
        Ok(proxy)
    }

    async fn wait_admin(&mut self) -> anyhow::Result<()> {
        let url = self.admin_url("/ready");
        let result = eventually("Envoy admin to answer", Duration::from_secs(20), || {
            let url = url.clone();
            async move { http::get(&url).await.map(|_| ()) }
        })
        .await;
        if let Err(e) = result {
            let exited = self.child.try_wait().ok().flatten();
            bail!("{e:#}\nEnvoy exit status: {exited:?}\n--- envoy log ---\n{}", log_tail(&self.log, 60));
        }
        Ok(())
    }

    /// Waits until Envoy reports `LIVE` on `/ready`: its initial CDS and LDS have arrived.
    pub async fn wait_live(&self) -> anyhow::Result<()> {
        eventually("Envoy /ready to say LIVE (initial CDS and LDS received)", CONVERGE, || async move {
            let r = self.admin_get("/ready").await?;
            if r.status == 200 && r.body.trim() == "LIVE" {
                Ok(())
            } else {
                bail!("status {}: {}", r.status, r.body.trim())
            }
        })
        .await
    }

    /// `http://127.0.0.1:<admin port><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// `GET` on the admin interface.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Response> {
        http::get(&self.admin_url(path)).await
    }

    async fn admin_json(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.admin_get(path).await?;
        if r.status != 200 {
            bail!("Envoy admin GET {path}: status {}: {}", r.status, r.body);
        }
        r.json()
    }

    /// Envoy's own `/config_dump` (what it has accepted).
    pub async fn config_dump(&self) -> anyhow::Result<Value> {
        self.admin_json("/config_dump").await
    }

    /// Names of the clusters Envoy has (`/clusters?format=json`).
    pub async fn cluster_names(&self) -> anyhow::Result<Vec<String>> {
        let v = self.admin_json("/clusters?format=json").await?;
        Ok(array(&v, "cluster_statuses")
            .iter()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// `ip:port` of every host of cluster `name`, sorted, or `None` when Envoy has no such cluster.
    pub async fn cluster_hosts(&self, name: &str) -> anyhow::Result<Option<Vec<String>>> {
        let v = self.admin_json("/clusters?format=json").await?;
        let Some(cluster) =
            array(&v, "cluster_statuses").iter().find(|c| c.get("name").and_then(Value::as_str) == Some(name))
        else {
            return Ok(None);
        };
        let mut hosts: Vec<String> =
            array(cluster, "host_statuses").iter().filter_map(|h| socket_address(h.get("address"))).collect();
        hosts.sort();
        Ok(Some(hosts))
    }

    /// `(name, ip:port)` of every active listener (`/listeners?format=json`).
    pub async fn listeners(&self) -> anyhow::Result<Vec<(String, String)>> {
        let v = self.admin_json("/listeners?format=json").await?;
        Ok(array(&v, "listener_statuses")
            .iter()
            .map(|l| {
                let name = l.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
                let addr = socket_address(l.get("local_address")).unwrap_or_default();
                (name, addr)
            })
            .collect())
    }

    /// A counter or gauge from `/stats`, or `None` when Envoy has no such stat.
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        let r = self.admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\."))).await?;
        Ok(r.body.lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            if n == name { v.trim().parse().ok() } else { None }
        }))
    }

    /// Waits until cluster `name` exists with exactly `hosts` (`ip:port`, any order).
    pub async fn wait_cluster_hosts(&self, name: &str, hosts: &[String]) -> anyhow::Result<()> {
        let mut want: Vec<String> = hosts.to_vec();
        want.sort();
        let what = format!("Envoy cluster {name} with hosts {want:?}");
        eventually(&what, CONVERGE, || {
            let want = want.clone();
            async move {
                match self.cluster_hosts(name).await? {
                    Some(got) if got == want => Ok(()),
                    Some(got) => bail!("expected hosts {want:?}, got {got:?}"),
                    None => bail!("no cluster {name}; clusters: {:?}", self.cluster_names().await?),
                }
            }
        })
        .await
    }

    /// Waits until Envoy has no cluster `name`.
    pub async fn wait_cluster_gone(&self, name: &str) -> anyhow::Result<()> {
        eventually(&format!("Envoy to drop cluster {name}"), CONVERGE, || async move {
            let names = self.cluster_names().await?;
            if names.iter().any(|n| n == name) { bail!("still there; clusters: {names:?}") } else { Ok(()) }
        })
        .await
    }

    /// Waits until a listener bound to `127.0.0.1:<port>` is active.
    pub async fn wait_listener(&self, port: u16) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{port}");
        eventually(&format!("an Envoy listener on {addr}"), CONVERGE, || {
            let addr = addr.clone();
            async move {
                let listeners = self.listeners().await?;
                if listeners.iter().any(|(_, a)| *a == addr) { Ok(()) } else { bail!("listeners: {listeners:?}") }
            }
        })
        .await
    }

    /// Waits until no listener is bound to `127.0.0.1:<port>`.
    pub async fn wait_no_listener(&self, port: u16) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{port}");
        eventually(&format!("Envoy to remove its listener on {addr}"), CONVERGE, || {
            let addr = addr.clone();
            async move {
                let listeners = self.listeners().await?;
                if listeners.iter().any(|(_, a)| *a == addr) { bail!("listeners: {listeners:?}") } else { Ok(()) }
            }
        })
        .await
    }

    /// Whether the Envoy process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of Envoy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Captured by the test harness: shown only when the test fails.
        eprintln!("--- envoy {} log (last 80 lines) ---\n{}", self.node_id, log_tail(&self.log, 80));
    }
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// `ip:port` from an Envoy `Address` in JSON.
fn socket_address(addr: Option<&Value>) -> Option<String> {
    let sa = addr?.get("socket_address")?;
    let ip = sa.get("address")?.as_str()?;
    let port = sa.get("port_value")?.as_u64()?;
    Some(format!("{ip}:{port}"))
}
