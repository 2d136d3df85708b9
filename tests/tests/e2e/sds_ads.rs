//! SDS over ADS on the secure port, against the real `sailplane discovery` binary: `kubernetes://`
//! secrets go only to a proxy whose client certificate is from the Secret's namespace; plaintext
//! (15010) and certificate-less clients get none; edits of the Secret are pushed (SotW and Delta).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine;
use sailplane_tests::ads_client::{Delta, Sotw, secret_content, secrets_of, sidecar_node};
use sailplane_tests::control_plane::Launch;
use sailplane_tests::fixtures::mk_secret;
use sailplane_tests::grpc::{plain_channel, tls_channel};
use sailplane_tests::http::raw_get as http_get;
use sailplane_translator::TypeUrl;

/// How long a test waits for something that must happen (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(30);

const CRED: &str = "kubernetes://cred";
const CRED_CA: &str = "kubernetes://cred-cacert";
const B_CRED: &str = "kubernetes://b/cred";

fn secrets_yaml(a_cert: &str) -> String {
    format!(
        "{}---\n{}---\n{}",
        mk_secret(
            "a",
            "cred",
            "kubernetes.io/tls",
            &[("tls.crt", a_cert), ("tls.key", "KEY-OF-A"), ("ca.crt", "CA-OF-A")]
        ),
        mk_secret("b", "cred", "Opaque", &[("cert", "CERT-OF-B"), ("key", "KEY-OF-B"), ("cacert", "CA-OF-B")]),
        mk_secret("a", "other", "Opaque", &[("cert", "OTHER-A"), ("key", "OTHER-KEY")]),
    )
}

