//! P6: real Envoy processes, each a distinct pod, started by this tool (and killed by PID at the
//! end). Every Envoy runs with interception mode NONE, so its outbound listeners bind 127.0.0.1 at
//! the service port; to keep 20 Envoys on one host from sharing ports, Envoy `e` is scoped by its
//! own Sidecar resource (workloadSelector `app: p6-client-e`) to one service, `echo-e`, whose port
//! is `base + e`. One VirtualService covers all the `echo-e` hosts with a `directResponse` whose body
//! names a generation; an edit changes the body and the time until every Envoy answers with the new
//! body is measured with real HTTP requests through each Envoy.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::mesh::{docs, write_atomic};
use super::server::{free_port, http_get};

/// The namespace of P6's objects and Envoys.
pub const NS: &str = "p6";

fn echo_host(e: usize) -> String {
    format!("echo-{e}.{NS}.svc.cluster.local")
}

/// Services, Sidecars (one per Envoy) and the namespace, written once.
pub fn write_objects(dir: &Path, envoys: usize, base_port: u16) {
    let mut objects = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})];
    for e in 0..envoys {
        objects.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("echo-{e}"), "namespace": NS},
            "spec": {"clusterIP": format!("10.97.0.{}", e + 1), "selector": {"app": format!("echo-{e}")},
                "ports": [{"name": "http", "port": base_port + e as u16, "targetPort": 8080}]}
        }));
        objects.push(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": format!("p6-client-{e}"), "namespace": NS},
            "spec": {"workloadSelector": {"labels": {"app": format!("p6-client-{e}")}},
                "egress": [{"hosts": [format!("{NS}/{}", echo_host(e))]}]}
        }));
    }
    std::fs::create_dir_all(dir.join(NS)).unwrap();
    std::fs::write(dir.join(NS).join("p6.yaml"), docs(&objects)).unwrap();
}

fn body(generation: u32) -> String {
    format!("p6-generation-{generation}")
}

/// The VirtualService at `generation`.
pub fn write_route(dir: &Path, envoys: usize, generation: u32) {
    let hosts: Vec<Value> = (0..envoys).map(|e| json!(echo_host(e))).collect();
    let vs = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "p6-route", "namespace": NS},
        "spec": {"hosts": hosts, "http": [{"directResponse": {"status": 200, "body": {"string": body(generation)}}}]}
    });
    write_atomic(&dir.join(NS).join("p6-route.yaml"), &docs(&[vs]));
}

/// The Envoy binary: `$ENVOY`, `$ENVOY_BIN`, the `.venv` of this checkout or of /work/main, or PATH.
pub fn envoy_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    sailplane::agent::envoy::locate(&root).or_else(|| sailplane::agent::envoy::locate(Path::new("/work/main")))
}

/// Running Envoys; dropping kills each (by its handle, i.e. its PID).
pub struct Envoys {
    children: Vec<Child>,
    /// Listener port of each Envoy.
    pub ports: Vec<u16>,
    /// Log file of each Envoy.
    pub logs: Vec<PathBuf>,
}

impl Drop for Envoys {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Envoys {
    /// Renders a bootstrap per Envoy with `sailplane bootstrap` and starts them.
    pub fn start(
        envoy: &Path,
        scratch: &Path,
        n: usize,
        base_port: u16,
        xds: std::net::SocketAddr,
        api: &str,
    ) -> Result<Envoys, String> {
        let mut envoys = Envoys { children: Vec::new(), ports: Vec::new(), logs: Vec::new() };
        for e in 0..n {
            let bootstrap = scratch.join(format!("envoy-{e}.yaml"));
            let admin = free_port();
            let out = Command::new(env!("CARGO_BIN_EXE_sailplane"))
                .arg("bootstrap")
                .args(["--node-type", "sidecar"])
                .args(["--ip", &format!("127.0.1.{}", e + 1)])
                .args(["--pod", &format!("p6-client-{e}-7d4b9c{e:04}-x{e}")])
                .args(["--namespace", NS])
                .args(["--service-account", "p6-client"])
                .args(["--labels", &format!("app=p6-client-{e},version=v1,pod-template-hash=7d4b9c{e:04}")])
                .args(["--interception-mode", "NONE"])
                .args(["--xds-address", &xds.to_string()])
                .args(["--xds-api", api])
                .args(["--admin-port", &admin.to_string()])
                .arg("--output")
                .arg(&bootstrap)
                .output()
                .map_err(|e| format!("sailplane bootstrap: {e}"))?;
            if !out.status.success() {
                return Err(format!("sailplane bootstrap failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            let log = scratch.join(format!("envoy-{e}.log"));
            let stdout = std::fs::File::create(&log).map_err(|e| e.to_string())?;
            let stderr = stdout.try_clone().map_err(|e| e.to_string())?;
            let child = Command::new(envoy)
                .arg("-c")
                .arg(&bootstrap)
                .arg("--disable-hot-restart")
                .args(["--concurrency", "1"])
                .args(["--drain-time-s", "1"])
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .map_err(|e| format!("spawning {}: {e}", envoy.display()))?;
            envoys.children.push(child);
            envoys.ports.push(base_port + e as u16);
            envoys.logs.push(log);
        }
        Ok(envoys)
    }

    /// Whether every Envoy still runs; the log tail of the first that does not.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (e, c) in self.children.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                let log = std::fs::read_to_string(&self.logs[e]).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(format!(
                    "envoy {e} exited ({status}): {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
        }
        Ok(())
    }

    /// Polls every Envoy (every `every`) until each answers with `generation`'s body; the time each
    /// took from `t0`, or `None` for those that did not within `timeout`.
    pub fn wait_generation(
        &self,
        generation: u32,
        t0: Instant,
        every: Duration,
        timeout: Duration,
    ) -> Vec<Option<Duration>> {
        let want = body(generation);
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .ports
                .iter()
                .enumerate()
                .map(|(e, port)| {
                    let want = want.clone();
                    s.spawn(move || {
                        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
                        let host = echo_host(e);
                        loop {
                            if let Ok((200, b)) = http_get(addr, "/", &host, Duration::from_millis(500))
                                && b.contains(&want)
                            {
                                return Some(t0.elapsed());
                            }
                            if t0.elapsed() > timeout {
                                return None;
                            }
                            std::thread::sleep(every);
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }
}
