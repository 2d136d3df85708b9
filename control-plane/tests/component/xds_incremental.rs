//! Work in proportion to the change, seen from outside: snapshots that say what changed
//! (`Snapshot::changes`, as the push stage publishes them) make an endpoint change cost one
//! `ClusterLoadAssignment` on the wire, over state of the world as over Delta; unchanged snapshots
//! send nothing; and requests are still answered in full. (That streams with equal subscriptions
//! share one set is tested in `sotw.rs` and `delta.rs`: the count of interned sets is crate-private.)

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message;
use sailplane::proxy::ProxyInfo;
use sailplane::xds::{Changes, Snapshot, SnapshotSource, StatusRegistry, SyncState, XdsMetrics, XdsServer};
use sailplane_tests::ads_client::*;
use sailplane_tests::ads_server::{cla, config, eds_cluster};
use sailplane_translator::{ResourceSet, TypeUrl};
use tokio::sync::{oneshot, watch};
use tonic::transport::{Channel, Endpoint};

// ---------------------------------------------------------------------------------------------
// A source that publishes snapshots with their changes, as `push.rs` does.

struct ChangeSource {
    tx: watch::Sender<Arc<Snapshot>>,
    push: AtomicU64,
}

impl ChangeSource {
    fn new(set: ResourceSet) -> Arc<ChangeSource> {
        let (tx, _) = watch::channel(Arc::new(Snapshot::new(Arc::new(set), 0, Instant::now())));
        Arc::new(ChangeSource { tx, push: AtomicU64::new(0) })
    }

    fn current(&self) -> Arc<ResourceSet> {
        Arc::clone(&self.tx.borrow().resources)
    }

    /// Publishes `next` with the changes from the current set.
    fn publish(&self, next: Arc<ResourceSet>) {
        let from = self.current();
        let changes = Changes::between(&from, &next);
        let push = self.push.fetch_add(1, Ordering::SeqCst) + 1;
        self.tx.send_replace(Arc::new(Snapshot {
            resources: next,
            push,
            changed_at: Instant::now(),
            changes: Some(Arc::new(changes)),
        }));
    }

    /// The current set with `edit` applied to a clone (the other types' maps stay shared).
    fn edit(&self, edit: impl FnOnce(&mut ResourceSet)) -> Arc<ResourceSet> {
        let mut next = (*self.current()).clone();
        edit(&mut next);
        Arc::new(next)
    }
}

impl SnapshotSource for ChangeSource {
    fn connect(&self, _proxy: &ProxyInfo) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    fn disconnect(&self, _proxy: &ProxyInfo) {}
}

struct Server {
    addr: std::net::SocketAddr,
    status: Arc<StatusRegistry>,
    metrics: Arc<XdsMetrics>,
    source: Arc<ChangeSource>,
    _shutdown: oneshot::Sender<()>,
}

