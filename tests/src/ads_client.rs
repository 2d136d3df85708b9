//! The ADS test clients: [`Sotw`] (state of the world) and [`Delta`] streams on any gRPC channel
//! (the in-process [`crate::ads_server::TestServer`], or the real binary over plaintext or mTLS, see
//! [`crate::grpc`]), sidecar nodes, and decoding of what comes back (resource names, secrets).
//!
//! The node goes with the first request, as Envoy sends it. Waiting for a response that must come
//! panics after the client's timeout ([`WAIT`] unless [`Sotw::with_timeout`] /
//! [`Delta::with_timeout`] set another, e.g. for a real binary on a busy machine).

#![allow(clippy::unwrap_used)] // test helpers fail the test on setup errors

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use sailplane_translator::TypeUrl;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// How long a client waits for a response that must come (in-process servers).
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a client listens to be sure a response does not come.
pub const QUIET: Duration = Duration::from_millis(300);

/// An Istio-style node of sidecar `pod` in namespace `default` at 10.0.0.1 (what the in-process
/// tests use).
pub fn node(pod: &str) -> Node {
    sidecar_node("10.0.0.1", pod, "default")
}

/// The node id of [`node`]`(pod)`.
pub fn proxy_id(pod: &str) -> String {
    node(pod).id
}

/// An Istio-style node of sidecar `pod` in `ns` at `ip`: id `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
pub fn sidecar_node(ip: &str, pod: &str, ns: &str) -> Node {
    Node {
        id: format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
        cluster: format!("{pod}.{ns}"),
        ..Default::default()
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// A state-of-the-world ADS stream.
pub struct Sotw {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
    wait: Duration,
}

impl Sotw {
    /// Opens a stream on `channel` for `node`; `Err` when the server refuses it.
    pub async fn open(channel: Channel, node: Node) -> Result<Sotw, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let rx = client.stream_aggregated_resources(UnboundedReceiverStream::new(rx)).await?.into_inner();
        Ok(Sotw { tx, rx, node: Some(node), wait: WAIT })
    }

    /// Waits `wait` (instead of [`WAIT`]) for responses that must come.
    pub fn with_timeout(mut self, wait: Duration) -> Sotw {
        self.wait = wait;
        self
    }

    /// Sends `req` (with the node, if it is the first).
    pub fn send(&mut self, mut req: DiscoveryRequest) {
        if let Some(node) = self.node.take() {
            req.node = Some(node);
        }
        self.tx.send(req).unwrap();
    }

    /// Requests a type (no ACK).
    pub fn request(&mut self, t: TypeUrl, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names: strings(names),
            ..Default::default()
        });
    }

    /// Requests secrets by name.
    pub fn request_secrets(&mut self, names: &[&str]) {
        self.request(TypeUrl::Secret, names);
    }

    /// ACKs `resp` with the given subscription.
    pub fn ack(&mut self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: strings(names),
            ..Default::default()
        });
    }

    /// NACKs `resp`.
    pub fn nack(&mut self, resp: &DiscoveryResponse, names: &[&str], error: &str) {
        self.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: String::new(),
            response_nonce: resp.nonce.clone(),
            resource_names: strings(names),
            error_detail: Some(RpcStatus { code: 3, message: error.into(), details: vec![] }),
            ..Default::default()
        });
    }

    /// The next response; panics if the stream ends or nothing comes in time.
    pub async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(self.wait, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!("no response within {:?}", self.wait),
        }
    }

    /// The next response, or the stream's error status (`Unknown` "stream ended" if it ended
    /// without one); panics if neither comes in time.
    pub async fn next(&mut self) -> Result<DiscoveryResponse, tonic::Status> {
        match tokio::time::timeout(self.wait, self.rx.message()).await {
            Ok(Ok(Some(r))) => Ok(r),
            Ok(Ok(None)) => Err(tonic::Status::unknown("stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("stream neither answered nor ended within {:?}", self.wait),
        }
    }

    /// Asserts nothing arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!(
                "expected no response, got {:?}",
                r.map(|r| r.map(|r| (r.type_url, r.version_info, r.resources.len())))
            );
        }
    }
}

/// A Delta ADS stream.
pub struct Delta {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
    wait: Duration,
}

impl Delta {
    /// Opens a stream on `channel` for `node`; panics if the server refuses it.
    pub async fn open(channel: Channel, node: Node) -> Delta {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let rx = client.delta_aggregated_resources(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
        Delta { tx, rx, node: Some(node), wait: WAIT }
    }

    /// Waits `wait` (instead of [`WAIT`]) for responses that must come.
    pub fn with_timeout(mut self, wait: Duration) -> Delta {
        self.wait = wait;
        self
    }

    /// Sends `req` (with the node, if it is the first).
    pub fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        if let Some(node) = self.node.take() {
            req.node = Some(node);
        }
        self.tx.send(req).unwrap();
    }

    /// Subscribes to `names` of type `t`.
    pub fn subscribe(&mut self, t: TypeUrl, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names_subscribe: strings(names),
            ..Default::default()
        });
    }

    /// ACKs `resp`.
    pub fn ack(&mut self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        });
    }

    /// The next response; panics if the stream ends or nothing comes in time.
    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(self.wait, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!("no response within {:?}", self.wait),
        }
    }

    /// Asserts nothing arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!(
                "expected no response, got {:?}",
                r.map(|r| r.map(|r| (r.type_url, r.resources.len(), r.removed_resources)))
            );
        }
    }
}

/// Names of the resources in a SotW response, decoded from their `Any` (clusters, endpoints,
/// listeners, routes; see [`secrets_of`] for secrets).
pub fn sotw_names(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|any| decode_name(&any.type_url, &any.value)).collect()
}

/// Names of the resources in a Delta response.
pub fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

fn decode_name(type_url: &str, value: &[u8]) -> String {
    match TypeUrl::parse(type_url).expect("known type") {
        TypeUrl::Cluster => Cluster::decode(value).unwrap().name,
        TypeUrl::Endpoint => ClusterLoadAssignment::decode(value).unwrap().cluster_name,
        TypeUrl::Listener => Listener::decode(value).unwrap().name,
        TypeUrl::Route => RouteConfiguration::decode(value).unwrap().name,
        TypeUrl::Secret => panic!("sotw_names decodes no secrets: use secrets_of"),
    }
}

/// What a decoded secret holds: `(name, "cert", chain, key)` or `(name, "ca", bundle, "")`.
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

/// The secrets of a SotW response, decoded ([`secret_content`]) and sorted by name.
pub fn secrets_of(resp: &DiscoveryResponse) -> Vec<(String, String, String, String)> {
    assert_eq!(resp.type_url, TypeUrl::Secret.as_str());
    let mut v: Vec<_> = resp.resources.iter().map(|a| secret_content(&a.value)).collect();
    v.sort();
    v
}
