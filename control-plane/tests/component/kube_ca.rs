//! The CA's Kubernetes side against the fake API server: TokenReview authentication (allowed,
//! refused, wrong audience, API down); SubjectAccessReview answers; Lease leader election with two
//! replicas; and the `istio-ca-root-cert` ConfigMaps written only by the leader. (The same through
//! the real `sailplane discovery --kubernetes` CA port is in `tests/tests/e2e/kube_ca.rs`.)

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sailplane::agent::keys::{self, KeyType};
use sailplane::ca::{Authority, CaOptions};
use sailplane::identity::Identity;
use sailplane::identity::{AuthError, Authenticator, Caller, Credentials};
use sailplane::kubernetes::ca_secret;
use sailplane::kubernetes::leader::LeaderElection;
use sailplane::kubernetes::review::{SubjectAccessReviewer, TokenReviewAuthenticator};
use sailplane::kubernetes::rootcert::{ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY, RootCertPublisher};
use sailplane::store::{ConfigEvent, Store};
use sailplane::xds::sds::SecretAccess;
use sailplane_tests::fake_apiserver::FakeApiServer;
use sailplane_tests::wait::{eventually, some};
use sailplane_translator::api::parse_object;
use serde_json::json;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(20);

fn caller(ns: &str, sa: &str) -> Caller {
    Caller { namespace: ns.into(), service_account: sa.into() }
}

#[tokio::test]
async fn token_review_allows_and_refuses() {
    let fake = FakeApiServer::start_new().await;
    fake.add_token("pod-token", "back-end", "default", &["istio-ca"]);
    fake.add_token("api-token", "back-end", "default", &["https://kubernetes.default.svc"]);
    let auth = TokenReviewAuthenticator::new(fake.client());

    assert_eq!(auth.review("pod-token").await.unwrap(), caller("back-end", "default"));
    let via_trait = auth.authenticate(Credentials { bearer_token: Some("pod-token"), peer_certificates: None }).await;
    assert_eq!(via_trait.unwrap(), Some(caller("back-end", "default")));
    assert_eq!(auth.authenticate(Credentials::default()).await.unwrap(), None, "no token: not ours to judge");

    match auth.review("forged").await {
        Err(AuthError::Rejected { reason, .. }) => assert!(reason.contains("invalid bearer token"), "{reason}"),
        other => panic!("an unknown token must be refused: {other:?}"),
    }
    match auth.review("api-token").await {
        Err(AuthError::Rejected { .. }) => {}
        other => panic!("a token for another audience must be refused: {other:?}"),
    }
    fake.fail_reviews(true);
    match auth.review("pod-token").await {
        Err(AuthError::Unavailable { .. }) => {}
        other => panic!("an API server error is 'unavailable', not a refusal: {other:?}"),
    }
    // The review asked for the CA's audience.
    assert!(
        fake.requests().iter().any(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews")),
        "{:?}",
        fake.requests()
    );
}

#[tokio::test]
async fn subject_access_review_allows_and_denies() {
    let fake = FakeApiServer::start_new().await;
    fake.grant("system:serviceaccount:istio-system:ingressgateway", "list", "secrets", "istio-system");
    let sar = SubjectAccessReviewer::new(fake.client());
    let gw = caller("istio-system", "ingressgateway");
    assert!(sar.may_read_secrets(&gw, "istio-system").await.unwrap());
    assert!(!sar.may_read_secrets(&gw, "back-end").await.unwrap(), "another namespace's secrets");
    assert!(!sar.may_read_secrets(&caller("front-end", "default"), "istio-system").await.unwrap(), "another caller");
    fake.fail_reviews(true);
    assert!(matches!(sar.may_read_secrets(&gw, "istio-system").await, Err(AuthError::Unavailable { .. })));
}

#[tokio::test]
async fn exactly_one_replica_leads_and_another_takes_over() {
    let fake = FakeApiServer::start_new().await;
    let elect = |id: &str| {
        let mut e = LeaderElection::new(fake.client(), "istio-system", "sailplane-leader", id);
        e.lease_duration = Duration::from_millis(1500);
        e.retry_period = Duration::from_millis(100);
        e.spawn()
    };
    let (a, a_task) = elect("a");
    let (b, b_task) = elect("b");
    let first = eventually(
        "a leader",
        WAIT,
        some(|| match (*a.borrow(), *b.borrow()) {
            (true, false) => Some("a"),
            (false, true) => Some("b"),
            (true, true) => panic!("two leaders"),
            (false, false) => None,
        }),
    )
    .await
    .unwrap();
    // Stable: for a while, still exactly the same single leader.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((*a.borrow(), *b.borrow()), (first == "a", first == "b"));
    }
    // The leader dies (stops renewing); the other takes over once the lease expires.
    let (survivor, dead) = if first == "a" { (&b, a_task) } else { (&a, b_task) };
    dead.abort();
    let started = Instant::now();
    eventually("the takeover", WAIT, some(|| survivor.borrow().then_some(()))).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1000), "not before the lease expired: {:?}", started.elapsed());
    let lease = fake.get("Lease", "istio-system", "sailplane-leader").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], if first == "a" { "b" } else { "a" });
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

