//! `sailplane discovery --kubernetes` (the real binary) against the fake API server, with a real
//! Envoy: a Service and EndpointSlice created through the API appear as a cluster with endpoints in
//! Envoy's admin `/clusters`, an update changes the endpoints, a delete removes the cluster; the
//! control plane is ready only after the initial sync; the binary's injection webhook reads the
//! namespace labels the Kubernetes source put into the store.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use sailplane::bootstrap::{BootstrapArgs, render};
use sailplane_tests::control_plane::{Launch, Ready};
use sailplane_tests::fake_apiserver::FakeApiServer;
use sailplane_tests::http::raw_get as http_get;
use sailplane_tests::paths::envoy_bin;
use sailplane_tests::ports::free_port;
use sailplane_tests::process::Proc;
use sailplane_tests::wait::{eventually, some_async};
use sailplane_tests::webhook::{self, Trust};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

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
    let envoy = envoy_bin().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let fake = FakeApiServer::start_new().await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"istio-injection": "enabled"}}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
                      "data": {"mesh": "trustDomain: cluster.local\ndefaultConfig:\n  proxyMetadata:\n    SECRET_TTL: 12h\n"}}));
    // Readiness must wait for the initial list of every kind.
    fake.delay_list("pods", Duration::from_secs(2));
    let kubeconfig = fake.write_kubeconfig(scratch.path());

    let webhook = free_port().unwrap();
    let cp = Launch::default()
        .args(["--kubernetes", "--webhook-port", &webhook.to_string()])
        .no_secure_port()
        .args(["--debounce-after", "20ms", "--debounce-max", "500ms"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", "istio-system")
        .wait_for(Ready::Spawned)
        .start()
        .await
        .unwrap();
    let (xds, monitoring) = (cp.xds_port, cp.monitoring_port);

    let (status, _) =
        eventually("the monitoring port", WAIT, some_async(|| http_get(monitoring, "/ready"))).await.unwrap();
    assert_eq!(status, 503, "not ready while the pods are still being listed");
    eventually(
        "readiness after the initial sync",
        WAIT,
        some_async(|| async { http_get(monitoring, "/ready").await.filter(|(s, _)| *s == 200).map(|_| ()) }),
    )
    .await
    .unwrap();

    let admin = free_port().unwrap();
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
    let _envoy = Proc::spawn("envoy", cmd, &scratch.path().join("envoy.log")).unwrap();

    const CLUSTER: &str = "outbound|80||web.demo.svc.cluster.local";
    let clusters = || async { http_get(admin, "/clusters").await.filter(|(s, _)| *s == 200).map(|(_, b)| b) };
    eventually(
        "envoy's admin and a first config",
        WAIT,
        some_async(|| async { clusters().await.filter(|b| b.contains("xds-grpc::")).map(|_| ()) }),
    )
    .await
    .unwrap();
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
    eventually(
        "the service's cluster with its endpoint in envoy",
        WAIT,
        some_async(|| async { clusters().await.filter(|b| endpoints(b, CLUSTER) == ["10.1.0.1:8080"]).map(|_| ()) }),
    )
    .await
    .unwrap();

    fake.apply(slice(&["10.1.0.2", "10.1.0.3"]));
    eventually(
        "the new endpoints in envoy",
        WAIT,
        some_async(|| async {
            clusters().await.filter(|b| endpoints(b, CLUSTER) == ["10.1.0.2:8080", "10.1.0.3:8080"]).map(|_| ())
        }),
    )
    .await
    .unwrap();

    assert!(fake.delete("Service", "demo", "web"));
    eventually(
        "the cluster to leave envoy",
        WAIT,
        some_async(|| async { clusters().await.filter(|b| !b.contains(CLUSTER)).map(|_| ()) }),
    )
    .await
    .unwrap();

    // The binary's injection webhook sees the namespace label through the Kubernetes source and the
    // mesh's proxyMetadata from the ConfigMap.
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "e2e", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "demo", "operation": "CREATE",
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "labels": {"app": "web"}},
                   "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
    let addr: SocketAddr = format!("127.0.0.1:{webhook}").parse().unwrap();
    let (status, answer) = webhook::post(addr, "/inject", review.to_string().as_bytes(), Trust::Any).await;
    assert_eq!(status, 200, "{answer}");
    let response = &answer["response"];
    assert_eq!(response["uid"], "e2e");
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    let resp: sailplane::webhook::admission::AdmissionResponse = serde_json::from_value(response.clone()).unwrap();
    let patch = resp.patch_ops().unwrap().to_string();
    assert!(patch.contains("\"istio-proxy\"") && patch.contains("SECRET_TTL") && patch.contains("12h"), "{patch}");
}
