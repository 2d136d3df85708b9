//! Gateways and proxies Sailplane does not configure, in the mesh lab.
//!
//! - Gateway pods ([`PodSpec::as_gateway`], or a Deployment annotated
//!   `inject.istio.io/templates: gateway` as Istio's gateway injection has it): the pod runs
//!   `sailplane agent --node-type router --run-envoy` in place of an app, as uid 1337, and gets no
//!   interception rules: a gateway's Envoy binds the ports its listeners name (`0.0.0.0_8443`) and
//!   connects to mesh endpoints directly.
//! - EnRoute's pattern (seed 000/001): [`Lab::start_cert_agent`] runs `sailplane agent` without
//!   `--run-envoy`, only to keep the workload certificate of a pod in files (`OUTPUT_CERTS`:
//!   `key.pem`, `cert-chain.pem`, `root-cert.pem`), and [`Lab::start_envoy`] runs any Envoy with a
//!   static bootstrap in a pod, which may use those files to speak mTLS to mesh workloads.
//! - [`Lab::check_curl`]: [`Lab::check`] with extra curl arguments (`--cacert`, `--resolve`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{Expect, Lab, PROXY_UID, PodSpec, READY, Reply, Report};
use crate::log_tail;

impl PodSpec {
    /// Makes the pod a gateway: Envoy as node type `router` instead of the app, no interception.
    pub fn as_gateway(mut self) -> PodSpec {
        self.gateway = true;
        self.injected = false;
        self
    }
}

/// A process the test started inside a pod (a certificate agent, a standalone Envoy); killed on drop.
pub struct PodProcess {
    what: String,
    child: Child,
    log: PathBuf,
}

impl PodProcess {
    /// The last `lines` of its log.
    pub fn log(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}):\n{}", self.what, self.log(40));
        }
        Ok(())
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files `sailplane agent --output-certs DIR` keeps up to date.
pub const OUTPUT_CERT_FILES: [&str; 3] = ["key.pem", "cert-chain.pem", "root-cert.pem"];

impl Lab {
    /// The directory of pod `key` (readable by uid 1337), for files a test gives its processes.
    pub fn pod_dir(&self, key: &str) -> anyhow::Result<PathBuf> {
        Ok(self.pods[self.pod_index(key)?].dir.clone())
    }

