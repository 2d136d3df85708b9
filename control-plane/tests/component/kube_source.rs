//! The Kubernetes source against the in-repo fake API server: initial sync, create / update /
//! delete of every watched kind, through the push stage to translated clusters, watch expiry (410),
//! API server restarts, and Istio API version fallback.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use sailplane::metrics::Metrics;
use sailplane::proxy::{ProxyInfo, node_metadata};
use sailplane::push::{Debounce, Pusher};
use sailplane::sources::kube::{KubeSource, KubeSourceOptions, SOURCE_NAME, origin_of, read_mesh_config};
use sailplane::store::Store;
use sailplane::xds::SnapshotSource;
use sailplane_tests::fake_apiserver::{FakeApiServer, Served};
use sailplane_tests::wait::{eventually, some};
use sailplane_translator::TypeUrl;
use sailplane_translator::api::Object;
use sailplane_translator::model::{Labels, MeshConfig};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn start_source(fake: &FakeApiServer, store: &Arc<Store>) -> tokio::task::JoinHandle<()> {
    let source = KubeSource::new(
        fake.client(),
        Arc::clone(store),
        KubeSourceOptions { istio_namespace: "istio-system".into(), initial_mesh: None },
    );
    tokio::spawn(async move {
        source.run().await.unwrap();
    })
}

/// `Kind ns/name` -> object, for every object in the store.
fn objects(store: &Store) -> BTreeMap<String, Arc<Object>> {
    store.view().objects.iter().map(|o| (o.key().to_string(), Arc::clone(o))).collect()
}

fn has(store: &Store, key: &str) -> bool {
    objects(store).contains_key(key)
}

fn labels_of(store: &Store, key: &str) -> Option<BTreeMap<String, String>> {
    let o = objects(store).get(key).cloned()?;
    let v = match &*o {
        Object::Namespace(x) => x.metadata.labels.clone(),
        Object::Service(x) => x.metadata.labels.clone(),
        Object::EndpointSlice(x) => x.metadata.labels.clone(),
        Object::Pod(x) => x.metadata.labels.clone(),
        Object::Secret(x) => x.metadata.labels.clone(),
        Object::ConfigMap(x) => x.metadata.labels.clone(),
        Object::ServiceEntry(x) => x.metadata.labels.clone(),
        Object::WorkloadEntry(x) => x.metadata.labels.clone(),
        Object::VirtualService(x) => x.metadata.labels.clone(),
        Object::DestinationRule(x) => x.metadata.labels.clone(),
        Object::Gateway(x) => x.metadata.labels.clone(),
        Object::Sidecar(x) => x.metadata.labels.clone(),
        Object::PeerAuthentication(x) => x.metadata.labels.clone(),
    };
    Some(v.unwrap_or_default())
}

fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": "10.96.0.10", "selector": {"app": name},
                    "ports": [{"name": "http", "port": port, "targetPort": 8080, "protocol": "TCP"}]}})
}

