//! Differential tests of the shared, incremental translation.
//!
//! For random meshes and random sequences of object adds, edits and deletes, every proxy's
//! configuration assembled the way the push stage assembles it (outbound class + inbound class,
//! previous translations patched when only endpoints changed) must equal, byte for byte, a
//! translation of that proxy from scratch. Sidecars and gateways alike; the proxies carry labels no
//! selector reads, labels some selectors read, and service accounts, so a translation that starts
//! depending on something its class leaves out fails here.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use sailplane_translator::api::{Object, parse_object};
use sailplane_translator::incremental::{Assignments, compose, update};
use sailplane_translator::model::{LabelKeys, MeshConfig, NodeType, WorldChange, build_world};
use sailplane_translator::{Part, ProxyProfile, ResourceSet, Translation, TypeUrl, World, build, build_part};
use serde_json::{Value, json};

const NAMESPACES: [&str; 2] = ["a", "b"];

/// One object of the generated mesh, described by small numbers so proptest can shrink it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Obj {
    /// Service `i` (namespace i % 2) with `ports` ports; selector `app: s<i>`; maybe a named port.
    Service { i: u8, ports: u8, named: bool },
    /// Pod `p` of service `i`, version v1/v2, with an IP byte, ready or not.
    Pod { i: u8, p: u8, v2: bool, ip: u8, ready: bool },
    /// DestinationRule for service `i`, in namespace `ns`, optionally with a workloadSelector.
    DestinationRule { i: u8, ns: u8, selector: Option<u8>, max_conn: u8 },
    /// VirtualService for service `i`: a split over the subsets of service `to` (maybe in another
    /// namespace: a Sidecar then imports it through the VirtualService), optionally matched on source
    /// labels.
    VirtualService { i: u8, weight: u8, source: Option<u8>, to: u8 },
    /// PeerAuthentication in namespace `ns`, optionally selecting `app: s<sel>`.
    PeerAuthentication { ns: u8, selector: Option<u8>, strict: bool },
    /// Sidecar in namespace `ns`, optionally selecting `app: s<sel>`, importing only its namespace.
    Sidecar { ns: u8, selector: Option<u8> },
    /// Gateway selecting `istio: gw<g>` with one HTTP server, and a VirtualService bound to it.
    Gateway { g: u8, i: u8 },
}

impl Obj {
    /// Identity: an edit replaces the object with the same key.
    fn key(&self) -> String {
        match self {
            Obj::Service { i, .. } => format!("svc/{i}"),
            Obj::Pod { i, p, .. } => format!("pod/{i}/{p}"),
            Obj::DestinationRule { i, ns, .. } => format!("dr/{i}/{ns}"),
            Obj::VirtualService { i, .. } => format!("vs/{i}"),
            Obj::PeerAuthentication { ns, selector, .. } => format!("pa/{ns}/{selector:?}"),
            Obj::Sidecar { ns, selector } => format!("sc/{ns}/{selector:?}"),
            Obj::Gateway { g, .. } => format!("gw/{g}"),
        }
    }

