//! The agent against an in-process CA: SDS on a Unix socket serves `default` and `ROOTCA` (SotW and
//! Delta), rotation with a short SECRET_TTL pushes a new certificate on the open stream and replaces
//! the OUTPUT_CERTS files, `file-cert:`/`file-root:` secrets follow their files, and a stream opened
//! before the first certificate exists gets it when it arrives.

#![allow(clippy::unwrap_used)] // helpers outside #[test] functions unwrap too

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message;
use sailplane::agent::keys::KeyType;
use sailplane::agent::sds::SECRET_TYPE_URL;
use sailplane::agent::secrets::SecretCache;
use sailplane::agent::{Agent, CertManager, CertOptions};
use sailplane::ca::CaOptions;
use sailplane_tests::ca::*;
use sailplane_tests::grpc::uds_channel;
use sailplane_tests::wait::{eventually, some};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const NS: &str = "bookinfo";
const SA: &str = "reviews";

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: TestCa,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let ca = TestCa::start(&path.join("ca"), CaOptions::default()).await;
        Setup { _dir: dir, dir: path, ca }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.join("istio-token")
    }

    fn write_token(&self) {
        std::fs::write(self.token_file(), self.ca.token(NS, SA)).unwrap();
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("proxy/SDS")
    }

    fn output(&self) -> PathBuf {
        self.dir.join("certs")
    }

    fn agent(&self, ttl: Duration, key_type: KeyType) -> Agent {
        let options = CertOptions {
            identity: identity(NS, SA),
            token_file: self.token_file(),
            secret_ttl: ttl,
            key_type,
            output_certs: Some(self.output()),
            grace_ratio: 0.5,
            grace_jitter: 0.01,
        };
        let manager = CertManager::new(options, self.ca.client(), self.ca.root_pem(), SecretCache::new());
        Agent::start(manager, &self.socket()).unwrap()
    }
}

fn inline(d: &Option<DataSource>) -> String {
    match d.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

/// (chain PEM, key PEM) of a `tls_certificate` secret.
fn tls_cert(s: &Secret) -> (String, String) {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(t)) => (inline(&t.certificate_chain), inline(&t.private_key)),
        other => panic!("{} is not a tls_certificate: {other:?}", s.name),
    }
}

fn trusted_ca(s: &Secret) -> String {
    match &s.r#type {
        Some(secret::Type::ValidationContext(v)) => inline(&v.trusted_ca),
        other => panic!("{} is not a validation_context: {other:?}", s.name),
    }
}

fn secrets_of(r: &DiscoveryResponse) -> Vec<Secret> {
    r.resources
        .iter()
        .map(|a| {
            assert_eq!(a.type_url, SECRET_TYPE_URL);
            Secret::decode(a.value.as_slice()).unwrap()
        })
        .collect()
}

fn by_name<'a>(secrets: &'a [Secret], name: &str) -> &'a Secret {
    secrets.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no secret {name}"))
}