fn endpoint_slice(ns: &str, service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> =
        ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-abc"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "endpoints": endpoints,
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

/// One object of every watched kind, with its store key.
fn one_of_each() -> Vec<(String, Value)> {
    let istio = |api: &str, kind: &str, spec: Value| json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x", "namespace": "demo"}, "spec": spec});
    vec![
        ("Namespace demo".into(), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})),
        ("Service demo/web".into(), service("demo", "web", 80)),
        ("EndpointSlice demo/web-abc".into(), endpoint_slice("demo", "web", &["10.1.0.1"])),
        (
            "Pod demo/web-1".into(),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "demo", "labels": {"app": "web"}},
                   "spec": {"containers": [{"name": "app", "image": "nginx"}]}, "status": {"podIP": "10.1.0.1"}}),
        ),
        (
            "Secret demo/tls".into(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "demo"},
                   "type": "kubernetes.io/tls", "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}}),
        ),
        (
            "ConfigMap istio-system/istio".into(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
                   "data": {"mesh": "trustDomain: cluster.local\n"}}),
        ),
        (
            "VirtualService demo/x".into(),
            istio(
                "networking.istio.io/v1",
                "VirtualService",
                json!({"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}]}]}),
            ),
        ),
        (
            "DestinationRule demo/x".into(),
            istio(
                "networking.istio.io/v1",
                "DestinationRule",
                json!({"host": "web", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
            ),
        ),
        (
            "Gateway demo/x".into(),
            istio(
                "networking.istio.io/v1",
                "Gateway",
                json!({"selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}),
            ),
        ),
        (
            "ServiceEntry demo/x".into(),
            istio(
                "networking.istio.io/v1",
                "ServiceEntry",
                json!({"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}], "resolution": "DNS"}),
            ),
        ),
        ("Sidecar demo/x".into(), istio("networking.istio.io/v1", "Sidecar", json!({"egress": [{"hosts": ["./*"]}]}))),
        (
            "WorkloadEntry demo/x".into(),
            istio("networking.istio.io/v1", "WorkloadEntry", json!({"address": "10.2.0.1", "labels": {"app": "vm"}})),
        ),
        (
            "PeerAuthentication demo/x".into(),
            istio("security.istio.io/v1", "PeerAuthentication", json!({"mtls": {"mode": "STRICT"}})),
        ),
    ]
}

fn with_label(mut v: Value, k: &str, val: &str) -> Value {
    let meta = v["metadata"].as_object_mut().unwrap();
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    labels.as_object_mut().unwrap().insert(k.into(), Value::String(val.into()));
    v
}

fn kind_ns_name(key: &str) -> (String, String, String) {
    let (kind, rest) = key.split_once(' ').unwrap();
    match rest.split_once('/') {
        Some((ns, name)) => (kind.into(), ns.into(), name.into()),
        None => (kind.into(), String::new(), rest.into()),
    }
}

#[tokio::test]
async fn ready_only_after_every_kind_listed() {
    let fake = FakeApiServer::start_new().await;
    fake.apply(service("demo", "web", 80));
    fake.delay_list("pods", Duration::from_millis(800));
    let store = Arc::new(Store::new([SOURCE_NAME]));
    let task = start_source(&fake, &store);
    eventually("the service to arrive", WAIT, some(|| has(&store, "Service demo/web").then_some(()))).await.unwrap();
    assert!(!store.synced(), "pods are still being listed: not ready yet");
    eventually("the initial sync", WAIT, some(|| store.synced().then_some(()))).await.unwrap();
    // Every watched kind was listed once.
    for plural in [
        "namespaces",
        "services",
        "endpointslices",
        "pods",
        "secrets",
        "configmaps",
        "virtualservices",
        "peerauthentications",
    ] {
        assert_eq!(fake.list_count(plural), 1, "{plural}: {:?}", fake.requests());
    }
    // The mesh ConfigMap is watched in the system namespace by name only.
    assert!(
        fake.requests().iter().any(|r| r.starts_with("GET /api/v1/namespaces/istio-system/configmaps?")
            && r.contains("fieldSelector=metadata.name=istio")),
        "{:?}",
        fake.requests()
    );
    task.abort();
}

#[tokio::test]
async fn create_update_delete_of_every_kind_reach_the_store() {
    let fake = FakeApiServer::start_new().await;
    let store = Arc::new(Store::new([SOURCE_NAME]));
    let task = start_source(&fake, &store);
    eventually("the initial sync", WAIT, some(|| store.synced().then_some(()))).await.unwrap();

    let all = one_of_each();
    for (key, obj) in &all {
        fake.apply(obj.clone());
        eventually(&format!("{key} created"), WAIT, some(|| has(&store, key).then_some(()))).await.unwrap();
    }
    let view = store.view();
    assert!(view.diagnostics.is_empty(), "{:?}", view.diagnostics);
    assert_eq!(view.objects.len(), all.len());

    // A bookmark changes nothing and the stream keeps working after it.
    fake.bookmark();
    for (key, obj) in &all {
        fake.apply(with_label(obj.clone(), "rev", "2"));
        eventually(
            &format!("{key} updated"),
            WAIT,
            some(|| labels_of(&store, key).filter(|l| l.get("rev").map(String::as_str) == Some("2")).map(|_| ())),
        )
        .await
        .unwrap();
    }
    assert_eq!(store.view().objects.len(), all.len(), "updates replace, never add");

    for (key, _) in &all {
        let (kind, ns, name) = kind_ns_name(key);
        assert!(fake.delete(&kind, &ns, &name));
        eventually(&format!("{key} deleted"), WAIT, some(|| (!has(&store, key)).then_some(()))).await.unwrap();
    }
    assert!(store.view().objects.is_empty());
    task.abort();
}

#[tokio::test]
async fn managed_fields_are_dropped_invalid_objects_become_diagnostics_and_other_secrets_are_ignored() {
    let fake = FakeApiServer::start_new().await;
    let mut svc = service("demo", "web", 80);
    svc["metadata"]["managedFields"] =
        json!([{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]);
    fake.apply(svc);
    fake.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                      "metadata": {"name": "bad", "namespace": "demo"}, "spec": {"hosts": ["web"], "htpp": []}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "demo"},
                      "type": "Opaque", "data": {"password": "cA=="}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cred", "namespace": "demo"},
                      "type": "Opaque", "data": {"cert": "Yw==", "key": "aw==", "cacert": "Yw=="}}));
    let store = Arc::new(Store::new([SOURCE_NAME]));
    let task = start_source(&fake, &store);
    eventually("the initial sync", WAIT, some(|| store.synced().then_some(()))).await.unwrap();

    let objs = objects(&store);
    let Object::Service(s) = &*objs["Service demo/web"] else { panic!("not a service") };
    assert!(s.metadata.managed_fields.is_none(), "managedFields must be dropped");
    assert!(objs.contains_key("Secret demo/cred"), "generic secrets with TLS keys are kept");
    assert!(!objs.contains_key("Secret demo/db"), "other secrets are not kept");
    assert!(!objs.contains_key("VirtualService demo/bad"));
    let diags = store.view().diagnostics;
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].source.as_deref(), Some(origin_of("VirtualService", "demo", "bad").as_str()));
    assert_eq!(diags[0].field, "spec.htpp");

    // Fixing the object replaces the diagnostic; a secret losing its TLS keys leaves the store.
    fake.apply(json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                      "metadata": {"name": "bad", "namespace": "demo"}, "spec": {"hosts": ["web"]}}));
    fake.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cred", "namespace": "demo"},
                      "type": "Opaque", "data": {"user": "dQ=="}}));
    eventually(
        "the fix and the secret change",
        WAIT,
        some(|| {
            (has(&store, "VirtualService demo/bad")
                && !has(&store, "Secret demo/cred")
                && store.view().diagnostics.is_empty())
            .then_some(())
        }),
    )
    .await
    .unwrap();
    task.abort();
}

