//! Shared fixtures for the ADS component tests: a watch-channel snapshot source, an in-process server
//! on loopback, and thin SotW / Delta clients built on envoy-types' generated client.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, Node, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use sailplane::proxy::ProxyInfo;
use sailplane::xds::{Snapshot, SnapshotSource, StatusRegistry, XdsMetrics, XdsServer};
use sailplane_translator::{ResourceSet, TypeUrl};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// How long a test waits for a response that must come.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test listens to be sure a response does not come.
pub const QUIET: Duration = Duration::from_millis(300);

/// A snapshot source where every proxy shares one channel.
pub struct TestSource {
    tx: watch::Sender<Arc<Snapshot>>,
    push: AtomicUsize,
    pub connects: AtomicUsize,
    pub disconnects: AtomicUsize,
    pub connected_ids: Mutex<Vec<String>>,
}

impl TestSource {
    pub fn new(set: ResourceSet) -> Arc<TestSource> {
        let (tx, _) =
            watch::channel(Arc::new(Snapshot { resources: Arc::new(set), push: 0, changed_at: Instant::now() }));
        Arc::new(TestSource {
            tx,
            push: AtomicUsize::new(0),
            connects: AtomicUsize::new(0),
            disconnects: AtomicUsize::new(0),
            connected_ids: Mutex::new(Vec::new()),
        })
    }

    /// Publishes a new snapshot to every connected proxy.
    pub fn set(&self, set: ResourceSet) {
        let push = self.push.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        self.tx.send_replace(Arc::new(Snapshot { resources: Arc::new(set), push, changed_at: Instant::now() }));
    }

    pub fn current(&self) -> Arc<ResourceSet> {
        Arc::clone(&self.tx.borrow().resources)
    }
}

impl SnapshotSource for TestSource {
    fn connect(&self, proxy: &ProxyInfo) -> watch::Receiver<Arc<Snapshot>> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        self.connected_ids.lock().unwrap().push(proxy.id.clone());
        self.tx.subscribe()
    }

    fn disconnect(&self, _proxy: &ProxyInfo) {
        self.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

/// A running server.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub server: XdsServer,
    pub status: Arc<StatusRegistry>,
    pub metrics: Arc<XdsMetrics>,
    pub source: Arc<TestSource>,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(set: ResourceSet) -> TestServer {
        let source = TestSource::new(set);
        let status = Arc::new(StatusRegistry::new());
        let metrics = Arc::new(XdsMetrics::unregistered());
        let server = XdsServer::from_parts(source.clone(), Arc::clone(&status), Arc::clone(&metrics));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, rx) = oneshot::channel::<()>();
        let running = server.clone();
        let serving = tokio::spawn(async move {
            running
                .serve_with_shutdown(listener, async {
                    rx.await.ok();
                })
                .await
                .unwrap();
        });
        TestServer { addr, server, status, metrics, source, shutdown: Some(shutdown), serving: Some(serving) }
    }

    /// Shuts the server down gracefully and waits until it has stopped.
    pub async fn shutdown(&mut self) {
        drop(self.shutdown.take());
        let serving = self.serving.take().expect("server running");
        tokio::time::timeout(WAIT, serving).await.expect("graceful shutdown finished").unwrap();
    }

    pub async fn client(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        // The server task may not have started accepting yet; connecting retries briefly.
        let deadline = Instant::now() + WAIT;
        loop {
            match AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr)).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    pub async fn sotw(&self, pod: &str) -> Sotw {
        Sotw::open(self.client().await, node(pod)).await
    }

    pub async fn delta(&self, pod: &str) -> Delta {
        Delta::open(self.client().await, node(pod)).await
    }

    /// Waits until `cond` holds (the server records status asynchronously to the client).
    pub async fn eventually(&self, what: &str, cond: impl Fn(&TestServer) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

pub fn node(pod: &str) -> Node {
    Node {
        id: format!("sidecar~10.0.0.1~{pod}.default~default.svc.cluster.local"),
        cluster: format!("{pod}.default"),
        ..Default::default()
    }
}

pub fn proxy_id(pod: &str) -> String {
    node(pod).id
}

/// A state-of-the-world client.
pub struct Sotw {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    node: Option<Node>,
}

impl Sotw {
    /// Opens a stream. The node goes with the first request, as Envoy does.
    pub async fn open(mut client: AggregatedDiscoveryServiceClient<Channel>, node: Node) -> Sotw {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = client.stream_aggregated_resources(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
        Sotw { tx, rx, node: Some(node) }
    }

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
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    /// ACKs `resp` with the given subscription.
    pub fn ack(&mut self, resp: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    /// NACKs `resp`.
    pub fn nack(&mut self, resp: &DiscoveryResponse, names: &[&str], error: &str) {
        self.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: String::new(),
            response_nonce: resp.nonce.clone(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            error_detail: Some(RpcStatus { code: 3, message: error.into(), details: vec![] }),
            ..Default::default()
        });
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    /// The next message's result, raw (for error statuses).
    pub async fn next(&mut self) -> Result<Option<DiscoveryResponse>, tonic::Status> {
        tokio::time::timeout(WAIT, self.rx.message()).await.expect("stream neither answered nor ended")
    }

    /// Asserts nothing arrives for a while.
    pub async fn expect_silence(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!(
                "expected no response, got {:?}",
                r.map(|r| r.map(|r| (r.type_url, r.version_info, r.resources.len())))
            );
        }
    }
}

/// A Delta client.
pub struct Delta {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
}

impl Delta {
    pub async fn open(mut client: AggregatedDiscoveryServiceClient<Channel>, node: Node) -> Delta {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = client.delta_aggregated_resources(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
        Delta { tx, rx, node: Some(node) }
    }

    pub fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        if let Some(node) = self.node.take() {
            req.node = Some(node);
        }
        self.tx.send(req).unwrap();
    }

    pub fn subscribe(&mut self, t: TypeUrl, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        });
    }

    pub fn ack(&mut self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        });
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!("no response within {WAIT:?}"),
        }
    }

    pub async fn expect_silence(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!(
                "expected no response, got {:?}",
                r.map(|r| r.map(|r| (r.type_url, r.resources.len(), r.removed_resources)))
            );
        }
    }
}