    /// Runs `sailplane agent` for pod `key`'s identity without Envoy (no `--run-envoy`), as uid 1337
    /// in the pod, writing the workload certificate into `out_dir` (`OUTPUT_CERTS`); returns once
    /// the three files exist.
    pub fn start_cert_agent(&self, key: &str, out_dir: &Path) -> anyhow::Result<PodProcess> {
        let i = self.pod_index(key)?;
        let p = &self.pods[i];
        let (ns, sa) = (&p.spec.namespace, &p.spec.service_account);
        let dir = p.dir.join("cert-agent");
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(out_dir)?;
        let token = dir.join("istio-token");
        let out = Command::new(&self.sailplane)
            .args(["token", "create", "--namespace", ns, "--service-account", sa, "--ca-dir"])
            .arg(&self.ca_dir)
            .arg("--output")
            .arg(&token)
            .output()
            .context("running sailplane token create")?;
        if !out.status.success() {
            bail!("sailplane token create: {}", String::from_utf8_lossy(&out.stderr));
        }
        let root = dir.join("root-cert.pem");
        std::fs::copy(self.ca_dir.join("root-cert.pem"), &root).context("copying the mesh root")?;
        let log_path = dir.join("agent.log");
        let log = File::create(&log_path)?;
        for f in [dir.as_path(), out_dir, token.as_path(), root.as_path(), log_path.as_path()] {
            std::os::unix::fs::chown(f, Some(PROXY_UID), Some(PROXY_UID))
                .with_context(|| format!("chown {}", f.display()))?;
        }
        let gw = self.subnet.gateway();
        let child = Command::new("ip")
            .args(["netns", "exec", &p.netns])
            .args([
                "setpriv",
                "--reuid",
                &PROXY_UID.to_string(),
                "--regid",
                &PROXY_UID.to_string(),
                "--clear-groups",
                "--",
            ])
            .arg(&self.sailplane)
            .arg("agent")
            .args(["--ip", &p.ip.to_string(), "--pod", &p.spec.name, "--namespace", ns, "--service-account", sa])
            .args(["--ca-addr", &format!("{gw}:15012"), "--ca-server-name", "istiod.istio-system.svc"])
            .arg("--ca-root")
            .arg(&root)
            .arg("--token-file")
            .arg(&token)
            .arg("--sds-socket")
            .arg(dir.join("SDS"))
            .arg("--output")
            .arg(dir.join("envoy-rev.yaml"))
            .arg("--output-certs")
            .arg(out_dir)
            .current_dir(&dir)
            .env("SAILPLANE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the certificate agent of {key}"))?;
        let mut agent = PodProcess { what: format!("certificate agent of {key}"), child, log: log_path };
        let deadline = Instant::now() + READY;
        while !OUTPUT_CERT_FILES.iter().all(|f| out_dir.join(f).is_file()) {
            agent.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} wrote no certificates into {} after {READY:?}:\n{}",
                    agent.what,
                    out_dir.display(),
                    agent.log(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    /// Runs the lab's Envoy binary in pod `key` (as root: the pod has no interception rules to
    /// escape) with the static bootstrap `bootstrap_yaml`, whose admin interface must listen on
    /// `127.0.0.1:<admin_port>`; returns once the admin `/ready` says LIVE.
    pub fn start_envoy(
        &self,
        key: &str,
        name: &str,
        bootstrap_yaml: &str,
        admin_port: u16,
    ) -> anyhow::Result<PodProcess> {
        let i = self.pod_index(key)?;
        let p = &self.pods[i];
        let config = p.dir.join(format!("{name}.yaml"));
        std::fs::write(&config, bootstrap_yaml).with_context(|| format!("writing {}", config.display()))?;
        let log_path = p.dir.join(format!("{name}.log"));
        let log = File::create(&log_path)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &p.netns])
            .arg(&self.envoy)
            .arg("-c")
            .arg(&config)
            .args(["--disable-hot-restart", "--concurrency", "1", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} in {key}"))?;
        let mut envoy = PodProcess { what: format!("Envoy {name} in {key}"), child, log: log_path };
        let url = format!("http://127.0.0.1:{admin_port}/ready");
        let deadline = Instant::now() + READY;
        loop {
            let r = self.curl_in(&p.netns, &url, &[])?;
            if r.status == 200 && r.body.trim() == "LIVE" {
                return Ok(envoy);
            }
            envoy.check_alive()?;
            if Instant::now() > deadline {
                bail!("{} not LIVE after {READY:?} ({}):\n{}", envoy.what, r.summary(), envoy.log(30));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `curl url` with `extra` arguments from pod `from` until it gives `expect` (at most 6 s), and
    /// records the row in `report`.
    pub fn check_curl(
        &self,
        report: &mut Report,
        what: &str,
        from: &str,
        url: &str,
        extra: &[&str],
        expect: Expect,
    ) -> anyhow::Result<Reply> {
        let deadline = Instant::now() + Duration::from_secs(6);
        let reply = loop {
            let r = self.curl(from, url, extra)?;
            if expect.matches(&r) || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let ok = expect.matches(&reply);
        report.add(format!("{what}: {from} -> {url}"), expect.to_string(), reply.summary(), ok);
        Ok(reply)
    }

    /// `GET <path>` on the admin interface of any Envoy in pod `key` (on `127.0.0.1:<admin_port>`).
    pub fn admin_get(&self, key: &str, admin_port: u16, path: &str) -> anyhow::Result<String> {
        let r = self.curl(key, &format!("http://127.0.0.1:{admin_port}{path}"), &[])?;
        if r.status != 200 {
            bail!("admin {path} on port {admin_port} in {key}: {}", r.summary());
        }
        Ok(r.body)
    }
}

#[cfg(test)]
mod tests {
    use super::super::LabSpec;

    #[test]
    fn gateway_injection_template_makes_a_gateway_pod() {
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  template:
    metadata:
      annotations: {inject.istio.io/templates: gateway, sidecar.istio.io/inject: "true"}
      labels: {istio: ingressgateway}
    spec: {containers: [{name: istio-proxy, image: auto, ports: [{containerPort: 8443}]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, namespace: istio-system}
spec:
  template:
    metadata: {annotations: {sidecar.istio.io/inject: "true"}, labels: {app: app}}
    spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
"#;
        let spec = LabSpec::new().manifest("gw.yaml", text).unwrap();
        let (gw, app) = (&spec.pods[0], &spec.pods[1]);
        assert!(gw.gateway && !gw.injected, "a gateway pod runs Envoy as a router, without interception");
        assert_eq!(gw.ports, vec![8443]);
        assert!(!app.gateway && app.injected);
    }
}