    fn json(&self) -> Vec<Value> {
        let ns_of = |i: u8| NAMESPACES[usize::from(i) % 2];
        match *self {
            Obj::Service { i, ports, named } => {
                let mut list: Vec<Value> = (0..ports.max(1))
                    .map(|k| json!({"name": format!("http-{k}"), "port": 8080 + u16::from(k), "targetPort": 9080 + u16::from(k)}))
                    .collect();
                if named {
                    list.push(json!({"name": "tcp-named", "port": 7000, "targetPort": "named"}));
                }
                vec![json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("s{i}"), "namespace": ns_of(i)},
                    "spec": {"clusterIP": format!("10.96.0.{i}"), "selector": {"app": format!("s{i}")}, "ports": list}})]
            }
            Obj::Pod { i, p, v2, ip, ready } => vec![json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("s{i}-{p}"), "namespace": ns_of(i),
                    "labels": {"app": format!("s{i}"), "version": if v2 {"v2"} else {"v1"}, "pod-template-hash": format!("h{p}")}},
                "spec": {"serviceAccountName": format!("s{i}"),
                    "containers": [{"name": "app", "ports": [{"containerPort": 7070, "name": "named"}]}]},
                "status": {"phase": "Running", "podIP": format!("10.1.{i}.{ip}"),
                    "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})],
            Obj::DestinationRule { i, ns, selector, max_conn } => {
                let mut spec = json!({"host": format!("s{i}.{}.svc.cluster.local", ns_of(i)),
                    "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 1 + u32::from(max_conn)}}},
                    "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]});
                if let Some(s) = selector {
                    spec["workloadSelector"] = json!({"matchLabels": {"app": format!("s{s}")}});
                }
                vec![json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                    "metadata": {"name": format!("dr{i}"), "namespace": NAMESPACES[usize::from(ns) % 2]}, "spec": spec})]
            }
            Obj::VirtualService { i, weight, source, to } => {
                let host = format!("s{i}.{}.svc.cluster.local", ns_of(i));
                let dest = format!("s{to}.{}.svc.cluster.local", ns_of(to));
                let w = u32::from(weight % 101);
                let mut http = json!({"route": [
                    {"destination": {"host": dest, "subset": "v1"}, "weight": w},
                    {"destination": {"host": dest, "subset": "v2"}, "weight": 100 - w}]});
                if let Some(s) = source {
                    http["match"] = json!([{"sourceLabels": {"app": format!("s{s}")}}]);
                }
                vec![json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                    "metadata": {"name": format!("vs{i}"), "namespace": ns_of(i)},
                    "spec": {"hosts": [host], "http": [http, {"route": [{"destination": {"host": host}}]}]}})]
            }
            Obj::PeerAuthentication { ns, selector, strict } => {
                let mut spec = json!({"mtls": {"mode": if strict {"STRICT"} else {"PERMISSIVE"}}});
                if let Some(s) = selector {
                    spec["selector"] = json!({"matchLabels": {"app": format!("s{s}")}});
                }
                vec![json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                    "metadata": {"name": format!("pa-{selector:?}").replace(['(', ')'], ""), "namespace": NAMESPACES[usize::from(ns) % 2]},
                    "spec": spec})]
            }
            Obj::Sidecar { ns, selector } => {
                let mut spec = json!({"egress": [{"hosts": ["./*"]}]});
                if let Some(s) = selector {
                    spec["workloadSelector"] = json!({"labels": {"app": format!("s{s}")}});
                }
                vec![json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
                    "metadata": {"name": format!("sc-{selector:?}").replace(['(', ')'], ""), "namespace": NAMESPACES[usize::from(ns) % 2]},
                    "spec": spec})]
            }
            Obj::Gateway { g, i } => {
                let host = format!("s{i}.{}.svc.cluster.local", ns_of(i));
                vec![
                    json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                        "metadata": {"name": format!("gw{g}"), "namespace": "a"},
                        "spec": {"selector": {"istio": format!("gw{g}")},
                            "servers": [{"port": {"number": 8000 + u32::from(g), "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
                    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                        "metadata": {"name": format!("gwvs{g}"), "namespace": "a"},
                        "spec": {"hosts": ["*"], "gateways": [format!("gw{g}")], "http": [{"route": [{"destination": {"host": host}}]}]}}),
                ]
            }
        }
    }
}

const SERVICES: u8 = 4;