/// Names of the resources in a SotW response, decoded from their `Any` (by the name field every
/// Envoy resource type has at tag 1).
pub fn sotw_names(resp: &DiscoveryResponse) -> Vec<String> {
    let set = ResourceSet::new();
    drop(set);
    resp.resources.iter().map(|any| decode_name(&any.type_url, &any.value)).collect()
}

pub fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

fn decode_name(type_url: &str, value: &[u8]) -> String {
    use prost::Message;
    match TypeUrl::parse(type_url).expect("known type") {
        TypeUrl::Cluster => Cluster::decode(value).unwrap().name,
        TypeUrl::Endpoint => ClusterLoadAssignment::decode(value).unwrap().cluster_name,
        TypeUrl::Listener => Listener::decode(value).unwrap().name,
        TypeUrl::Route => RouteConfiguration::decode(value).unwrap().name,
        TypeUrl::Secret => panic!("no secrets in these tests"),
    }
}

/// A config with EDS clusters `clusters`, one endpoint each on port `port`, one listener per name in
/// `listeners` and one route config per name in `routes`.
pub fn config(clusters: &[&str], port: u32, listeners: &[&str], routes: &[&str]) -> ResourceSet {
    let mut set = ResourceSet::new();
    for name in clusters {
        set.add(TypeUrl::Cluster, *name, &eds_cluster(name));
        set.add(TypeUrl::Endpoint, *name, &cla(name, port));
    }
    for name in listeners {
        set.add(TypeUrl::Listener, *name, &Listener { name: name.to_string(), ..Default::default() });
    }
    for name in routes {
        set.add(TypeUrl::Route, *name, &RouteConfiguration { name: name.to_string(), ..Default::default() });
    }
    set
}

pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        ..Default::default()
    }
}

pub fn cla(name: &str, port: u32) -> ClusterLoadAssignment {
    let address = Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "10.1.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    };
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(
                    envoy_types::pb::envoy::config::endpoint::v3::Endpoint {
                        address: Some(address),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
