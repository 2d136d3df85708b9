//! Real Envoy, run by `sailplane agent --run-envoy`, against `sailplane discovery` on loopback: the
//! configuration comes over ADS on the secure port over mTLS (the workload certificate from the agent's
//! SDS, the control plane verified against ROOTCA), the proxy's identity is its certificate's, and a
//! gateway terminates HTTPS with a `credentialName` Secret served over SDS on that same ADS stream.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use sailplane_tests::ControlPlane;
use sailplane_tests::control_plane::Launch;
use sailplane_tests::http::{parse_response as parse_http, raw_get as http_get};
use sailplane_tests::paths::{envoy_bin, sailplane_bin};
use sailplane_tests::ports::free_port;
use sailplane_tests::process::Proc;
use sailplane_tests::wait::{eventually, some_async};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that must happen (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(30);

/// Writes a token for `ns/sa` and the mesh root next to each other in `dir`.
fn credentials(cp: &ControlPlane, dir: &Path, ns: &str, sa: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let token = dir.join(format!("{ns}-{sa}.token"));
    std::fs::write(&token, cp.token(ns, sa).unwrap()).unwrap();
    let root = dir.join("root-cert.pem");
    std::fs::write(&root, cp.root_pem().unwrap()).unwrap();
    (token, root)
}

/// `sailplane agent --run-envoy` for `ns/sa`, xDS over mTLS to the secure port.
fn agent(cp: &ControlPlane, dir: &Path, name: &str, ns: &str, sa: &str, admin_port: u16, extra: &[&str]) -> Proc {
    let (token, root) = credentials(cp, dir, ns, sa);
    let base = dir.join(name);
    std::fs::create_dir_all(&base).unwrap();
    let mut cmd = Command::new(sailplane_bin().unwrap());
    cmd
        .arg("agent")
        .args(["--run-envoy", "--interception-mode", "NONE", "--pod", name, "--namespace", ns, "--service-account", sa])
        .args(["--admin-port", &admin_port.to_string()])
        // Not port 15012 here (tests pick free ports), so TLS is asked for explicitly.
        .args(["--xds-address", &cp.secure_address(), "--xds-tls"])
        .args(extra)
        .arg("--token-file")
        .arg(&token)
        .arg("--sds-socket")
        .arg(base.join("SDS"))
        .arg("--output")
        .arg(base.join("envoy-rev.yaml"))
        .args(["--", "--concurrency", "1", "--log-level", "info"])
        .env("CA_ADDR", cp.secure_address())
        .env("CA_ROOT_CA", &root)
        .env("SECRET_TTL", "1h")
        .env("ENVOY_BIN", envoy_bin().unwrap())
        .env("SAILPLANE_LOG", "info,sailplane=debug")
        .env("NO_COLOR", "1");
    // SIGTERM on drop: the agent then stops the Envoy it supervises (a SIGKILL would orphan it).
    Proc::spawn(&format!("sailplane agent {name}"), cmd, &base.join("agent.log")).unwrap().terminate_first()
}

fn echo_service(port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: bookinfo}}
spec:
  clusterIP: 10.96.0.20
  selector: {{app: echo}}
  ports:
  - {{name: http, port: 9080, targetPort: {port}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  namespace: bookinfo
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports:
- {{name: http, port: {port}, protocol: TCP}}
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {{ready: true}}
"#
    )
}

/// An HTTP backend on 127.0.0.1 answering every request with 200 `echo-backend`.
async fn echo_backend() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().fallback(|| async { "echo-backend" });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, task)
}

