//! TLS on the secure port (15012, like istiod): the server certificate comes from the mesh CA, and
//! client certificates are verified against the mesh root but optional.
//!
//! Optional, because one port serves two kinds of callers: a proxy asking the CA for its first
//! certificate has none yet and authenticates with a bearer token, while a proxy streaming xDS over
//! mTLS presents its workload certificate. The handshake accepts both; each gRPC service decides what
//! it requires from [`TlsConnectInfo`], which tonic puts into every request's extensions.
//!
//! Handshakes run in their own tasks, so a slow or silent client cannot hold up other connections.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::ca::Authority;
use crate::identity::Identity;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the gRPC server to pick them up.
const ACCEPT_QUEUE: usize = 256;

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA could not issue the server certificate.
    #[error("issuing the server certificate: {0}")]
    Issue(#[from] crate::ca::CaError),
    /// The certificate, key or root could not be used by rustls.
    #[error("tls configuration: {0}")]
    Config(String),
}

fn config_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// The rustls crypto provider used everywhere in Sailplane (ring: aws-lc would need a C toolchain).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every `CERTIFICATE` block of a PEM text.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(config_err)?;
    if certs.is_empty() {
        return Err(TlsError::Config("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// A rustls `CertifiedKey` from a PEM chain and a PEM private key.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let certs = parse_certs(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(config_err)?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(config_err)
}

/// A root store holding every certificate of `pem`.
pub fn root_store(pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem)? {
        roots.add(cert).map_err(config_err)?;
    }
    Ok(roots)
}

/// The rustls configuration of the secure port: a server certificate for `names` (DNS names or IP
/// addresses) from `authority`, renewed at half its lifetime `ttl`; client certificates optional and,
/// when present, verified against the mesh root; ALPN `h2` (gRPC).
pub fn server_config(authority: Arc<Authority>, names: Vec<String>, ttl: Duration) -> Result<ServerConfig, TlsError> {
    let roots = root_store(authority.root_pem())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(config_err)?;
    let resolver = ServerCertResolver::new(authority, names, ttl)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Serves the CA-issued server certificate and issues a fresh one once the current one is half way
/// through its life, so a long-running control plane never serves an expired certificate.
#[derive(Debug)]
struct ServerCertResolver {
    authority: Arc<Authority>,
    names: Vec<String>,
    ttl: Duration,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl ServerCertResolver {
    fn new(authority: Arc<Authority>, names: Vec<String>, ttl: Duration) -> Result<Self, TlsError> {
        let first = Self::issue(&authority, &names, ttl)?;
        Ok(ServerCertResolver { authority, names, ttl, current: Mutex::new(first) })
    }

    fn issue(
        authority: &Authority,
        names: &[String],
        ttl: Duration,
    ) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
        let (chain, key) = authority.issue_server_cert(names, ttl)?;
        let renew_at = SystemTime::now() + ttl / 2;
        Ok((Arc::new(certified_key(&chain, &key)?), renew_at))
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if SystemTime::now() >= current.1 {
            match Self::issue(&self.authority, &self.names, self.ttl) {
                Ok(fresh) => *current = fresh,
                // Keep serving the old one: it is still valid for the other half of its life.
                Err(error) => warn!(%error, "renewing the secure port's server certificate failed"),
            }
        }
        Some(Arc::clone(&current.0))
    }
}

/// What tonic puts into each request's extensions for a connection on the secure port.
#[derive(Debug, Clone, Default)]
pub struct TlsConnectInfo {
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
    /// The client certificate chain (leaf first), verified against the mesh root; `None` when the
    /// client presented none.
    pub peer_certificates: Option<Arc<[CertificateDer<'static>]>>,
}

impl TlsConnectInfo {
    /// The SPIFFE identity in the client certificate's URI SAN, if the client presented a
    /// certificate that carries one.
    pub fn peer_identity(&self) -> Option<Identity> {
        let leaf = self.peer_certificates.as_ref()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let san = cert.subject_alternative_name().ok()??;
        san.value.general_names.iter().find_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Identity::from_spiffe_uri(uri),
            _ => None,
        })
    }
}

/// A TLS connection accepted on the secure port.
#[derive(Debug)]
pub struct TlsConnection {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and completes their TLS handshakes with `config`; yields
/// each established connection, for `tonic::transport::Server::serve_with_incoming`. Failed
/// handshakes are logged (debug) and dropped. The accept loop ends when the stream is dropped.
pub fn incoming(listener: TcpListener, config: Arc<ServerConfig>) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    warn!(%error, "accepting on the secure port");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(error) = tcp.set_nodelay(true) {
                debug!(%error, "TCP_NODELAY not set");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        debug!(%remote, %error, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%remote, "tls handshake timed out");
                        return;
                    }
                };
                let peer_certificates = stream.get_ref().1.peer_certificates().map(|c| Arc::from(c.to_vec()));
                let info = TlsConnectInfo { remote_addr: Some(remote), peer_certificates };
                // The server is gone when this fails; the connection just closes.
                let _ = tx.send(Ok(TlsConnection { inner: stream, info })).await;
            });
        }
    });
    ReceiverStream::new(rx)
}
