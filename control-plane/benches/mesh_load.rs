//! Load generator for scenarios P2, P4, P5 and P6 of `docs/performance.md`, against the real
//! `sailplane discovery` binary running as a child process (its CPU time and RSS are its own).
//!
//! For every scenario it writes a mesh shaped like Istio's load-test mesh as YAML files in a temp
//! directory, starts `sailplane discovery --config DIR` on loopback, waits for `/ready`, and then
//! either connects K light ADS clients, each the sidecar of a distinct pod (own node id, labels with
//! a per-pod `pod-template-hash`, service account, IPs; own TCP and HTTP/2 connection; Envoy's order
//! CDS, EDS, LDS, RDS; every response ACKed), or (P6) starts real Envoy processes. It edits files as
//! a user would and times how long the change takes to reach the proxies.
//!
//! ```text
//! cargo bench -p sailplane --bench mesh_load -- p2 [--clients 1000] [--services 10000] [--runs 5]
//! cargo bench -p sailplane --bench mesh_load -- p4 [--clients 10000] [--services 1000] [--idle-secs 10]
//! cargo bench -p sailplane --bench mesh_load -- p5 [--clients 10000] [--services 1000] [--rate 40] [--seconds 20]
//! cargo bench -p sailplane --bench mesh_load -- p6 [--envoys 20] [--services 1000] [--runs 20]
//! ```
//!
//! Common options: `--api sotw|delta`, `--timeout-secs T` (bounds every phase), `--ramp N` (at most N
//! clients between connect and synced), `--max-rss-mb M` (the server is killed above it),
//! `--server-arg ARG` (repeatable; passed to `sailplane discovery`), `--json`. See
//! `control-plane/benches/README.md` for the scenarios and the measured figures.

#![allow(clippy::unwrap_used)]

#[path = "mesh_load/ads.rs"]
mod ads;
#[path = "mesh_load/envoy.rs"]
mod envoy;
#[path = "mesh_load/mesh.rs"]
mod mesh;
#[path = "mesh_load/server.rs"]
mod server;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ads::{Api, ClientOptions, Event, Shared, Watch};
use mesh::Mesh;
use serde_json::json;
use server::{ProcStats, Server};

#[derive(Debug, Clone)]
struct Args {
    scenario: String,
    clients: Option<usize>,
    services: Option<usize>,
    api: Option<Api>,
    runs: Option<usize>,
    seconds: u64,
    rate: f64,
    timeout: Duration,
    ramp: usize,
    idle_secs: u64,
    envoys: usize,
    base_port: u16,
    json: bool,
    max_rss_mb: f64,
    server_args: Vec<String>,
}

const USAGE: &str = "usage: mesh_load p2|p4|p5|p6 [--clients K] [--services N] [--api sotw|delta] [--runs R] \
[--seconds S] [--rate R] [--timeout-secs T] [--ramp N] [--idle-secs S] [--envoys E] [--base-port P] \
[--max-rss-mb M] [--server-arg ARG]... [--json]";