fn obj() -> impl Strategy<Value = Obj> {
    let s = 0..SERVICES;
    prop_oneof![
        (s.clone(), 1..3u8, any::<bool>()).prop_map(|(i, ports, named)| Obj::Service { i, ports, named }),
        (s.clone(), 0..3u8, any::<bool>(), 1..4u8, any::<bool>()).prop_map(|(i, p, v2, ip, ready)| Obj::Pod {
            i,
            p,
            v2,
            ip,
            ready
        }),
        (s.clone(), 0..2u8, proptest::option::of(0..SERVICES), 0..3u8)
            .prop_map(|(i, ns, selector, max_conn)| Obj::DestinationRule { i, ns, selector, max_conn }),
        (s.clone(), 0..100u8, proptest::option::of(0..SERVICES), 0..SERVICES)
            .prop_map(|(i, weight, source, to)| Obj::VirtualService { i, weight, source, to }),
        (0..2u8, proptest::option::of(0..SERVICES), any::<bool>())
            .prop_map(|(ns, selector, strict)| Obj::PeerAuthentication { ns, selector, strict }),
        (0..2u8, proptest::option::of(0..SERVICES)).prop_map(|(ns, selector)| Obj::Sidecar { ns, selector }),
        (0..2u8, s).prop_map(|(g, i)| Obj::Gateway { g, i }),
    ]
}

/// One step of a change sequence.
#[derive(Debug, Clone)]
enum Step {
    /// Add the object, or replace the one with its key.
    Put(Obj),
    /// Delete the n-th present object (modulo their number).
    Delete(usize),
    /// Move a pod: a new IP or readiness (the endpoint churn the incremental path exists for).
    Churn { i: u8, p: u8, ip: u8, ready: bool },
    /// Change a VirtualService's split and destination, keeping its source labels (a routes-only
    /// change).
    Reweight { i: u8, weight: u8, to: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => obj().prop_map(Step::Put),
        1 => any::<usize>().prop_map(Step::Delete),
        4 => (0..SERVICES, 0..3u8, 1..6u8, any::<bool>()).prop_map(|(i, p, ip, ready)| Step::Churn { i, p, ip, ready }),
        2 => (0..SERVICES, 0..100u8, 0..SERVICES).prop_map(|(i, weight, to)| Step::Reweight { i, weight, to }),
    ]
}

/// The proxies of the test: sidecars of pods of every service (two pods each, differing in a
/// label no selector reads and in the service account), a sidecar of no service, and gateways.
fn proxies() -> Vec<ProxyProfile> {
    let mut out = Vec::new();
    for i in 0..SERVICES {
        for p in 0..2u8 {
            let labels: BTreeMap<String, String> = [
                ("app".to_string(), format!("s{i}")),
                ("version".to_string(), if p == 0 { "v1" } else { "v2" }.to_string()),
                ("pod-template-hash".to_string(), format!("h{p}")),
            ]
            .into_iter()
            .collect();
            out.push(ProxyProfile {
                namespace: NAMESPACES[usize::from(i) % 2].to_string(),
                labels,
                service_account: format!("sa{p}"),
                ..ProxyProfile::default()
            });
        }
    }
    out.push(ProxyProfile { namespace: "b".into(), ..ProxyProfile::default() });
    for g in 0..2u8 {
        out.push(ProxyProfile {
            node_type: NodeType::Router,
            namespace: "a".into(),
            labels: [("istio".to_string(), format!("gw{g}")), ("pod".to_string(), "x".to_string())]
                .into_iter()
                .collect(),
            ..ProxyProfile::default()
        });
    }
    out
}

fn world(objects: &BTreeMap<String, Obj>) -> World {
    let parsed: Vec<Object> = objects.values().flat_map(Obj::json).map(|v| parse_object(v).unwrap()).collect();
    build_world(parsed.iter(), &MeshConfig::default()).0
}

/// The caches of a push stage: translations of the previous world by class.
#[derive(Default)]
struct Caches {
    world: Arc<World>,
    keys: LabelKeys,
    outbound: BTreeMap<ProxyProfile, Arc<Translation>>,
    inbound: BTreeMap<ProxyProfile, Arc<Translation>>,
    /// How often each kind of change was seen (to show the incremental paths are exercised).
    seen: BTreeMap<String, usize>,
}

