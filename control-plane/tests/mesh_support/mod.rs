//! Fixtures for the secure-port tests: the real `sailplane discovery` binary on loopback, workload
//! certificates from its CA, gRPC channels to its secure port with or without a client certificate,
//! and small ADS clients.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use hyper_util::rt::TokioIo;
use prost::Message;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sailplane::agent::ca_client::CaClient;
use sailplane::agent::keys::{self, KeyType};
use sailplane::ca::token::TokenAuthority;
use sailplane::identity::Identity;
use sailplane::tls;
use sailplane_translator::TypeUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a test waits for something that must happen (generous: the machine is shared).
pub const WAIT: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `sailplane discovery` on 127.0.0.1 with its own ports and CA directory; killed on drop.
pub struct Discovery {
    child: Child,
    pub xds_port: u16,
    pub secure_port: u16,
    pub monitoring_port: u16,
    pub ca_dir: PathBuf,
    pub log: PathBuf,
}

impl Discovery {
    /// Starts it on `config` (state in `scratch`) and waits for `/ready`.
    pub async fn start(config: &Path, scratch: &Path) -> Discovery {
        let (xds_port, secure_port, monitoring_port) = (free_port(), free_port(), free_port());
        let ca_dir = scratch.join("ca");
        let log = scratch.join("discovery.log");
        let out = File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sailplane"))
            .arg("discovery")
            .arg("--config")
            .arg(config)
            .args(["--listen-address", "127.0.0.1"])
            .args(["--xds-port", &xds_port.to_string()])
            .args(["--secure-port", &secure_port.to_string()])
            .args(["--monitoring-port", &monitoring_port.to_string()])
            .args(["--debounce-after", "50ms"])
            .arg("--ca-dir")
            .arg(&ca_dir)
            .env("SAILPLANE_LOG", "info,sailplane=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let d = Discovery { child, xds_port, secure_port, monitoring_port, ca_dir, log };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((200, _)) = http_get(d.monitoring_port, "/ready").await {
                break;
            }
            assert!(Instant::now() < deadline, "discovery not ready:\n{}", d.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `127.0.0.1:<secure port>`.
    pub fn secure_address(&self) -> String {
        format!("127.0.0.1:{}", self.secure_port)
    }

    /// The mesh root (created by discovery in its CA directory).
    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.ca_dir.join("root-cert.pem")).unwrap()
    }

    /// A token for `ns/sa`, signed with discovery's token key.
    pub fn token(&self, ns: &str, sa: &str) -> String {
        TokenAuthority::load_or_create(&self.ca_dir).unwrap().mint(ns, sa, Duration::from_secs(3600)).unwrap()
    }

    /// A workload certificate (chain PEM, key PEM) for `ns/sa` from discovery's CA, as the agent
    /// gets it.
    pub async fn workload_cert(&self, ns: &str, sa: &str) -> (String, String) {
        let identity =
            Identity { trust_domain: "cluster.local".into(), namespace: ns.into(), service_account: sa.into() };
        let k = keys::generate(KeyType::Ec, &identity).unwrap();
        let client = CaClient::new(&self.secure_address(), &self.root_pem(), None).unwrap();
        let chain = client.sign(k.csr_pem.clone(), Duration::from_secs(3600), &self.token(ns, sa)).await.unwrap();
        (chain.concat(), k.key_pem.clone())
    }

    /// `/debug/syncz` as JSON.
    pub async fn syncz(&self) -> serde_json::Value {
        let (_, body) = http_get(self.monitoring_port, "/debug/syncz").await.unwrap();
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.1 GET on 127.0.0.1: status and body (`None` if nothing answered).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.ok()?.ok()?;
    parse_http(&buf)
}

/// Status and body of an HTTP/1.1 response (chunked bodies decoded).
pub fn parse_http(buf: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Some((status, body))
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(after.get(..n)?);
        rest = after.get(n + 2..)?;
    }
}

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

/// An Istio-style node of a sidecar `pod` in `ns`.
pub fn node(pod: &str, ns: &str) -> Node {
    Node {
        id: format!("sidecar~127.0.0.1~{pod}.{ns}~{ns}.svc.cluster.local"),
        cluster: format!("{pod}.{ns}"),
        ..Default::default()
    }
}

/// A state-of-the-world ADS client.
pub struct Sotw {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
}

impl Sotw {
    /// Opens a stream; `Err` when the server refuses it.
    pub async fn open(channel: Channel, node: Node) -> Result<Sotw, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let rx = client.stream_aggregated_resources(UnboundedReceiverStream::new(rx)).await?.into_inner();
        Ok(Sotw { tx, rx, node: Some(node) })
    }

    fn send(&mut self, mut req: DiscoveryRequest) {
        if let Some(node) = self.node.take() {
            req.node = Some(node);
        }
        self.tx.send(req).unwrap();
    }

    /// Requests secrets by name.
    pub fn request_secrets(&mut self, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: TypeUrl::Secret.as_str().into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    /// ACKs `resp`, keeping `names`.
    pub fn ack(&mut self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    /// The next response, or the stream's error.
    pub async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::unknown("stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }
}

/// A Delta ADS client.
pub struct Delta {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    /// Opens a stream and subscribes to secrets `names`.
    pub async fn subscribe_secrets(channel: Channel, node: Node, names: &[&str]) -> Delta {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let rx = client.delta_aggregated_resources(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
        tx.send(DeltaDiscoveryRequest {
            node: Some(node),
            type_url: TypeUrl::Secret.as_str().into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .unwrap();
        Delta { tx, rx }
    }

    /// The next response.
    pub async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message()).await.expect("a delta response in time").unwrap().unwrap()
    }

    /// ACKs `resp`.
    pub fn ack(&mut self, resp: &DeltaDiscoveryResponse) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: resp.type_url.clone(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            })
            .unwrap();
    }
}

/// What a decoded secret holds: `("cert", chain, key)` or `("ca", bundle, "")`.
pub fn secret_content(any_value: &[u8]) -> (String, String, String, String) {
    let s = Secret::decode(any_value).unwrap();
    let bytes = |d: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>| -> String {
        use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
        match d.and_then(|d| d.specifier.as_ref()) {
            Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
            Some(Specifier::InlineString(s)) => s.clone(),
            other => format!("{other:?}"),
        }
    };
    match s.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            (s.name, "cert".into(), bytes(t.certificate_chain.as_ref()), bytes(t.private_key.as_ref()))
        }
        Some(secret::Type::ValidationContext(v)) => (s.name, "ca".into(), bytes(v.trusted_ca.as_ref()), String::new()),
        other => panic!("unexpected secret {other:?}"),
    }
}

/// The secrets of a SotW response, decoded and sorted by name.
pub fn secrets_of(resp: &DiscoveryResponse) -> Vec<(String, String, String, String)> {
    assert_eq!(resp.type_url, TypeUrl::Secret.as_str());
    let mut v: Vec<_> = resp.resources.iter().map(|a| secret_content(&a.value)).collect();
    v.sort();
    v
}

/// A Secret YAML (stringData) with `data` pairs.
pub fn mk_secret(ns: &str, name: &str, kind: &str, data: &[(&str, &str)]) -> String {
    let data: String = data.iter().map(|(k, v)| format!("  {k}: {}\n", serde_json::to_string(v).unwrap())).collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: {kind}\nstringData:\n{data}"
    )
}
