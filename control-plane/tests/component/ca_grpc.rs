//! The CA's gRPC API end to end over TLS on loopback: what a caller gets for good and bad tokens,
//! for CSRs asking for someone else's identity, for lifetimes over the maximum, and across a
//! restart of the CA; and the secure port's optional client certificates.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use sailplane::agent::ca_client::CaClientError;
use sailplane::agent::keys::{self, KeyType};
use sailplane::ca::CaOptions;
use sailplane::tls;
use sailplane_proto::istio::ca::IstioCertificateRequest;
use sailplane_tests::ca::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::server::Connected;

fn csr_for(ns: &str, sa: &str) -> String {
    keys::generate(KeyType::Ec, &identity(ns, sa)).unwrap().csr_pem
}

fn code_of(e: CaClientError) -> (Code, String) {
    match e {
        CaClientError::Call { status, .. } => (status.code(), status.message().to_string()),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

#[tokio::test]
async fn valid_token_gets_a_spiffe_chain_to_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::start(dir.path(), CaOptions::default()).await;
    let key = keys::generate(KeyType::Ec, &identity("bookinfo", "reviews")).unwrap();
    let chain =
        ca.client().sign(key.csr_pem, Duration::from_secs(3600), &ca.token("bookinfo", "reviews")).await.unwrap();
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain.last().unwrap().trim(), ca.root_pem().trim(), "root last");
    let ders: Vec<_> = chain.iter().flat_map(|c| certs(c)).collect();
    assert_eq!(uri_sans(&ders[0]), vec!["spiffe://cluster.local/ns/bookinfo/sa/reviews".to_string()]);
    verify_chain(&ders, &ca.root_pem()).expect("the leaf chains to the mesh root");
    let life = lifetime(&ders[0]);
    assert!(life >= Duration::from_secs(3600) && life <= Duration::from_secs(3600 + 120), "{life:?}");

    // The identity comes from the token: a CSR without SANs gets the token's identity.
    let chain = ca.client().sign(keys_without_san(), Duration::ZERO, &ca.token("bookinfo", "ratings")).await.unwrap();
    let leaf = &certs(&chain[0])[0];
    assert_eq!(uri_sans(leaf), vec!["spiffe://cluster.local/ns/bookinfo/sa/ratings".to_string()]);
    let default_life = lifetime(leaf);
    assert!(
        default_life >= Duration::from_secs(24 * 3600),
        "validity_duration 0 means the 24h default: {default_life:?}"
    );
    ca.stop().await;
}

fn keys_without_san() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default().serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn csr_for_another_identity_is_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::start(dir.path(), CaOptions::default()).await;
    let token = ca.token("bookinfo", "reviews");
    for csr in [csr_for("kube-system", "admin"), csr_for("bookinfo", "productpage")] {
        let (code, msg) = code_of(ca.client().sign(csr, Duration::from_secs(600), &token).await.unwrap_err());
        assert_eq!(code, Code::PermissionDenied, "{msg}");
        assert!(msg.contains("spiffe://cluster.local/ns/bookinfo/sa/reviews"), "message names the caller: {msg}");
    }
    // Another trust domain is another identity too.
    let other_td = sailplane::identity::Identity { trust_domain: "evil.org".into(), ..identity("bookinfo", "reviews") };
    let csr = keys::generate(KeyType::Ec, &other_td).unwrap().csr_pem;
    let (code, _) = code_of(ca.client().sign(csr, Duration::from_secs(600), &token).await.unwrap_err());
    assert_eq!(code, Code::PermissionDenied);
    ca.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::start(dir.path(), CaOptions::default()).await;
    let now = now_secs();
    let other_dir = tempfile::tempdir().unwrap();
    let foreign = sailplane::ca::token::TokenAuthority::load_or_create(other_dir.path())
        .unwrap()
        .mint("ns", "sa", Duration::from_secs(600))
        .unwrap();
    let cases = [
        ("expired", ca.forge(claims("ns", "sa", "istio-ca", now - 1200, now - 600)), "expired"),
        ("wrong audience", ca.forge(claims("ns", "sa", "kubernetes", now, now + 600)), "audience"),
        ("garbage", "not.a.token".to_string(), "invalid token"),
        ("signed by another key", foreign, "invalid token"),
    ];
    for (what, token, expect) in cases {
        let (code, msg) =
            code_of(ca.client().sign(csr_for("ns", "sa"), Duration::from_secs(600), &token).await.unwrap_err());
        assert_eq!(code, Code::Unauthenticated, "{what}: {msg}");
        assert!(msg.to_lowercase().contains(expect), "{what}: message {msg:?} should say {expect:?}");
    }

    // No authorization metadata at all.
    let request = tonic::Request::new(IstioCertificateRequest {
        csr: csr_for("ns", "sa"),
        validity_duration: 600,
        metadata: None,
    });
    let status = ca.client().create_certificate(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("no credentials"), "{}", status.message());
    // A header that is not a bearer token.
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr_for("ns", "sa"),
        validity_duration: 600,
        metadata: None,
    });
    request.metadata_mut().insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    let status = ca.client().create_certificate(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("Bearer"), "{}", status.message());
    ca.stop().await;
}