fn proxy(pod: &str, ns: &str, app: &str) -> ProxyInfo {
    let mut labels = Labels::new();
    labels.insert("app".into(), app.into());
    let node = Node {
        id: format!("sidecar~10.0.0.1~{pod}.{ns}~{ns}.svc.cluster.local"),
        cluster: format!("{app}.{ns}"),
        metadata: Some(node_metadata(&[("NAMESPACE", ns.to_string())], &labels)),
        ..Default::default()
    };
    ProxyInfo::from_node(Some(&node)).unwrap()
}

#[tokio::test]
async fn service_and_endpoint_slice_become_a_translated_cluster() {
    let fake = FakeApiServer::start_new().await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}}));
    let store = Arc::new(Store::new([SOURCE_NAME]));
    let task = start_source(&fake, &store);
    let debounce = Debounce { after: Duration::from_millis(10), max: Duration::from_millis(200) };
    let pusher =
        Arc::new(Pusher::new(Arc::clone(&store), MeshConfig::default(), debounce, Arc::new(Metrics::unregistered())));
    let push_task = tokio::spawn(Arc::clone(&pusher).run());
    eventually("the pusher to be ready", WAIT, some(|| pusher.ready().then_some(()))).await.unwrap();
    let rx = pusher.connect(&proxy("client-1", "demo", "client"));
    const CLUSTER: &str = "outbound|80||web.demo.svc.cluster.local";
    assert!(rx.borrow().resources.get(TypeUrl::Cluster, CLUSTER).is_none());

    fake.apply(service("demo", "web", 80));
    fake.apply(endpoint_slice("demo", "web", &["10.1.0.1", "10.1.0.2"]));
    eventually(
        "the cluster and its endpoints",
        WAIT,
        some(|| {
            let snap = rx.borrow();
            let cla = snap.resources.get(TypeUrl::Endpoint, CLUSTER)?;
            let decoded =
                <envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as prost::Message>::decode(
                    cla.value_bytes(),
                )
                .ok()?;
            let n: usize = decoded.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
            (snap.resources.get(TypeUrl::Cluster, CLUSTER).is_some() && n == 2).then_some(())
        }),
    )
    .await
    .unwrap();

    assert!(fake.delete("Service", "demo", "web"));
    eventually(
        "the cluster to go away",
        WAIT,
        some(|| rx.borrow().resources.get(TypeUrl::Cluster, CLUSTER).is_none().then_some(())),
    )
    .await
    .unwrap();
    push_task.abort();
    task.abort();
}