/// Brings `caches` to `world` the way the push stage does and returns each proxy's composed set.
fn incremental(caches: &mut Caches, world: World, proxies: &[ProxyProfile]) -> Vec<ResourceSet> {
    let keys = LabelKeys::of(&world);
    let change = if keys == caches.keys { WorldChange::between(&caches.world, &world) } else { WorldChange::Other };
    *caches.seen.entry(format!("{change:?}").split('(').next().unwrap_or_default().to_string()).or_default() += 1;
    let world = Arc::new(world);
    let assignments = Assignments::new(&world);
    let mut next = Caches {
        world: Arc::clone(&world),
        keys: keys.clone(),
        seen: std::mem::take(&mut caches.seen),
        ..Caches::default()
    };
    let side = |p: ProxyProfile, part: Part, old: Option<&Arc<Translation>>| -> Arc<Translation> {
        update(&world, &p, part, old, &change, &assignments)
    };
    let mut out = Vec::new();
    for p in proxies {
        let (o, i) = (p.outbound_class(&keys), p.inbound_class(&keys));
        let ot = match next.outbound.get(&o) {
            Some(t) => Arc::clone(t),
            None => {
                let t = side(o.clone(), Part::Outbound, caches.outbound.get(&o));
                next.outbound.insert(o, Arc::clone(&t));
                t
            }
        };
        let it = match next.inbound.get(&i) {
            Some(t) => Arc::clone(t),
            None => {
                let t = side(i.clone(), Part::Inbound, caches.inbound.get(&i));
                next.inbound.insert(i, Arc::clone(&t));
                t
            }
        };
        out.push(compose(&ot, &it));
    }
    *caches = next;
    out
}

fn bytes(set: &ResourceSet) -> Vec<(TypeUrl, String, Vec<u8>)> {
    TypeUrl::ALL.into_iter().flat_map(|t| set.of(t).iter().map(move |(n, r)| (t, n.clone(), r.any.to_vec()))).collect()
}

fn check(caches: &mut Caches, objects: &BTreeMap<String, Obj>, proxies: &[ProxyProfile]) -> Result<(), TestCaseError> {
    let w = world(objects);
    let scratch: Vec<ResourceSet> = proxies.iter().map(|p| build(&w, p)).collect();
    let got = incremental(caches, w, proxies);
    for ((p, a), b) in proxies.iter().zip(&scratch).zip(&got) {
        if a != b {
            let (a, b) = (bytes(a), bytes(b));
            let only_a: Vec<_> = a.iter().filter(|x| !b.contains(x)).map(|x| (x.0.short(), &x.1)).collect();
            let only_b: Vec<_> = b.iter().filter(|x| !a.contains(x)).map(|x| (x.0.short(), &x.1)).collect();
            return Err(TestCaseError::fail(format!(
                "proxy {p:?}: from scratch only {only_a:?}, incremental only {only_b:?}"
            )));
        }
    }
    Ok(())
}

/// Runs one generated case: the initial mesh, then each step, checking after every one.
fn run_case(initial: Vec<Obj>, steps: Vec<Step>, seen: &mut BTreeMap<String, usize>) -> Result<(), TestCaseError> {
    let proxies = proxies();
    let mut objects: BTreeMap<String, Obj> = initial.into_iter().map(|o| (o.key(), o)).collect();
    // Every service exists, so churn and route edits have something to act on.
    for i in 0..SERVICES {
        objects.entry(format!("svc/{i}")).or_insert(Obj::Service { i, ports: 1, named: false });
    }
    let mut caches = Caches::default();
    check(&mut caches, &objects, &proxies)?;
    for s in steps {
        match s {
            Step::Put(o) => {
                objects.insert(o.key(), o);
            }
            Step::Delete(n) => {
                if let Some(k) = objects.keys().nth(n % objects.len().max(1)).cloned() {
                    objects.remove(&k);
                }
            }
            Step::Churn { i, p, ip, ready } => {
                let v2 = matches!(objects.get(&format!("pod/{i}/{p}")), Some(Obj::Pod { v2: true, .. }));
                let o = Obj::Pod { i, p, v2, ip, ready };
                objects.insert(o.key(), o);
            }
            Step::Reweight { i, weight, to } => {
                let source = match objects.get(&format!("vs/{i}")) {
                    Some(Obj::VirtualService { source, .. }) => *source,
                    _ => None,
                };
                let o = Obj::VirtualService { i, weight, source, to };
                objects.insert(o.key(), o);
            }
        }
        check(&mut caches, &objects, &proxies)?;
    }
    for (k, n) in std::mem::take(&mut caches.seen) {
        *seen.entry(k).or_default() += n;
    }
    Ok(())
}

