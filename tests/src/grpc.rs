//! gRPC channels to the servers under test: plaintext on loopback, TLS verified against a PEM root
//! (with or without a client certificate, as a workload presents its SPIFFE certificate), and Unix
//! sockets (the agent's SDS).

#![allow(clippy::unwrap_used)] // test helpers fail the test on setup errors

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sailplane::tls;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Dials TLS for tonic.
#[derive(Clone)]
struct TlsDialer {
    addr: String,
    name: ServerName<'static>,
    tls: TlsConnector,
}

impl tower::Service<Uri> for TlsDialer {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.addr).await?;
            Ok(TokioIo::new(this.tls.connect(this.name, tcp).await?))
        })
    }
}

/// A gRPC channel to `addr` over TLS, verifying the server against `root_pem` for 127.0.0.1 and
/// presenting `client` (chain PEM, key PEM) if given.
pub async fn tls_channel(addr: &str, root_pem: &str, client: Option<(&str, &str)>) -> Channel {
    let builder = ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(tls::root_store(root_pem).unwrap());
    let mut config = match client {
        Some((chain, key)) => {
            let certs: Vec<CertificateDer<'static>> = tls::parse_certs(chain).unwrap();
            builder.with_client_auth_cert(certs, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let dialer = TlsDialer {
        addr: addr.to_string(),
        name: ServerName::try_from("127.0.0.1").unwrap(),
        tls: TlsConnector::from(Arc::new(config)),
    };
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_with_connector(dialer).await.unwrap()
}

/// A plaintext gRPC channel.
pub async fn plain_channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap()
}

/// Connects tonic to a Unix socket.
#[derive(Clone)]
struct UdsConnector(PathBuf);

impl tower::Service<Uri> for UdsConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(UnixStream::connect(path).await?)) })
    }
}

/// A gRPC channel to the server on the Unix socket at `path`.
pub async fn uds_channel(path: &Path) -> Channel {
    Endpoint::from_static("http://sds.local")
        .connect_with_connector(UdsConnector(path.to_path_buf()))
        .await
        .expect("connect to the unix socket")
}