fn namespace(name: &str) -> ConfigEvent {
    let ns = parse_object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).unwrap();
    ConfigEvent::Upsert { origin: format!("ns/{name}"), objects: vec![ns], diagnostics: vec![] }
}

#[tokio::test]
async fn root_cert_configmaps_are_written_by_the_leader_only() {
    let fake = FakeApiServer::start_new().await;
    let store = Arc::new(Store::new(["test"]));
    for ns in ["front-end", "back-end", "kube-system"] {
        store.apply(namespace(ns));
    }
    let (leader_tx, leader_rx) = watch::channel(false);
    let mut publisher = RootCertPublisher::new(fake.client(), Arc::clone(&store), "ROOT-PEM\n".into(), leader_rx);
    publisher.resync = Duration::from_millis(300);
    let task = tokio::spawn(publisher.run());

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(fake.get("ConfigMap", "front-end", ROOT_CERT_CONFIGMAP).is_none(), "not the leader: no writes");

    leader_tx.send(true).unwrap();
    let root_of = |ns: &str| fake.get("ConfigMap", ns, ROOT_CERT_CONFIGMAP).map(|c| c["data"][ROOT_CERT_KEY].clone());
    eventually(
        "configmaps in every namespace",
        WAIT,
        some(|| (root_of("front-end")? == "ROOT-PEM\n" && root_of("back-end")? == "ROOT-PEM\n").then_some(())),
    )
    .await
    .unwrap();
    assert!(root_of("kube-system").is_none(), "system namespaces are left alone");

    // A new namespace gets one at the next store change; a tampered one is repaired at the resync.
    store.apply(namespace("new-ns"));
    eventually("the new namespace's configmap", WAIT, some(|| root_of("new-ns").map(|_| ()))).await.unwrap();
    let mut cm = fake.get("ConfigMap", "back-end", ROOT_CERT_CONFIGMAP).unwrap();
    cm["data"][ROOT_CERT_KEY] = json!("tampered");
    fake.apply(cm);
    eventually("the repair", WAIT, some(|| (root_of("back-end")? == "ROOT-PEM\n").then_some(()))).await.unwrap();
    let writes = || fake.requests().iter().filter(|r| r.starts_with("POST") || r.starts_with("PUT")).count();
    let settled = writes();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(writes(), settled, "a correct cluster is not written again");

    // Losing leadership stops the writes.
    leader_tx.send(false).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.delete("ConfigMap", "front-end", ROOT_CERT_CONFIGMAP);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(root_of("front-end").is_none(), "a follower does not repair");
    task.abort();
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn the_leader_creates_one_root_in_a_secret_and_followers_and_restarts_use_it() {
    let fake = FakeApiServer::start_new().await;
    let options = CaOptions::default();
    // A follower started first waits: it never creates a root of its own.
    let (leader_tx, leader_rx) = watch::channel(false);
    let follower = {
        let client = fake.client();
        let options = options.clone();
        tokio::spawn(async move { ca_secret::load_authority(&client, "istio-system", &options, leader_rx).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!follower.is_finished(), "a follower waits for the leader's root");
    assert!(fake.get("Secret", "istio-system", ca_secret::SELF_SIGNED_SECRET).is_none(), "followers do not write");

    // The leader creates istio-ca-secret.
    let (_lead_tx, lead_rx) = watch::channel(true);
    let (leader, origin) = ca_secret::load_authority(&fake.client(), "istio-system", &options, lead_rx).await.unwrap();
    assert_eq!(origin, ca_secret::CaOrigin::SelfSignedCreated);
    let stored = fake
        .secret_text("istio-system", ca_secret::SELF_SIGNED_SECRET, "ca-cert.pem")
        .expect("root stored in the Secret");
    assert_eq!(stored.trim(), leader.root_pem().trim());
    let secret = fake.get("Secret", "istio-system", ca_secret::SELF_SIGNED_SECRET).unwrap();
    assert_eq!(secret["type"], ca_secret::SELF_SIGNED_SECRET_TYPE);

    // The waiting follower picks it up, and so does a restarted leader: one root for the mesh.
    let (follower_ca, origin) = tokio::time::timeout(WAIT, follower).await.unwrap().unwrap().unwrap();
    assert_eq!(origin, ca_secret::CaOrigin::SelfSignedExisting);
    assert_eq!(follower_ca.root_pem(), leader.root_pem());
    drop(leader_tx);
    let (_tx, rx) = watch::channel(true);
    let (restarted, origin) = ca_secret::load_authority(&fake.client(), "istio-system", &options, rx).await.unwrap();
    assert_eq!(origin, ca_secret::CaOrigin::SelfSignedExisting);
    assert_eq!(restarted.root_pem(), leader.root_pem());

    // A certificate signed by the follower chains to the root the leader created.
    let identity =
        Identity { trust_domain: "cluster.local".into(), namespace: "ns".into(), service_account: "sa".into() };
    let request = keys::generate(KeyType::Ec, &identity).unwrap();
    let chain = follower_ca.sign_csr(&request.csr_pem, &identity, None).unwrap();
    assert_eq!(chain.last().unwrap().trim(), leader.root_pem().trim());
}

#[tokio::test]
async fn the_cacerts_secret_plugs_in_a_ca() {
    let fake = FakeApiServer::start_new().await;
    let options = CaOptions::default();
    // An intermediate-free plug-in CA: a root of our own, stored as Istio's cacerts Secret.
    let (cert, key) = Authority::generate_self_signed(&options).unwrap();
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": "istio-system"},
        "data": {"ca-cert.pem": b64(&cert), "ca-key.pem": b64(&key), "root-cert.pem": b64(&cert), "cert-chain.pem": b64(&cert)},
    }));
    let (_tx, rx) = watch::channel(true);
    let (ca, origin) = ca_secret::load_authority(&fake.client(), "istio-system", &options, rx).await.unwrap();
    assert_eq!(origin, ca_secret::CaOrigin::Plugin);
    assert_eq!(ca.root_pem().trim(), cert.trim());
    assert!(
        fake.get("Secret", "istio-system", ca_secret::SELF_SIGNED_SECRET).is_none(),
        "no self-signed root with a plug-in CA"
    );

    // A cacerts Secret without its key is a clear error naming the Secret and the key.
    fake.apply(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": "istio-system"},
        "data": {"ca-cert.pem": b64(&cert)},
    }));
    let (_tx, rx) = watch::channel(true);
    let err = ca_secret::load_authority(&fake.client(), "istio-system", &options, rx).await.unwrap_err().to_string();
    assert!(err.contains("istio-system/cacerts") && err.contains("ca-key.pem"), "{err}");
}
