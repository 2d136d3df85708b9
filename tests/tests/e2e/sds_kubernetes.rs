//! SDS over ADS in Kubernetes mode, against the fake API server and the real `sailplane discovery
//! --kubernetes`: a `credentialName` Secret goes to a proxy of its namespace only when a
//! SubjectAccessReview allows its service account to `list secrets` there.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use sailplane::agent::ca_client::CaClient;
use sailplane::agent::keys::{self, KeyType};
use sailplane::identity::Identity;
use sailplane_tests::ControlPlane;
use sailplane_tests::ads_client::{Sotw, secrets_of, sidecar_node};
use sailplane_tests::control_plane::{Launch, Ready};
use sailplane_tests::fake_apiserver::FakeApiServer;
use sailplane_tests::grpc::tls_channel;
use sailplane_tests::wait::{eventually, some};
use serde_json::json;

/// How long a test waits for something that must happen (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(30);

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The mesh root, once the leader has stored it in `istio-ca-secret`.
async fn root(fake: &FakeApiServer) -> String {
    eventually(
        "the root in istio-ca-secret",
        WAIT,
        some(|| fake.secret_text("istio-system", "istio-ca-secret", "root-cert.pem")),
    )
    .await
    .unwrap()
}

async fn workload_cert(d: &ControlPlane, root: &str, ns: &str, sa: &str, token: &str) -> (String, String) {
    let identity = Identity { trust_domain: "cluster.local".into(), namespace: ns.into(), service_account: sa.into() };
    let k = keys::generate(KeyType::Ec, &identity).unwrap();
    let client = CaClient::new(&d.secure_address(), root, None).unwrap();
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
    let work = tempfile::tempdir().unwrap();
    let d = Launch::kubernetes(&fake.write_kubeconfig(work.path()))
        .args(["--debounce-after", "50ms"])
        .wait_for(Ready::SecurePort)
        .start()
        .await
        .unwrap();
    let root = root(&fake).await;
    let wanted = ["kubernetes://cred", "kubernetes://cred-cacert"];

    // Allowed by RBAC: gets both halves (once the source has listed the Secret).
    let (chain, key) = workload_cert(&d, &root, "gw", "ingress", "allowed-token").await;
    let mut allowed = Sotw::open(
        tls_channel(&d.secure_address(), &root, Some((&chain, &key))).await,
        sidecar_node("127.0.0.1", "ingress-1", "gw"),
    )
    .await
    .unwrap();
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
    let mut denied = Sotw::open(
        tls_channel(&d.secure_address(), &root, Some((&chain, &key))).await,
        sidecar_node("127.0.0.1", "other-1", "gw"),
    )
    .await
    .unwrap();
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