/// No key twice, no duplicate-object diagnostics.
fn assert_no_duplicates(store: &Store) {
    let view = store.view();
    let mut keys: Vec<String> = view.objects.iter().map(|o| o.key().to_string()).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "duplicate keys");
    assert!(view.diagnostics.is_empty(), "{:?}", view.diagnostics);
}

fn keys_of_kind(store: &Store, kind: &str) -> Vec<String> {
    objects(store).into_keys().filter(|k| k.starts_with(&format!("{kind} "))).collect()
}

#[tokio::test]
async fn watch_expiry_relists_without_losing_or_duplicating() {
    let fake = FakeApiServer::start_new().await;
    for name in ["a", "b", "c"] {
        fake.apply(service("demo", name, 80));
    }
    let store = Arc::new(Store::new([SOURCE_NAME]));
    let task = start_source(&fake, &store);
    eventually("the initial sync", WAIT, some(|| store.synced().then_some(()))).await.unwrap();
    assert_eq!(keys_of_kind(&store, "Service"), ["Service demo/a", "Service demo/b", "Service demo/c"]);
    let lists_before = fake.list_count("services");

    // Changes no watch delivers: only a re-list can see them.
    fake.pause_watches();
    fake.apply(with_label(service("demo", "a", 80), "rev", "2"));
    fake.delete("Service", "demo", "b");
    fake.apply(service("demo", "d", 80));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(has(&store, "Service demo/b"), "paused: nothing delivered yet");
    fake.expire();

    eventually(
        "the re-list to converge",
        WAIT,
        some(|| {
            (keys_of_kind(&store, "Service") == ["Service demo/a", "Service demo/c", "Service demo/d"]
                && labels_of(&store, "Service demo/a").and_then(|l| l.get("rev").cloned()).as_deref() == Some("2"))
            .then_some(())
        }),
    )
    .await
    .unwrap();
    assert!(fake.list_count("services") > lists_before, "the 410 made the watcher list again");
    assert_no_duplicates(&store);

    // And the new watch streams changes again.
    fake.apply(service("demo", "e", 80));
    eventually("a change after the re-list", WAIT, some(|| has(&store, "Service demo/e").then_some(()))).await.unwrap();
    task.abort();
}

#[tokio::test]
async fn api_server_restart_loses_nothing() {
    let mut fake = FakeApiServer::start_new().await;
    for name in ["a", "b"] {
        fake.apply(service("demo", name, 80));
    }
    let store = Arc::new(Store::new([SOURCE_NAME]));
    let task = start_source(&fake, &store);
    eventually("the initial sync", WAIT, some(|| store.synced().then_some(()))).await.unwrap();

    // A restart with the history intact: watches resume from their version and replay.
    fake.stop().await;
    fake.delete("Service", "demo", "a");
    fake.apply(service("demo", "c", 80));
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.start().await;
    eventually(
        "resume after restart",
        WAIT,
        some(|| (keys_of_kind(&store, "Service") == ["Service demo/b", "Service demo/c"]).then_some(())),
    )
    .await
    .unwrap();
    assert_no_duplicates(&store);

    // A restart that lost the history (compaction while down): resume gets 410, the watchers list
    // again, and what disappeared meanwhile is removed.
    fake.stop().await;
    fake.delete("Service", "demo", "b");
    fake.apply(service("demo", "d", 80));
    fake.compact();
    let lists_before = fake.list_count("services");
    fake.start().await;
    eventually(
        "re-list after restart",
        WAIT,
        some(|| (keys_of_kind(&store, "Service") == ["Service demo/c", "Service demo/d"]).then_some(())),
    )
    .await
    .unwrap();
    assert!(fake.list_count("services") > lists_before);
    assert_no_duplicates(&store);
    assert!(store.synced());
    task.abort();
}

