//! The control plane under test as the real `sailplane discovery` binary, a child process
//! ([`ControlPlane`], started by [`Launch`]), for the end-to-end tier. The in-process control plane
//! of the component tier is [`crate::ads_server::TestServer`].

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use sailplane::agent::ca_client::CaClient;
use sailplane::agent::keys::{self, KeyType};
use sailplane::ca::token::TokenAuthority;
use sailplane::identity::Identity;
use serde_json::Value;
use tempfile::TempDir;

use crate::http::{self, Response};
use crate::wait::eventually;
use crate::{log_tail, paths, ports};

/// A running `sailplane discovery --config DIR`, killed on drop.
pub struct ControlPlane {
    child: Child,
    /// Plaintext gRPC xDS port on 127.0.0.1.
    pub xds_port: u16,
    /// Debug and metrics port on 127.0.0.1.
    pub monitoring_port: u16,
    /// Secure gRPC port (CA API over TLS) on 127.0.0.1; the CA's state is in the scratch directory.
    pub secure_port: u16,
    ca_dir: PathBuf,
    log: PathBuf,
    _scratch: TempDir,
}

/// What [`Launch::start`] waits for before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// `/ready` on the monitoring port answers 200 (the default).
    Ready200,
    /// The secure port accepts TCP connections (the CA is up; readiness may wait for Kubernetes).
    SecurePort,
    /// Nothing: the test watches the start itself.
    Spawned,
}

/// How to start `sailplane discovery`: the one way tests start the real binary. Ports (xDS,
/// monitoring, secure) are always free ones on 127.0.0.1 and the CA directory defaults to the
/// process's scratch directory; everything else is flags and environment.
#[derive(Debug, Clone)]
pub struct Launch {
    config: Option<PathBuf>,
    ca_dir: Option<PathBuf>,
    secure_port: bool,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    ready: Ready,
}

impl Default for Launch {
    fn default() -> Self {
        Launch {
            config: None,
            ca_dir: None,
            secure_port: true,
            args: Vec::new(),
            envs: Vec::new(),
            ready: Ready::Ready200,
        }
    }
}

impl Launch {
    /// Watching configuration directory `dir` (`--config`).
    pub fn config(dir: &Path) -> Launch {
        Launch { config: Some(dir.to_path_buf()), ..Launch::default() }
    }

    /// Watching the Kubernetes API of `kubeconfig` (`--kubernetes`, `KUBECONFIG`), as pod
    /// `sailplane-0` in `istio-system`, without the webhook port.
    pub fn kubernetes(kubeconfig: &Path) -> Launch {
        Launch::default()
            .args(["--kubernetes", "--webhook-port", "0"])
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", "istio-system")
            .env("POD_NAME", "sailplane-0")
    }

    /// Keeps the CA state in `dir` (`--ca-dir`), e.g. to restart on the same root.
    pub fn ca_dir(mut self, dir: &Path) -> Launch {
        self.ca_dir = Some(dir.to_path_buf());
        self
    }

    /// Disables the secure port (`--secure-port 0`).
    pub fn no_secure_port(mut self) -> Launch {
        self.secure_port = false;
        self
    }

    /// One more flag.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Launch {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// More flags (later ones win where the binary lets a flag repeat).
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Launch {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// An environment variable for the child.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.envs.push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// What to wait for before returning (default [`Ready::Ready200`]).
    pub fn wait_for(mut self, ready: Ready) -> Launch {
        self.ready = ready;
        self
    }

    /// Spawns `sailplane discovery` ([`paths::sailplane_bin`]) and waits as told.
    pub async fn start(self) -> anyhow::Result<ControlPlane> {
        let bin = paths::sailplane_bin()?;
        let xds_port = ports::free_port()?;
        let monitoring_port = ports::free_port()?;
        // Its own secure port and CA directory: tests run control planes in parallel.
        let secure_port = if self.secure_port { ports::free_port()? } else { 0 };
        let scratch = tempfile::Builder::new().prefix("sailplane-cp-").tempdir()?;
        let ca_dir = self.ca_dir.clone().unwrap_or_else(|| scratch.path().join("ca"));
        let log = scratch.path().join("sailplane.log");
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("discovery");
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(["--listen-address", "127.0.0.1"])
            .args(["--xds-port", &xds_port.to_string()])
            .args(["--monitoring-port", &monitoring_port.to_string()])
            .args(["--secure-port", &secure_port.to_string()])
            .arg("--ca-dir")
            .arg(&ca_dir)
            .args(&self.args)
            .env("SAILPLANE_LOG", std::env::var("SAILPLANE_LOG").unwrap_or_else(|_| "info,sailplane=debug".into()))
            // The log goes to a file that people read: no colour escapes.
            .env("NO_COLOR", "1")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?;
        let mut cp = ControlPlane { child, xds_port, monitoring_port, secure_port, ca_dir, log, _scratch: scratch };
        match self.ready {
            Ready::Ready200 => cp.wait_ready().await?,
            Ready::SecurePort => cp.wait_secure_port().await?,
            Ready::Spawned => {}
        }
        Ok(cp)
    }
}

impl ControlPlane {
    /// Starts the control plane on `config_dir` with free ports and waits until `/ready` answers 200.
    pub async fn start(config_dir: &Path) -> anyhow::Result<ControlPlane> {
        Launch::config(config_dir).start().await
    }

    /// Like [`ControlPlane::start`], with extra `discovery` flags.
    pub async fn start_with(config_dir: &Path, extra: &[&str]) -> anyhow::Result<ControlPlane> {
        Launch::config(config_dir).args(extra).start().await
    }

