//! Translation cost (performance.md scenario P3, service-discovery slice): one sidecar's full
//! config in a mesh of N Kubernetes Services with two pods each, and the per-cluster cost.
//!
//! `cargo bench -p sailplane-translator --bench translate`

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sailplane_translator::model::{Endpoint, Location, Protocol, Resolution, Service, ServiceOrigin, ServicePort, World};
use sailplane_translator::build::{Ctx, cluster, endpoint, listener, route};
use sailplane_translator::{ProxyProfile, ResourceSet, TypeUrl, build};

fn mesh(n: usize) -> World {
    let mut services: Vec<Arc<Service>> = (0..n)
        .map(|i| {
            let name = format!("svc-{i:04}");
            let ns = format!("ns-{}", i % 20);
            let endpoints = (0..2)
                .map(|j| Endpoint {
                    address: format!("10.{}.{}.{}", 1 + i / 250, i % 250, 10 + j),
                    ports: [("http".to_string(), 8080)].into_iter().collect(),
                    labels: [("app".to_string(), name.clone()), ("security.istio.io/tlsMode".to_string(), "istio".to_string())]
                        .into_iter()
                        .collect(),
                    service_account: Some(name.clone()),
                    namespace: ns.clone(),
                    weight: 0,
                    locality: None,
                    ready: true,
                })
                .collect();
            Arc::new(Service {
                hostname: format!("{name}.{ns}.svc.cluster.local"),
                namespace: ns,
                name: name.clone(),
                addresses: vec![format!("10.96.{}.{}", i / 250, i % 250)],
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Http,
                    target_port: None,
                    target_port_name: None,
                }],
                resolution: Resolution::Static,
                location: Location::MeshInternal,
                origin: ServiceOrigin::Kubernetes,
                selector: Some([("app".to_string(), name)].into_iter().collect::<BTreeMap<_, _>>()),
                endpoints,
                service_accounts: Default::default(),
                export_to: Default::default(),
                created: String::new(),
            })
        })
        .collect();
    services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    World {
        services,
        ..World::default()
    }
}

fn bench(c: &mut Criterion) {
    let world = mesh(1000);
    let proxy = ProxyProfile {
        namespace: "ns-0".into(),
        labels: [("app".to_string(), "svc-0000".to_string())].into_iter().collect(),
        ..ProxyProfile::default()
    };
    let set = build(&world, &proxy);
    eprintln!(
        "1000 services -> {} clusters, {} endpoints, {} listeners, {} routes, {} bytes",
        set.of(TypeUrl::Cluster).len(),
        set.of(TypeUrl::Endpoint).len(),
        set.of(TypeUrl::Listener).len(),
        set.of(TypeUrl::Route).len(),
        set.encoded_len()
    );
    c.bench_function("sidecar_1000_services_full", |b| b.iter(|| build(&world, &proxy)));
    let ctx = Ctx::new(&world, &proxy);
    c.bench_function("sidecar_1000_services_cds", |b| {
        b.iter(|| {
            let mut s = ResourceSet::new();
            cluster::build_clusters(&ctx, &mut s, false);
            s
        })
    });
    c.bench_function("sidecar_1000_services_eds", |b| {
        b.iter(|| {
            let mut s = ResourceSet::new();
            let eds = cluster::build_clusters(&ctx, &mut ResourceSet::new(), false);
            endpoint::build_endpoints(&eds, &mut s);
            s
        })
    });
    c.bench_function("sidecar_1000_services_lds_rds", |b| {
        b.iter(|| {
            let mut s = ResourceSet::new();
            let names = listener::build_listeners(&ctx, &mut s);
            route::build_routes(&ctx, &names, &mut s);
            s
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