fn parse_args() -> Args {
    let mut a = Args {
        scenario: String::new(),
        clients: None,
        services: None,
        api: None,
        runs: None,
        seconds: 20,
        rate: 40.0,
        timeout: Duration::from_secs(120),
        ramp: 200,
        idle_secs: 10,
        envoys: 20,
        base_port: 21_000,
        json: false,
        max_rss_mb: 8192.0,
        server_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value\n{USAGE}"));
        match arg.as_str() {
            "p2" | "p4" | "p5" | "p6" => a.scenario = arg.clone(),
            "--clients" => a.clients = Some(val().parse().unwrap()),
            "--services" => a.services = Some(val().parse().unwrap()),
            "--api" => {
                a.api = Some(match val().as_str() {
                    "sotw" => Api::Sotw,
                    "delta" => Api::Delta,
                    other => panic!("--api {other}: sotw or delta"),
                })
            }
            "--runs" => a.runs = Some(val().parse().unwrap()),
            "--seconds" => a.seconds = val().parse().unwrap(),
            "--rate" => a.rate = val().parse().unwrap(),
            "--timeout-secs" => a.timeout = Duration::from_secs(val().parse().unwrap()),
            "--ramp" => a.ramp = val().parse().unwrap(),
            "--idle-secs" => a.idle_secs = val().parse().unwrap(),
            "--envoys" => a.envoys = val().parse().unwrap(),
            "--base-port" => a.base_port = val().parse().unwrap(),
            "--max-rss-mb" => a.max_rss_mb = val().parse().unwrap(),
            "--server-arg" => a.server_args.push(val()),
            "--json" => a.json = true,
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    assert!(!a.scenario.is_empty(), "{USAGE}");
    // Bounded load: this runs on a shared 2-core machine.
    assert!(a.clients.is_none_or(|k| (1..=20_000).contains(&k)), "--clients must be 1..=20000");
    assert!(a.services.is_none_or(|n| n <= 20_000), "--services must be at most 20000");
    assert!((1..=50).contains(&a.envoys), "--envoys must be 1..=50");
    assert!(a.seconds <= 120 && a.rate <= 1000.0, "--seconds at most 120, --rate at most 1000");
    assert!(a.ramp >= 1, "--ramp must be at least 1");
    a
}

fn main() {
    let args = parse_args();
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let result = match args.scenario.as_str() {
        "p2" => rt.block_on(p2(&args)),
        "p4" => rt.block_on(p4(&args)),
        "p5" => rt.block_on(p5(&args)),
        _ => p6(&args),
    };
    // Client tasks are dropped with the runtime; the server guard was dropped inside the scenario.
    rt.shutdown_timeout(Duration::from_secs(2));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
    }
}

/// Each client is one socket here and one in the server.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let want = lim.maximum.unwrap_or(65_536).min(65_536);
    if lim.current.is_some_and(|c| c < want) {
        setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(want), maximum: lim.maximum }).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------------
// Helpers

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(v: &[f64]) -> serde_json::Value {
    let s = sorted(v.to_vec());
    json!({"n": s.len(), "p50": pct(&s, 0.5), "p99": pct(&s, 0.99), "max": s.last().copied().unwrap_or(f64::NAN)})
}

fn fmt3(v: &[f64]) -> String {
    let s = sorted(v.to_vec());
    if s.is_empty() {
        return "n/a".into();
    }
    format!("{:.1} / {:.1} / {:.1}", pct(&s, 0.5), pct(&s, 0.99), s.last().unwrap())
}

/// A mesh in a temp dir and the server running on it.
struct Setup {
    dir: tempfile::TempDir,
    server: Server,
    rss0: ProcStats,
    ready_in: Duration,
}

fn setup(args: &Args, mesh: &Mesh, extra: impl FnOnce(&std::path::Path)) -> Setup {
    let dir = tempfile::Builder::new().prefix("mesh-load-").tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let t = Instant::now();
    mesh.write(&config);
    extra(&config);
    eprintln!(
        "mesh: {} services in {} namespaces, {} pods each, {} (written in {:.1} s to {})",
        mesh.services,
        mesh::NAMESPACES,
        mesh.pods,
        if mesh.plain { "no VirtualServices/DestinationRules" } else { "a VirtualService and a DestinationRule each" },
        t.elapsed().as_secs_f64(),
        config.display()
    );
    let mut server = Server::start(&config, dir.path(), &args.server_args, args.max_rss_mb);
    let ready_in = server.wait_ready(args.timeout).unwrap_or_else(|e| panic!("server not ready: {e}"));
    // Let the initial build settle before the baseline.
    std::thread::sleep(Duration::from_millis(1000));
    let rss0 = server.stats();
    eprintln!(
        "server pid {} ready in {:.2} s (xds {}, monitoring {}); with 0 clients: RSS {:.1} MB, CPU {:.2} s so far",
        server.pid,
        ready_in.as_secs_f64(),
        server.xds,
        server.monitoring,
        rss0.rss_mb,
        rss0.cpu_s
    );
    Setup { dir, server, rss0, ready_in }
}

/// What the clients reported.
#[derive(Default)]
struct FleetState {
    synced: Vec<Option<(Duration, Duration)>>,
    synced_count: usize,
    ended: Vec<(usize, String, bool)>,
}

struct Fleet {
    shared: Arc<Shared>,
    state: Arc<Mutex<FleetState>>,
}

impl Fleet {
    fn live_synced(&self) -> usize {
        let st = self.state.lock().unwrap();
        st.synced_count - st.ended.iter().filter(|e| e.2).count()
    }

