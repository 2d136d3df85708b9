//! The agent's client of the CA API (`IstioCertificateService/CreateCertificate`) over TLS, verifying
//! the CA's server certificate against a configured root and sending the workload's bearer token.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use sailplane_proto::istio::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use sailplane_proto::istio::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{TlsError, provider, root_store};

/// How long connecting (TCP and TLS) to the CA may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one signing call may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// CA client errors.
#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    /// The address or server name is not usable.
    #[error("ca address {addr:?}: {reason}")]
    Address {
        /// `CA_ADDR`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The root certificate is unusable.
    #[error("ca root certificate: {0}")]
    Root(#[from] TlsError),
    /// The CA refused or the call failed.
    #[error("ca {addr}: {status}")]
    Call {
        /// `CA_ADDR`.
        addr: String,
        /// The gRPC status (code and message).
        status: tonic::Status,
    },
    /// The CA answered with an empty chain.
    #[error("ca {0}: empty certificate chain in the response")]
    EmptyChain(String),
}

/// A client of one CA.
#[derive(Debug, Clone)]
pub struct CaClient {
    addr: String,
    client: IstioCertificateServiceClient<Channel>,
}

/// Splits `host:port` (`[v6]:port`), returning the host without brackets.
fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

impl CaClient {
    /// A client of the CA at `addr` (`host:port`). Its TLS certificate must chain to a certificate in
    /// `root_pem` and be valid for `server_name` (default: the host of `addr`, a DNS name or an IP
    /// address). Connects lazily, on the first call, and reconnects as needed.
    pub fn new(addr: &str, root_pem: &str, server_name: Option<&str>) -> Result<CaClient, CaClientError> {
        let bad = |reason: String| CaClientError::Address { addr: addr.to_string(), reason };
        let (host, _) = split_host_port(addr).ok_or_else(|| bad("must be host:port".into()))?;
        let name = server_name.unwrap_or(host);
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| bad(format!("server name {name:?}: {e}")))?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| CaClientError::Root(TlsError::Config(e.to_string())))?
            .with_root_certificates(root_store(root_pem)?)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        // The URI only names the :authority header; the connector dials `addr` itself.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        let connector = TlsDialer { addr: addr.to_string(), server_name, tls: TlsConnector::from(Arc::new(config)) };
        let channel = endpoint.connect_with_connector_lazy(connector);
        Ok(CaClient { addr: addr.to_string(), client: IstioCertificateServiceClient::new(channel) })
    }

    /// Asks the CA to sign `csr_pem` for `ttl`, authenticating with `token`. Returns the chain, leaf
    /// first, root last.
    pub async fn sign(&self, csr_pem: String, ttl: Duration, token: &str) -> Result<Vec<String>, CaClientError> {
        let call = |status| CaClientError::Call { addr: self.addr.clone(), status };
        let validity_duration = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let mut request =
            tonic::Request::new(IstioCertificateRequest { csr: csr_pem, validity_duration, metadata: None });
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| call(tonic::Status::invalid_argument("the token is not a valid header value")))?;
        request.metadata_mut().insert("authorization", header);
        let chain = self.create_certificate(request).await.map_err(call)?.cert_chain;
        if chain.is_empty() {
            return Err(CaClientError::EmptyChain(self.addr.clone()));
        }
        Ok(chain)
    }
}

impl CaClient {
    /// The bare RPC over this client's TLS connection, with whatever metadata the caller set (tests
    /// of the CA's refusals use it to leave the token out).
    pub async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<IstioCertificateResponse, tonic::Status> {
        Ok(self.client.clone().create_certificate(request).await?.into_inner())
    }
}

/// Dials the CA and completes the TLS handshake (tonic's connector hook).
#[derive(Clone)]
struct TlsDialer {
    addr: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

impl tower::Service<Uri> for TlsDialer {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.addr).await?;
            tcp.set_nodelay(true)?;
            let tls = this.tls.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("127.0.0.1:15012"), Some(("127.0.0.1", 15012)));
        assert_eq!(split_host_port("[::1]:15012"), Some(("::1", 15012)));
        assert_eq!(split_host_port("istiod.istio-system.svc:15012"), Some(("istiod.istio-system.svc", 15012)));
        assert_eq!(split_host_port("istiod"), None);
        assert_eq!(split_host_port(":15012"), None);
    }
}
