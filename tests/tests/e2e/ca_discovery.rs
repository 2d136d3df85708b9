//! `sailplane discovery`'s CA flags, with the real binary: the secure port serves the CA API with a
//! certificate for istiod's name, the trust domain comes from the mesh config, the self-signed root
//! survives a restart, `--max-workload-cert-ttl` is enforced, and `--cacerts` plugs in an external CA.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use sailplane::agent::ca_client::{CaClient, CaClientError};
use sailplane::agent::keys::{self, KeyType};
use sailplane::identity::Identity;
use sailplane_tests::ControlPlane;
use sailplane_tests::ca::{certs, lifetime, uri_sans, verify_chain};
use sailplane_tests::control_plane::{Launch, Ready};
use sailplane_tests::paths::sailplane_bin;

/// `sailplane discovery` on an empty config directory, the trust domain `example.org` from a mesh
/// config, the CA state in `work/ca` (kept across restarts), once its secure port is up.
async fn start(work: &Path, extra: &[&str]) -> ControlPlane {
    let config = work.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let mesh = work.join("mesh.yaml");
    std::fs::write(&mesh, "trustDomain: example.org\n").unwrap();
    Launch::config(&config)
        .arg("--mesh-config")
        .arg(&mesh)
        .ca_dir(&work.join("ca"))
        .args(extra)
        .wait_for(Ready::SecurePort)
        .start()
        .await
        .unwrap()
}

fn token(ca_dir: &Path, ns: &str, sa: &str) -> String {
    let out = Command::new(sailplane_bin().unwrap())
        .args(["token", "create", "--namespace", ns, "--service-account", sa, "--ca-dir"])
        .arg(ca_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn example_identity() -> Identity {
    Identity { trust_domain: "example.org".into(), namespace: "bookinfo".into(), service_account: "reviews".into() }
}

async fn sign(
    d: &ControlPlane,
    root: &str,
    server_name: Option<&str>,
    token: &str,
    ttl: Duration,
) -> Result<Vec<String>, CaClientError> {
    let client = CaClient::new(&d.secure_address(), root, server_name).unwrap();
    let csr = keys::generate(KeyType::Ec, &example_identity()).unwrap().csr_pem;
    client.sign(csr, ttl, token).await
}

#[tokio::test]
async fn secure_port_serves_the_ca_and_the_root_survives_restarts() {
    let work = tempfile::tempdir().unwrap();
    let ca_dir = work.path().join("ca");
    let d = start(work.path(), &["--max-workload-cert-ttl", "2h", "--workload-cert-ttl", "1h"]).await;
    let root = std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap();
    let tok = token(&ca_dir, "bookinfo", "reviews");

    // Verified by istiod's name (what Istio agents use) and by the address.
    for name in [Some("istiod.istio-system.svc"), None] {
        let chain = sign(&d, &root, name, &tok, Duration::ZERO).await.unwrap();
        let ders: Vec<_> = chain.iter().flat_map(|c| certs(c)).collect();
        assert_eq!(
            uri_sans(&ders[0]),
            vec!["spiffe://example.org/ns/bookinfo/sa/reviews".to_string()],
            "trust domain from the mesh config"
        );
        verify_chain(&ders, &root).unwrap();
        let life = lifetime(&ders[0]);
        assert!(
            life >= Duration::from_secs(3600) && life < Duration::from_secs(3600 + 120),
            "--workload-cert-ttl: {life:?}"
        );
    }
    match sign(&d, &root, None, &tok, Duration::from_secs(3 * 3600)).await {
        Err(CaClientError::Call { status, .. }) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
        other => panic!("over --max-workload-cert-ttl must be refused: {other:?}"),
    }
    drop(d);

    let d = start(work.path(), &[]).await;
    assert_eq!(std::fs::read_to_string(ca_dir.join("root-cert.pem")).unwrap(), root, "root kept across restarts");
    let chain =
        sign(&d, &root, None, &tok, Duration::from_secs(600)).await.expect("old root and old token still valid");
    verify_chain(&chain.iter().flat_map(|c| certs(c)).collect::<Vec<_>>(), &root).unwrap();
}

#[tokio::test]
async fn plug_in_ca_signs_with_the_intermediate() {
    let work = tempfile::tempdir().unwrap();
    // An offline root and an intermediate, laid out as Istio's cacerts Secret.
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name.push(DnType::OrganizationName, "offline root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let root = root_params.self_signed(&root_key).unwrap();
    let int_key = KeyPair::generate().unwrap();
    let mut int_params = CertificateParams::default();
    int_params.distinguished_name.push(DnType::OrganizationName, "cluster intermediate");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let int = int_params.signed_by(&int_key, &Issuer::from_params(&root_params, &root_key)).unwrap();
    let cacerts = work.path().join("cacerts");
    std::fs::create_dir_all(&cacerts).unwrap();
    std::fs::write(cacerts.join("ca-cert.pem"), int.pem()).unwrap();
    std::fs::write(cacerts.join("ca-key.pem"), int_key.serialize_pem()).unwrap();
    std::fs::write(cacerts.join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(cacerts.join("cert-chain.pem"), format!("{}{}", int.pem(), root.pem())).unwrap();

    let d = start(work.path(), &["--cacerts", cacerts.to_str().unwrap()]).await;
    let tok = token(&work.path().join("ca"), "bookinfo", "reviews");
    let chain = sign(&d, &root.pem(), Some("istiod.istio-system.svc"), &tok, Duration::from_secs(600)).await.unwrap();
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    let ders: Vec<_> = chain.iter().flat_map(|c| certs(c)).collect();
    verify_chain(&ders, &root.pem()).expect("chains to the offline root through the intermediate");
    assert_eq!(chain[2].trim(), root.pem().trim());
    assert!(!work.path().join("ca/ca-key.pem").exists(), "no self-signed root is made when a plug-in CA is given");
}