#[test]
fn incremental_translation_equals_translation_from_scratch() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 48, ..ProptestConfig::default() });
    let seen = std::cell::RefCell::new(BTreeMap::new());
    let strategy = (proptest::collection::vec(obj(), 4..16), proptest::collection::vec(step(), 1..12));
    let result = runner.run(&strategy, |(initial, steps)| run_case(initial, steps, &mut seen.borrow_mut()));
    if let Err(e) = result {
        panic!("{e}");
    }
    // Every kind of change was exercised, the incremental ones included.
    let seen = seen.into_inner();
    for kind in ["Same", "Endpoints", "Routes", "Other"] {
        assert!(seen.get(kind).copied().unwrap_or(0) > 0, "no {kind} change in the generated cases: {seen:?}");
    }
}

/// The incremental path is taken, not only allowed: pure endpoint churn on a mesh without named
/// ports patches the previous translations, and a proxy whose assignments did not change keeps
/// the very same translation.
#[test]
fn endpoint_churn_patches_only_assignments() {
    let mut objects = BTreeMap::new();
    for i in 0..2u8 {
        for o in [Obj::Service { i, ports: 1, named: false }, Obj::Pod { i, p: 0, v2: false, ip: 1, ready: true }] {
            objects.insert(o.key(), o);
        }
    }
    objects.insert("sc".into(), Obj::Sidecar { ns: 1, selector: None });
    let before = world(&objects);
    let churn = Obj::Pod { i: 0, p: 0, v2: false, ip: 2, ready: true };
    objects.insert(churn.key(), churn);
    let after = world(&objects);
    let WorldChange::Endpoints(changed) = WorldChange::between(&before, &after) else {
        panic!("a pod IP change must be an endpoints-only change")
    };
    assert_eq!(changed.into_iter().collect::<Vec<_>>(), vec![("a".to_string(), "s0.a.svc.cluster.local".to_string())]);
    let keys = LabelKeys::of(&after);
    let mut caches = Caches { world: Arc::new(before), keys: keys.clone(), ..Caches::default() };
    let proxies = proxies();
    let old: Vec<(ProxyProfile, Arc<Translation>)> = proxies
        .iter()
        .map(|p| {
            let (o, i) = (p.outbound_class(&keys), p.inbound_class(&keys));
            let w = Arc::clone(&caches.world);
            let t = caches.outbound.entry(o.clone()).or_insert_with(|| Arc::new(build_part(&w, &o, Part::Outbound)));
            let t = Arc::clone(t);
            caches.inbound.entry(i.clone()).or_insert_with(|| Arc::new(build_part(&w, &i, Part::Inbound)));
            (o, t)
        })
        .collect();
    let got = incremental(&mut caches, after.clone(), &proxies);
    for ((p, set), (o, before)) in proxies.iter().zip(&got).zip(&old) {
        assert_eq!(*set, build(&after, p), "{p:?}");
        let now = &caches.outbound[o];
        // Namespace b's Sidecar imports only b: its sidecars do not see s0 and keep their translation.
        if p.node_type == NodeType::Sidecar && p.namespace == "b" {
            assert!(Arc::ptr_eq(now, before), "{p:?} was retranslated: {:?}", before.eds);
        } else {
            assert!(!Arc::ptr_eq(now, before), "{p:?} kept a stale assignment");
            assert_eq!(now.set.of(TypeUrl::Cluster), before.set.of(TypeUrl::Cluster));
        }
    }
}