#[tokio::test]
async fn ttl_over_the_max_and_bad_csrs_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let options = CaOptions { max_ttl: Duration::from_secs(7 * 24 * 3600), ..CaOptions::default() };
    let ca = TestCa::start(dir.path(), options).await;
    let token = ca.token("ns", "sa");
    let (code, msg) =
        code_of(ca.client().sign(csr_for("ns", "sa"), Duration::from_secs(8 * 24 * 3600), &token).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("max"), "{msg}");
    // At the max is fine.
    ca.client().sign(csr_for("ns", "sa"), Duration::from_secs(7 * 24 * 3600), &token).await.unwrap();

    let (code, msg) = code_of(ca.client().sign("not a csr".into(), Duration::from_secs(60), &token).await.unwrap_err());
    assert_eq!(code, Code::InvalidArgument, "{msg}");

    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr_for("ns", "sa"),
        validity_duration: -5,
        metadata: None,
    });
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(ca.client().create_certificate(request).await.unwrap_err().code(), Code::InvalidArgument);
    ca.stop().await;
}

#[tokio::test]
async fn restart_keeps_the_root_and_the_token_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::start(dir.path(), CaOptions::default()).await;
    let root_before = ca.root_pem();
    let token = ca.token("ns", "sa");
    let first = ca.client().sign(csr_for("ns", "sa"), Duration::from_secs(600), &token).await.unwrap();
    ca.stop().await;

    let ca = TestCa::start(dir.path(), CaOptions::default()).await;
    assert_eq!(ca.root_pem(), root_before, "same root after restart");
    // A token minted before the restart still works, and old and new leaves chain to the same root.
    let second = ca.client().sign(csr_for("ns", "sa"), Duration::from_secs(600), &token).await.unwrap();
    for chain in [&first, &second] {
        let ders: Vec<_> = chain.iter().flat_map(|c| certs(c)).collect();
        verify_chain(&ders, &root_before).unwrap();
    }
    assert_ne!(serial(&certs(&first[0])[0]), serial(&certs(&second[0])[0]));
    ca.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_root_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::start(dir.path(), CaOptions::default()).await;
    let other = tempfile::tempdir().unwrap();
    let other_ca = sailplane::ca::Authority::load_or_create_self_signed(other.path(), CaOptions::default()).unwrap();
    let client = sailplane::agent::ca_client::CaClient::new(&ca.address(), other_ca.root_pem(), None).unwrap();
    let err = client.sign(csr_for("ns", "sa"), Duration::from_secs(60), &ca.token("ns", "sa")).await.unwrap_err();
    let (code, _) = code_of(err);
    assert_eq!(code, Code::Unavailable, "the TLS handshake must fail");
    // The server certificate is valid for istiod's name as well as the address.
    let by_name =
        sailplane::agent::ca_client::CaClient::new(&ca.address(), &ca.root_pem(), Some("istiod.istio-system.svc"))
            .unwrap();
    by_name.sign(csr_for("ns", "sa"), Duration::from_secs(60), &ca.token("ns", "sa")).await.unwrap();
    ca.stop().await;
}

/// The secure port accepts clients without a certificate (token callers) and with a certificate
/// from the mesh CA (mTLS xDS), exposing the latter's SPIFFE identity; a certificate from another CA
/// fails the handshake.
#[tokio::test]
async fn client_certificates_are_optional_but_verified() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::start(dir.path(), CaOptions::default()).await;
    let config = Arc::new(
        tls::server_config(Arc::clone(&ca.authority), vec!["localhost".into()], Duration::from_secs(3600)).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = tls::incoming(listener, config);

    let connect = |client_cert: Option<(String, String)>, root: String| async move {
        let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(tls::root_store(&root).unwrap());
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let ck = tls::certified_key(&chain, &key).unwrap();
                builder
                    .with_client_auth_cert(
                        ck.cert.clone(),
                        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                    )
                    .unwrap()
            }
        };
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut stream = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
        // TLS 1.3 client auth is checked by the server after the client's handshake completes: a
        // read makes a refusal visible here.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"x").await?;
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Err(e)) => Err(e),
            _ => Ok(stream),
        }
    };
    use rustls::pki_types::pem::PemObject;

    // No client certificate.
    let _plain = connect(None, ca.root_pem()).await.expect("token callers connect without a certificate");
    let info = tokio::time::timeout(WAIT, incoming.next()).await.unwrap().unwrap().unwrap().connect_info();
    assert!(info.peer_certificates.is_none());
    assert_eq!(info.peer_identity(), None);

    // A workload certificate from the mesh CA.
    let key = keys::generate(KeyType::Ec, &identity("bookinfo", "reviews")).unwrap();
    let chain =
        ca.client().sign(key.csr_pem, Duration::from_secs(600), &ca.token("bookinfo", "reviews")).await.unwrap();
    let _mtls =
        connect(Some((chain.concat(), key.key_pem)), ca.root_pem()).await.expect("mesh certificates are accepted");
    let info = tokio::time::timeout(WAIT, incoming.next()).await.unwrap().unwrap().unwrap().connect_info();
    assert_eq!(info.peer_identity(), Some(identity("bookinfo", "reviews")));

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    let other_ca = sailplane::ca::Authority::load_or_create_self_signed(other.path(), CaOptions::default()).unwrap();
    let key = keys::generate(KeyType::Ec, &identity("bookinfo", "reviews")).unwrap();
    let foreign = other_ca.sign_csr(&key.csr_pem, &identity("bookinfo", "reviews"), None).unwrap();
    assert!(
        connect(Some((foreign.concat(), key.key_pem)), ca.root_pem()).await.is_err(),
        "foreign client certificates are refused"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), incoming.next()).await.is_err(),
        "a refused handshake yields no connection"
    );
    ca.stop().await;
}
