//! # The mesh lab: Kubernetes-like pods in network namespaces, with Istio-style sidecars
//!
//! A [`Lab`] builds, on one machine and as root, the network a Kubernetes node with Istio gives its
//! pods, and runs the real binaries on it:
//!
//! - a Linux bridge on a private /24 chosen per lab (`10.150-249.x.0/24`), the control plane
//!   (`sailplane discovery` on a config directory the lab writes) listening on the bridge address;
//! - one network namespace per pod, with its own IP on the bridge, `lo` up, an echo app
//!   (`sailplane-echo`) on the pod's ports, and `/etc/netns/<netns>/hosts` mapping service names
//!   (`svc` in the pod's namespace, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`) to VIPs;
//! - kube-proxy-like DNAT of every service VIP to its endpoints (nat OUTPUT in each pod namespace,
//!   after the Istio rules), so pods without a sidecar reach services too;
//! - for injected pods: `sailplane token create`, then `sailplane agent --run-envoy` running as uid
//!   1337 inside the namespace (so the agent's and Envoy's own traffic skips capture), and Istio's
//!   iptables rules (outbound to 15001, inbound to 15006).
//!
//! Requests are sent with `curl` from inside a pod ([`Lab::curl`]) and come back as a
//! [`report::Reply`] (exit code, status, body). Everything is torn down on drop, also when the test
//! panics: the lab kills only processes it started (its children, and whatever runs inside the
//! namespaces it created), deletes its namespaces, veths, bridge and `/etc/netns` directories.
//! Without root or without `ip`/`iptables`/`curl` the lab panics with a clear message.

pub mod egress;
pub mod gateway;
pub mod manifests;
pub mod net;
pub mod objects;
pub mod report;

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::{log_tail, paths};
pub use net::{PROXY_UID, Subnet};
pub use objects::{PodSpec, ServiceSpec};
pub use report::{Expect, Reply, Report};

/// How long the control plane, an app or a sidecar may take to become ready on a busy 2-core machine.
const READY: Duration = Duration::from_secs(30);

/// What to build: namespaces, pods, services and Istio objects.
#[derive(Debug, Clone, Default)]
pub struct LabSpec {
    namespaces: Vec<String>,
    pods: Vec<PodSpec>,
    services: Vec<ServiceSpec>,
    istio: Vec<(String, String)>,
    xds_plaintext: bool,
    dns: Vec<(String, String)>,
    injected_namespaces: std::collections::BTreeSet<String>,
}

impl LabSpec {
    /// An empty lab.
    pub fn new() -> LabSpec {
        LabSpec::default()
    }

    /// Declares a namespace (pods' and services' namespaces are declared implicitly).
    pub fn namespace(mut self, ns: &str) -> LabSpec {
        if !self.namespaces.iter().any(|n| n == ns) {
            self.namespaces.push(ns.to_string());
        }
        self
    }

    /// Adds a pod.
    pub fn pod(mut self, pod: PodSpec) -> LabSpec {
        self = self.namespace(&pod.namespace.clone());
        self.pods.push(pod);
        self
    }

    /// Adds a service.
    pub fn service(mut self, svc: ServiceSpec) -> LabSpec {
        self = self.namespace(&svc.namespace.clone());
        self.services.push(svc);
        self
    }

    /// Adds Istio (or any other) YAML as file `name` in the config directory.
    pub fn yaml(mut self, name: &str, text: &str) -> LabSpec {
        self.istio.push((name.to_string(), text.to_string()));
        self
    }

    /// Makes `name` resolve to pod `pod`'s IP (`name` or `namespace/name`) in every pod's
    /// `/etc/hosts`, as DNS would for an external host.
    pub fn dns(mut self, name: &str, pod: &str) -> LabSpec {
        self.dns.push((name.to_string(), pod.to_string()));
        self
    }

    /// Sidecars fetch their configuration over plaintext gRPC on 15010 instead of mTLS on 15012
    /// (the default, as Istio's sidecars do).
    pub fn xds_plaintext(mut self) -> LabSpec {
        self.xds_plaintext = true;
        self
    }

    /// Builds and starts the lab.
    pub fn start(self) -> anyhow::Result<Lab> {
        Lab::start(self)
    }
}

