//! Translation cost, `docs/performance.md` scenario P3: Istio's load-test mesh of 1,000 Services (20
//! namespaces, two pods each: 2,000 pods), 1,000 VirtualServices (a 90/10 canary split over two
//! subsets, with retries and a timeout) and 1,000 DestinationRules (two subsets, connection pool,
//! outlier detection), all generated as the Kubernetes/Istio objects a user would apply.
//!
//! Measured:
//! - `p3_sidecar_full`: one sidecar's complete configuration (CDS, EDS, LDS, RDS) from a built world;
//! - `p3_sidecar_{cds_eds,lds_rds}`: the same, split by builder;
//! - `p3_world_build`: validating and assembling the world from all objects (once per change, shared
//!   by every proxy);
//! - `p3_one_service_change`: after one Service changed, rebuilding the world and translating one
//!   affected proxy;
//! - `plain_sidecar_full`: the same 1,000 Services and 2,000 pods without VirtualServices and
//!   DestinationRules (the service-discovery slice's scenario, one cluster per service).
//!
//! `cargo bench -p sailplane-translator --bench translate`

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use sailplane_translator::api::{Object, parse_object};
use sailplane_translator::envoy::{Ctx, cluster, endpoint, listener, route};
use std::sync::Arc;

use sailplane_translator::incremental::{Assignments, compose, patch_endpoints, update};
use sailplane_translator::model::{LabelKeys, MeshConfig, WorldChange, build_world};
use sailplane_translator::{Part, ProxyProfile, ResourceSet, TypeUrl, build, build_part};
use serde_json::json;

const SERVICES: usize = 1000;
const NAMESPACES: usize = 20;

fn name(i: usize) -> (String, String) {
    (format!("svc-{i:04}"), format!("ns-{}", i % NAMESPACES))
}

/// The objects of service `i`: Service, two Pods (v1, v2), VirtualService, DestinationRule.
/// `generation` changes the Service (a new port) to model an update.
fn service_objects(i: usize, generation: u32) -> Vec<serde_json::Value> {
    let (svc, ns) = name(i);
    let mut ports = vec![json!({"name": "http", "port": 8080, "targetPort": 8080})];
    if generation > 0 {
        ports.push(json!({"name": "http-admin", "port": 9000 + generation}));
    }
    let mut out = vec![json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc, "namespace": ns},
        "spec": {"clusterIP": format!("10.96.{}.{}", i / 250, i % 250), "selector": {"app": svc}, "ports": ports}
    })];
    for (j, version) in ["v1", "v2"].iter().enumerate() {
        out.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{svc}-{version}"), "namespace": ns,
                "labels": {"app": svc, "version": version, "security.istio.io/tlsMode": "istio"}},
            "spec": {"serviceAccountName": svc, "containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", 1 + i / 250, i % 250, 10 + j)}
        }));
    }
    out.push(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": svc, "namespace": ns},
        "spec": {"hosts": [svc], "http": [{
            "timeout": "5s",
            "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,connect-failure"},
            "route": [
                {"destination": {"host": svc, "subset": "v1"}, "weight": 90},
                {"destination": {"host": svc, "subset": "v2"}, "weight": 10}
            ]}]}
    }));
    out.push(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": svc, "namespace": ns},
        "spec": {"host": svc,
            "trafficPolicy": {
                "connectionPool": {"tcp": {"maxConnections": 100}, "http": {"http1MaxPendingRequests": 50}},
                "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"}},
            "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}
    }));
    out
}

/// The previous slice's mesh for continuity: Services and Pods only (no VirtualServices or
/// DestinationRules): one cluster per service.
fn plain_mesh_objects() -> Vec<Object> {
    (0..SERVICES).flat_map(|i| service_objects(i, 0).into_iter().take(3)).map(|v| parse_object(v).unwrap()).collect()
}

fn mesh_objects(changed: Option<(usize, u32)>) -> Vec<Object> {
    (0..SERVICES)
        .flat_map(|i| {
            let generation = changed.filter(|(c, _)| *c == i).map_or(0, |(_, g)| g);
            service_objects(i, generation)
        })
        .map(|v| parse_object(v).unwrap())
        .collect()
}