    async fn wait_secure_port(&mut self) -> anyhow::Result<()> {
        let port = self.secure_port;
        // Async: a fake API server on this runtime must keep answering meanwhile.
        let result = eventually("the secure port to accept connections", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map(drop).map_err(anyhow::Error::from)
        })
        .await;
        if let Err(e) = result {
            let exited = self.child.try_wait().ok().flatten();
            bail!(
                "{e:#}\ncontrol plane exit status: {exited:?}\n--- control plane log ---\n{}",
                log_tail(&self.log, 60)
            );
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = self.url("/ready");
        let result = eventually("control plane /ready to answer 200", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let r = http::get(&url).await?;
                if r.status == 200 { Ok(()) } else { bail!("status {}: {}", r.status, r.body) }
            }
        })
        .await;
        if let Err(e) = result {
            let exited = self.child.try_wait().ok().flatten();
            bail!(
                "{e:#}\ncontrol plane exit status: {exited:?}\n--- control plane log ---\n{}",
                log_tail(&self.log, 60)
            );
        }
        Ok(())
    }

    /// `host:port` of the xDS server, as `sailplane bootstrap --xds-address` wants it.
    pub fn xds_address(&self) -> String {
        format!("127.0.0.1:{}", self.xds_port)
    }

    /// `http://127.0.0.1:<monitoring port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.monitoring_port)
    }

    /// `GET` on the monitoring port.
    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        http::get(&self.url(path)).await
    }

    /// `GET` on the monitoring port that must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.get(path).await?;
        if r.status != 200 {
            bail!("GET {path}: status {} (expected 200): {}", r.status, r.body);
        }
        r.json().with_context(|| format!("GET {path}"))
    }

    /// `/debug/syncz`: every connected proxy and its per-type sync state.
    pub async fn syncz(&self) -> anyhow::Result<Value> {
        self.get_json("/debug/syncz").await
    }

    /// The `/debug/syncz` entry of one proxy (the JSON object that names its node id), if connected.
    pub async fn syncz_entry(&self, proxy_id: &str) -> anyhow::Result<Option<Value>> {
        Ok(find_object_naming(&self.syncz().await?, proxy_id))
    }

    /// `/debug/config_dump?proxyID=<id>`: what the control plane sent that proxy.
    pub async fn config_dump(&self, proxy_id: &str) -> anyhow::Result<Value> {
        self.get_json(&format!("/debug/config_dump?proxyID={}", encode_query(proxy_id))).await
    }

    /// `/debug/diagnostics`: problems found in the configuration directory.
    pub async fn diagnostics(&self) -> anyhow::Result<Value> {
        self.get_json("/debug/diagnostics").await
    }

    /// `/metrics` in Prometheus text format.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let r = self.get("/metrics").await?;
        if r.status != 200 {
            bail!("GET /metrics: status {}: {}", r.status, r.body);
        }
        Ok(r.body)
    }

    /// Sum of all samples of a metric family in `/metrics` (any labels; counters may carry the
    /// OpenMetrics `_total` suffix), or `None` when no sample exists.
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<Option<f64>> {
        Ok(metric_sum(&self.metrics().await?, name))
    }

    /// Whether the child process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the control plane's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Its CA state directory (`--ca-dir`): `root-cert.pem`, and the key `sailplane token create
    /// --ca-dir` signs tokens with.
    pub fn ca_dir(&self) -> PathBuf {
        self.ca_dir.clone()
    }

    /// `127.0.0.1:<secure port>`.
    pub fn secure_address(&self) -> String {
        format!("127.0.0.1:{}", self.secure_port)
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The mesh root its CA created (`root-cert.pem` in its CA directory).
    pub fn root_pem(&self) -> anyhow::Result<String> {
        let path = self.ca_dir.join("root-cert.pem");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// A token for `ns/sa` valid for an hour, signed with its token key.
    pub fn token(&self, ns: &str, sa: &str) -> anyhow::Result<String> {
        let tokens = TokenAuthority::load_or_create(&self.ca_dir).context("loading the token key")?;
        Ok(tokens.mint(ns, sa, Duration::from_secs(3600))?)
    }

    /// A workload certificate (chain PEM, key PEM) for `ns/sa` from its CA, as the agent gets it.
    pub async fn workload_cert(&self, ns: &str, sa: &str) -> anyhow::Result<(String, String)> {
        let identity =
            Identity { trust_domain: "cluster.local".into(), namespace: ns.into(), service_account: sa.into() };
        let k = keys::generate(KeyType::Ec, &identity)?;
        let client = CaClient::new(&self.secure_address(), &self.root_pem()?, None)?;
        let chain = client.sign(k.csr_pem.clone(), Duration::from_secs(3600), &self.token(ns, sa)?).await?;
        Ok((chain.concat(), k.key_pem.clone()))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Captured by the test harness: shown only when the test fails.
        eprintln!("--- control plane log (last 80 lines) ---\n{}", log_tail(&self.log, 80));
    }
}

/// Percent-encodes a query value (node ids contain `~`, which is safe, and may contain others).
fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The innermost-first search for a JSON object that has a string value equal to `needle` among its
/// direct fields (the syncz entry of one proxy, whatever the surrounding shape).
pub fn find_object_naming(v: &Value, needle: &str) -> Option<Value> {
    match v {
        Value::Object(map) => {
            if map.values().any(|x| x.as_str() == Some(needle)) {
                return Some(v.clone());
            }
            map.values().find_map(|x| find_object_naming(x, needle))
        }
        Value::Array(items) => items.iter().find_map(|x| find_object_naming(x, needle)),
        _ => None,
    }
}

/// Sum of the samples of `name` (or `name_total`) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(pair) => pair,
            None => continue,
        };
        let family = series.split('{').next().unwrap_or_default();
        if (family == name || family == format!("{name}_total"))
            && let Ok(v) = value.parse::<f64>()
        {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}
