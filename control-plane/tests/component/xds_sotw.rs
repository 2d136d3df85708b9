//! State-of-the-world ADS against an in-process client: initial fetch, ACK/NACK and nonce handling,
//! change detection, named subscriptions, shared bodies.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use prost::Message;
use sailplane::xds::SyncState;
use sailplane_tests::ads_client::*;
use sailplane_tests::ads_server::*;
use sailplane_translator::TypeUrl;

fn base() -> sailplane_translator::ResourceSet {
    config(&["a", "b"], 80, &["l1"], &["r1", "r2"])
}

#[tokio::test]
async fn initial_fetch_of_every_type() {
    let srv = TestServer::start(base()).await;
    let set = srv.source.current();
    let mut c = srv.sotw("p1").await;

    c.request(TypeUrl::Cluster, &[]);
    let cds = c.recv().await;
    assert_eq!(cds.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(cds.version_info, set.type_version(TypeUrl::Cluster));
    assert_eq!(sotw_names(&cds), ["a", "b"]);
    assert!(!cds.nonce.is_empty());
    assert_eq!(cds.control_plane.as_ref().map(|c| c.identifier.as_str()), Some("sailplane"));
    c.ack(&cds, &[]);

    c.request(TypeUrl::Endpoint, &["b"]);
    let eds = c.recv().await;
    assert_eq!(eds.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(sotw_names(&eds), ["b"], "only requested names");
    c.ack(&eds, &["b"]);

    c.request(TypeUrl::Listener, &[]);
    let lds = c.recv().await;
    assert_eq!(sotw_names(&lds), ["l1"]);
    c.ack(&lds, &[]);

    c.request(TypeUrl::Route, &["r2", "missing"]);
    let rds = c.recv().await;
    assert_eq!(sotw_names(&rds), ["r2"], "requested names that exist");
    c.ack(&rds, &["r2", "missing"]);

    // An empty type is still answered: Envoy's initialisation waits for it.
    c.request(TypeUrl::Secret, &["none"]);
    let sds = c.recv().await;
    assert!(sds.resources.is_empty());
    assert_eq!(sds.type_url, TypeUrl::Secret.as_str());
    c.ack(&sds, &["none"]);

    let nonces: BTreeSet<_> = [&cds, &eds, &lds, &rds, &sds].iter().map(|r| r.nonce.clone()).collect();
    assert_eq!(nonces.len(), 5, "nonces are unique");

    let id = proxy_id("p1");
    srv.wait_until("all types synced", |s| {
        TypeUrl::ALL.iter().all(|t| s.status.state(&id, *t) == Some(SyncState::Synced))
    })
    .await;
    // The config dump view holds exactly what was sent.
    let sent = srv.status.sent_by_type(&id).unwrap();
    let eds_sent = sent.iter().find(|s| s.type_url == TypeUrl::Endpoint).unwrap();
    assert_eq!(eds_sent.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(eds_sent.nonce, eds.nonce);
    let cds_sent = sent.iter().find(|s| s.type_url == TypeUrl::Cluster).unwrap();
    assert_eq!(cds_sent.resources.len(), 2);
    assert_eq!(srv.metrics.pushes_of(TypeUrl::Cluster), 1);
}

#[tokio::test]
async fn ack_is_not_answered() {
    let srv = TestServer::start(base()).await;
    let mut c = srv.sotw("p1").await;
    c.request(TypeUrl::Cluster, &[]);
    let cds = c.recv().await;
    c.ack(&cds, &[]);
    c.expect_silence().await;
    srv.wait_until("cds synced", |s| s.status.state(&proxy_id("p1"), TypeUrl::Cluster) == Some(SyncState::Synced))
        .await;
}

#[tokio::test]
async fn stale_nonce_is_ignored() {
    let srv = TestServer::start(base()).await;
    let mut c = srv.sotw("p1").await;
    c.request(TypeUrl::Endpoint, &["a"]);
    let first = c.recv().await;
    c.ack(&first, &["a"]);
    // "a" changes: a push with a new nonce.
    srv.source.set(config(&["a", "b"], 81, &["l1"], &["r1", "r2"]));
    let second = c.recv().await;
    assert_ne!(first.nonce, second.nonce);
    // A request still answering the first nonce is stale, even though it asks for more.
    c.ack(&first, &["a", "b"]);
    c.expect_silence().await;
    srv.wait_until("not acked by a stale nonce", |s| {
        s.status.state(&proxy_id("p1"), TypeUrl::Endpoint) == Some(SyncState::Stale)
    })
    .await;
    // The same request on the current nonce is served.
    c.ack(&second, &["a", "b"]);
    let third = c.recv().await;
    assert_eq!(sotw_names(&third), ["a", "b"]);
}

#[tokio::test]
async fn nack_is_recorded_and_not_answered() {
    let srv = TestServer::start(base()).await;
    let mut c = srv.sotw("p1").await;
    c.request(TypeUrl::Cluster, &[]);
    let cds = c.recv().await;
    c.nack(&cds, &[], "cluster a: invalid lb policy [marker 123]");
    c.expect_silence().await;
    let id = proxy_id("p1");
    srv.wait_until("nack recorded", |s| s.status.state(&id, TypeUrl::Cluster) == Some(SyncState::Error)).await;
    let syncz = srv.status.syncz();
    let me = syncz.as_array().unwrap().iter().find(|p| p["proxy"] == id.as_str()).unwrap();
    assert_eq!(me["cds"], "ERROR");
    assert!(me["types"]["cds"]["error"].as_str().unwrap().contains("invalid lb policy"));
    assert_eq!(me["lds"], "NOT SENT");
    assert_eq!(srv.metrics.rejects_of(TypeUrl::Cluster), 1);

    // The config is fixed: the next snapshot is pushed, and its ACK clears the error.
    srv.source.set(config(&["a"], 80, &["l1"], &["r1", "r2"]));
    let fixed = c.recv().await;
    assert_eq!(sotw_names(&fixed), ["a"]);
    c.ack(&fixed, &[]);
    srv.wait_until("synced after fix", |s| s.status.state(&id, TypeUrl::Cluster) == Some(SyncState::Synced)).await;
    let syncz = srv.status.syncz();
    assert!(syncz[0]["types"]["cds"]["error"].is_null());
}

/// Subscribes to every type and ACKs everything.
async fn synced_client(srv: &TestServer, pod: &str) -> Sotw {
    let mut c = srv.sotw(pod).await;
    for (t, names) in [
        (TypeUrl::Cluster, vec![]),
        (TypeUrl::Endpoint, vec!["a", "b"]),
        (TypeUrl::Listener, vec![]),
        (TypeUrl::Route, vec!["r1"]),
    ] {
        c.request(t, &names);
        let r = c.recv().await;
        assert_eq!(r.type_url, t.as_str());
        c.ack(&r, &names);
    }
    c
}

#[tokio::test]
async fn snapshot_change_pushes_only_changed_types_in_order() {
    let srv = TestServer::start(base()).await;
    let mut c = synced_client(&srv, "p1").await;
    let eds_before = srv.metrics.pushes_of(TypeUrl::Endpoint);

    // Only endpoints change: only EDS is pushed.
    srv.source.set(config(&["a", "b"], 9090, &["l1"], &["r1", "r2"]));
    let eds = c.recv().await;
    assert_eq!(eds.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(sotw_names(&eds), ["a", "b"]);
    c.ack(&eds, &["a", "b"]);
    c.expect_silence().await;
    assert_eq!(srv.metrics.pushes_of(TypeUrl::Endpoint), eds_before + 1);

    // An identical re-translation (a new snapshot, equal content) pushes nothing.
    srv.source.set(config(&["a", "b"], 9090, &["l1"], &["r1", "r2"]));
    c.expect_silence().await;

    // A route nobody asked for changes: nothing. An unrequested cluster's endpoints: CDS only
    // (the cluster list changed), never EDS for a name not requested.
    srv.source.set(config(&["a", "b"], 9090, &["l1"], &["r1", "r2-changed"]));
    c.expect_silence().await;

    // Clusters and listeners change together: CDS first, then the (unchanged) endpoints of the
    // requested clusters, because Envoy warms changed clusters until endpoints arrive, then LDS.
    srv.source.set(config(&["a", "b", "c"], 9090, &["l1", "l2"], &["r1", "r2-changed"]));
    let first = c.recv().await;
    let endpoints = c.recv().await;
    let second = c.recv().await;
    assert_eq!(first.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(sotw_names(&first), ["a", "b", "c"], "LDS/CDS carry the whole set");
    assert_eq!(endpoints.type_url, TypeUrl::Endpoint.as_str());
    assert_eq!(sotw_names(&endpoints), ["a", "b"]);
    assert_eq!(second.type_url, TypeUrl::Listener.as_str());
    assert_eq!(sotw_names(&second), ["l1", "l2"]);
    c.ack(&first, &[]);
    c.ack(&endpoints, &["a", "b"]);
    c.ack(&second, &[]);
    c.expect_silence().await;

    // Envoy then asks EDS for the new cluster: answered.
    let id = proxy_id("p1");
    srv.wait_until("eds synced", |s| s.status.state(&id, TypeUrl::Endpoint) == Some(SyncState::Synced)).await;
    let last_eds = srv.status.get(&id).unwrap().type_status(TypeUrl::Endpoint);
    c.send(envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
        type_url: TypeUrl::Endpoint.as_str().into(),
        version_info: last_eds.sent_version.unwrap(),
        response_nonce: last_eds.sent_nonce.unwrap(),
        resource_names: vec!["a".into(), "b".into(), "c".into()],
        ..Default::default()
    });
    let eds = c.recv().await;
    assert_eq!(sotw_names(&eds), ["a", "b", "c"]);
}

#[tokio::test]
async fn named_subscription_change_is_answered() {
    let srv = TestServer::start(base()).await;
    let mut c = srv.sotw("p1").await;
    c.request(TypeUrl::Route, &["r1"]);
    let r = c.recv().await;
    assert_eq!(sotw_names(&r), ["r1"]);
    // ACK carrying a new subscription: answered even though nothing changed in the snapshot.
    c.ack(&r, &["r1", "r2"]);
    let r2 = c.recv().await;
    assert_eq!(sotw_names(&r2), ["r1", "r2"]);
    assert_eq!(r2.version_info, r.version_info, "same snapshot, same type version");
    // Dropping a name is also answered.
    c.ack(&r2, &["r2"]);
    let r3 = c.recv().await;
    assert_eq!(sotw_names(&r3), ["r2"]);
    c.ack(&r3, &["r2"]);
    c.expect_silence().await;
}

#[tokio::test]
async fn invalid_node_is_refused() {
    let srv = TestServer::start(base()).await;
    let channel = srv.channel().await;
    let bad = envoy_types::pb::envoy::config::core::v3::Node { id: "not-istio".into(), ..Default::default() };
    let mut c = Sotw::open(channel, bad).await.unwrap();
    c.request(TypeUrl::Cluster, &[]);
    let status = c.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("not-istio"), "{}", status.message());
    assert!(srv.status.is_empty());
}

#[tokio::test]
async fn disconnect_is_reported() {
    let srv = TestServer::start(base()).await;
    let mut c = srv.sotw("p1").await;
    c.request(TypeUrl::Cluster, &[]);
    c.recv().await;
    assert_eq!(srv.status.len(), 1);
    assert_eq!(srv.source.connects.load(Ordering::SeqCst), 1);
    drop(c);
    srv.wait_until("disconnected", |s| s.status.is_empty() && s.source.disconnects.load(Ordering::SeqCst) == 1).await;
    srv.wait_until("gauge back to zero", |s| s.metrics.connected.get() == 0).await;
}

#[tokio::test]
async fn many_clients_share_one_encoded_body() {
    const CLIENTS: usize = 50;
    let srv = TestServer::start(base()).await;
    let before = srv.server.body_encodes();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut c = srv.sotw(&format!("p{i}")).await;
        c.request(TypeUrl::Cluster, &[]);
        clients.push(c);
    }
    let mut first = Vec::new();
    for c in &mut clients {
        let r = c.recv().await;
        c.ack(&r, &[]);
        first.push(r);
    }
    // One encode for the CDS body (and its version), whatever the number of streams.
    assert_eq!(srv.server.body_encodes() - before, 1);
    let strip = |r: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse| {
        let mut r = r.clone();
        r.nonce.clear();
        r.encode_to_vec()
    };
    assert!(first.iter().all(|r| strip(r) == strip(&first[0])), "identical bodies");
    let nonces: BTreeSet<_> = first.iter().map(|r| r.nonce.clone()).collect();
    assert_eq!(nonces.len(), CLIENTS);

    srv.source.set(config(&["a", "b", "c"], 80, &["l1"], &["r1", "r2"]));
    for c in &mut clients {
        let r = c.recv().await;
        assert_eq!(sotw_names(&r), ["a", "b", "c"]);
    }
    assert_eq!(srv.server.body_encodes() - before, 2, "one more encode for the new snapshot");
    assert_eq!(srv.status.len(), CLIENTS);
}

#[tokio::test]
async fn unknown_types_get_one_empty_answer() {
    let srv = TestServer::start(base()).await;
    let mut c = srv.sotw("p1").await;
    let url = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
    c.send(envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
        type_url: url.into(),
        resource_names: vec!["rt".into()],
        ..Default::default()
    });
    let r = c.recv().await;
    assert_eq!(r.type_url, url);
    assert!(r.resources.is_empty());
    c.ack(&r, &["rt"]);
    c.expect_silence().await;
}

#[tokio::test]
async fn shutdown_ends_streams_and_drains() {
    let mut srv = TestServer::start(base()).await;
    let mut c = srv.sotw("p1").await;
    c.request(TypeUrl::Cluster, &[]);
    c.recv().await;
    srv.shutdown().await;
    let status = c.next().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(srv.status.is_empty());
}
