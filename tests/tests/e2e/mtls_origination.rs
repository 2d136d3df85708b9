//! DestinationRule TLS origination from a sidecar, with real Envoy and real certificates.
//!
//! The client is `sailplane agent --run-envoy` (interception NONE: each Service port is a listener
//! on 127.0.0.1), whose Envoy takes its workload certificate from the agent over SDS and its
//! configuration over ADS on the control plane's secure port with mTLS. The servers are
//! [`TlsEchoServer`]s with certificates from a private "enterprise" CA (SIMPLE, MUTUAL) or from the
//! mesh CA (ISTIO_MUTUAL), reporting the client certificate they saw.
//!
//! - SIMPLE with `caCertificates`: the server is verified against that CA; a server whose
//!   certificate comes from another CA is refused (503, `ssl.fail_verify_error`).
//! - MUTUAL with `clientCertificate`/`privateKey`/`caCertificates` files, to a server that requires
//!   client certificates: without the rule the request fails, with it the server sees the client's
//!   certificate.
//! - MUTUAL with `credentialName` (a `kubernetes.io/tls` Secret, honoured on a sidecar because the
//!   rule has a workloadSelector matching it): the certificate comes over SDS from the control plane.
//! - ISTIO_MUTUAL: Envoy checks the server's SPIFFE identity against the service's service
//!   accounts: a server with another identity is refused (`ssl.fail_verify_san`), the right one
//!   answers and sees the client's SPIFFE identity.
//!
//! On failure, the report holds what Envoy holds for the cluster (config, TLS stats, secrets) and
//! the agent's log, so a translator or control plane problem can be routed.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use sailplane_tests::fixtures::{fqdn, mk_service_with_endpoints, outbound_cluster};
use sailplane_tests::tls_echo::{MeshSidecar, Pki, SidecarSpec, TlsEchoOptions, TlsEchoServer, mesh_cert};
use sailplane_tests::traffic::{Call, Reply, send};
use sailplane_tests::{ConfigDir, ControlPlane, XdsApi, eventually, ports};
use serde_json::Value;

/// How long a configuration change may take to reach the sidecar (2 busy cores).
const CONVERGE: Duration = Duration::from_secs(30);

/// A control plane on `dir` and the client sidecar (pod `client`, service account `client`,
/// namespace `default`), once its Envoy is live.
async fn mesh(dir: &ConfigDir) -> anyhow::Result<(MeshSidecar, ControlPlane)> {
    let cp = ControlPlane::start(dir.path()).await?;
    let sidecar = MeshSidecar::start(&cp, &SidecarSpec::new("client", "client")).await?;
    Ok((sidecar, cp))
}

/// Waits until Envoy holds cluster `name` and its JSON contains every string of `needles` (the TLS
/// settings a rule should have produced); returns the cluster.
async fn wait_cluster_with(sidecar: &MeshSidecar, name: &str, needles: &[&str]) -> anyhow::Result<Value> {
    let r = eventually(&format!("Envoy cluster {name} containing {needles:?}"), CONVERGE, || async move {
        match sidecar.cluster_config(name).await? {
            Some(c) => {
                let text = c.to_string();
                let missing: Vec<&&str> = needles.iter().filter(|n| !text.contains(**n)).collect();
                if missing.is_empty() {
                    Ok(c)
                } else {
                    bail!("missing {missing:?} in:\n{}", serde_json::to_string_pretty(&c).unwrap_or_default())
                }
            }
            None => bail!("no such cluster"),
        }
    })
    .await;
    match r {
        Ok(c) => Ok(c),
        Err(e) => bail!("{e:#}\n{}\n--- agent ---\n{}", sidecar.diagnose(name).await, sidecar.log_tail(40)),
    }
}

/// Sends `call` until it gets a 200 from the TLS echo server `want` (secrets may still be arriving),
/// and returns that reply; on timeout, the report shows the last reply and Envoy's view.
async fn expect_tls_echo(sidecar: &MeshSidecar, cluster: &str, call: &Call, want: &str) -> anyhow::Result<Reply> {
    let r = eventually(&format!("{} to answer 200 from {want}", call.describe()), CONVERGE, || async move {
        let r = send(call).await?;
        if r.status == 200 && r.backend().as_deref() == Some(want) { Ok(r) } else { bail!("{}", r.summary()) }
    })
    .await;
    match r {
        Ok(r) => Ok(r),
        Err(e) => bail!("{e:#}\n{}\n--- agent ---\n{}", sidecar.diagnose(cluster).await, sidecar.log_tail(40)),
    }
}

