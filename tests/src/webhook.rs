//! Webhook helpers: an HTTPS client that POSTs one admission review over TLS, as the API server sends
//! it, verifying the webhook's certificate against a root or accepting any.

#![allow(clippy::unwrap_used)] // test helpers fail the test on setup errors

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate (for the binary's generated one, which the test cannot know).
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}

/// How the client checks the server.
pub enum Trust<'a> {
    /// Verify against this PEM root, for this server name.
    Root {
        /// The root certificate(s), PEM.
        pem: &'a str,
        /// The name the certificate must be valid for.
        server_name: &'a str,
    },
    /// Accept anything.
    Any,
}

/// POSTs `body` to `https://addr/path` and returns the status code and the JSON body.
pub async fn post(addr: SocketAddr, path: &str, body: &[u8], trust: Trust<'_>) -> (u16, Value) {
    let builder =
        rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap();
    let (config, name) = match trust {
        Trust::Root { pem, server_name } => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            (builder.with_root_certificates(roots).with_no_client_auth(), server_name.to_string())
        }
        Trust::Any => (
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny)).with_no_client_auth(),
            "localhost".to_string(),
        ),
    };
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(ServerName::try_from(name).unwrap(), tcp).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.flush().await.unwrap();
    let mut raw = Vec::new();
    // The server closes after the response (Connection: close); a TLS close_notify may be missing.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-length:"),
        "the webhook answers with a Content-Length body: {head}"
    );
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {body}")))
}
