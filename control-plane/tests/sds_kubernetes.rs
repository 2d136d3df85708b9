//! SDS over ADS in Kubernetes mode, against the fake API server and the real `sailplane discovery
//! --kubernetes`: a `credentialName` Secret goes to a proxy of its namespace only when a
//! SubjectAccessReview allows its service account to `list secrets` there.

#![allow(clippy::unwrap_used)]

mod fake_apiserver;
mod mesh_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fake_apiserver::FakeApiServer;
use mesh_support::{Sotw, WAIT, free_port, node, secrets_of, tls_channel};
use sailplane::agent::ca_client::CaClient;
use sailplane::agent::keys::{self, KeyType};
use sailplane::identity::Identity;
use serde_json::json;

struct Discovery {
    child: Child,
    secure: String,
    log: std::path::PathBuf,
    _work: tempfile::TempDir,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Discovery {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn start_discovery(fake: &FakeApiServer) -> Discovery {
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = fake.write_kubeconfig(work.path());
    let port = free_port();
    let log = work.path().join("discovery.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sailplane"))
        .args(["discovery", "--kubernetes", "--listen-address", "127.0.0.1"])
        .args(["--xds-port", &free_port().to_string(), "--monitoring-port", &free_port().to_string()])
        .args(["--secure-port", &port.to_string(), "--webhook-port", "0", "--debounce-after", "50ms"])
        .arg("--ca-dir")
        .arg(work.path().join("ca"))
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", "istio-system")
        .env("POD_NAME", "sailplane-0")
        .env("SAILPLANE_LOG", "info,sailplane=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "secure port never opened:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // Async: the fake API server runs on this runtime and must keep answering.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Discovery { child, secure: format!("127.0.0.1:{port}"), log, _work: work }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The mesh root, once the leader has stored it in `istio-ca-secret`.
async fn root(fake: &FakeApiServer) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = fake.get("Secret", "istio-system", "istio-ca-secret").and_then(|s| {
            let data = base64::engine::general_purpose::STANDARD.decode(s["data"]["root-cert.pem"].as_str()?).ok()?;
            String::from_utf8(data).ok()
        });
        if let Some(t) = text {
            return t;
        }
        assert!(Instant::now() < deadline, "no root in istio-ca-secret");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn workload_cert(d: &Discovery, root: &str, ns: &str, sa: &str, token: &str) -> (String, String) {
    let identity = Identity { trust_domain: "cluster.local".into(), namespace: ns.into(), service_account: sa.into() };
    let k = keys::generate(KeyType::Ec, &identity).unwrap();
    let client = CaClient::new(&d.secure, root, None).unwrap();
    let chain = client.sign(k.csr_pem.clone(), Duration::from_secs(3600), token).await.unwrap();
    (chain.concat(), k.key_pem.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_need_a_subject_access_review() {
    let fake = FakeApiServer::start_new().await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gw"}}));
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "cred", "namespace": "gw"},
        "data": {"tls.crt": b64("CERT-GW"), "tls.key": b64("KEY-GW"), "ca.crt": b64("CA-GW")},
    }));
    fake.add_token("allowed-token", "gw", "ingress", &["istio-ca"]);
    fake.add_token("denied-token", "gw", "other", &["istio-ca"]);
    fake.grant("system:serviceaccount:gw:ingress", "list", "secrets", "gw");
    let d = start_discovery(&fake).await;
    let root = root(&fake).await;
    let wanted = ["kubernetes://cred", "kubernetes://cred-cacert"];

    // Allowed by RBAC: gets both halves (once the source has listed the Secret).
    let (chain, key) = workload_cert(&d, &root, "gw", "ingress", "allowed-token").await;
    let mut allowed =
        Sotw::open(tls_channel(&d.secure, &root, Some((&chain, &key))).await, node("ingress-1", "gw")).await.unwrap();
    allowed.request_secrets(&wanted);
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = allowed.next().await.unwrap();
        let got = secrets_of(&resp);
        allowed.ack(&resp, &wanted);
        if got.len() == 2 {
            assert_eq!((got[0].2.as_str(), got[0].3.as_str(), got[1].2.as_str()), ("CERT-GW", "KEY-GW", "CA-GW"));
            break;
        }
        assert!(Instant::now() < deadline, "secret never served:\n{}", d.log());
    }
    assert!(fake.requests().iter().any(|r| r.contains("subjectaccessreviews")), "{:?}", fake.requests());

    // Same namespace, no RBAC grant: nothing (the Secret is known to the control plane by now).
    let (chain, key) = workload_cert(&d, &root, "gw", "other", "denied-token").await;
    let mut denied =
        Sotw::open(tls_channel(&d.secure, &root, Some((&chain, &key))).await, node("other-1", "gw")).await.unwrap();
    denied.request_secrets(&wanted);
    let resp = denied.next().await.unwrap();
    assert!(resp.resources.is_empty(), "served without RBAC: {:?}", secrets_of(&resp));
    let log = d.log();
    assert!(
        log.contains("secret not served")
            && log.contains("spiffe://cluster.local/ns/gw/sa/other")
            && log.contains("authorizer=\"kubernetes\""),
        "{log}"
    );
}