    fn ended_summary(&self) -> (usize, usize, Vec<String>) {
        let st = self.state.lock().unwrap();
        let after_sync = st.ended.iter().filter(|e| e.2).count();
        let mut reasons: Vec<String> = Vec::new();
        for (_, r, _) in &st.ended {
            if !reasons.contains(r) && reasons.len() < 5 {
                reasons.push(r.clone());
            }
        }
        (st.ended.len(), after_sync, reasons)
    }
}

/// Connects K clients (pods `client_pod(j)`), at most `--ramp` between connect and synced, and waits
/// until all are synced or `--timeout-secs` passed. Prints progress every 5 s.
async fn connect(args: &Args, s: &mut Setup, k: usize, services: usize, api: Api) -> (Fleet, serde_json::Value) {
    let (shared, mut events) = Shared::new(k);
    let state = Arc::new(Mutex::new(FleetState { synced: vec![None; k], ..Default::default() }));
    {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                let mut st = state.lock().unwrap();
                match ev {
                    Event::Synced { client, first_response, synced } => {
                        st.synced[client] = Some((first_response, synced));
                        st.synced_count += 1;
                    }
                    Event::Ended { client, reason, was_synced } => st.ended.push((client, reason, was_synced)),
                }
            }
        });
    }
    let ramp = Arc::new(tokio::sync::Semaphore::new(args.ramp));
    let opts = ClientOptions {
        addr: s.server.xds,
        api,
        connect_timeout: Duration::from_secs(10),
        first_response_timeout: args.timeout,
    };
    let t0 = Instant::now();
    let before = s.server.stats();
    for j in 0..k {
        let pod = mesh::client_pod(j, services);
        tokio::spawn(ads::run(j, pod, opts.clone(), shared.clone(), ramp.clone()));
    }
    let fleet = Fleet { shared, state };
    let deadline = t0 + args.timeout;
    let mut last_print = Instant::now();
    loop {
        let (synced, ended) = {
            let st = fleet.state.lock().unwrap();
            (st.synced_count, st.ended.len())
        };
        if synced + ended.saturating_sub(fleet.ended_summary().1) >= k || Instant::now() > deadline {
            break;
        }
        if !s.server.alive() {
            eprintln!("!! server exited during connect; log tail:\n{}", s.server.log_tail(15));
            break;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            let st = s.server.stats();
            eprintln!(
                "  connect: {synced}/{k} synced, {ended} ended, {:.0} s, server RSS {:.0} MB, CPU {:.1} s, {:.1} MB received",
                t0.elapsed().as_secs_f64(),
                st.rss_mb,
                st.cpu_s - before.cpu_s,
                fleet.shared.total_bytes() as f64 / 1e6
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t0.elapsed();
    let after = s.server.stats();
    let st = fleet.state.lock().unwrap();
    let first: Vec<f64> = st.synced.iter().flatten().map(|(f, _)| ms(*f)).collect();
    let sync: Vec<f64> = st.synced.iter().flatten().map(|(_, s)| ms(*s)).collect();
    let last_synced = sync.iter().copied().fold(0.0, f64::max);
    let synced_count = st.synced_count;
    drop(st);
    let (ended, _, reasons) = fleet.ended_summary();
    let bytes = fleet.shared.total_bytes();
    eprintln!(
        "connect: {synced_count}/{k} synced in {:.2} s (last synced at {:.2} s), {ended} ended{}; per client: first response p50/p99/max {} ms, synced {} ms; {:.1} MB received ({:.0} KB per synced client); server CPU {:.1} s, RSS {:.0} MB",
        elapsed.as_secs_f64(),
        last_synced / 1e3,
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join("; ")) },
        fmt3(&first),
        fmt3(&sync),
        bytes as f64 / 1e6,
        bytes as f64 / 1e3 / synced_count.max(1) as f64,
        after.cpu_s - before.cpu_s,
        after.rss_mb
    );
    let report = json!({
        "clients": k, "synced": synced_count, "ended": ended, "end_reasons": reasons,
        "connect_all_s": if synced_count == k { last_synced / 1e3 } else { f64::NAN },
        "phase_s": elapsed.as_secs_f64(),
        "first_response_ms": summary(&first), "synced_ms": summary(&sync),
        "bytes_received": bytes, "server_cpu_s": after.cpu_s - before.cpu_s, "server_rss_mb": after.rss_mb,
    });
    (fleet, report)
}

