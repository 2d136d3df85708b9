//! The control plane in process: [`TestServer`] runs sailplane's `XdsServer` on loopback, fed by a
//! [`TestSource`] (one watch channel every proxy shares, so a test publishes snapshots by hand), and
//! the resource sets to serve ([`config`], [`eds_cluster`], [`cla`]). Clients are in
//! [`crate::ads_client`].

#![allow(clippy::unwrap_used)] // test helpers fail the test on setup errors

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use sailplane::proxy::ProxyInfo;
use sailplane::xds::{Snapshot, SnapshotSource, StatusRegistry, XdsMetrics, XdsServer};
use sailplane_translator::{ResourceSet, TypeUrl};
use tokio::sync::{oneshot, watch};
use tonic::transport::{Channel, Endpoint};

use crate::ads_client::{Delta, Sotw, node};
use crate::wait::{eventually, holds};

use crate::ads_client::WAIT;

/// A snapshot source where every proxy shares one channel.
pub struct TestSource {
    tx: watch::Sender<Arc<Snapshot>>,
    push: AtomicUsize,
    /// How many streams connected.
    pub connects: AtomicUsize,
    /// How many streams disconnected.
    pub disconnects: AtomicUsize,
    /// The proxy ids that connected, in order.
    pub connected_ids: Mutex<Vec<String>>,
}

impl TestSource {
    /// A source serving `set` (push 0).
    pub fn new(set: ResourceSet) -> Arc<TestSource> {
        let (tx, _) = watch::channel(Arc::new(Snapshot::new(Arc::new(set), 0, Instant::now())));
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
        self.tx.send_replace(Arc::new(Snapshot::new(Arc::new(set), push, Instant::now())));
    }

    /// The resources published last.
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

/// A running in-process ADS server on 127.0.0.1 (plaintext gRPC).
pub struct TestServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The server itself.
    pub server: XdsServer,
    /// Per-proxy, per-type sync state (what `/debug/syncz` shows).
    pub status: Arc<StatusRegistry>,
    /// Its metrics (not registered anywhere).
    pub metrics: Arc<XdsMetrics>,
    /// Where its snapshots come from.
    pub source: Arc<TestSource>,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on a free port serving `set`.
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

    /// A channel to the server. The server task may not have started accepting yet; connecting
    /// retries briefly.
    pub async fn channel(&self) -> Channel {
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr)).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            match endpoint.connect().await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// A SotW stream for sidecar `pod` in namespace `default` ([`node`]).
    pub async fn sotw(&self, pod: &str) -> Sotw {
        Sotw::open(self.channel().await, node(pod)).await.unwrap()
    }

    /// A Delta stream for sidecar `pod` in namespace `default` ([`node`]).
    pub async fn delta(&self, pod: &str) -> Delta {
        Delta::open(self.channel().await, node(pod)).await
    }

    /// Waits until `cond` holds (the server records status asynchronously to the client), with
    /// [`crate::wait::eventually`] and [`WAIT`]; panics naming `what` if it never does.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&TestServer) -> bool) {
        eventually(what, WAIT, || std::future::ready(holds(cond(self)))).await.unwrap();
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

/// An EDS cluster named `name`.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        ..Default::default()
    }
}

/// The load assignment of cluster `name`: one endpoint, 10.1.0.1:`port`.
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
