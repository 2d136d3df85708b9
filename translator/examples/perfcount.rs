#![allow(missing_docs, clippy::unwrap_used)]
use std::collections::BTreeMap;
use std::sync::Arc;
use sailplane_translator::model::{Endpoint, Location, Protocol, Resolution, Service, ServiceOrigin, ServicePort, World};
use sailplane_translator::build::{Ctx, cluster, endpoint, listener, route};
use sailplane_translator::{ProxyProfile, ResourceSet, build};
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
fn main() {
    let world = mesh(1000);
    let proxy = ProxyProfile { namespace: "ns-0".into(), labels: [("app".to_string(), "svc-0000".to_string())].into_iter().collect(), ..ProxyProfile::default() };
    let what = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args().nth(2).unwrap().parse().unwrap();
    let ctx = Ctx::new(&world, &proxy);
    let mut total = 0;
    for _ in 0..n {
        let mut s = ResourceSet::new();
        match what.as_str() {
            "full" => s = build(&world, &proxy),
            "cds" => cluster::build_clusters(&ctx, &mut s),
            "eds" => endpoint::build_endpoints(&ctx, &mut s),
            _ => { let names = listener::build_listeners(&ctx, &mut s); route::build_routes(&ctx, &names, &mut s); }
        }
        total += s.len();
    }
    println!("{total}");
}