impl Server {
    async fn start(set: ResourceSet) -> Server {
        let source = ChangeSource::new(set);
        let status = Arc::new(StatusRegistry::new());
        let metrics = Arc::new(XdsMetrics::unregistered());
        let server = XdsServer::from_parts(source.clone(), Arc::clone(&status), Arc::clone(&metrics));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            server
                .serve_with_shutdown(listener, async {
                    rx.await.ok();
                })
                .await
                .unwrap();
        });
        Server { addr, status, metrics, source, _shutdown: shutdown }
    }

    async fn channel(&self) -> Channel {
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

    async fn sotw(&self, pod: &str) -> Sotw {
        Sotw::open(self.channel().await, node(pod)).await.unwrap()
    }

    async fn delta(&self, pod: &str) -> Delta {
        Delta::open(self.channel().await, node(pod)).await
    }

    async fn wait_until(&self, what: &str, cond: impl Fn(&Server) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// An equal set with maps of its own (nothing `same_map`).
fn rebuilt(set: &ResourceSet) -> Arc<ResourceSet> {
    let mut new = ResourceSet::new();
    for t in TypeUrl::ALL {
        for r in set.of(t).values() {
            new.insert_shared(t, Arc::clone(r));
        }
    }
    Arc::new(new)
}

const CLUSTERS: [&str; 3] = ["a", "b", "c"];

fn base() -> ResourceSet {
    config(&CLUSTERS, 80, &["l1"], &["r1", "r2"])
}

/// `set` with the endpoints of `name` moved to `port`.
fn move_endpoint(set: &mut ResourceSet, name: &str, port: u32) {
    set.add(TypeUrl::Endpoint, name, &cla(name, port));
}

/// A SotW client subscribed to every type, everything acknowledged; returns the EDS response.
async fn synced_sotw(srv: &Server, pod: &str) -> (Sotw, DiscoveryResponse) {
    let mut c = srv.sotw(pod).await;
    let mut eds = None;
    for (t, names) in [
        (TypeUrl::Cluster, vec![]),
        (TypeUrl::Endpoint, CLUSTERS.to_vec()),
        (TypeUrl::Listener, vec![]),
        (TypeUrl::Route, vec!["r1", "r2"]),
    ] {
        c.request(t, &names);
        let r = c.recv().await;
        assert_eq!(r.type_url, t.as_str());
        c.ack(&r, &names);
        if t == TypeUrl::Endpoint {
            eds = Some(r);
        }
    }
    let id = proxy_id(pod);
    srv.wait_until("all acked", |s| {
        [TypeUrl::Cluster, TypeUrl::Endpoint, TypeUrl::Listener, TypeUrl::Route]
            .iter()
            .all(|t| s.status.state(&id, *t) == Some(SyncState::Synced))
    })
    .await;
    (c, eds.unwrap())
}

#[tokio::test]
async fn sotw_one_cla_change_sends_one_cla() {
    let srv = Server::start(base()).await;
    let (mut c, full) = synced_sotw(&srv, "p1").await;
    assert_eq!(sotw_names(&full), CLUSTERS, "the first response is complete");

    let next = srv.source.edit(|s| move_endpoint(s, "b", 81));
    srv.source.publish(Arc::clone(&next));
    let eds = c.recv().await;
    assert_eq!(eds.type_url, TypeUrl::Endpoint.as_str(), "EDS only, no CDS/LDS/RDS");
    assert_eq!(sotw_names(&eds), ["b"], "exactly the one changed assignment");
    assert_eq!(eds.version_info, next.type_version(TypeUrl::Endpoint), "the whole type's version");
    assert_ne!(eds.version_info, full.version_info);
    eprintln!(
        "sotw EDS bytes: complete response {} B, after one CLA change {} B",
        full.encoded_len(),
        eds.encoded_len()
    );
    c.ack(&eds, &CLUSTERS);
    c.expect_silence().await;
    // The config dump still shows everything the proxy holds.
    srv.wait_until("eds acked", |s| s.status.state(&proxy_id("p1"), TypeUrl::Endpoint) == Some(SyncState::Synced))
        .await;
    let sent = srv.status.sent_by_type(&proxy_id("p1")).unwrap();
    let eds_sent = sent.iter().find(|s| s.type_url == TypeUrl::Endpoint).unwrap();
    assert_eq!(eds_sent.resources.len(), 3);
    assert_eq!(eds_sent.version, eds.version_info);

    // A change to a name this proxy did not subscribe sends nothing.
    let next = srv.source.edit(|s| {
        s.add(TypeUrl::Cluster, "z", &eds_cluster("z"));
        move_endpoint(s, "z", 80);
    });
    srv.source.publish(next);
    let cds = c.recv().await;
    assert_eq!(cds.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(sotw_names(&cds), ["a", "b", "c", "z"], "CDS is always complete");
    // After CDS, EDS follows (complete), as Envoy warms clusters until their endpoints arrive.
    let eds = c.recv().await;
    assert_eq!(eds.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(sotw_names(&eds), CLUSTERS);
    c.ack(&cds, &[]);
    c.ack(&eds, &CLUSTERS);
    c.expect_silence().await;

    // A route change: RDS carries only the changed route.
    let next = srv.source.edit(|s| {
        s.add(
            TypeUrl::Route,
            "r2",
            &envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
                name: "r2".into(),
                validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
                ..Default::default()
            },
        );
    });
    srv.source.publish(next);
    let rds = c.recv().await;
    assert_eq!(rds.type_url, TypeUrl::Route.as_str());
    assert_eq!(sotw_names(&rds), ["r2"]);
    c.ack(&rds, &["r1", "r2"]);
    c.expect_silence().await;
}

#[tokio::test]
async fn sotw_unchanged_snapshot_sends_nothing() {
    let srv = Server::start(base()).await;
    let (mut c, _) = synced_sotw(&srv, "p1").await;
    let pushes: u64 = TypeUrl::ALL.iter().map(|t| srv.metrics.pushes_of(*t)).sum();
    // The very same set again, and an equal set built anew.
    srv.source.publish(srv.source.current());
    c.expect_silence().await;
    srv.source.publish(Arc::new(base()));
    c.expect_silence().await;
    srv.source.publish(rebuilt(&srv.source.current()));
    c.expect_silence().await;
    let after: u64 = TypeUrl::ALL.iter().map(|t| srv.metrics.pushes_of(*t)).sum();
    assert_eq!(after, pushes);
}

#[tokio::test]
async fn sotw_requests_are_answered_in_full() {
    let srv = Server::start(base()).await;
    let (mut c, _) = synced_sotw(&srv, "p1").await;
    let next = srv.source.edit(|s| move_endpoint(s, "a", 81));
    srv.source.publish(next);
    let partial = c.recv().await;
    assert_eq!(sotw_names(&partial), ["a"]);
    // A re-subscription (an ACK with other names) gets every subscribed resource.
    c.ack(&partial, &["a", "b"]);
    let resub = c.recv().await;
    assert_eq!(sotw_names(&resub), ["a", "b"]);
    assert_eq!(resub.version_info, partial.version_info);
    c.ack(&resub, &["a", "b"]);
    c.expect_silence().await;
    // A request without a nonce (Envoy asking again) too.
    c.send(DiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        resource_names: vec!["a".into(), "b".into()],
        ..Default::default()
    });
    let again = c.recv().await;
    assert_eq!(sotw_names(&again), ["a", "b"]);
    c.ack(&again, &["a", "b"]);
    srv.wait_until("acked", |s| s.status.state(&proxy_id("p1"), TypeUrl::Endpoint) == Some(SyncState::Synced)).await;

    // After a NACK the next response is complete: the proxy kept an older config.
    let next = srv.source.edit(|s| move_endpoint(s, "a", 82));
    srv.source.publish(next);
    let partial = c.recv().await;
    assert_eq!(sotw_names(&partial), ["a"]);
    c.nack(&partial, &["a", "b"], "bad endpoint");
    c.expect_silence().await;
    srv.wait_until("rejected", |s| s.status.state(&proxy_id("p1"), TypeUrl::Endpoint) == Some(SyncState::Error)).await;
    let next = srv.source.edit(|s| move_endpoint(s, "b", 83));
    srv.source.publish(next);
    let full = c.recv().await;
    assert_eq!(sotw_names(&full), ["a", "b"]);
    c.ack(&full, &["a", "b"]);
    srv.wait_until("acked", |s| s.status.state(&proxy_id("p1"), TypeUrl::Endpoint) == Some(SyncState::Synced)).await;

    // A change while a response is unacknowledged: complete as well (it may yet be rejected).
    let next = srv.source.edit(|s| move_endpoint(s, "a", 84));
    srv.source.publish(next);
    let unacked = c.recv().await;
    assert_eq!(sotw_names(&unacked), ["a"]);
    let next = srv.source.edit(|s| move_endpoint(s, "b", 85));
    srv.source.publish(next);
    let full = c.recv().await;
    assert_eq!(sotw_names(&full), ["a", "b"]);

    // A new stream (a reconnect) gets the full set.
    let (_c2, eds) = synced_sotw(&srv, "p2").await;
    assert_eq!(sotw_names(&eds), CLUSTERS);
}

#[tokio::test]
async fn delta_one_cla_change_sends_one_cla() {
    let srv = Server::start(base()).await;
    let mut c = srv.delta("p1").await;
    c.subscribe(TypeUrl::Cluster, &[]);
    let cds = c.recv().await;
    assert_eq!(delta_names(&cds), CLUSTERS);
    c.ack(&cds);
    c.subscribe(TypeUrl::Endpoint, &CLUSTERS);
    let eds = c.recv().await;
    assert_eq!(delta_names(&eds), CLUSTERS, "the first response is complete");
    c.ack(&eds);
    c.expect_silence().await;

    let next = srv.source.edit(|s| move_endpoint(s, "c", 81));
    srv.source.publish(next);
    let one = c.recv().await;
    assert_eq!(one.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(delta_names(&one), ["c"]);
    assert!(one.removed_resources.is_empty());
    c.ack(&one);
    c.expect_silence().await;

    // Unchanged snapshots (the same set, an equal new one) send nothing.
    srv.source.publish(srv.source.current());
    c.expect_silence().await;
    srv.source.publish(srv.source.edit(|_| {}));
    c.expect_silence().await;
    srv.source.publish(rebuilt(&srv.source.current()));
    c.expect_silence().await;

    // A removed assignment is announced; a new cluster comes with its endpoints.
    let next = srv.source.edit(|s| {
        s.remove(TypeUrl::Endpoint, "a");
        s.add(TypeUrl::Cluster, "d", &eds_cluster("d"));
        move_endpoint(s, "d", 80);
    });
    srv.source.publish(next);
    let cds = c.recv().await;
    assert_eq!(delta_names(&cds), ["d"]);
    let eds = c.recv().await;
    assert_eq!(eds.type_url, TypeUrl::Endpoint.as_str());
    assert!(delta_names(&eds).is_empty(), "d is not subscribed");
    assert_eq!(eds.removed_resources, ["a"]);
    c.ack(&cds);
    c.ack(&eds);
    c.expect_silence().await;
}

/// What one endpoint change costs on the wire at a realistic size (3,000 clusters).
#[tokio::test]
async fn sotw_bytes_for_one_cla_change_at_scale() {
    let names: Vec<String> = (0..3000).map(|i| format!("outbound|80||svc-{i:04}.default.svc.cluster.local")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let srv = Server::start(config(&refs, 80, &[], &[])).await;
    let mut c = srv.sotw("p1").await;
    c.request(TypeUrl::Endpoint, &refs);
    let full = c.recv().await;
    assert_eq!(full.resources.len(), 3000);
    c.ack(&full, &refs);
    srv.wait_until("acked", |s| s.status.state(&proxy_id("p1"), TypeUrl::Endpoint) == Some(SyncState::Synced)).await;
    let next = srv.source.edit(|s| move_endpoint(s, refs[1234], 81));
    srv.source.publish(next);
    let one = c.recv().await;
    assert_eq!(sotw_names(&one), [refs[1234]]);
    eprintln!("3,000 CLAs: complete EDS {} B, one CLA change {} B", full.encoded_len(), one.encoded_len());
    assert!(one.encoded_len() * 100 < full.encoded_len());
}
