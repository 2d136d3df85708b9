//! Delta ADS against an in-process client: wildcard and named subscriptions, changed-only pushes,
//! removals, ACK/NACK, and reconnect with `initial_resource_versions`.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use sailplane::xds::SyncState;
use sailplane_tests::ads_client::*;
use sailplane_tests::ads_server::*;
use sailplane_translator::TypeUrl;

fn versions(set: &sailplane_translator::ResourceSet, t: TypeUrl) -> HashMap<String, String> {
    set.of(t).iter().map(|(n, r)| (n.clone(), r.version.clone())).collect()
}

#[tokio::test]
async fn wildcard_then_only_changes_and_removals() {
    let srv = TestServer::start(config(&["a", "b", "c"], 80, &["l1"], &[])).await;
    let mut c = srv.delta("p1").await;
    c.subscribe(TypeUrl::Cluster, &[]);
    let first = c.recv().await;
    assert_eq!(first.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(delta_names(&first), ["a", "b", "c"]);
    assert!(first.removed_resources.is_empty());
    let set = srv.source.current();
    for r in &first.resources {
        assert_eq!(r.version, set.get(TypeUrl::Cluster, &r.name).unwrap().version);
    }
    assert_eq!(first.system_version_info, set.type_version(TypeUrl::Cluster));
    c.ack(&first);
    c.expect_silence().await;
    let id = proxy_id("p1");
    srv.wait_until("cds synced", |s| s.status.state(&id, TypeUrl::Cluster) == Some(SyncState::Synced)).await;

    // "b" changes (becomes a STATIC cluster), "c" goes, "d" comes; "a" is untouched.
    let mut next = config(&["a", "d"], 80, &["l1"], &[]);
    next.add(
        TypeUrl::Cluster,
        "b",
        &envoy_types::pb::envoy::config::cluster::v3::Cluster { name: "b".into(), ..Default::default() },
    );
    srv.source.set(next);
    let change = c.recv().await;
    assert_eq!(delta_names(&change), ["b", "d"]);
    assert_eq!(change.removed_resources, ["c"]);
    c.ack(&change);

    // Only endpoints change: CDS subscribers get nothing.
    let mut next = config(&["a", "d"], 90, &["l1"], &[]);
    next.add(
        TypeUrl::Cluster,
        "b",
        &envoy_types::pb::envoy::config::cluster::v3::Cluster { name: "b".into(), ..Default::default() },
    );
    srv.source.set(next);
    c.expect_silence().await;
}

#[tokio::test]
async fn named_subscribe_and_unsubscribe() {
    let srv = TestServer::start(config(&["a", "b", "c"], 80, &[], &[])).await;
    let mut c = srv.delta("p1").await;
    c.subscribe(TypeUrl::Endpoint, &["a", "nope"]);
    let first = c.recv().await;
    assert_eq!(delta_names(&first), ["a"]);
    assert_eq!(first.removed_resources, ["nope"], "a missing name is announced as absent");
    c.ack(&first);

    // Subscribe to one more: only it is sent.
    c.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        resource_names_subscribe: vec!["b".into()],
        ..Default::default()
    });
    let more = c.recv().await;
    assert_eq!(delta_names(&more), ["b"]);
    assert!(more.removed_resources.is_empty());
    c.ack(&more);

    // Unsubscribe "a", then change every endpoint: only "b" is pushed.
    c.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        resource_names_unsubscribe: vec!["a".into()],
        ..Default::default()
    });
    c.expect_silence().await;
    srv.source.set(config(&["a", "b", "c"], 81, &[], &[]));
    let change = c.recv().await;
    assert_eq!(delta_names(&change), ["b"]);
    c.ack(&change);
    c.expect_silence().await;
}