/// Sends `call` three times and requires every answer to be a failure from Envoy (status `want`,
/// not from the backend).
async fn expect_refused(sidecar: &MeshSidecar, cluster: &str, call: &Call, want: u16) -> anyhow::Result<()> {
    for _ in 0..3 {
        let r = send(call).await?;
        if r.status != want || r.backend().is_some() {
            bail!(
                "{}: expected {want} from Envoy (the TLS handshake refused), got {}\n{}",
                call.describe(),
                r.summary(),
                sidecar.diagnose(cluster).await
            );
        }
    }
    Ok(())
}

/// A counter of cluster `cluster`, 0 when absent.
async fn cluster_stat(sidecar: &MeshSidecar, cluster: &str, stat: &str) -> anyhow::Result<u64> {
    sidecar.cluster_stat(cluster, stat).await
}

/// The client certificate the TLS echo server reported in its reply.
fn client_seen(r: &Reply) -> Option<Value> {
    r.echo()?.get("client").cloned().filter(|c| !c.is_null())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_origination_verifies_the_server_against_the_given_ca() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let enterprise = Pki::new("enterprise")?;
    let rogue = Pki::new("rogue")?;
    let ca_file = enterprise.write_ca(certs.path())?;
    let good_host = fqdn("good", "default");
    let bad_host = fqdn("bad", "default");
    let good = TlsEchoServer::start("good", &enterprise.server_cert(&[&good_host])?, TlsEchoOptions::default()).await?;
    // Same names, but signed by a CA the rule does not trust.
    let bad = TlsEchoServer::start("bad", &rogue.server_cert(&[&bad_host])?, TlsEchoOptions::default()).await?;
    let (good_port, bad_port) = (ports::free_port()?, ports::free_port()?);

    let dir = ConfigDir::new()?;
    dir.write("good.yaml", &mk_service_with_endpoints("good", "default", good_port, &["127.0.0.1"], good.port()))?;
    dir.write("bad.yaml", &mk_service_with_endpoints("bad", "default", bad_port, &["127.0.0.1"], bad.port()))?;
    for (name, host) in [("good", &good_host), ("bad", &bad_host)] {
        dir.write(
            &format!("{name}-dr.yaml"),
            &format!(
                r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {host}
  trafficPolicy:
    tls:
      mode: SIMPLE
      caCertificates: {ca}
      sni: {host}
"#,
                ca = ca_file.display()
            ),
        )?;
    }
    let (sidecar, _cp) = mesh(&dir).await?;
    let good_cluster = outbound_cluster(good_port, &good_host);
    let bad_cluster = outbound_cluster(bad_port, &bad_host);
    let root_secret = format!("file-root:{}", ca_file.display());
    wait_cluster_with(&sidecar, &good_cluster, &["UpstreamTlsContext", &root_secret]).await?;
    wait_cluster_with(&sidecar, &bad_cluster, &["UpstreamTlsContext", &root_secret]).await?;
    sidecar.wait_listener(good_port).await?;
    sidecar.wait_listener(bad_port).await?;

    let r = expect_tls_echo(&sidecar, &good_cluster, &Call::new(good_port, "good", "/simple"), "good").await?;
    assert_eq!(client_seen(&r), None, "SIMPLE presents no client certificate: {}", r.body);
    assert_eq!(r.seen("host").as_deref(), Some("good"), "{}", r.body);

    expect_refused(&sidecar, &bad_cluster, &Call::new(bad_port, "bad", "/simple"), 503).await?;
    let verify_errors = cluster_stat(&sidecar, &bad_cluster, "ssl.fail_verify_error").await?;
    assert!(
        verify_errors >= 1,
        "Envoy should have refused the rogue certificate (ssl.fail_verify_error = {verify_errors})\n{}",
        sidecar.diagnose(&bad_cluster).await
    );
    assert!(bad.requests().is_empty(), "no request may reach a server that failed verification");
    assert!(bad.handshake_failures() >= 1, "the rogue server saw no failed handshake");
    Ok(())
}