fn server_report(s: &Setup) -> serde_json::Value {
    let (errors, warns, examples) = s.server.log_summary();
    let killed = s.server.killed_for_rss.load(Ordering::Acquire);
    if errors + warns > 0 || killed {
        eprintln!(
            "server log {}: {errors} ERROR, {warns} WARN lines{}",
            s.server.log.display(),
            if killed { "; KILLED for RSS" } else { "" }
        );
        for e in &examples {
            eprintln!("  {e}");
        }
    }
    let keep = std::env::temp_dir().join(format!("mesh_load-server-{}.log", s.server.pid));
    let _ = std::fs::copy(&s.server.log, &keep);
    eprintln!("server log copied to {}", keep.display());
    json!({"log": keep, "errors": errors, "warns": warns, "examples": examples, "killed_for_rss": killed,
        "ready_s": s.ready_in.as_secs_f64()})
}

fn api_name(a: Api) -> &'static str {
    if a == Api::Sotw { "sotw" } else { "delta" }
}

// ---------------------------------------------------------------------------------------------------
// P4: connections

async fn p4(args: &Args) -> serde_json::Value {
    let k = args.clients.unwrap_or(10_000);
    let services = args.services.unwrap_or(1000);
    let api = args.api.unwrap_or(Api::Sotw);
    let mesh = Mesh { services, pods: 2, plain: false };
    let mut s = setup(args, &mesh, |_| {});
    let (fleet, connect) = connect(args, &mut s, k, services, api).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let a = s.server.stats();
    let idle = Duration::from_secs(args.idle_secs);
    tokio::time::sleep(idle).await;
    let b = s.server.stats();
    let n = fleet.live_synced();
    let idle_cpu = (b.cpu_s - a.cpu_s) / idle.as_secs_f64();
    let per_proxy_kib = (b.rss_mb - s.rss0.rss_mb) * 1024.0 / n.max(1) as f64;
    let (ended, ended_after_sync, reasons) = fleet.ended_summary();
    println!();
    println!(
        "P4 connections: {k} distinct sidecars ({} API), {services} services (VS+DR), 20 namespaces",
        api_name(api)
    );
    println!(
        "| clients synced | connect all s | RSS 0 clients MB | RSS after MB | peak RSS MB | RSS per proxy KiB | idle CPU cores ({} s) | streams ended |",
        args.idle_secs
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n}/{k} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.3} | {ended} ({ended_after_sync} after sync) |",
        connect["connect_all_s"].as_f64().unwrap_or(f64::NAN),
        s.rss0.rss_mb,
        b.rss_mb,
        b.hwm_mb,
        per_proxy_kib,
        idle_cpu
    );
    if !reasons.is_empty() {
        println!("stream end reasons: {}", reasons.join("; "));
    }
    let server = server_report(&s);
    drop(fleet);
    drop(s);
    json!({"scenario": "p4", "api": api_name(api), "services": services, "connect": connect,
        "rss_0_mb": a.rss_mb.min(f64::MAX), "rss_after_mb": b.rss_mb, "peak_rss_mb": b.hwm_mb,
        "rss_per_proxy_kib": per_proxy_kib, "idle_cpu_cores": idle_cpu, "live_synced": n, "server": server})
}

// ---------------------------------------------------------------------------------------------------
// P2: one cluster changes, Delta

