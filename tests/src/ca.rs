//! The certificate authority under test, in process, and certificate helpers: [`TestCa`] serves
//! `IstioCertificateService` over TLS on loopback (the same service and TLS code as `sailplane
//! discovery`'s secure port), forges tokens for refusal paths, and the functions below inspect and
//! verify the certificates it issues (SPIFFE URI SANs, serials, lifetimes, chains to the root).

#![allow(clippy::unwrap_used)] // test helpers fail the test on setup errors

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sailplane::agent::ca_client::CaClient;
use sailplane::ca::server::{CaService, TokenAuthenticator};
use sailplane::ca::token::TokenAuthority;
use sailplane::ca::{Authority, CaOptions};
use sailplane::identity::Authenticator;
use sailplane::identity::Identity;
use sailplane::tls;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use x509_parser::extensions::GeneralName;

/// How long the CA tests wait for something that must happen.
pub const WAIT: Duration = Duration::from_secs(15);

/// A CA serving `IstioCertificateService` over TLS on 127.0.0.1, state in `dir`.
pub struct TestCa {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// Its state directory (root certificate and key, token key).
    pub dir: PathBuf,
    /// The authority that signs.
    pub authority: Arc<Authority>,
    /// The token key that mints the tokens it accepts.
    pub tokens: Arc<TokenAuthority>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestCa {
    /// Starts a CA with a self-signed root kept in `dir` (created on first use).
    pub async fn start(dir: &Path, options: CaOptions) -> TestCa {
        let authority = Arc::new(Authority::load_or_create_self_signed(dir, options).expect("ca"));
        let tokens = Arc::new(TokenAuthority::load_or_create(dir).expect("token key"));
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "istiod.istio-system.svc".to_string()];
        let config =
            Arc::new(tls::server_config(Arc::clone(&authority), names, Duration::from_secs(3600)).expect("tls"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let authenticators: Vec<Arc<dyn Authenticator>> = vec![Arc::new(TokenAuthenticator::new(Arc::clone(&tokens)))];
        let service = CaService::new(Arc::clone(&authority), authenticators);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming_shutdown(tls::incoming(listener, config), async {
                    let _ = stopped.await;
                })
                .await
                .expect("ca server");
        });
        TestCa { addr, dir: dir.to_path_buf(), authority, tokens, stop: Some(stop), task: Some(task) }
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The root PEM the CA's TLS certificate (and every workload certificate) chains to.
    pub fn root_pem(&self) -> String {
        self.authority.root_pem().to_string()
    }

    /// A client as the agent makes it, verifying the CA's certificate for 127.0.0.1.
    pub fn client(&self) -> CaClient {
        CaClient::new(&self.address(), &self.root_pem(), None).expect("client")
    }

    /// A token for `ns/sa` valid for an hour.
    pub fn token(&self, ns: &str, sa: &str) -> String {
        self.tokens.mint(ns, sa, Duration::from_secs(3600)).expect("mint")
    }

    /// Signs a token with this CA's token key but arbitrary claims (refusal paths).
    pub fn forge(&self, claims: serde_json::Value) -> String {
        let pem = std::fs::read(self.dir.join(sailplane::ca::token::TOKEN_KEY)).expect("token key");
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("ec key");
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256), &claims, &key).expect("encode")
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// Claims like `TokenAuthority::mint`'s, for `ns/sa`, with the given audience and times.
pub fn claims(ns: &str, sa: &str, aud: &str, iat: u64, exp: u64) -> serde_json::Value {
    serde_json::json!({
        "iss": "sailplane",
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "aud": [aud],
        "iat": iat,
        "exp": exp,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa}},
    })
}

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn identity(ns: &str, sa: &str) -> Identity {
    Identity { trust_domain: "cluster.local".into(), namespace: ns.into(), service_account: sa.into() }
}

/// Every PEM certificate in `text`, as DER.
pub fn certs(text: &str) -> Vec<CertificateDer<'static>> {
    tls::parse_certs(text).expect("certificates")
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
    cert.subject_alternative_name()
        .expect("san")
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Serial number of a DER certificate (hex).
pub fn serial(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
    cert.raw_serial_as_string()
}

/// notAfter - notBefore of a DER certificate.
pub fn lifetime(der: &[u8]) -> Duration {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
    let v = cert.validity();
    Duration::from_secs(u64::try_from(v.not_after.timestamp() - v.not_before.timestamp()).expect("positive"))
}

/// Verifies that `chain` (leaf first) chains to a certificate of `root_pem`, as a TLS peer checks
/// it (signatures, validity, CA constraints), without any name check: SPIFFE certificates carry a
/// URI, not a host name.
pub fn verify_chain(chain: &[CertificateDer<'static>], root_pem: &str) -> Result<(), rustls::Error> {
    let roots = tls::root_store(root_pem).expect("roots");
    let (leaf, rest) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
    let parsed = rustls::server::ParsedCertificate::try_from(leaf)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        rest,
        UnixTime::now(),
        tls::provider().signature_verification_algorithms.all,
    )
}

/// A rustls client verifier for SPIFFE peers: the chain must lead to the mesh root; the name is
/// not checked here (the test asserts the URI SAN itself).
#[derive(Debug)]
pub struct SpiffeVerifier {
    roots: RootCertStore,
}

impl SpiffeVerifier {
    /// A verifier trusting the roots in `root_pem`.
    pub fn new(root_pem: &str) -> Arc<SpiffeVerifier> {
        Arc::new(SpiffeVerifier { roots: tls::root_store(root_pem).expect("roots") })
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            tls::provider().signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &tls::provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &tls::provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        tls::provider().signature_verification_algorithms.supported_schemes()
    }
}