#[tokio::test]
async fn reconnect_with_initial_versions_sends_only_the_difference() {
    let srv = TestServer::start(config(&["a", "b", "c"], 80, &[], &[])).await;
    let set = srv.source.current();
    let mut held = versions(&set, TypeUrl::Cluster);
    // The client holds "a" current, "b" at an old version, and "gone", which no longer exists.
    held.insert("b".into(), "0000000000000000".into());
    held.insert("gone".into(), "1111111111111111".into());
    let mut c = srv.delta("p1").await;
    c.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        resource_names_subscribe: vec!["*".into()],
        initial_resource_versions: held,
        ..Default::default()
    });
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["b"], "a and c match: not resent");
    assert_eq!(r.removed_resources, ["gone"]);
    c.ack(&r);
    c.expect_silence().await;

    // A reconnect holding exactly the current config gets an empty answer (init must not wait).
    let mut c2 = srv.delta("p2").await;
    c2.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        initial_resource_versions: versions(&set, TypeUrl::Cluster),
        ..Default::default()
    });
    let r2 = c2.recv().await;
    assert!(r2.resources.is_empty() && r2.removed_resources.is_empty());
    c2.ack(&r2);
    c2.expect_silence().await;
}

#[tokio::test]
async fn nack_and_stale_nonce() {
    let srv = TestServer::start(config(&["a"], 80, &["l1"], &[])).await;
    let mut c = srv.delta("p1").await;
    c.subscribe(TypeUrl::Listener, &[]);
    let first = c.recv().await;
    c.send(DeltaDiscoveryRequest {
        type_url: TypeUrl::Listener.as_str().into(),
        response_nonce: first.nonce.clone(),
        error_detail: Some(RpcStatus { code: 3, message: "listener l1: bad filter".into(), details: vec![] }),
        ..Default::default()
    });
    c.expect_silence().await;
    let id = proxy_id("p1");
    srv.wait_until("error", |s| s.status.state(&id, TypeUrl::Listener) == Some(SyncState::Error)).await;
    assert!(srv.status.syncz()[0]["types"]["lds"]["error"].as_str().unwrap().contains("bad filter"));
    assert_eq!(srv.metrics.rejects_of(TypeUrl::Listener), 1);

    srv.source.set(config(&["a"], 80, &["l1", "l2"], &[]));
    let second = c.recv().await;
    assert_eq!(delta_names(&second), ["l2"], "only what changed since the last send");
    // An ACK of the old nonce is stale: state stays STALE.
    c.ack(&first);
    c.expect_silence().await;
    assert_eq!(srv.status.state(&id, TypeUrl::Listener), Some(SyncState::Stale));
    c.ack(&second);
    srv.wait_until("synced", |s| s.status.state(&id, TypeUrl::Listener) == Some(SyncState::Synced)).await;
    // A Delta ACK carries no version: the one sent with that nonce is recorded.
    let ts = srv.status.get(&id).unwrap().type_status(TypeUrl::Listener);
    assert_eq!(ts.acked_version, ts.sent_version);
}

#[tokio::test]
async fn types_in_order_and_per_type_state() {
    let srv = TestServer::start(config(&["a"], 80, &["l1"], &["r1"])).await;
    let mut c = srv.delta("p1").await;
    c.subscribe(TypeUrl::Cluster, &["*"]);
    let cds = c.recv().await;
    c.ack(&cds);
    c.subscribe(TypeUrl::Endpoint, &["a"]);
    let eds = c.recv().await;
    c.ack(&eds);
    c.subscribe(TypeUrl::Listener, &["*"]);
    let lds = c.recv().await;
    c.ack(&lds);
    c.subscribe(TypeUrl::Route, &["r1"]);
    let rds = c.recv().await;
    c.ack(&rds);
    // One change touching every type arrives as CDS, EDS, LDS, RDS.
    srv.source.set(config(&["a", "z"], 81, &["l1", "l2"], &["r1", "r0"]));
    let order: Vec<String> =
        [c.recv().await, c.recv().await, c.recv().await].iter().map(|r| r.type_url.clone()).collect();
    assert_eq!(order, [TypeUrl::Cluster.as_str(), TypeUrl::Endpoint.as_str(), TypeUrl::Listener.as_str()]);
    // RDS "r1" did not change (only "r0" was added, which is not subscribed): nothing.
    c.expect_silence().await;
}