async fn p2(args: &Args) -> serde_json::Value {
    let k = args.clients.unwrap_or(1000);
    let services = args.services.unwrap_or(10_000);
    let api = args.api.unwrap_or(Api::Delta);
    let runs = args.runs.unwrap_or(5);
    // One cluster per service: no VirtualServices or DestinationRules; one pod (endpoint) each.
    let mesh = Mesh { services, pods: 1, plain: true };
    let mut s = setup(args, &mesh, |_| {});
    let (fleet, connect) = connect(args, &mut s, k, services, api).await;
    let config = s.dir.path().join("config");
    let mut lat_all: Vec<f64> = Vec::new();
    let mut runs_out = Vec::new();
    println!();
    println!(
        "P2 one change over {}: {k} distinct sidecars, {services} services without VS/DR (one outbound cluster each)",
        api_name(api)
    );
    println!(
        "| run | clients got it | last client ms | p50 / p99 client ms | bytes per client (median / max) | server CPU ms |"
    );
    println!("|---|---|---|---|---|---|");
    for run in 1..=runs {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let expected = fleet.live_synced();
        let target = (run * 7919 + 13) % services;
        let name = mesh::cluster(target);
        let bytes0: Vec<u64> = fleet.shared.bytes.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let st0 = s.server.stats();
        let t0 = Instant::now();
        let w = Watch::new(ads::CDS, name.clone(), None, t0, expected, k);
        fleet.shared.add_watch(w.clone());
        // A new DestinationRule (first run) or a new connection-pool limit: one Cluster changes.
        mesh::write_extra_destination_rule(&config, target, 100 + run as u32);
        let deadline = t0 + args.timeout;
        while w.count() < expected && Instant::now() < deadline && s.server.alive() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        fleet.shared.remove_watch(&w);
        // Whatever else the change causes (EDS, ACK handling) counts too.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let st1 = s.server.stats();
        let mut per_client: Vec<f64> = fleet
            .shared
            .bytes
            .iter()
            .zip(&bytes0)
            .map(|(b, b0)| (b.load(Ordering::Relaxed) - b0) as f64)
            .filter(|_| true)
            .collect();
        per_client = sorted(per_client);
        let lats = sorted(w.latencies.lock().unwrap().iter().map(|d| ms(*d)).collect());
        lat_all.extend(&lats);
        let cpu_ms = (st1.cpu_s - st0.cpu_s) * 1e3;
        println!(
            "| {run} | {}/{expected} | {:.1} | {:.1} / {:.1} | {:.0} / {:.0} | {:.0} |",
            lats.len(),
            lats.last().copied().unwrap_or(f64::NAN),
            pct(&lats, 0.5),
            pct(&lats, 0.99),
            pct(&per_client, 0.5),
            per_client.last().copied().unwrap_or(0.0),
            cpu_ms
        );
        runs_out.push(json!({"run": run, "cluster": name, "got": lats.len(), "expected": expected,
            "latency_ms": summary(&lats), "bytes_per_client": summary(&per_client), "server_cpu_ms": cpu_ms}));
    }
    println!(
        "all runs, per client: p50 / p99 / max {} ms (server CPU includes the 1 s after the last client)",
        fmt3(&lat_all)
    );
    let server = server_report(&s);
    drop(fleet);
    drop(s);
    json!({"scenario": "p2", "api": api_name(api), "services": services, "connect": connect, "runs": runs_out,
        "latency_ms_all": summary(&lat_all), "server": server})
}

// ---------------------------------------------------------------------------------------------------
// P5: endpoint churn