/// A MUTUAL rule for `host` with the client certificate and key files and the CA file.
fn mutual_files_rule(name: &str, host: &str, cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {host}
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: {cert}
      privateKey: {key}
      caCertificates: {ca}
      sni: {host}
"#,
        cert = cert.display(),
        key = key.display(),
        ca = ca.display()
    )
}

/// An enterprise CA, a client certificate from it written to files, and a TLS echo server `name`
/// (certificate for `<name>.default.svc.cluster.local`) that requires client certificates from it.
struct MutualSetup {
    _files: tempfile::TempDir,
    client_cert: sailplane_tests::tls_echo::CertKey,
    cert_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    ca_file: std::path::PathBuf,
    server: TlsEchoServer,
}

impl MutualSetup {
    async fn new(name: &str) -> anyhow::Result<MutualSetup> {
        let files = tempfile::tempdir()?;
        let enterprise = Pki::new("enterprise")?;
        let ca_file = enterprise.write_ca(files.path())?;
        let client_cert = enterprise.client_cert("client.example.com", Some("spiffe://enterprise.example/client"))?;
        let (cert_file, key_file) = client_cert.write(files.path(), "client")?;
        let server = TlsEchoServer::start(
            name,
            &enterprise.server_cert(&[&fqdn(name, "default")])?,
            TlsEchoOptions { client_ca_pem: Some(enterprise.ca_pem().to_string()), close_each: false },
        )
        .await?;
        Ok(MutualSetup { _files: files, client_cert, cert_file, key_file, ca_file, server })
    }

    fn rule(&self, name: &str, host: &str) -> String {
        mutual_files_rule(name, host, &self.cert_file, &self.key_file, &self.ca_file)
    }

    fn secrets(&self) -> [String; 2] {
        [
            format!("file-cert:{}~{}", self.cert_file.display(), self.key_file.display()),
            format!("file-root:{}", self.ca_file.display()),
        ]
    }