#[tokio::test]
async fn istio_kinds_are_watched_at_a_served_version() {
    // Only the older versions are served: the source falls back to them.
    let served = Served::default()
        .with_versions("networking.istio.io", &["v1alpha3"])
        .with_versions("security.istio.io", &["v1beta1"]);
    let fake = FakeApiServer::start_serving(served).await;
    fake.apply(json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
                      "metadata": {"name": "r", "namespace": "demo"}, "spec": {"hosts": ["r"]}}));
    fake.apply(json!({"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
                      "metadata": {"name": "default", "namespace": "demo"}, "spec": {"mtls": {"mode": "STRICT"}}}));
    let store = Arc::new(Store::new([SOURCE_NAME]));
    let task = start_source(&fake, &store);
    eventually("the initial sync", WAIT, some(|| store.synced().then_some(()))).await.unwrap();
    assert!(has(&store, "VirtualService demo/r"));
    assert!(has(&store, "PeerAuthentication demo/default"));
    let reqs = fake.requests();
    assert!(reqs.iter().any(|r| r.starts_with("GET /apis/networking.istio.io/v1alpha3/virtualservices?")), "{reqs:?}");
    assert!(!reqs.iter().any(|r| r.contains("/networking.istio.io/v1/")), "{reqs:?}");
    task.abort();

    // With every version served, the preferred one (v1) is watched, and only it.
    let fake = FakeApiServer::start_new().await;
    let store = Arc::new(Store::new([SOURCE_NAME]));
    let task = start_source(&fake, &store);
    eventually("the initial sync", WAIT, some(|| store.synced().then_some(()))).await.unwrap();
    let reqs = fake.requests();
    assert!(reqs.iter().any(|r| r.starts_with("GET /apis/networking.istio.io/v1/virtualservices?")), "{reqs:?}");
    assert!(
        !reqs.iter().any(|r| r.contains("/v1beta1/virtualservices") || r.contains("/v1alpha3/virtualservices")),
        "{reqs:?}"
    );
    task.abort();

    // Without the Istio CRDs the core kinds still sync.
    let served = Served::default().with_versions("networking.istio.io", &[]).with_versions("security.istio.io", &[]);
    let fake = FakeApiServer::start_serving(served).await;
    fake.apply(service("demo", "web", 80));
    let store = Arc::new(Store::new([SOURCE_NAME]));
    let task = start_source(&fake, &store);
    eventually("the initial sync without istio CRDs", WAIT, some(|| store.synced().then_some(()))).await.unwrap();
    assert!(has(&store, "Service demo/web"));
    task.abort();
}

#[tokio::test]
async fn mesh_config_is_read_from_the_configmap() {
    let fake = FakeApiServer::start_new().await;
    let client = fake.client();
    assert!(read_mesh_config(&client, "istio-system", "istio").await.unwrap().is_none());
    fake.apply(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
                      "data": {"mesh": "trustDomain: example.org\nrootNamespace: mesh-root\n"}}),
    );
    let (mesh, text) = read_mesh_config(&client, "istio-system", "istio").await.unwrap().unwrap();
    assert_eq!(mesh.trust_domain, "example.org");
    assert_eq!(mesh.root_namespace, "mesh-root");
    assert!(text.contains("example.org"));
    fake.apply(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "istio", "namespace": "istio-system"},
                      "data": {"mesh": "trustDomain: [oops"}}),
    );
    let err = read_mesh_config(&client, "istio-system", "istio").await.unwrap_err();
    assert!(err.to_string().contains("istio-system/istio"), "{err}");
}