async fn p5(args: &Args) -> serde_json::Value {
    use rand::Rng;
    let k = args.clients.unwrap_or(10_000);
    let services = args.services.unwrap_or(1000);
    let api = args.api.unwrap_or(Api::Sotw);
    let mesh = Mesh { services, pods: 2, plain: false };
    let mut s = setup(args, &mesh, |_| {});
    let (fleet, connect) = connect(args, &mut s, k, services, api).await;
    let config = s.dir.path().join("config");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut generations = vec![vec![0u32; mesh.pods]; services];
    let changes = (args.rate * args.seconds as f64).round() as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut pending: Vec<(usize, Arc<Watch>)> = Vec::new();
    let mut pending_services: HashSet<usize> = HashSet::new();
    let mut converged: Vec<f64> = Vec::new();
    let mut no_subscribers = 0;
    let mut rng = rand::rng();
    let bytes0 = fleet.shared.total_bytes();
    let st0 = s.server.stats();
    let t_start = Instant::now();
    let finish =
        |pending: &mut Vec<(usize, Arc<Watch>)>, pending_services: &mut HashSet<usize>, converged: &mut Vec<f64>| {
            pending.retain(|(i, w)| {
                if w.count() >= w.expected {
                    let l = w.latencies.lock().unwrap().iter().copied().max().unwrap_or_default();
                    converged.push(ms(l));
                    fleet.shared.remove_watch(w);
                    pending_services.remove(i);
                    false
                } else {
                    true
                }
            });
        };
    let mut written = 0;
    let mut late_writes = 0;
    for n in 0..changes {
        let at = t_start + interval * n as u32;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        } else if Instant::now().duration_since(at) > interval {
            late_writes += 1;
        }
        finish(&mut pending, &mut pending_services, &mut converged);
        // A service whose previous change has not converged is not changed again (its new address
        // would replace the one being timed).
        let mut i = rng.random_range(0..services);
        for _ in 0..20 {
            if !pending_services.contains(&i) {
                break;
            }
            i = rng.random_range(0..services);
        }
        if pending_services.contains(&i) {
            continue;
        }
        let j = rng.random_range(0..mesh.pods);
        generations[i][j] += 1;
        let ip = mesh::pod_ip(i, j, generations[i][j]);
        // SocketAddress.address (field 2, length-delimited) holding the new IP.
        let mut needle = vec![0x12, ip.len() as u8];
        needle.extend_from_slice(ip.as_bytes());
        let name = mesh::cluster(i);
        let expected = fleet.shared.names.subscribers(&name) as usize;
        if expected == 0 {
            no_subscribers += 1;
        }
        let w = Watch::new(ads::EDS, name, Some(needle), Instant::now(), expected.max(1), k);
        fleet.shared.add_watch(w.clone());
        mesh.write_pods(&config, i, &generations[i]);
        written += 1;
        if expected > 0 {
            pending.push((i, w));
            pending_services.insert(i);
        } else {
            fleet.shared.remove_watch(&w);
        }
        if !s.server.alive() {
            eprintln!("!! server exited during churn");
            break;
        }
        if n > 0 && n % (args.rate as usize * 5).max(1) == 0 {
            let st = s.server.stats();
            eprintln!(
                "  churn: {n}/{changes} written, {} converged, {} pending, server CPU {:.2} cores so far, RSS {:.0} MB",
                converged.len(),
                pending.len(),
                (st.cpu_s - st0.cpu_s) / t_start.elapsed().as_secs_f64(),
                st.rss_mb
            );
        }
    }
    let churn_wall = t_start.elapsed();
    let st_churn = s.server.stats();
    // Drain: wait for the changes still in flight, bounded.
    let drain_deadline = Instant::now() + args.timeout.min(Duration::from_secs(60));
    while !pending.is_empty() && Instant::now() < drain_deadline && s.server.alive() {
        tokio::time::sleep(Duration::from_millis(10)).await;
        finish(&mut pending, &mut pending_services, &mut converged);
    }
    let drain_wall = t_start.elapsed();
    let st_end = s.server.stats();
    let bytes = fleet.shared.total_bytes() - bytes0;
    let unconverged: Vec<String> =
        pending.iter().take(3).map(|(_, w)| format!("{}: {}/{} clients", w.name, w.count(), w.expected)).collect();
    let cores_churn = (st_churn.cpu_s - st0.cpu_s) / churn_wall.as_secs_f64();
    let cores_all = (st_end.cpu_s - st0.cpu_s) / drain_wall.as_secs_f64();
    let conv = sorted(converged.clone());
    println!();
    println!(
        "P5 endpoint churn: {k} distinct sidecars ({} API), {services} services (VS+DR, 2 pods each), {} changes/s for {} s",
        api_name(api),
        args.rate,
        args.seconds
    );
    println!(
        "| changes written | converged | not converged | convergence p50 / p99 / max ms | server CPU cores (churn / incl. drain) | MB sent per change | server RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {written} | {} | {} | {} | {:.2} / {:.2} | {:.2} | {:.0} |",
        conv.len(),
        pending.len(),
        fmt3(&conv),
        cores_churn,
        cores_all,
        bytes as f64 / 1e6 / written.max(1) as f64,
        st_end.rss_mb
    );
    println!(
        "(convergence = write of the Pod file until the last client subscribed to outbound|8080||svc has the CLA with the new IP; changes with no subscriber: {no_subscribers}; writes late by more than one interval: {late_writes}; drain after churn {:.1} s)",
        (drain_wall - churn_wall).as_secs_f64()
    );
    if !unconverged.is_empty() {
        println!("not converged, e.g.: {}", unconverged.join("; "));
    }
    let (ended, after_sync, reasons) = fleet.ended_summary();
    if ended > 0 {
        println!("streams ended: {ended} ({after_sync} after sync): {}", reasons.join("; "));
    }
    let server = server_report(&s);
    for (_, w) in &pending {
        fleet.shared.remove_watch(w);
    }
    drop(fleet);
    drop(s);
    json!({"scenario": "p5", "api": api_name(api), "services": services, "connect": connect,
        "rate": args.rate, "seconds": args.seconds, "written": written, "converged": conv.len(),
        "not_converged": pending.len(), "convergence_ms": summary(&conv),
        "server_cpu_cores_churn": cores_churn, "server_cpu_cores_incl_drain": cores_all,
        "bytes_per_change": bytes as f64 / written.max(1) as f64, "streams_ended": ended, "server": server})
}