    /// Checks that the server saw the client certificate from the files.
    fn check_client(&self, r: &Reply) -> anyhow::Result<()> {
        let seen = client_seen(r).context("the server saw no client certificate")?;
        assert_eq!(seen["subject"], "CN=client.example.com", "{}", r.body);
        assert_eq!(seen["uri_sans"], serde_json::json!(["spiffe://enterprise.example/client"]), "{}", r.body);
        let ours = sailplane_tests::tls_echo::PeerCert::from_pem(&self.client_cert.chain_pem)?;
        assert_eq!(seen["serial"], ours.serial.as_str(), "the server saw the file's certificate");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_origination_with_certificate_files() -> anyhow::Result<()> {
    let setup = MutualSetup::new("mtls").await?;
    let host = fqdn("mtls", "default");
    // Two Services in front of the same server: `mtls` with the MUTUAL rule, `mtls-plain` without.
    let (port, plain_port) = (ports::free_port()?, ports::free_port()?);
    let dir = ConfigDir::new()?;
    dir.write("mtls.yaml", &mk_service_with_endpoints("mtls", "default", port, &["127.0.0.1"], setup.server.port()))?;
    dir.write(
        "mtls-plain.yaml",
        &mk_service_with_endpoints("mtls-plain", "default", plain_port, &["127.0.0.1"], setup.server.port()),
    )?;
    dir.write("mtls-dr.yaml", &setup.rule("mtls", &host))?;
    let (sidecar, _cp) = mesh(&dir).await?;
    let cluster = outbound_cluster(port, &host);
    let [cert_secret, root_secret] = setup.secrets();
    wait_cluster_with(&sidecar, &cluster, &[&cert_secret, &root_secret]).await?;
    sidecar.wait_listener(port).await?;
    sidecar.wait_listener(plain_port).await?;

    let r = expect_tls_echo(&sidecar, &cluster, &Call::new(port, "mtls", "/mutual"), "mtls").await?;
    setup.check_client(&r)?;

    // Without a rule, the sidecar speaks plaintext to the TLS server: no answer from it.
    let plain_cluster = outbound_cluster(plain_port, &fqdn("mtls-plain", "default"));
    let answered = setup.server.requests().len();
    let plain = Call::new(plain_port, "mtls-plain", "/plain");
    let r = send(&plain).await?;
    assert!(
        r.status != 200 && r.backend().is_none(),
        "without TLS origination: {}\n{}",
        r.summary(),
        sidecar.diagnose(&plain_cluster).await
    );
    assert_eq!(setup.server.requests().len(), answered, "the server answered a plaintext request");
    Ok(())
}

/// A rule added while the sidecar runs: the cluster is updated in place (CDS), and Envoy warms it
/// again, which needs a fresh EDS answer and then the rule's SDS secrets from the agent.
#[rstest::rstest]
#[case::sotw(XdsApi::Sotw)]
#[case::delta(XdsApi::Delta)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_origination_rule_added_to_a_running_sidecar(#[case] api: XdsApi) -> anyhow::Result<()> {
    let setup = MutualSetup::new("late").await?;
    let host = fqdn("late", "default");
    let port = ports::free_port()?;
    let dir = ConfigDir::new()?;
    dir.write("late.yaml", &mk_service_with_endpoints("late", "default", port, &["127.0.0.1"], setup.server.port()))?;
    let cp = ControlPlane::start(dir.path()).await?;
    let sidecar =
        MeshSidecar::start(&cp, &SidecarSpec { xds_api: api, ..SidecarSpec::new("client", "client") }).await?;
    let cluster = outbound_cluster(port, &host);
    sidecar.wait_listener(port).await?;
    let call = Call::new(port, "late", "/mutual");

    let r = send(&call).await?;
    assert!(r.status != 200 && r.backend().is_none(), "without TLS origination: {}", r.summary());
    assert!(setup.server.requests().is_empty(), "the server answered a plaintext request");

    dir.write("late-dr.yaml", &setup.rule("late", &host))?;
    let [cert_secret, root_secret] = setup.secrets();
    wait_cluster_with(&sidecar, &cluster, &[&cert_secret, &root_secret]).await?;
    let r = expect_tls_echo(&sidecar, &cluster, &call, "late").await?;
    setup.check_client(&r)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_origination_with_a_credential_name_secret() -> anyhow::Result<()> {
    let enterprise = Pki::new("enterprise")?;
    let host = fqdn("vault", "default");
    let client_cert = enterprise.client_cert("client-from-secret", None)?;
    let server = TlsEchoServer::start(
        "vault",
        &enterprise.server_cert(&[&host])?,
        TlsEchoOptions { client_ca_pem: Some(enterprise.ca_pem().to_string()), close_each: false },
    )
    .await?;
    let port = ports::free_port()?;
    let dir = ConfigDir::new()?;
    dir.write("vault.yaml", &mk_service_with_endpoints("vault", "default", port, &["127.0.0.1"], server.port()))?;
    let data = [
        ("tls.crt", &client_cert.chain_pem),
        ("tls.key", &client_cert.key_pem),
        ("ca.crt", &enterprise.ca_pem().to_string()),
    ];
    let string_data: String =
        data.iter().map(|(k, v)| format!("  {k}: {}\n", serde_json::to_string(v).unwrap_or_default())).collect();
    dir.write(
        "client-cred.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: client-cred\n  namespace: default\ntype: kubernetes.io/tls\nstringData:\n{string_data}"
        ),
    )?;
    // On a sidecar, istiod honours credentialName only in a rule with a workloadSelector that
    // selects the proxy.
    dir.write(
        "vault-dr.yaml",
        &format!(
            r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: vault, namespace: default}}
spec:
  host: {host}
  workloadSelector: {{matchLabels: {{app: client}}}}
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: client-cred, sni: {host}}}
"#
        ),
    )?;
    let (sidecar, _cp) = mesh(&dir).await?;
    let cluster = outbound_cluster(port, &host);
    wait_cluster_with(&sidecar, &cluster, &["kubernetes://client-cred", "kubernetes://client-cred-cacert"]).await?;
    sidecar.wait_listener(port).await?;
    let r = expect_tls_echo(&sidecar, &cluster, &Call::new(port, "vault", "/credential"), "vault").await?;
    let seen = client_seen(&r).context("the server saw no client certificate")?;
    assert_eq!(seen["subject"], "CN=client-from-secret", "{}", r.body);
    let secrets = sidecar.secret_names().await?;
    assert!(
        secrets.iter().any(|s| s == "kubernetes://client-cred"),
        "the client certificate should come over SDS from the control plane; Envoy holds {secrets:?}"
    );
    Ok(())
}