#[rstest::rstest]
#[case::sotw("sotw")]
#[case::delta("delta")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gets_its_config_over_mtls_on_the_secure_port(#[case] api: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("echo.yaml"), echo_service(free_port().unwrap())).unwrap();
    let cp = Launch::config(&config).args(["--debounce-after", "50ms"]).start().await.unwrap();
    let admin = free_port().unwrap();
    let proxy = agent(&cp, dir.path(), "reviews-v1", "bookinfo", "reviews", admin, &["--xds-api", api]);
    let id = "sidecar~127.0.0.1~reviews-v1.bookinfo~bookinfo.svc.cluster.local";
    let context = || format!("--- agent ---\n{}\n--- discovery ---\n{}", proxy.log(), cp.log());

    // Envoy holds the mesh's cluster, which only ADS could have given it.
    eventually(
        "the echo cluster in envoy",
        WAIT,
        some_async(|| async move {
            let (_, body) = http_get(admin, "/clusters").await?;
            body.contains("outbound|9080||echo.bookinfo.svc.cluster.local").then_some(())
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", context()));
    // The control plane saw the proxy on the secure port, with the certificate's identity, synced.
    let entry = eventually(
        "the proxy synced with its certificate identity",
        WAIT,
        some_async(|| async {
            let syncz = cp.syncz().await.ok()?;
            let e = syncz.as_array()?.iter().find(|e| e["proxy"] == id)?.clone();
            (e["cds"] == "SYNCED" && e["lds"] == "SYNCED").then_some(e)
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", context()));
    assert_eq!(entry["identity"], "spiffe://cluster.local/ns/bookinfo/sa/reviews");
    assert_eq!(entry["api"], api);
    // Over TLS: Envoy's xds-grpc cluster completed handshakes, and there is no plaintext path.
    let (_, stats) = http_get(admin, "/stats?filter=cluster.xds-grpc.ssl.handshake").await.unwrap();
    let handshakes: u64 = stats.split(':').nth(1).unwrap().trim().parse().unwrap();
    assert!(handshakes >= 1, "{stats}");
    let boot = std::fs::read_to_string(dir.path().join("reviews-v1/envoy-rev.yaml")).unwrap();
    assert!(boot.contains(&cp.secure_port.to_string()) && boot.contains("UpstreamTlsContext"), "{boot}");
}

/// A CA and a server certificate for `host` signed by it: (ca PEM, cert PEM, key PEM).
fn server_cert(host: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![host.to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// GET `https://<host>/` at 127.0.0.1:`port`, verifying the server against `ca_pem`.
async fn https_get(port: u16, host: &str, ca_pem: &str) -> Result<(u16, String), String> {
    use sailplane::tls;
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(tls::root_store(ca_pem).unwrap())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let mut s =
        connector.connect(ServerName::try_from(host.to_string()).unwrap(), tcp).await.map_err(|e| e.to_string())?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // Envoy may close without close_notify; what arrived counts.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    parse_http(&buf).ok_or_else(|| format!("no HTTP response: {:?}", String::from_utf8_lossy(&buf)))
}

#[rstest::rstest]
#[case::sotw("sotw")]
#[case::delta("delta")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_terminates_https_with_a_credential_name_secret(#[case] api: &str) {
    let host = "bookinfo.example.com";
    let (ca_pem, cert_pem, key_pem) = server_cert(host);
    let (echo_port, _echo) = echo_backend().await;
    let gw_port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("echo.yaml"), echo_service(echo_port)).unwrap();
    std::fs::write(
        config.join("secret.yaml"),
        sailplane_tests::fixtures::mk_secret(
            "istio-system",
            "bookinfo-cert",
            "kubernetes.io/tls",
            &[("tls.crt", &cert_pem), ("tls.key", &key_pem), ("ca.crt", &ca_pem)],
        ),
    )
    .unwrap();
    std::fs::write(
        config.join("gateway.yaml"),
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec:
  clusterIP: 10.96.1.1
  selector: {{istio: ingressgateway}}
  ports:
  - {{name: https, port: 443, targetPort: {gw_port}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: bookinfo-gateway, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [{host}]
    tls: {{mode: SIMPLE, credentialName: bookinfo-cert}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bookinfo, namespace: istio-system}}
spec:
  hosts: [{host}]
  gateways: [bookinfo-gateway]
  http:
  - route: [{{destination: {{host: echo.bookinfo.svc.cluster.local, port: {{number: 9080}}}}}}]
"#
        ),
    )
    .unwrap();
    let cp = Launch::config(&config).args(["--debounce-after", "50ms"]).start().await.unwrap();
    let admin = free_port().unwrap();
    let gw = agent(
        &cp,
        dir.path(),
        "gw-1",
        "istio-system",
        "istio-ingressgateway",
        admin,
        &["--node-type", "router", "--labels", "istio=ingressgateway", "--xds-api", api],
    );
    let context = || format!("--- agent ---\n{}\n--- discovery ---\n{}", gw.log(), cp.log());

    // Envoy got the secret over SDS on its ADS stream (not from the agent) and serves it.
    let (status, body) = eventually(
        "HTTPS through the gateway",
        WAIT,
        some_async(|| {
            let ca = ca_pem.clone();
            async move { https_get(gw_port, host, &ca).await.ok() }
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", context()));
    assert_eq!((status, body.as_str()), (200, "echo-backend"), "{}", context());
    let (_, dump) = http_get(admin, "/config_dump?resource=dynamic_active_secrets").await.unwrap();
    assert!(dump.contains("kubernetes://bookinfo-cert"), "{dump}");
    // A client that trusts only the mesh root (not the Secret's CA) is refused: the certificate really
    // is the Secret's.
    let refused = https_get(gw_port, host, &cp.root_pem().unwrap()).await;
    assert!(refused.is_err(), "{refused:?}");
}