struct PodState {
    spec: PodSpec,
    ip: Ipv4Addr,
    netns: String,
    dir: PathBuf,
    echo: Option<Child>,
    agent: Option<Child>,
    /// Whether a sidecar runs (or ran: interception rules stay until the pod goes).
    injected: bool,
}

struct ServiceState {
    spec: ServiceSpec,
    vip: Ipv4Addr,
}

/// A running lab; dropping it tears everything down.
pub struct Lab {
    subnet: Subnet,
    root: TempDir,
    config: PathBuf,
    ca_dir: PathBuf,
    sailplane: PathBuf,
    envoy: PathBuf,
    echo_bin: PathBuf,
    control_plane: Option<Child>,
    namespaces: Vec<String>,
    pods: Vec<PodState>,
    services: Vec<ServiceState>,
    xds_tls: bool,
    dns: Vec<(String, Ipv4Addr)>,
}

/// The `sailplane-echo` binary: built by cargo next to the test binaries of this crate
/// (`target/<profile>/sailplane-echo`), or `SAILPLANE_ECHO_BIN`.
pub fn echo_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SAILPLANE_ECHO_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current exe")?;
    // Integration tests live in target/<profile>/deps/; binaries one level up.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("sailplane-echo");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "sailplane-echo not found next to {} (cargo builds it for this crate's integration tests; or set \
         SAILPLANE_ECHO_BIN)",
        exe.display()
    )
}