fn bench(c: &mut Criterion) {
    let mesh = MeshConfig::default();
    let objects = mesh_objects(None);
    let (world, diags) = build_world(&objects, &mesh);
    assert!(diags.is_empty(), "{diags:?}");
    let proxy = ProxyProfile {
        namespace: "ns-0".into(),
        labels: [("app".to_string(), "svc-0000".to_string())].into_iter().collect(),
        ..ProxyProfile::default()
    };
    let set = build(&world, &proxy);
    let clusters = set.of(TypeUrl::Cluster).len();
    eprintln!(
        "P3 mesh: {SERVICES} services, {} pods, {} virtual services, {} destination rules -> {clusters} clusters, {} endpoints, {} listeners, {} routes, {} bytes",
        world.workloads.len(),
        world.config.virtual_services.len(),
        world.config.destination_rules.len(),
        set.of(TypeUrl::Endpoint).len(),
        set.of(TypeUrl::Listener).len(),
        set.of(TypeUrl::Route).len(),
        set.encoded_len()
    );

    c.bench_function("p3_sidecar_full", |b| b.iter(|| build(&world, &proxy)));
    c.bench_function("p3_sidecar_cds_eds", |b| {
        b.iter(|| {
            let ctx = Ctx::new(&world, &proxy);
            let mut s = ResourceSet::new();
            let eds = cluster::build_clusters(&ctx, &mut s, false);
            endpoint::build_endpoints(&eds, &mut s);
            s
        })
    });
    c.bench_function("p3_sidecar_lds_rds", |b| {
        b.iter(|| {
            let ctx = Ctx::new(&world, &proxy);
            let mut s = ResourceSet::new();
            let names = listener::build_listeners(&ctx, &mut s);
            route::build_routes(&ctx, &names, &mut s);
            s
        })
    });
    c.bench_function("p3_world_build", |b| b.iter(|| build_world(&objects, &mesh)));

    let (plain, _) = build_world(&plain_mesh_objects(), &mesh);
    let plain_set = build(&plain, &proxy);
    eprintln!(
        "plain mesh (no VirtualService/DestinationRule): {} clusters, {} bytes",
        plain_set.of(TypeUrl::Cluster).len(),
        plain_set.encoded_len()
    );
    c.bench_function("plain_sidecar_full", |b| b.iter(|| build(&plain, &proxy)));

    // One Service changes (a port is added); its clients are the affected proxies.
    let mut generation = 0;
    c.bench_function("p3_one_service_change", |b| {
        // The changed objects are made (and dropped) outside the measurement.
        b.iter_batched_ref(
            || {
                generation += 1;
                mesh_objects(Some((500, generation)))
            },
            |changed| {
                let (w, _) = build_world(changed.iter(), &mesh);
                build(&w, &proxy)
            },
            criterion::BatchSize::LargeInput,
        )
    });
}

/// The per-class costs of the push stage: one outbound translation serves every sidecar of a
/// namespace, one inbound translation every pod of a Deployment, and an endpoint change patches
/// each outbound class's assignments.
fn classes(c: &mut Criterion) {
    let mesh = MeshConfig::default();
    let objects = mesh_objects(None);
    let (world, _) = build_world(&objects, &mesh);
    let keys = LabelKeys::of(&world);
    let proxy = ProxyProfile {
        namespace: "ns-0".into(),
        labels: [("app".to_string(), "svc-0000".to_string()), ("version".to_string(), "v1".to_string())]
            .into_iter()
            .collect(),
        ..ProxyProfile::default()
    };
    let (out_class, in_class) = (proxy.outbound_class(&keys), proxy.inbound_class(&keys));
    let outbound = Arc::new(build_part(&world, &out_class, Part::Outbound));
    let inbound = build_part(&world, &in_class, Part::Inbound);
    eprintln!(
        "classes: outbound {} resources ({} bytes), inbound {} resources ({} bytes)",
        outbound.set.len(),
        outbound.set.encoded_len(),
        inbound.set.len(),
        inbound.set.encoded_len()
    );
    c.bench_function("p3_class_outbound", |b| b.iter(|| build_part(&world, &out_class, Part::Outbound)));
    c.bench_function("p3_class_inbound", |b| b.iter(|| build_part(&world, &in_class, Part::Inbound)));
    c.bench_function("p3_class_compose", |b| b.iter(|| compose(&outbound, &inbound)));

    // One pod of service 500 gets a new IP: an endpoint-only change.
    let moved: Vec<Object> = (0..SERVICES)
        .flat_map(|i| {
            let mut v = service_objects(i, 0);
            if i == 500 {
                v[1]["status"]["podIP"] = json!("10.250.0.1");
            }
            v
        })
        .map(|v| parse_object(v).unwrap())
        .collect();
    let (after, _) = build_world(&moved, &mesh);
    c.bench_function("p3_world_change_detect", |b| b.iter(|| WorldChange::between(&world, &after)));
    let WorldChange::Endpoints(changed) = WorldChange::between(&world, &after) else { panic!("not endpoints-only") };
    // Once per push: the memo of rebuilt assignments, shared by every class patched.
    c.bench_function("p3_endpoint_assignments_per_push", |b| b.iter(|| Assignments::new(&after)));
    let assignments = Assignments::new(&after);
    c.bench_function("p3_endpoint_patch_per_class", |b| b.iter(|| patch_endpoints(&outbound, &changed, &assignments)));
    // One VirtualService's split changes: a routes-only change.
    let reweighted: Vec<Object> = (0..SERVICES)
        .flat_map(|i| {
            let mut v = service_objects(i, 0);
            if i == 500 {
                v[3]["spec"]["http"][0]["route"][0]["weight"] = json!(80);
                v[3]["spec"]["http"][0]["route"][1]["weight"] = json!(20);
            }
            v
        })
        .map(|v| parse_object(v).unwrap())
        .collect();
    let (routed, _) = build_world(&reweighted, &mesh);
    assert_eq!(WorldChange::between(&world, &routed), WorldChange::Routes);
    let none = Assignments::new(&routed);
    c.bench_function("p3_virtual_service_change_per_class", |b| {
        b.iter(|| update(&routed, &out_class, Part::Outbound, Some(&outbound), &WorldChange::Routes, &none))
    });
    assert_eq!(
        compose(&update(&routed, &out_class, Part::Outbound, Some(&outbound), &WorldChange::Routes, &none), &inbound),
        build(&routed, &proxy)
    );

    let patched = patch_endpoints(&outbound, &changed, &Assignments::new(&after));
    assert!(!Arc::ptr_eq(&patched, &outbound));
    assert_eq!(compose(&patched, &inbound), build(&after, &proxy));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench, classes
}
criterion_main!(benches);