fn node() -> Option<Node> {
    Some(Node {
        id: "sidecar~127.0.0.1~p.bookinfo~bookinfo.svc.cluster.local".into(),
        cluster: "p.bookinfo".into(),
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(socket: &Path, names: &[&str]) -> Sotw {
        let mut client = SecretDiscoveryServiceClient::new(uds_channel(socket).await);
        let (tx, requests) = mpsc::channel(8);
        tx.send(DiscoveryRequest {
            node: node(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            type_url: SECRET_TYPE_URL.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = client.stream_secrets(ReceiverStream::new(requests)).await.unwrap().into_inner();
        Sotw { tx, rx }
    }

    async fn next(&mut self, within: Duration) -> Option<DiscoveryResponse> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Ok(r) => Some(r.unwrap().expect("stream ended")),
            Err(_) => None,
        }
    }

    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        self.tx
            .send(DiscoveryRequest {
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                type_url: SECRET_TYPE_URL.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

fn check_workload(secrets: &[Secret], root: &str) -> (String, String) {
    let (chain, key) = tls_cert(by_name(secrets, "default"));
    let ders = certs(&chain);
    assert_eq!(uri_sans(&ders[0]), vec![format!("spiffe://cluster.local/ns/{NS}/sa/{SA}")]);
    verify_chain(&ders, root).expect("default chains to the mesh root");
    assert!(key.contains("PRIVATE KEY"));
    // The key belongs to the certificate.
    let kp = rcgen::KeyPair::from_pem(&key).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0]).unwrap();
    assert_eq!(leaf.public_key().raw, rcgen::PublicKeyData::subject_public_key_info(&kp).as_slice());
    assert_eq!(trusted_ca(by_name(secrets, "ROOTCA")).trim(), root.trim());
    (chain, key)
}

async fn next(rx: &mut Streaming<DeltaDiscoveryResponse>, within: Duration) -> Option<DeltaDiscoveryResponse> {
    tokio::time::timeout(within, rx.message()).await.ok().map(|r| r.unwrap().expect("stream ended"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn sotw_serves_default_and_rootca_and_pushes_rotations() {
    let s = Setup::new().await;
    s.write_token();
    // The agent creates its first certificate after this instant, so it rotates no earlier than
    // half of the lifetime (minus the 1% jitter) after it. X.509 times have whole seconds, so the
    // lifetime the agent sees may be up to a second shorter than the 6 s asked for.
    let started = Instant::now();
    let _agent = s.agent(Duration::from_secs(6), KeyType::Ec);
    let names = ["default", "ROOTCA"];
    let mut sds = Sotw::open(&s.socket(), &names).await;

    let first = sds.next(WAIT).await.expect("first secrets");
    let got_first = Instant::now();
    let secrets = secrets_of(&first);
    assert_eq!(secrets.len(), 2);
    let (chain1, key1) = check_workload(&secrets, &s.ca.root_pem());
    let leaf1 = certs(&chain1)[0].clone();
    assert!(lifetime(&leaf1) <= Duration::from_secs(6 + 120), "SECRET_TTL honoured");

    // OUTPUT_CERTS holds the same certificate and key.
    let out = s.output();
    let files = eventually("OUTPUT_CERTS files", WAIT, some(|| std::fs::read_to_string(out.join("key.pem")).ok()))
        .await
        .unwrap();
    assert_eq!(files, key1);
    assert_eq!(std::fs::read_to_string(out.join("cert-chain.pem")).unwrap(), chain1);
    assert_eq!(std::fs::read_to_string(out.join("root-cert.pem")).unwrap().trim(), s.ca.root_pem().trim());
    assert_eq!(mode(&out.join("key.pem")), 0o600);

    sds.ack(&first, &names).await;
    assert!(sds.next(Duration::from_secs(1)).await.is_none(), "an ACK gets no response");

    // Rotation at 50% (±1%) of the 6 s lifetime, pushed on the open stream.
    let second = sds.next(WAIT).await.expect("rotated secrets");
    let since_start = started.elapsed();
    assert!(since_start >= Duration::from_millis(2400), "rotated too early: {since_start:?} after the agent started");
    let since_first = got_first.elapsed();
    assert!(since_first <= Duration::from_millis(5500), "rotated too late: {since_first:?} after the first secret");
    assert_ne!(second.version_info, first.version_info);
    let secrets = secrets_of(&second);
    let (chain2, key2) = check_workload(&secrets, &s.ca.root_pem());
    assert_ne!(serial(&certs(&chain2)[0]), serial(&leaf1), "a new certificate");
    assert_ne!(key2, key1, "a new key per rotation");
    let on_disk = eventually(
        "OUTPUT_CERTS replaced",
        WAIT,
        some(|| {
            let k = std::fs::read_to_string(out.join("key.pem")).ok()?;
            (k == key2).then_some(k)
        }),
    )
    .await
    .unwrap();
    assert_eq!(on_disk, key2);
    assert_eq!(std::fs::read_to_string(out.join("cert-chain.pem")).unwrap(), chain2);
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    sds.ack(&second, &names).await;

    // A stale nonce (the first response's) is ignored; a changed subscription is answered.
    sds.ack(&first, &names).await;
    assert!(sds.next(Duration::from_millis(500)).await.is_none(), "stale nonce ignored");
    sds.ack(&second, &["ROOTCA"]).await;
    let only_root = sds.next(WAIT).await.expect("answer to the new subscription");
    let secrets = secrets_of(&only_root);
    assert_eq!(secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["ROOTCA"]);
}

#[tokio::test]
async fn delta_serves_and_pushes_rotations() {
    let s = Setup::new().await;
    s.write_token();
    let _agent = s.agent(Duration::from_secs(4), KeyType::Ec);
    let mut client = SecretDiscoveryServiceClient::new(uds_channel(&s.socket()).await);
    let (tx, requests) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: SECRET_TYPE_URL.into(),
        resource_names_subscribe: vec!["default".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut rx = client.delta_secrets(ReceiverStream::new(requests)).await.unwrap().into_inner();
    let first = next(&mut rx, WAIT).await.expect("first delta");
    assert_eq!(first.resources.len(), 1);
    assert_eq!(first.resources[0].name, "default");
    let v1 = first.resources[0].version.clone();
    let secret = Secret::decode(first.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap();
    let (chain1, _) = tls_cert(&secret);
    tx.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Subscribing to ROOTCA sends ROOTCA only.
    tx.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.into(),
        resource_names_subscribe: vec!["ROOTCA".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let root = next(&mut rx, WAIT).await.expect("ROOTCA");
    assert_eq!(root.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["ROOTCA"]);
    tx.send(DeltaDiscoveryRequest {
        type_url: SECRET_TYPE_URL.into(),
        response_nonce: root.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // Rotation pushes default again with a new version; ROOTCA is unchanged and not resent.
    let rotated = next(&mut rx, WAIT).await.expect("rotation");
    assert_eq!(rotated.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), vec!["default"]);
    assert_ne!(rotated.resources[0].version, v1);
    let secret = Secret::decode(rotated.resources[0].resource.as_ref().unwrap().value.as_slice()).unwrap();
    let (chain2, _) = tls_cert(&secret);
    assert_ne!(serial(&certs(&chain1)[0]), serial(&certs(&chain2)[0]));
}

#[tokio::test]
async fn file_secrets_follow_their_files() {
    let s = Setup::new().await;
    s.write_token();
    let _agent = s.agent(Duration::from_secs(3600), KeyType::Ec);
    let files = s.dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mk = |cn: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![format!("{cn}.example")]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (cert1, key1) = mk("one");
    std::fs::write(files.join("tls.crt"), &cert1).unwrap();
    std::fs::write(files.join("tls.key"), &key1).unwrap();
    std::fs::write(files.join("ca.crt"), &cert1).unwrap();
    let cert_name = format!("file-cert:{}~{}", files.join("tls.crt").display(), files.join("tls.key").display());
    let root_name = format!("file-root:{}", files.join("ca.crt").display());
    let names = [cert_name.as_str(), root_name.as_str()];
    let mut sds = Sotw::open(&s.socket(), &names).await;
    let first = sds.next(WAIT).await.expect("file secrets");
    let secrets = secrets_of(&first);
    assert_eq!(tls_cert(by_name(&secrets, &cert_name)), (cert1.clone(), key1.clone()));
    assert_eq!(trusted_ca(by_name(&secrets, &root_name)), cert1);
    sds.ack(&first, &names).await;

    // Replace the files the way tools do (write elsewhere, rename over).
    let (cert2, key2) = mk("two");
    std::fs::write(files.join(".tls.key.new"), &key2).unwrap();
    std::fs::rename(files.join(".tls.key.new"), files.join("tls.key")).unwrap();
    std::fs::write(files.join(".tls.crt.new"), &cert2).unwrap();
    std::fs::rename(files.join(".tls.crt.new"), files.join("tls.crt")).unwrap();
    let want = (cert2.clone(), key2.clone());
    let deadline = Instant::now() + WAIT;
    loop {
        let r =
            sds.next(deadline.saturating_duration_since(Instant::now())).await.expect("push after the files changed");
        sds.ack(&r, &names).await;
        let secrets = secrets_of(&r);
        if tls_cert(by_name(&secrets, &cert_name)) == want {
            assert_eq!(trusted_ca(by_name(&secrets, &root_name)), cert1, "file-root unchanged");
            break;
        }
    }
}

#[tokio::test]
async fn streams_wait_for_the_first_certificate_and_rsa_keys_work() {
    let s = Setup::new().await;
    // No token yet: the agent cannot fetch; SDS answers nothing until it can.
    let _agent = s.agent(Duration::from_secs(3600), KeyType::Rsa);
    let names = ["default", "ROOTCA"];
    let mut sds = Sotw::open(&s.socket(), &names).await;
    assert!(sds.next(Duration::from_millis(800)).await.is_none(), "nothing to serve before the first certificate");
    s.write_token();
    let first = sds.next(WAIT).await.expect("secrets once the token exists");
    let secrets = secrets_of(&first);
    let (chain, key) = check_workload(&secrets, &s.ca.root_pem());
    let kp = rcgen::KeyPair::from_pem_and_sign_algo(&key, &rcgen::PKCS_RSA_SHA256).expect("an RSA key");
    let ders = certs(&chain);
    let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0]).unwrap();
    assert_eq!(leaf.public_key().raw, rcgen::PublicKeyData::subject_public_key_info(&kp).as_slice());
    assert!(
        matches!(leaf.public_key().parsed(), Ok(x509_parser::public_key::PublicKey::RSA(r)) if r.key_size() == 2048)
    );
}