/// A Service `name` whose one endpoint is Pod `<name>-0` at `ip` with service account `sa` (and a
/// sidecar: `security.istio.io/tlsMode: istio`), forwarding port `port` to `target`.
fn mesh_service(name: &str, sa: &str, ip: &str, port: u16, target: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  clusterIP: 10.96.{hi}.{lo}
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: {port}, targetPort: {target}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}-0
  namespace: default
  labels: {{app: {name}, security.istio.io/tlsMode: istio}}
spec:
  serviceAccountName: {sa}
  containers: [{{name: app, ports: [{{containerPort: {target}}}]}}]
status: {{phase: Running, podIP: {ip}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {name}.default.svc.cluster.local
  trafficPolicy:
    tls: {{mode: ISTIO_MUTUAL}}
"#,
        hi = port / 256,
        lo = port % 256,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mutual_refuses_a_server_with_another_identity() -> anyhow::Result<()> {
    let dir = ConfigDir::new()?;
    let cp = ControlPlane::start(dir.path()).await?;
    let root = sailplane_tests::tls_echo::mesh_root(&cp)?;
    let mesh_clients = TlsEchoOptions { client_ca_pem: Some(root), close_each: false };
    // reviews' pods run as service account `reviews`, but its server presents a mesh certificate
    // for `impostor`; ratings' server presents the right identity. Both are real CA certificates.
    let impostor_cert = mesh_cert(&cp, "default", "impostor", Duration::from_secs(3600)).await?;
    let ratings_cert = mesh_cert(&cp, "default", "ratings", Duration::from_secs(3600)).await?;
    let (reviews_port, ratings_port) = (ports::free_port()?, ports::free_port()?);
    let reviews = TlsEchoServer::start_on(
        "reviews",
        "127.0.0.2".parse()?,
        ports::free_port()?,
        &impostor_cert,
        mesh_clients.clone(),
    )
    .await?;
    let ratings =
        TlsEchoServer::start_on("ratings", "127.0.0.3".parse()?, ports::free_port()?, &ratings_cert, mesh_clients)
            .await?;
    dir.write("reviews.yaml", &mesh_service("reviews", "reviews", "127.0.0.2", reviews_port, reviews.port()))?;
    dir.write("ratings.yaml", &mesh_service("ratings", "ratings", "127.0.0.3", ratings_port, ratings.port()))?;
    let sidecar = MeshSidecar::start(&cp, &SidecarSpec::new("client", "client")).await?;

    let reviews_cluster = outbound_cluster(reviews_port, &fqdn("reviews", "default"));
    let ratings_cluster = outbound_cluster(ratings_port, &fqdn("ratings", "default"));
    wait_cluster_with(&sidecar, &reviews_cluster, &["ROOTCA", "spiffe://cluster.local/ns/default/sa/reviews"]).await?;
    wait_cluster_with(&sidecar, &ratings_cluster, &["ROOTCA", "spiffe://cluster.local/ns/default/sa/ratings"]).await?;
    sidecar.wait_listener(reviews_port).await?;
    sidecar.wait_listener(ratings_port).await?;

    let r =
        expect_tls_echo(&sidecar, &ratings_cluster, &Call::new(ratings_port, "ratings", "/istio"), "ratings").await?;
    let seen = client_seen(&r).context("the server saw no client certificate")?;
    assert_eq!(
        seen["uri_sans"],
        serde_json::json!(["spiffe://cluster.local/ns/default/sa/client"]),
        "the server sees the client sidecar's SPIFFE identity: {}",
        r.body
    );

    expect_refused(&sidecar, &reviews_cluster, &Call::new(reviews_port, "reviews", "/istio"), 503).await?;
    let san_failures = cluster_stat(&sidecar, &reviews_cluster, "ssl.fail_verify_san").await?;
    assert!(
        san_failures >= 1,
        "Envoy should refuse the impostor's identity (ssl.fail_verify_san = {san_failures})\n{}",
        sidecar.diagnose(&reviews_cluster).await
    );
    assert!(reviews.requests().is_empty(), "no request may reach the impostor");
    Ok(())
}