fn names(v: &[(String, String, String, String)]) -> Vec<&str> {
    v.iter().map(|s| s.0.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_follow_the_certificate_identity() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("secrets.yaml"), secrets_yaml("CERT-OF-A-1")).unwrap();
    let cp = Launch::config(&config).args(["--debounce-after", "50ms"]).start().await.unwrap();
    let root = cp.root_pem().unwrap();
    let (a_chain, a_key) = cp.workload_cert("a", "sa-a").await.unwrap();
    let (b_chain, b_key) = cp.workload_cert("b", "sa-b").await.unwrap();

    // Namespace A over mTLS: its own secret under both names, its CA half; never B's.
    let ch = tls_channel(&cp.secure_address(), &root, Some((&a_chain, &a_key))).await;
    let mut a = Sotw::open(ch, sidecar_node("127.0.0.1", "pod-a", "a")).await.unwrap().with_timeout(WAIT);
    let wanted = [CRED, CRED_CA, B_CRED, "kubernetes://a/other"];
    a.request_secrets(&wanted);
    let first = a.next().await.unwrap();
    let got = secrets_of(&first);
    assert_eq!(names(&got), ["kubernetes://a/other", CRED, CRED_CA], "b/cred is not served to namespace a");
    assert_eq!(
        got[1],
        (CRED.into(), "cert".into(), "CERT-OF-A-1".into(), "KEY-OF-A".into()),
        "main secret: cert and key"
    );
    assert_eq!(got[2], (CRED_CA.into(), "ca".into(), "CA-OF-A".into(), String::new()), "-cacert: the CA only");
    a.ack(&first, &wanted);

    // The proxy's identity in the status is the certificate's, and no private key reaches debug output.
    let syncz = cp.syncz().await.unwrap();
    let entry = syncz
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["proxy"] == sidecar_node("127.0.0.1", "pod-a", "a").id)
        .unwrap()
        .clone();
    assert_eq!(entry["identity"], "spiffe://cluster.local/ns/a/sa/sa-a");
    let (_, dump) = http_get(
        cp.monitoring_port,
        &format!("/debug/config_dump?proxyID={}", sidecar_node("127.0.0.1", "pod-a", "a").id),
    )
    .await
    .unwrap();
    assert!(dump.contains(CRED), "{dump}");
    let key_b64 = base64::engine::general_purpose::STANDARD.encode("KEY-OF-A");
    assert!(!dump.contains(&key_b64) && !dump.contains("KEY-OF-A"), "private key in config_dump: {dump}");

    // Namespace B's proxy gets B's `cred` (generic layout), not A's.
    let ch = tls_channel(&cp.secure_address(), &root, Some((&b_chain, &b_key))).await;
    let mut b = Sotw::open(ch, sidecar_node("127.0.0.1", "pod-b", "b")).await.unwrap().with_timeout(WAIT);
    b.request_secrets(&[CRED, CRED_CA, "kubernetes://a/cred"]);
    let got = secrets_of(&b.next().await.unwrap());
    assert_eq!(names(&got), [CRED, CRED_CA]);
    assert_eq!(got[0].2, "CERT-OF-B");
    assert_eq!(got[1].2, "CA-OF-B");

    // Plaintext 15010: answered (Envoy must not hang on the first request), but without secrets.
    let mut plain = Sotw::open(plain_channel(cp.xds_port).await, sidecar_node("127.0.0.1", "pod-plain", "a"))
        .await
        .unwrap()
        .with_timeout(WAIT);
    plain.request_secrets(&[CRED, CRED_CA]);
    let resp = plain.next().await.unwrap();
    assert!(resp.resources.is_empty(), "plaintext proxy got secrets: {:?}", secrets_of(&resp));

    // The secure port without a client certificate: no xDS at all.
    let ch = tls_channel(&cp.secure_address(), &root, None).await;
    let refused = match Sotw::open(ch, sidecar_node("127.0.0.1", "pod-anon", "a")).await {
        Err(status) => status,
        Ok(s) => {
            let mut s = s.with_timeout(WAIT);
            s.request_secrets(&[CRED]);
            s.next().await.unwrap_err()
        }
    };
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // A certificate of namespace a cannot pose as a proxy of namespace b.
    let ch = tls_channel(&cp.secure_address(), &root, Some((&a_chain, &a_key))).await;
    let mut liar = Sotw::open(ch, sidecar_node("127.0.0.1", "pod-liar", "b")).await.unwrap().with_timeout(WAIT);
    liar.request_secrets(&[CRED]);
    let status = liar.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("spiffe://cluster.local/ns/a/sa/sa-a"), "{status:?}");

    let log = cp.log();
    assert!(
        log.contains("secret not served")
            && log.contains("kubernetes://b/cred")
            && log.contains("spiffe://cluster.local/ns/a/sa/sa-a"),
        "a warning names the proxy, identity and secret:\n{log}"
    );

    // An edit of A's Secret is pushed to A (and only A's secret changes).
    std::fs::write(config.join("secrets.yaml"), secrets_yaml("CERT-OF-A-2")).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = a.next().await.unwrap();
        let got = secrets_of(&resp);
        a.ack(&resp, &wanted);
        if got.iter().any(|s| s.0 == CRED && s.2 == "CERT-OF-A-2") {
            assert_eq!(names(&got), ["kubernetes://a/other", CRED, CRED_CA]);
            break;
        }
        assert!(Instant::now() < deadline, "edit not pushed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_serves_secrets_by_identity_and_pushes_edits() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("secrets.yaml"), secrets_yaml("CERT-OF-A-1")).unwrap();
    let cp = Launch::config(&config).args(["--debounce-after", "50ms"]).start().await.unwrap();
    let (chain, key) = cp.workload_cert("a", "sa-a").await.unwrap();
    let ch = tls_channel(&cp.secure_address(), &cp.root_pem().unwrap(), Some((&chain, &key))).await;
    let mut d = Delta::open(ch, sidecar_node("127.0.0.1", "pod-d", "a")).await.with_timeout(WAIT);
    d.subscribe(TypeUrl::Secret, &[CRED, B_CRED]);
    let resp = d.recv().await;
    assert_eq!(resp.type_url, TypeUrl::Secret.as_str());
    let got: Vec<_> = resp.resources.iter().map(|r| secret_content(&r.resource.as_ref().unwrap().value)).collect();
    assert_eq!(got, [(CRED.to_string(), "cert".to_string(), "CERT-OF-A-1".to_string(), "KEY-OF-A".to_string())]);
    assert!(resp.removed_resources.is_empty(), "a refused secret is not announced: {:?}", resp.removed_resources);
    d.ack(&resp);

    std::fs::write(config.join("secrets.yaml"), secrets_yaml("CERT-OF-A-2")).unwrap();
    let resp = d.recv().await;
    let got: Vec<_> = resp.resources.iter().map(|r| secret_content(&r.resource.as_ref().unwrap().value)).collect();
    assert_eq!(got.len(), 1, "only the changed secret");
    assert_eq!((got[0].0.as_str(), got[0].2.as_str()), (CRED, "CERT-OF-A-2"));
    assert!(resp.removed_resources.is_empty(), "{:?}", resp.removed_resources);
}
