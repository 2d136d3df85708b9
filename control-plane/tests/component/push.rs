//! Component tests of the push stage: debounce, one translation per profile, sharing, no-op pushes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use sailplane::metrics::Metrics;
use sailplane::proxy::{ProxyInfo, node_metadata};
use sailplane::push::{Debounce, Pusher};
use sailplane::sources::yaml::parse_documents;
use sailplane::store::{ConfigEvent, Store};
use sailplane::xds::SnapshotSource;
use sailplane_translator::TypeUrl;
use sailplane_translator::model::{Labels, MeshConfig};

fn service(name: &str, port: u16) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: demo}}
spec:
  clusterIP: 10.96.0.{port_lo}
  selector: {{app: {name}}}
  ports: [{{name: http, port: {port}, targetPort: 8080}}]
"#,
        port_lo = port % 250
    )
}

fn upsert(store: &Store, origin: &str, text: &str) {
    let (objects, diagnostics) = parse_documents(origin, text);
    assert!(diagnostics.is_empty(), "{diagnostics:?}");
    store.apply(ConfigEvent::Upsert { origin: origin.into(), objects, diagnostics });
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
    ProxyInfo::from_node(Some(&node)).expect("valid node")
}

fn pusher(store: &Arc<Store>, debounce: Debounce) -> Arc<Pusher> {
    Arc::new(Pusher::new(Arc::clone(store), MeshConfig::default(), debounce, Arc::new(Metrics::unregistered())))
}

#[test]
fn identical_proxies_share_one_translation() {
    let store = Arc::new(Store::new(["files"]));
    upsert(&store, "a.yaml", &service("reviews", 9080));
    let p = pusher(&store, Debounce::default());
    p.push(Instant::now());
    let a = p.connect(&proxy("web-1", "demo", "web"));
    let b = p.connect(&proxy("web-2", "demo", "web"));
    let c = p.connect(&proxy("api-1", "demo", "api"));
    assert!(Arc::ptr_eq(&a.borrow().resources, &b.borrow().resources), "same profile, same snapshot");
    assert!(!Arc::ptr_eq(&a.borrow().resources, &c.borrow().resources), "other labels, own snapshot");
    assert_eq!(p.profile_count(), 2);
    assert!(
        a.borrow().resources.get(TypeUrl::Cluster, "outbound|9080||reviews.demo.svc.cluster.local").is_some(),
        "the service is translated"
    );
    p.disconnect(&proxy("web-1", "demo", "web"));
    assert_eq!(p.profile_count(), 2);
    p.disconnect(&proxy("web-2", "demo", "web"));
    assert_eq!(p.profile_count(), 1);
}

#[test]
fn unchanged_output_wakes_nobody() {
    let store = Arc::new(Store::new(["files"]));
    upsert(&store, "a.yaml", &service("reviews", 9080));
    let p = pusher(&store, Debounce::default());
    p.push(Instant::now());
    let mut rx = p.connect(&proxy("web-1", "demo", "web"));
    rx.borrow_and_update();
    // A namespace the proxy's output does not depend on.
    upsert(&store, "b.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n");
    p.push(Instant::now());
    assert!(!rx.has_changed().expect("sender alive"), "no new snapshot for an unrelated change");
    upsert(&store, "c.yaml", &service("ratings", 9081));
    p.push(Instant::now());
    assert!(rx.has_changed().expect("sender alive"), "a new service is pushed");
    let snap = rx.borrow_and_update().clone();
    assert!(snap.resources.get(TypeUrl::Cluster, "outbound|9081||ratings.demo.svc.cluster.local").is_some());
}

#[tokio::test]
async fn bursts_are_debounced_into_one_push() {
    let store = Arc::new(Store::new(["files"]));
    // The quiet period is ten times the gap between edits, so a loaded machine does not split the burst.
    let p = pusher(&store, Debounce { after: Duration::from_millis(300), max: Duration::from_secs(10) });
    let mut rx = p.connect(&proxy("web-1", "demo", "web"));
    rx.borrow_and_update();
    let task = tokio::spawn(Arc::clone(&p).run());
    let start = Instant::now();
    for i in 0..5u16 {
        upsert(&store, &format!("s{i}.yaml"), &service(&format!("svc{i}"), 9000 + i));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.expect("pushed").expect("alive");
    let elapsed = start.elapsed();
    let snap = rx.borrow_and_update().clone();
    assert_eq!(snap.push, 1, "five edits 30 ms apart make one push");
    assert!(elapsed >= Duration::from_millis(420), "push waited for quiet: {elapsed:?}");
    assert_eq!(snap.resources.of(TypeUrl::Cluster).keys().filter(|k| k.starts_with("outbound|")).count(), 5);
    task.abort();
}

#[tokio::test]
async fn debounce_max_bounds_the_wait() {
    let store = Arc::new(Store::new(["files"]));
    let p = pusher(&store, Debounce { after: Duration::from_millis(400), max: Duration::from_millis(800) });
    let mut rx = p.connect(&proxy("web-1", "demo", "web"));
    rx.borrow_and_update();
    let task = tokio::spawn(Arc::clone(&p).run());
    let start = Instant::now();
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            // Keep changing faster than the quiet period for 4 s.
            for i in 0..80u16 {
                upsert(&store, &format!("s{i}.yaml"), &service(&format!("svc{i}"), 9000 + i));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.expect("pushed").expect("alive");
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_millis(2800), "max debounce forces a push while changes continue: {elapsed:?}");
    writer.await.expect("writer");
    task.abort();
}

#[tokio::test]
async fn changes_made_before_the_loop_starts_are_pushed() {
    let store = Arc::new(Store::new(["files"]));
    upsert(&store, "a.yaml", &service("reviews", 9080));
    store.apply(ConfigEvent::Synced { source: "files".into() });
    let p = pusher(&store, Debounce { after: Duration::from_millis(10), max: Duration::from_secs(1) });
    assert!(!p.ready());
    let task = tokio::spawn(Arc::clone(&p).run());
    tokio::time::timeout(Duration::from_secs(5), async {
        while !p.ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the loop pushes what the store held before it subscribed");
    task.abort();
}
