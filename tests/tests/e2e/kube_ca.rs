//! The CA of the real `sailplane discovery --kubernetes` against the fake API server: Kubernetes
//! service-account tokens are accepted through TokenReview (forged ones refused, an API outage is
//! `Unavailable`), the root lives in the `istio-ca-secret` Secret, and the leader publishes it.
//! (The in-process side of the same is `control-plane/tests/component/kube_ca.rs`.)

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use sailplane::agent::ca_client::{CaClient, CaClientError};
use sailplane::agent::keys::{self, KeyType};
use sailplane::identity::Identity;
use sailplane::kubernetes::ca_secret;
use sailplane::kubernetes::rootcert::{ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY};
use sailplane_tests::control_plane::{Launch, Ready};
use sailplane_tests::fake_apiserver::FakeApiServer;
use sailplane_tests::wait::{eventually, some};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_ca_accepts_kubernetes_service_account_tokens() {
    let fake = FakeApiServer::start_new().await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "back-end"}}));
    fake.add_token("pod-token", "back-end", "default", &["istio-ca"]);
    let work = tempfile::tempdir().unwrap();
    let d = Launch::kubernetes(&fake.write_kubeconfig(work.path())).wait_for(Ready::SecurePort).start().await.unwrap();
    // In Kubernetes the root lives in the istio-ca-secret Secret (created by this replica, the leader),
    // not in --ca-dir.
    assert!(!d.ca_dir().join("root-cert.pem").exists(), "no file root in Kubernetes mode");
    let root = fake
        .secret_text("istio-system", ca_secret::SELF_SIGNED_SECRET, "root-cert.pem")
        .expect("root in istio-ca-secret");
    let client = CaClient::new(&d.secure_address(), &root, Some("istiod.istio-system.svc")).unwrap();
    let identity = Identity {
        trust_domain: "cluster.local".into(),
        namespace: "back-end".into(),
        service_account: "default".into(),
    };
    let csr = || keys::generate(KeyType::Ec, &identity).unwrap().csr_pem;

    let chain = client.sign(csr(), Duration::from_secs(3600), "pod-token").await.unwrap();
    assert!(chain.len() >= 2);
    assert!(chain.last().unwrap().trim() == root.trim(), "the chain ends with the mesh root");

    match client.sign(csr(), Duration::from_secs(3600), "forged").await {
        Err(CaClientError::Call { status, .. }) => {
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}")
        }
        other => panic!("a forged token must be refused: {other:?}"),
    }
    fake.fail_reviews(true);
    match client.sign(csr(), Duration::from_secs(3600), "pod-token").await {
        Err(CaClientError::Call { status, .. }) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        other => panic!("with the API server failing the caller must be told to retry: {other:?}"),
    }

    // The leader (the only replica) published the root to the namespace.
    eventually(
        "the root cert configmap",
        WAIT,
        some(|| {
            let cm = fake.get("ConfigMap", "back-end", ROOT_CERT_CONFIGMAP)?;
            (cm["data"][ROOT_CERT_KEY].as_str()? == root).then_some(())
        }),
    )
    .await
    .unwrap();
    let lease = fake.get("Lease", "istio-system", "sailplane-leader").expect("the lease exists");
    assert_eq!(lease["spec"]["holderIdentity"], "sailplane-0");
}
