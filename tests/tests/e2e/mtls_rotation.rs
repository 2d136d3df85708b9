//! Workload certificate rotation under traffic, with real Envoy and real certificates.
//!
//! The client sidecar is `sailplane agent --run-envoy` with `SECRET_TTL=8s` (so the agent renews
//! the certificate about every 4 s) and `OUTPUT_CERTS`. It calls, with ISTIO_MUTUAL, a TLS server
//! that presents a mesh certificate for the service's service account, requires a client
//! certificate from the mesh root, and closes every connection after one response, so each request
//! is a new handshake with the client certificate current at that moment. For ~18 s a bounded loop
//! of requests runs: none may fail, the server must see several distinct client certificates (all
//! for the client's SPIFFE identity), and the OUTPUT_CERTS files must be replaced with each new one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sailplane_tests::fixtures::{fqdn, outbound_cluster};
use sailplane_tests::tls_echo::{
    MeshSidecar, PeerCert, SidecarSpec, TlsEchoOptions, TlsEchoServer, mesh_cert, mesh_root,
};
use sailplane_tests::traffic::{Call, send};
use sailplane_tests::{ConfigDir, ControlPlane, eventually, ports};

/// How long the request loop runs: several 4 s rotations.
const LOOP: Duration = Duration::from_secs(18);
/// Upper bound on requests in the loop (one every ~100 ms).
const MAX_REQUESTS: usize = 400;

/// Service `reviews` (port `port`) whose one endpoint is Pod `reviews-0` at 127.0.0.2:`target` with
/// service account `reviews` and a sidecar, and an ISTIO_MUTUAL rule for it.
fn reviews(port: u16, target: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: reviews, namespace: default}}
spec:
  clusterIP: 10.96.{hi}.{lo}
  selector: {{app: reviews}}
  ports:
  - {{name: http, port: {port}, targetPort: {target}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-0
  namespace: default
  labels: {{app: reviews, security.istio.io/tlsMode: istio}}
spec:
  serviceAccountName: reviews
  containers: [{{name: app, ports: [{{containerPort: {target}}}]}}]
status: {{phase: Running, podIP: 127.0.0.2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
"#,
        hi = port / 256,
        lo = port % 256,
    )
}

/// The serial of the leaf in `dir/cert-chain.pem` and the content of `dir/key.pem`, if both read.
fn output_certs(dir: &std::path::Path) -> Option<(String, String)> {
    let chain = std::fs::read_to_string(dir.join("cert-chain.pem")).ok()?;
    let key = std::fs::read_to_string(dir.join("key.pem")).ok()?;
    Some((PeerCert::from_pem(&chain).ok()?.serial, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_traffic_without_failed_requests() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let cp = ControlPlane::start(dir.path()).await?;
    let server_cert = mesh_cert(&cp, "default", "reviews", Duration::from_secs(3600)).await?;
    let server = TlsEchoServer::start_on(
        "reviews",
        "127.0.0.2".parse()?,
        ports::free_port()?,
        &server_cert,
        TlsEchoOptions { client_ca_pem: Some(mesh_root(&cp)?), close_each: true },
    )
    .await?;
    let port = ports::free_port()?;
    dir.write("reviews.yaml", &reviews(port, server.port()))?;

    let out = tempfile::tempdir()?;
    let out_dir = out.path().join("certs");
    let spec = SidecarSpec {
        secret_ttl: "8s".into(),
        output_certs: Some(out_dir.clone()),
        ..SidecarSpec::new("client", "client")
    };
    let sidecar = MeshSidecar::start(&cp, &spec).await?;
    let cluster = outbound_cluster(port, &fqdn("reviews", "default"));
    sidecar.wait_listener(port).await?;
    let call = Call::new(port, "reviews", "/rotation");
    // First success: the rule, its secrets and the endpoint have all arrived.
    let warm = eventually("a first 200 from reviews over ISTIO_MUTUAL", Duration::from_secs(30), || async {
        let r = send(&call).await?;
        if r.status == 200 && r.backend().as_deref() == Some("reviews") { Ok(r) } else { bail!("{}", r.summary()) }
    })
    .await;
    if let Err(e) = warm {
        bail!("{e:#}\n{}\n--- agent ---\n{}", sidecar.diagnose(&cluster).await, sidecar.log_tail(60));
    }
    let before = server.requests().len();

    let mut sent = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut files_seen: BTreeSet<String> = BTreeSet::new();
    let mut keys_seen: BTreeSet<String> = BTreeSet::new();
    let start = Instant::now();
    while start.elapsed() < LOOP && sent < MAX_REQUESTS {
        sent += 1;
        match send(&call).await {
            Ok(r) if r.status == 200 && r.backend().as_deref() == Some("reviews") => {}
            Ok(r) => failures.push(format!("request {sent} at {:?}: {}", start.elapsed(), r.summary())),
            Err(e) => failures.push(format!("request {sent} at {:?}: {e:#}", start.elapsed())),
        }
        if let Some((serial, key)) = output_certs(&out_dir) {
            files_seen.insert(serial);
            keys_seen.insert(key);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let seen: Vec<_> = server.requests().into_iter().skip(before).collect();
    let identities: BTreeSet<Vec<String>> =
        seen.iter().filter_map(|r| r.client.as_ref().map(|c| c.uri_sans.clone())).collect();
    let serials: BTreeSet<String> = seen.iter().filter_map(|r| r.client.as_ref().map(|c| c.serial.clone())).collect();
    let report = format!(
        "sent {sent} requests in {:?}; server answered {}; client certificate serials seen by the server: {serials:?}; \
         serials in OUTPUT_CERTS: {files_seen:?}; failed handshakes at the server: {} (last: {:?})",
        start.elapsed(),
        seen.len(),
        server.handshake_failures(),
        server.last_handshake_error()
    );
    if !failures.is_empty() {
        bail!(
            "{} of {sent} requests failed during rotation:\n{}\n{report}\n{}\n--- agent ---\n{}",
            failures.len(),
            failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
            sidecar.diagnose(&cluster).await,
            sidecar.log_tail(60)
        );
    }
    // Shown with --nocapture: what the rotation looked like.
    eprintln!("rotation: {report}");
    assert!(sent >= 20, "the loop should have sent a fair number of requests: {report}");
    assert_eq!(seen.len(), sent, "every request reached the server: {report}");
    assert_eq!(
        identities,
        BTreeSet::from([vec!["spiffe://cluster.local/ns/default/sa/client".to_string()]]),
        "every client certificate carries the client's identity: {report}"
    );
    // ~18 s with a renewal every ~4 s: at least 3 certificates, with margin for a slow machine.
    assert!(serials.len() >= 3, "Envoy should have used several rotated certificates: {report}");
    assert!(files_seen.len() >= 3, "OUTPUT_CERTS should have been rewritten on each rotation: {report}");
    assert!(keys_seen.len() >= 3, "each rotation brings a new key in OUTPUT_CERTS/key.pem: {report}");
    let unknown: Vec<&String> = serials.iter().filter(|s| !files_seen.contains(*s)).collect();
    assert!(unknown.is_empty(), "certificates Envoy used but OUTPUT_CERTS never held: {unknown:?}; {report}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out_dir.join("key.pem")).context("OUTPUT_CERTS/key.pem")?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "key.pem must be readable by its owner only");
    assert!(out_dir.join("root-cert.pem").is_file(), "OUTPUT_CERTS/root-cert.pem");
    Ok(())
}