// ---------------------------------------------------------------------------------------------------
// P6: real Envoys

fn p6(args: &Args) -> serde_json::Value {
    let n = args.envoys;
    let services = args.services.unwrap_or(1000);
    let api = args.api.unwrap_or(Api::Sotw);
    let runs = args.runs.unwrap_or(20);
    let Some(envoy_bin) = envoy::envoy_bin() else {
        panic!("no Envoy: set ENVOY or run scripts/setup.sh");
    };
    let mesh = Mesh { services, pods: 2, plain: false };
    let s = setup(args, &mesh, |dir| {
        envoy::write_objects(dir, n, args.base_port);
        envoy::write_route(dir, n, 0);
    });
    let config = s.dir.path().join("config");
    let t_start = Instant::now();
    let mut envoys = envoy::Envoys::start(&envoy_bin, s.dir.path(), n, args.base_port, s.server.xds, api_name(api))
        .unwrap_or_else(|e| panic!("{e}"));
    let first = envoys.wait_generation(0, t_start, Duration::from_millis(20), args.timeout);
    let ready: Vec<f64> = first.iter().flatten().map(|d| ms(*d)).collect();
    eprintln!("{}/{n} Envoys serve the route; time from start p50/p99/max {} ms", ready.len(), fmt3(&ready));
    if let Err(e) = envoys.check_alive() {
        eprintln!("!! {e}");
    }
    let mut last: Vec<f64> = Vec::new();
    let mut each: Vec<f64> = Vec::new();
    let mut missed = 0;
    let st0 = s.server.stats();
    println!();
    println!(
        "P6 convergence of real Envoys: {n} Envoys ({} API, interception NONE, each a distinct pod scoped by its own Sidecar), background mesh of {services} services; one VirtualService edited {runs} times",
        api_name(api)
    );
    if ready.len() == n {
        for run in 1..=runs as u32 {
            std::thread::sleep(Duration::from_millis(300));
            let t0 = Instant::now();
            envoy::write_route(&config, n, run);
            let got = envoys.wait_generation(run, t0, Duration::from_millis(5), args.timeout);
            let l: Vec<f64> = got.iter().flatten().map(|d| ms(*d)).collect();
            missed += n - l.len();
            each.extend(&l);
            if l.len() == n {
                last.push(l.iter().copied().fold(0.0, f64::max));
            }
            eprintln!(
                "  run {run}: {}/{n} Envoys, every Envoy after {:.1} ms",
                l.len(),
                l.iter().copied().fold(0.0, f64::max)
            );
        }
    }
    let st1 = s.server.stats();
    println!(
        "| runs | every Envoy p50 / p99 / max ms | single Envoy p50 / p99 / max ms | misses | server CPU s | server RSS MB |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {missed} | {:.2} | {:.0} |",
        last.len(),
        fmt3(&last),
        fmt3(&each),
        st1.cpu_s - st0.cpu_s,
        st1.rss_mb
    );
    let alive = envoys.check_alive();
    if let Err(e) = &alive {
        println!("!! {e}");
    }
    let server = server_report(&s);
    drop(envoys);
    drop(s);
    let mut out: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    out.insert("scenario", json!("p6"));
    out.insert("envoys", json!(n));
    out.insert("api", json!(api_name(api)));
    out.insert("services", json!(services));
    out.insert("every_envoy_ms", summary(&last));
    out.insert("single_envoy_ms", summary(&each));
    out.insert("misses", json!(missed));
    out.insert("server", server);
    json!(out)
}