static POD_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds the network, writes the config directory, starts the control plane, then every pod's
    /// app and sidecar (in parallel), and waits until all are ready.
    pub fn start(spec: LabSpec) -> anyhow::Result<Lab> {
        net::require_root_and_tools();
        let started = Instant::now();
        let sailplane = paths::sailplane_bin()?;
        let envoy = paths::envoy_bin()?;
        let echo_bin = echo_bin()?;
        let root = tempfile::Builder::new().prefix("sailplane-lab-").tempdir()?;
        // uid 1337 must reach its pod directory below.
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755))?;
        let config = root.path().join("config");
        let ca_dir = root.path().join("ca");
        std::fs::create_dir_all(&config)?;
        let subnet = net::create_bridge()?;
        let mut lab = Lab {
            subnet,
            config,
            ca_dir,
            sailplane,
            envoy,
            echo_bin,
            control_plane: None,
            namespaces: spec.namespaces.clone(),
            pods: Vec::new(),
            services: Vec::new(),
            xds_tls: !spec.xds_plaintext,
            dns: Vec::new(),
            root,
        };
        for (i, svc) in spec.services.iter().enumerate() {
            let host = u8::try_from(200 + i).context("too many services for one lab (at most 54)")?;
            lab.services.push(ServiceState { spec: svc.clone(), vip: subnet.host(host) });
        }
        for (i, pod) in spec.pods.iter().enumerate() {
            let host =
                u8::try_from(10 + i).ok().filter(|h| *h < 200).context("too many pods for one lab (at most 190)")?;
            let n = POD_COUNTER.fetch_add(1, Ordering::Relaxed);
            let netns = format!("sp{}-{}-{}", subnet.tag(), i, pod.name.chars().take(20).collect::<String>());
            let dir = lab.root.path().join(format!("pod-{n}-{}-{}", pod.namespace, pod.name));
            std::fs::create_dir_all(&dir)?;
            lab.pods.push(PodState {
                spec: pod.clone(),
                ip: subnet.host(host),
                netns,
                dir,
                echo: None,
                agent: None,
                injected: false,
            });
        }

        for (name, pod) in &spec.dns {
            let ip = lab.pod_ip(pod).with_context(|| format!("dns name {name}"))?;
            lab.dns.push((name.clone(), ip));
        }
        // The config directory first, so that the control plane's first push is complete.
        lab.write_file("namespaces.yaml", &objects::namespaces_yaml(&lab.namespaces))?;
        for i in 0..lab.pods.len() {
            if !spec.pods[i].external {
                lab.write_pod_object(i, spec.pods[i].injected)?;
            }
        }
        lab.write_services()?;
        for (name, text) in &spec.istio {
            lab.write_file(name, text)?;
        }
        lab.start_control_plane()?;

        for i in 0..lab.pods.len() {
            lab.create_pod_network(i)?;
            lab.start_app(i)?;
        }
        lab.install_service_rules()?;
        let injected: Vec<usize> =
            (0..lab.pods.len()).filter(|i| spec.pods[*i].injected || spec.pods[*i].gateway).collect();
        for &i in &injected {
            lab.start_sidecar(i)?;
        }
        for i in 0..lab.pods.len() {
            lab.wait_app(i)?;
        }
        for &i in &injected {
            lab.wait_sidecar(i)?;
        }
        lab.wait_converged()?;
        println!(
            "lab {}: {} pods ({} with sidecars) up in {:.1}s",
            subnet.tag(),
            lab.pods.len(),
            injected.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(lab)
    }

    /// The lab's subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The config directory the control plane watches.
    pub fn config_dir(&self) -> &Path {
        &self.config
    }

    fn write_file(&self, name: &str, text: &str) -> anyhow::Result<()> {
        // Atomic: the file watcher must never read half a file.
        let tmp = self.config.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.config.join(name)).with_context(|| format!("renaming into {name}"))?;
        Ok(())
    }

    /// Writes (or replaces) `name` in the config directory, as `kubectl apply` would.
    pub fn apply(&self, name: &str, yaml: &str) -> anyhow::Result<()> {
        self.write_file(name, yaml)
    }

    /// Removes `name` from the config directory, as `kubectl delete -f` would.
    pub fn delete(&self, name: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.config.join(name)).with_context(|| format!("removing {name}"))
    }

    fn pod_index(&self, key: &str) -> anyhow::Result<usize> {
        let matches: Vec<usize> = (0..self.pods.len())
            .filter(|&i| {
                let p = &self.pods[i].spec;
                key == p.key() || key == p.name
            })
            .collect();
        match matches.as_slice() {
            [i] => Ok(*i),
            [] => bail!("no pod {key:?} in the lab"),
            _ => bail!("pod name {key:?} is ambiguous: use namespace/name"),
        }
    }

    /// The IP of pod `key` (`name` or `namespace/name`).
    pub fn pod_ip(&self, key: &str) -> anyhow::Result<Ipv4Addr> {
        Ok(self.pods[self.pod_index(key)?].ip)
    }

    /// The VIP of service `namespace/name`.
    pub fn service_vip(&self, ns: &str, name: &str) -> anyhow::Result<Ipv4Addr> {
        self.services
            .iter()
            .find(|s| s.spec.namespace == ns && s.spec.name == name)
            .map(|s| s.vip)
            .with_context(|| format!("no service {ns}/{name} in the lab"))
    }

    /// The SPIFFE identity of pod `key`.
    pub fn identity(&self, key: &str) -> anyhow::Result<String> {
        let p = &self.pods[self.pod_index(key)?].spec;
        Ok(format!("spiffe://cluster.local/ns/{}/sa/{}", p.namespace, p.service_account))
    }

    fn write_pod_object(&self, i: usize, injected: bool) -> anyhow::Result<()> {
        let p = &self.pods[i];
        let name = format!("pod-{}-{}.yaml", p.spec.namespace, p.spec.name);
        self.write_file(&name, &objects::pod_yaml(&p.spec, p.ip, injected))
    }

    fn write_services(&self) -> anyhow::Result<()> {
        for s in &self.services {
            let endpoints: Vec<(String, Ipv4Addr)> =
                self.pods.iter().filter(|p| s.spec.selects(&p.spec)).map(|p| (p.spec.name.clone(), p.ip)).collect();
            let name = format!("service-{}-{}.yaml", s.spec.namespace, s.spec.name);
            self.write_file(&name, &objects::service_yaml(&s.spec, s.vip, &endpoints))?;
        }
        Ok(())
    }

    fn start_control_plane(&mut self) -> anyhow::Result<()> {
        let log = File::create(self.root.path().join("sailplane.log"))?;
        let gw = self.subnet.gateway().to_string();
        let child = Command::new(&self.sailplane)
            .arg("discovery")
            .arg("--config")
            .arg(&self.config)
            .args(["--listen-address", &gw])
            .arg("--ca-dir")
            .arg(&self.ca_dir)
            .env("SAILPLANE_LOG", std::env::var("SAILPLANE_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.sailplane.display()))?;
        self.control_plane = Some(child);
        let url = format!("http://{gw}:15014/ready");
        let deadline = Instant::now() + READY;
        loop {
            let (code, _) = host_get(&url);
            if code == 200 {
                return Ok(());
            }
            if let Some(cp) = self.control_plane.as_mut()
                && let Ok(Some(status)) = cp.try_wait()
            {
                bail!("control plane exited ({status}):\n{}", self.control_plane_log(60));
            }
            if Instant::now() > deadline {
                bail!("control plane not ready after {READY:?} ({url}):\n{}", self.control_plane_log(60));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` of the control plane's log.
    pub fn control_plane_log(&self, lines: usize) -> String {
        log_tail(&self.root.path().join("sailplane.log"), lines)
    }

    /// The last `lines` of a pod's sidecar log (agent and Envoy).
    pub fn sidecar_log(&self, key: &str, lines: usize) -> String {
        match self.pod_index(key) {
            Ok(i) => log_tail(&self.pods[i].dir.join("agent.log"), lines),
            Err(e) => e.to_string(),
        }
    }

    fn hosts_file(&self, pod_ns: &str) -> String {
        let mut out = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for s in &self.services {
            let (n, ns) = (&s.spec.name, &s.spec.namespace);
            let short = if ns == pod_ns { format!("{n} ") } else { String::new() };
            out.push_str(&format!("{} {short}{n}.{ns} {n}.{ns}.svc {n}.{ns}.svc.cluster.local\n", s.vip));
        }
        for (name, ip) in &self.dns {
            out.push_str(&format!("{ip} {name}\n"));
        }
        out
    }

    fn create_pod_network(&self, i: usize) -> anyhow::Result<()> {
        let p = &self.pods[i];
        let veth = format!("spv{}-{i}", self.subnet.tag());
        net::create_pod_netns(self.subnet, &p.netns, &veth, p.ip, &self.hosts_file(&p.spec.namespace))
            .with_context(|| format!("network of pod {}", p.spec.key()))
    }

    fn start_app(&mut self, i: usize) -> anyhow::Result<()> {
        let p = &self.pods[i];
        if p.spec.gateway {
            // The gateway's Envoy owns the pod's ports.
            return Ok(());
        }
        let log = File::create(p.dir.join("app.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &p.netns]).arg(&self.echo_bin).args(["--name", &p.spec.name]);
        for port in &p.spec.ports {
            cmd.args(["--port", &port.to_string()]);
        }
        if let Some((port, cert, client_ca)) = &p.spec.tls {
            let (chain, key) = cert.write(&p.dir, "app-tls")?;
            cmd.args(["--tls-port", &port.to_string()]).arg("--cert").arg(chain).arg("--key").arg(key);
            if let Some(ca) = client_ca {
                let path = p.dir.join("app-client-ca.pem");
                std::fs::write(&path, ca)?;
                cmd.arg("--client-ca").arg(path);
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the app of {}", p.spec.key()))?;
        self.pods[i].echo = Some(child);
        Ok(())
    }

    fn wait_app(&self, i: usize) -> anyhow::Result<()> {
        let p = &self.pods[i];
        let Some(port) = p.spec.ports.first().filter(|_| !p.spec.gateway) else { return Ok(()) };
        let url = format!("http://127.0.0.1:{port}/ready");
        let deadline = Instant::now() + READY;
        loop {
            let r = self.curl_in(&p.netns, &url, &[])?;
            if r.status == 200 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "app of {} not answering on {url}: {}\n{}",
                    p.spec.key(),
                    r.summary(),
                    log_tail(&p.dir.join("app.log"), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Recomputes every pod's service DNAT rules (kube-proxy).
    fn install_service_rules(&self) -> anyhow::Result<()> {
        let mut rules = Vec::new();
        for s in &self.services {
            let selected: Vec<&PodState> = self.pods.iter().filter(|p| s.spec.selects(&p.spec)).collect();
            for port in &s.spec.ports {
                rules.push(net::VipRule {
                    vip: s.vip,
                    port: port.port,
                    endpoints: selected.iter().map(|p| (p.ip, port.target_port)).collect(),
                });
            }
        }
        for p in &self.pods {
            net::install_service_rules(&p.netns, &rules)
                .with_context(|| format!("service rules of {}", p.spec.key()))?;
        }
        Ok(())
    }

    /// Injects a sidecar into a running pod (as a rollout with injection enabled would): the pod
    /// object gets `security.istio.io/tlsMode: istio`, the interception rules are installed, the
    /// agent and Envoy start; returns once Envoy is live and in sync.
    pub fn inject(&mut self, key: &str) -> anyhow::Result<()> {
        let i = self.pod_index(key)?;
        if self.pods[i].agent.is_some() {
            bail!("pod {key} already has a sidecar");
        }
        self.write_pod_object(i, true)?;
        self.start_sidecar(i)?;
        self.wait_sidecar(i)?;
        self.wait_converged()
    }

    /// Restarts pod `key`'s sidecar (agent and Envoy), as a pod restart would: the new Envoy gets
    /// its whole configuration from scratch. Returns once it is live and in sync.
    pub fn restart_sidecar(&mut self, key: &str) -> anyhow::Result<()> {
        let i = self.pod_index(key)?;
        let mut agent = self.pods[i].agent.take().with_context(|| format!("pod {key} has no sidecar"))?;
        Lab::stop_child(&mut agent, Duration::from_secs(10));
        // The agent waits for Envoy; anything left (it was killed) must not keep the admin port.
        for pid in net::netns_pids(&self.pods[i].netns) {
            let is_app = self.pods[i].echo.as_ref().is_some_and(|e| e.id() == pid);
            if !is_app {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
            }
        }
        self.start_sidecar(i)?;
        self.wait_sidecar(i)?;
        self.wait_converged()
    }

    fn start_sidecar(&mut self, i: usize) -> anyhow::Result<()> {
        let gw = self.subnet.gateway();
        let (key, ns, sa, dir, netns, ip, labels) = {
            let p = &self.pods[i];
            (
                p.spec.key(),
                p.spec.namespace.clone(),
                p.spec.service_account.clone(),
                p.dir.clone(),
                p.netns.clone(),
                p.ip,
                objects::effective_labels(&p.spec, !p.spec.gateway),
            )
        };
        let gateway = self.pods[i].spec.gateway;
        // What an injected pod has mounted: its token and the mesh root, readable by the proxy user.
        let token = dir.join("istio-token");
        net::run(
            &self.sailplane.display().to_string(),
            &[
                "token",
                "create",
                "--namespace",
                &ns,
                "--service-account",
                &sa,
                "--ca-dir",
                &self.ca_dir.display().to_string(),
                "--output",
                &token.display().to_string(),
            ],
        )?;
        std::fs::copy(self.ca_dir.join("root-cert.pem"), dir.join("root-cert.pem"))
            .context("copying the mesh root (has the control plane created its CA?)")?;
        for f in [dir.as_path(), token.as_path(), dir.join("root-cert.pem").as_path()] {
            std::os::unix::fs::chown(f, Some(PROXY_UID), Some(PROXY_UID))
                .with_context(|| format!("chown {}", f.display()))?;
        }
        if !self.pods[i].injected && !gateway {
            net::install_istio_rules(&netns).with_context(|| format!("interception rules of {key}"))?;
            // The Istio rules must come before the service DNAT: re-append the DNAT jump after them.
            self.pods[i].injected = true;
            let _ = net::exec_in(
                &netns,
                &["iptables", "-w", "-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "LAB_SERVICES"],
            );
            let _ = net::exec_in(&netns, &["iptables", "-w", "-t", "nat", "-X", "LAB_SERVICES"]);
            self.install_service_rules()?;
        }
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let xds = if self.xds_tls { format!("{gw}:15012") } else { format!("{gw}:15010") };
        let log = File::create(dir.join("agent.log"))?;
        std::os::unix::fs::chown(dir.join("agent.log"), Some(PROXY_UID), Some(PROXY_UID))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns])
            // The proxy user, as in the istio-proxy container: iptables lets uid 1337 through.
            .args(["setpriv", "--reuid", &PROXY_UID.to_string(), "--regid", &PROXY_UID.to_string(), "--clear-groups", "--"])
            .arg(&self.sailplane)
            .arg("agent")
            .args(["--node-type", if gateway { "router" } else { "sidecar" }])
            .args(["--ip", &ip.to_string(), "--pod", &self.pods[i].spec.name, "--namespace", &ns])
            .args(["--service-account", &sa, "--labels", &labels.join(",")])
            .args(["--interception-mode", "REDIRECT", "--xds-address", &xds])
            .args(["--ca-addr", &format!("{gw}:15012"), "--ca-server-name", "istiod.istio-system.svc"])
            .arg("--ca-root")
            .arg(dir.join("root-cert.pem"))
            .arg("--token-file")
            .arg(&token)
            .arg("--sds-socket")
            .arg(dir.join("SDS"))
            .arg("--output")
            .arg(dir.join("envoy-rev.yaml"))
            .arg("--run-envoy")
            .arg("--envoy-bin")
            .arg(&self.envoy);
        if self.xds_tls {
            cmd.arg("--xds-tls");
        }
        cmd.args([
            "--",
            "--concurrency",
            "1",
            "--log-level",
            "warning",
            "--component-log-level",
            "misc:error",
            "--drain-time-s",
            "1",
        ])
        .current_dir(&dir)
        .env("SAILPLANE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting the sidecar of {key}"))?;
        self.pods[i].agent = Some(child);
        Ok(())
    }

    fn wait_sidecar(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY;
        let key = self.pods[i].spec.key();
        loop {
            let r = self.curl_in(&self.pods[i].netns, "http://127.0.0.1:15000/ready", &[])?;
            if r.status == 200 && r.body.trim() == "LIVE" {
                return Ok(());
            }
            if let Some(agent) = self.pods[i].agent.as_mut()
                && let Ok(Some(status)) = agent.try_wait()
            {
                bail!("sidecar of {key} exited ({status}):\n{}", self.sidecar_log(&key, 40));
            }
            if Instant::now() > deadline {
                bail!(
                    "sidecar of {key} not LIVE after {READY:?} (admin /ready: {}):\n{}\n--- control plane ---\n{}",
                    r.summary(),
                    self.sidecar_log(&key, 40),
                    self.control_plane_log(30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The identity the control plane authenticated pod `key`'s sidecar as on its xDS stream (from
    /// its client certificate on 15012; `None` over plaintext).
    pub fn xds_identity(&self, key: &str) -> anyhow::Result<Option<String>> {
        let ip = self.pod_ip(key)?.to_string();
        let syncz = self.syncz()?;
        let entry = syncz
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["ips"].as_array().is_some_and(|a| a.iter().any(|x| x.as_str() == Some(ip.as_str()))))
            .with_context(|| format!("sidecar of {key} ({ip}) is not connected: {syncz}"))?;
        Ok(entry["identity"].as_str().map(str::to_string))
    }

    /// `/debug/syncz` of the control plane.
    pub fn syncz(&self) -> anyhow::Result<Value> {
        let url = format!("http://{}:15014/debug/syncz", self.subnet.gateway());
        let (code, body) = host_get(&url);
        if code != 200 {
            bail!("GET {url}: {code} {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("syncz is not JSON: {body}"))
    }

    /// Waits until the control plane has seen the config directory as it is now and every connected
    /// sidecar has acknowledged what it was sent: no type STALE, none in ERROR (a NACK fails
    /// immediately with Envoy's message), stable for a second.
    pub fn wait_converged(&self) -> anyhow::Result<()> {
        // The file watcher and the push debounce (100 ms quiet) come first.
        std::thread::sleep(Duration::from_millis(600));
        let expected = self.pods.iter().filter(|p| p.agent.is_some()).count();
        let deadline = Instant::now() + READY;
        let mut stable_since: Option<Instant> = None;
        loop {
            let syncz = self.syncz()?;
            let proxies = syncz.as_array().cloned().unwrap_or_default();
            let mut problem = None;
            if proxies.len() < expected {
                problem = Some(format!("{} of {expected} sidecars connected", proxies.len()));
            }
            for p in &proxies {
                let id = p["proxy"].as_str().unwrap_or("?");
                for (t, d) in p["types"].as_object().into_iter().flatten() {
                    match d["status"].as_str() {
                        Some("ERROR") => bail!("{id} rejected {t}: {}", d["error"]),
                        Some("STALE") => problem = Some(format!("{id}: {t} STALE ({})", d)),
                        _ => {}
                    }
                }
            }
            match problem {
                None => {
                    let since = *stable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(1) {
                        return Ok(());
                    }
                }
                Some(p) => {
                    stable_since = None;
                    if Instant::now() > deadline {
                        bail!("sidecars not in sync after {READY:?}: {p}{}", self.stale_details(&proxies));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// For each proxy with a STALE type: what its Envoy holds in warming (clusters waiting for
    /// endpoints, listeners waiting for routes), which tells whether a response never came.
    fn stale_details(&self, proxies: &[Value]) -> String {
        let mut out = String::new();
        for p in proxies {
            let stale = p["types"].as_object().into_iter().flatten().any(|(_, d)| d["status"] == "STALE");
            let ip =
                p["ips"].as_array().and_then(|a| a.first()).and_then(Value::as_str).unwrap_or_default().to_string();
            let Some(pod) = self.pods.iter().find(|x| x.ip.to_string() == ip) else { continue };
            if !stale {
                continue;
            }
            let key = pod.spec.key();
            let dump = self.envoy_admin(&key, "/config_dump?resource=dynamic_warming_clusters").unwrap_or_default();
            let warming: Vec<String> = serde_json::from_str::<Value>(&dump)
                .ok()
                .and_then(|v| v["configs"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["cluster"]["name"].as_str().map(str::to_string))
                .collect();
            out.push_str(&format!("\n{key}: warming clusters in Envoy: {warming:?}; syncz: {p}"));
        }
        out
    }

    fn curl_in(&self, netns: &str, url: &str, extra: &[&str]) -> anyhow::Result<Reply> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns, "curl", "-sS", "--noproxy", "*", "--max-time", "5"])
            .args(["-w", "\n@@status=%{http_code}"])
            .args(extra)
            .arg(url);
        let out = cmd.output().context("running curl in a pod")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = match stdout.rsplit_once("\n@@status=") {
            Some((b, s)) => (b.to_string(), s.trim().parse().unwrap_or(0)),
            None => (stdout, 0),
        };
        Ok(Reply {
            exit: out.status.code().unwrap_or(-1),
            status,
            body,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `curl <url>` from inside pod `from` (`name` or `namespace/name`), with extra curl arguments.
    pub fn curl(&self, from: &str, url: &str, extra: &[&str]) -> anyhow::Result<Reply> {
        let i = self.pod_index(from)?;
        self.curl_in(&self.pods[i].netns, url, extra)
    }

    /// Sends `curl url` from `from` until it gives `expect` (configuration may still be settling in
    /// Envoy after the control plane's ACK, e.g. a listener warming), for at most 6 s; returns the
    /// last reply and whether it matched.
    pub fn request(&self, from: &str, url: &str, expect: &Expect) -> anyhow::Result<(Reply, bool)> {
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            let r = self.curl(from, url, &[])?;
            if expect.matches(&r) {
                return Ok((r, true));
            }
            if Instant::now() > deadline {
                return Ok((r, false));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// [`Lab::wait_converged`], recorded as a report row instead of an error, so that the requests
    /// after it still run and show the consequences.
    pub fn converge(&self, report: &mut Report, what: &str) {
        let got = match self.wait_converged() {
            Ok(()) => "in sync".to_string(),
            Err(e) => format!("{e:#}"),
        };
        let ok = got == "in sync";
        report.add(format!("{what}: every sidecar ACKed its config"), "in sync", got, ok);
    }

    /// Requests `url` from `from` expecting `expect`, and records the row in `report` (`what` names
    /// the configuration in force).
    pub fn check(
        &self,
        report: &mut Report,
        what: &str,
        from: &str,
        url: &str,
        expect: Expect,
    ) -> anyhow::Result<Reply> {
        let (reply, ok) = self.request(from, url, &expect)?;
        report.add(format!("{what}: {from} -> {url}"), expect.to_string(), reply.summary(), ok);
        Ok(reply)
    }

    /// `GET <path>` on the Envoy admin port (127.0.0.1:15000) of pod `key`'s sidecar.
    pub fn envoy_admin(&self, key: &str, path: &str) -> anyhow::Result<String> {
        let r = self.curl(key, &format!("http://127.0.0.1:15000{path}"), &[])?;
        if r.status != 200 {
            bail!("envoy admin {path} of {key}: {}", r.summary());
        }
        Ok(r.body)
    }

    /// `POST <path>` on the Envoy admin port of pod `key`'s sidecar (e.g. `/logging?filter=debug`).
    pub fn envoy_admin_post(&self, key: &str, path: &str) -> anyhow::Result<String> {
        let r = self.curl(key, &format!("http://127.0.0.1:15000{path}"), &["-X", "POST"])?;
        if r.status != 200 {
            bail!("envoy admin POST {path} of {key}: {}", r.summary());
        }
        Ok(r.body)
    }

    /// The whole log of pod `key`'s sidecar (agent and Envoy).
    pub fn sidecar_log_text(&self, key: &str) -> anyhow::Result<String> {
        let i = self.pod_index(key)?;
        let path = self.pods[i].dir.join("agent.log");
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Envoy's `/config_dump` (with EDS) of pod `key`'s sidecar.
    pub fn config_dump(&self, key: &str) -> anyhow::Result<Value> {
        let body = self.envoy_admin(key, "/config_dump?include_eds")?;
        serde_json::from_str(&body).context("config_dump is not JSON")
    }

    /// Every counter and gauge in Envoy's `/stats` of pod `key`, as (name, value).
    pub fn envoy_stats(&self, key: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let body = self.envoy_admin(key, "/stats")?;
        Ok(body
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
            .collect())
    }

    /// The sum of the `/stats` values of pod `key` whose name starts with `prefix` and ends with
    /// `suffix` (a cluster's stats carry its alt_stat_name and, with transport socket matches, the
    /// match name, e.g. `cluster.outbound|8080||h;.tlsMode-istio.ssl.handshake`).
    pub fn envoy_stat_sum(&self, key: &str, prefix: &str, suffix: &str) -> anyhow::Result<u64> {
        Ok(self
            .envoy_stats(key)?
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.ends_with(suffix))
            .map(|(_, v)| v)
            .sum())
    }

    fn stop_child(child: &mut Child, grace: Duration) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SIGTERM first: the agent forwards it to Envoy and waits for it.
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).output();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `GET url` from the host with curl: (status, body); status 0 when nothing answered.
fn host_get(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--noproxy", "*", "--max-time", "5", "-w", "\n@@status=%{http_code}", url])
        .output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            match text.rsplit_once("\n@@status=") {
                Some((b, s)) => (s.trim().parse().unwrap_or(0), b.to_string()),
                None => (0, text),
            }
        }
        Err(e) => (0, e.to_string()),
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- lab {}: control plane log ---\n{}", self.subnet.tag(), self.control_plane_log(60));
            for p in &self.pods {
                if p.agent.is_some() {
                    eprintln!("--- sidecar of {} ---\n{}", p.spec.key(), log_tail(&p.dir.join("agent.log"), 30));
                }
            }
        }
        let started = Instant::now();
        let mut agents: Vec<Child> = self.pods.iter_mut().filter_map(|p| p.agent.take()).collect();
        for a in &agents {
            let _ = Command::new("kill").args(["-TERM", &a.id().to_string()]).output();
        }
        for a in &mut agents {
            Lab::stop_child(a, Duration::from_secs(3));
        }
        for p in &mut self.pods {
            if let Some(mut echo) = p.echo.take() {
                let _ = echo.kill();
                let _ = echo.wait();
            }
            // Whatever still runs in the namespace was started by this lab (an Envoy whose agent died).
            for pid in net::netns_pids(&p.netns) {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
            }
        }
        if let Some(mut cp) = self.control_plane.take() {
            let _ = cp.kill();
            let _ = cp.wait();
        }
        for p in &self.pods {
            net::delete_pod_netns(&p.netns);
        }
        net::delete_bridge(self.subnet);
        println!("lab {}: torn down in {:.1}s", self.subnet.tag(), started.elapsed().as_secs_f64());
    }
}
