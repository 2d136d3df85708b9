//! P1 of `docs/performance.md`: state-of-the-world fan-out.
//!
//! K ADS clients (one HTTP/2 connection each, as K Envoys would have) subscribe to CDS on one server
//! serving M EDS clusters (~456 KB per response); one snapshot change is applied and the time until
//! the last client has received the new version is measured, with the server's CPU time per MB sent
//! and its RSS.
//!
//! The server runs in a child process (this binary with `--serve`) so its CPU time and RSS are its
//! own, not the clients'. The parent drives it over stdin/stdout (`change`, `stats`, `quit`). Loopback
//! only; every phase is bounded by `--timeout-secs`.
//!
//! ```text
//! cargo bench -p sailplane --bench p1_fanout -- --clients 200,1000 --runs 3
//! ```

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BufMut;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, circuit_breakers, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Metadata, Node, TransportSocket, config_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, SdsSecretConfig, UpstreamTlsContext,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::protobuf::{
    Any, Duration as PbDuration, ListValue, Struct, UInt32Value, Value, value::Kind,
};
use prost::{Message, Name};
use sailplane::proxy::ProxyInfo;
use sailplane::xds::{Snapshot, SnapshotSource, StatusRegistry, XdsMetrics, XdsServer};
use sailplane_translator::{ResourceSet, TypeUrl};
use tokio::sync::{mpsc, watch};

const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

#[derive(Debug, Clone)]
struct Args {
    serve: bool,
    clients: Vec<usize>,
    clusters: usize,
    runs: usize,
    timeout: Duration,
}

fn parse_args() -> Args {
    let mut args =
        Args { serve: false, clients: vec![200, 1000], clusters: 1000, runs: 3, timeout: Duration::from_secs(120) };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--serve" => args.serve = true,
            "--clients" => {
                args.clients = it.next().unwrap().split(',').map(|k| k.trim().parse().unwrap()).collect();
            }
            "--clusters" => args.clusters = it.next().unwrap().parse().unwrap(),
            "--runs" => args.runs = it.next().unwrap().parse().unwrap(),
            "--timeout-secs" => args.timeout = Duration::from_secs(it.next().unwrap().parse().unwrap()),
            // `cargo bench` passes `--bench`; nothing else is expected.
            "--bench" => {}
            other => {
                panic!("unknown argument {other:?} (use --clients K[,K..] --clusters M --runs R --timeout-secs T)")
            }
        }
    }
    // Bounded load: this runs on a shared 2-core machine.
    assert!(args.clients.iter().all(|k| (1..=5000).contains(k)), "--clients must be 1..=5000");
    assert!((1..=20_000).contains(&args.clusters), "--clusters must be 1..=20000");
    assert!((1..=10).contains(&args.runs), "--runs must be 1..=10");
    args
}

fn main() {
    let args = parse_args();
    raise_fd_limit();
    if args.serve {
        serve(&args);
    } else {
        drive(&args);
    }
}

/// Each client is one socket in the parent and one in the server.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let want = lim.maximum.unwrap_or(65_536).min(65_536);
    if lim.current.is_some_and(|c| c < want) {
        setrlimit(Resource::Nofile, rustix::process::Rlimit { current: Some(want), maximum: lim.maximum }).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------------
// Server side (child process)

/// Every proxy shares one snapshot, as proxies with equal profiles do.
struct OneSnapshot(watch::Sender<Arc<Snapshot>>);

impl SnapshotSource for OneSnapshot {
    fn connect(&self, _proxy: &ProxyInfo) -> watch::Receiver<Arc<Snapshot>> {
        self.0.subscribe()
    }
    fn disconnect(&self, _proxy: &ProxyInfo) {}
}

fn str_value(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_string())) }
}

fn strukt(fields: &[(&str, Value)]) -> Struct {
    Struct { fields: fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect() }
}

fn any<M: Message + Name>(m: &M) -> Any {
    Any { type_url: M::type_url(), value: m.encode_to_vec() }
}

/// An outbound EDS cluster shaped like istiod's: ADS EDS config, circuit breakers, Istio service
/// metadata, and the mTLS / plaintext transport socket matches.
fn istio_cluster(i: usize, generation: u32) -> Cluster {
    let ns = format!("ns-{}", i % 20);
    let host = format!("svc{i}.{ns}.svc.cluster.local");
    let name = format!("outbound|8080||{host}");
    let max = Some(UInt32Value { value: u32::MAX });
    let tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig { name: "default".into(), sds_config: None }],
            ..Default::default()
        }),
        sni: format!("outbound_.8080_._.{host}"),
        ..Default::default()
    };
    let ads = ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    };
    let service = strukt(&[("host", str_value(&host))]);
    let istio_meta = strukt(&[(
        "services",
        Value {
            kind: Some(Kind::ListValue(ListValue { values: vec![Value { kind: Some(Kind::StructValue(service)) }] })),
        },
    )]);
    Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(cluster::EdsClusterConfig { eds_config: Some(ads), service_name: name }),
        connect_timeout: Some(PbDuration { seconds: 10, nanos: generation as i32 }),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds { max_requests: max, ..Default::default() }],
            ..Default::default()
        }),
        metadata: Some(Metadata {
            filter_metadata: [("istio".to_string(), istio_meta)].into_iter().collect(),
            ..Default::default()
        }),
        transport_socket_matches: vec![cluster::TransportSocketMatch {
            name: String::new(),
            r#match: Some(strukt(&[("tlsMode", str_value("istio"))])),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(transport_socket::ConfigType::TypedConfig(any(&tls))),
            }),
        }],
        ..Default::default()
    }
}

fn cluster_set(m: usize, generation: u32) -> ResourceSet {
    let mut set = ResourceSet::new();
    for i in 0..m {
        // One change = one cluster edited (cluster 0), as an edit of one DestinationRule would.
        let c = istio_cluster(i, if i == 0 { generation } else { 0 });
        set.add(TypeUrl::Cluster, c.name.clone(), &c);
    }
    set
}

fn proc_status_kb(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime and stime of this process in clock ticks (fields 14 and 15 of /proc/self/stat).
fn user_sys_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may contain spaces; fields after it start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    (f.get(11).copied().unwrap_or(0), f.get(12).copied().unwrap_or(0))
}

fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn serve(args: &Args) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut generation = 1;
        let set = cluster_set(args.clusters, generation);
        let bytes = set.encoded_len();
        let snapshot = |set: ResourceSet, push: u64| Arc::new(Snapshot::new(Arc::new(set), push, Instant::now()));
        let (tx, _) = watch::channel(snapshot(set, 0));
        let source = Arc::new(OneSnapshot(tx));
        let server = XdsServer::from_parts(
            source.clone(),
            Arc::new(StatusRegistry::new()),
            Arc::new(XdsMetrics::unregistered()),
        );
        let listener = sailplane::xds::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.clone().serve_with_shutdown(listener, async {
            stopped.await.ok();
        }));
        println!("listening {addr} {bytes}");
        // The next snapshot is built before it is asked for: P1 measures distribution, not translation.
        let mut next = Some(cluster_set(args.clusters, generation + 1));
        let mut lines = BufReader::new(std::io::stdin()).lines();
        while let Some(Ok(line)) = tokio::task::block_in_place(|| lines.next()) {
            match line.trim() {
                "change" => {
                    generation += 1;
                    // Only a second change in one process builds inside the measured window.
                    let set = next.take().unwrap_or_else(|| cluster_set(args.clusters, generation));
                    source.0.send_replace(snapshot(set, u64::from(generation)));
                    println!("changed");
                }
                "stats" => {
                    let (user, sys) = user_sys_ticks();
                    println!(
                        "stats {} {} {} {} {user} {sys} {}",
                        cpu_ns(),
                        proc_status_kb("VmRSS:"),
                        server.status().len(),
                        server.body_encodes(),
                        proc_status_kb("VmHWM:")
                    )
                }
                // Resets the peak RSS (VmHWM), so the peak of one phase can be read.
                "reset-peak" => {
                    let _ = std::fs::write("/proc/self/clear_refs", "5");
                    println!("reset");
                }
                "quit" => break,
                other => panic!("unknown command {other:?}"),
            }
        }
        stop.send(()).ok();
        let _ = tokio::time::timeout(Duration::from_secs(5), running).await;
    });
}

// ---------------------------------------------------------------------------------------------------
// Client side (parent process)

/// What a client keeps of a response: enough to ACK and to time it, without decoding 1,000 clusters.
#[derive(Debug, Default)]
struct Light {
    version: String,
    nonce: String,
    type_url: String,
    resources: usize,
    bytes: usize,
}

/// Where the scanner is inside a protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Key,
    Len,
    VarintValue,
    Payload,
}

/// Streams gRPC-framed `DiscoveryResponse`s out of HTTP/2 DATA chunks, reading the top-level fields
/// it needs (version, nonce, type URL) and skipping resources without copying them. The load
/// generator must cost far less than the server it measures: both share the machine's two cores.
struct ResponseScanner {
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: usize,
    stage: Stage,
    varint: u64,
    shift: u32,
    field: u64,
    field_left: usize,
    capture: Option<Vec<u8>>,
    current: Light,
}

impl ResponseScanner {
    fn new() -> Self {
        ResponseScanner {
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
            stage: Stage::Key,
            varint: 0,
            shift: 0,
            field: 0,
            field_left: 0,
            capture: None,
            current: Light::default(),
        }
    }

    fn feed(&mut self, mut data: &[u8], out: &mut Vec<Light>) {
        while !data.is_empty() {
            if self.prefix_len < 5 {
                let n = (5 - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
                self.prefix_len += n;
                data = &data[n..];
                if self.prefix_len == 5 {
                    assert_eq!(self.prefix[0], 0, "compressed responses are not expected");
                    self.remaining =
                        u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]) as usize;
                    self.current = Light { bytes: self.remaining + 5, ..Default::default() };
                    self.stage = Stage::Key;
                    if self.remaining == 0 {
                        self.finish(out);
                    }
                }
                continue;
            }
            let n = self.remaining.min(data.len());
            self.scan(&data[..n]);
            self.remaining -= n;
            data = &data[n..];
            if self.remaining == 0 {
                self.finish(out);
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Light>) {
        assert_eq!(self.stage, Stage::Key, "message ended inside a field");
        out.push(std::mem::take(&mut self.current));
        self.prefix_len = 0;
    }

    fn scan(&mut self, s: &[u8]) {
        let mut i = 0;
        while i < s.len() {
            match self.stage {
                Stage::Key | Stage::Len | Stage::VarintValue => {
                    let b = s[i];
                    i += 1;
                    self.varint |= u64::from(b & 0x7f) << self.shift;
                    self.shift += 7;
                    if b & 0x80 != 0 {
                        continue;
                    }
                    let v = std::mem::take(&mut self.varint);
                    self.shift = 0;
                    match self.stage {
                        Stage::Key => {
                            self.field = v >> 3;
                            self.stage = match v & 7 {
                                0 => Stage::VarintValue,
                                2 => Stage::Len,
                                other => panic!("unexpected wire type {other}"),
                            };
                        }
                        Stage::Len => {
                            self.field_left = v as usize;
                            if self.field == 2 {
                                self.current.resources += 1;
                            }
                            self.capture = matches!(self.field, 1 | 4 | 5).then(Vec::new);
                            self.stage = Stage::Payload;
                            if self.field_left == 0 {
                                self.end_field();
                            }
                        }
                        _ => self.stage = Stage::Key,
                    }
                }
                Stage::Payload => {
                    let n = self.field_left.min(s.len() - i);
                    if let Some(c) = &mut self.capture {
                        c.extend_from_slice(&s[i..i + n]);
                    }
                    i += n;
                    self.field_left -= n;
                    if self.field_left == 0 {
                        self.end_field();
                    }
                }
            }
        }
    }

    fn end_field(&mut self) {
        if let Some(c) = self.capture.take() {
            let text = String::from_utf8(c).unwrap();
            match self.field {
                1 => self.current.version = text,
                4 => self.current.type_url = text,
                5 => self.current.nonce = text,
                _ => {}
            }
        }
        self.stage = Stage::Key;
    }
}

/// The HTTP/2 frame size clients advertise: 16 KiB (the protocol default, which Envoy keeps) unless
/// `P1_MAX_FRAME` says otherwise (for experiments only).
fn max_frame() -> u32 {
    std::env::var("P1_MAX_FRAME").ok().and_then(|v| v.parse().ok()).unwrap_or(16_384)
}

/// A request with its gRPC prefix.
fn grpc_frame(req: &DiscoveryRequest) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::with_capacity(5 + req.encoded_len());
    buf.put_u8(0);
    buf.put_u32(req.encoded_len() as u32);
    req.encode(&mut buf).unwrap();
    buf.freeze()
}

/// A response as seen by the driver.
struct Seen {
    client: usize,
    version: String,
    at: Instant,
    bytes: usize,
    resources: usize,
}

fn node(i: usize) -> Node {
    Node {
        id: format!("sidecar~10.{}.{}.{}~pod-{i}.bench~bench.svc.cluster.local", i / 65_536, (i / 256) % 256, i % 256),
        cluster: "bench.bench".into(),
        ..Default::default()
    }
}

/// One ADS client on its own TCP + HTTP/2 connection (as K Envoys would have), speaking gRPC over
/// the `h2` crate directly so that receiving costs only the kernel copy and HTTP/2 framing.
async fn client(i: usize, addr: std::net::SocketAddr, seen: mpsc::UnboundedSender<Seen>) -> Result<(), String> {
    // Like Envoy, retry a failed connection (a thousand simultaneous connects can overflow a queue).
    let mut attempt = 0;
    let (mut requests, response) = loop {
        attempt += 1;
        match open_stream(i, addr).await {
            Ok(opened) => break opened,
            Err(e) if attempt >= 5 => return Err(format!("after {attempt} attempts: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100 * attempt)).await,
        }
    };
    let mut body = response.into_body();
    let mut scanner = ResponseScanner::new();
    let mut done = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("recv: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        scanner.feed(&chunk, &mut done);
        for r in done.drain(..) {
            let at = Instant::now();
            // ACK, as Envoy does.
            let ack = DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: r.version.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            };
            requests.send_data(grpc_frame(&ack), false).map_err(|e| format!("ack: {e}"))?;
            if seen.send(Seen { client: i, version: r.version, at, bytes: r.bytes, resources: r.resources }).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Connects, opens the ADS stream, sends the first request and waits for the response headers.
async fn open_stream(
    i: usize,
    addr: std::net::SocketAddr,
) -> Result<(h2::SendStream<bytes::Bytes>, tonic::codegen::http::Response<h2::RecvStream>), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (send, conn) = h2::client::Builder::new()
        // Envoy's defaults are larger still: a whole response fits without waiting on WINDOW_UPDATEs.
        .initial_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .max_frame_size(max_frame())
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut send = send.ready().await.map_err(|e| format!("ready: {e}"))?;
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{SOTW_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, mut requests) = send.send_request(request, false).map_err(|e| format!("request: {e}"))?;
    let first =
        DiscoveryRequest { node: Some(node(i)), type_url: TypeUrl::Cluster.as_str().into(), ..Default::default() };
    requests.send_data(grpc_frame(&first), false).map_err(|e| format!("send: {e}"))?;
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    Ok((requests, response))
}

struct ServerProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    cpu_ns: u64,
    rss_kb: u64,
    proxies: u64,
    encodes: u64,
    user_ticks: u64,
    sys_ticks: u64,
    peak_kb: u64,
}

impl ServerProc {
    fn start(args: &Args) -> (ServerProc, String, usize) {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["--serve", "--clusters", &args.clusters.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let line = read_line(&mut stdout);
        let p = ServerProc { child, stdin, stdout };
        let mut parts = line.split_whitespace();
        assert_eq!(parts.next(), Some("listening"), "server said {line:?}");
        let addr = parts.next().unwrap().to_string();
        let bytes = parts.next().unwrap().parse().unwrap();
        (p, addr, bytes)
    }

    fn command(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        read_line(&mut self.stdout)
    }

    fn stats(&mut self) -> Stats {
        let line = self.command("stats");
        let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
        Stats {
            cpu_ns: v[0],
            rss_kb: v[1],
            proxies: v[2],
            encodes: v[3],
            user_ticks: v[4],
            sys_ticks: v[5],
            peak_kb: v[6],
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Our own child, by handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "server process exited");
    line.trim().to_string()
}

#[derive(Debug, Clone)]
struct RunResult {
    k: usize,
    initial_ms: f64,
    last_ms: f64,
    p50_ms: f64,
    cpu_ms: f64,
    mb_sent: f64,
    cpu_ms_per_mb: f64,
    user_ms: f64,
    sys_ms: f64,
    client_cpu_ms: f64,
    rss_empty_mb: f64,
    rss_before_mb: f64,
    rss_after_mb: f64,
    rss_peak_push_mb: f64,
    response_kb: f64,
    encodes: u64,
}

fn drive(args: &Args) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut results: Vec<RunResult> = Vec::new();
    for &k in &args.clients {
        for run in 1..=args.runs {
            let r = rt.block_on(one_run(args, k));
            eprintln!(
                "K={k} run {run}: last client {:.1} ms (p50 {:.1} ms), server CPU {:.1} ms (user {:.0}, sys {:.0}) for {:.1} MB = {:.3} ms/MB, client CPU {:.0} ms, RSS {:.1} -> {:.1} MB (peak during push {:.1} MB)",
                r.last_ms,
                r.p50_ms,
                r.cpu_ms,
                r.user_ms,
                r.sys_ms,
                r.mb_sent,
                r.cpu_ms_per_mb,
                r.client_cpu_ms,
                r.rss_before_mb,
                r.rss_after_mb,
                r.rss_peak_push_mb
            );
            results.push(r);
        }
    }
    println!();
    println!("P1 SotW fan-out: {} clusters, one connection per client, server in its own process", args.clusters);
    println!(
        "| K | runs | response KB | last client ms | p50 client ms | server CPU ms (user/sys) | MB sent | server CPU ms/MB | client CPU ms | RSS empty MB | RSS K idle MB | RSS after push MB | peak RSS during push MB | initial fetch ms | body encodes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &k in &args.clients {
        let rs: Vec<&RunResult> = results.iter().filter(|r| r.k == k).collect();
        let med = |f: fn(&RunResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
        println!(
            "| {k} | {} | {:.0} | {:.1} | {:.1} | {:.1} ({:.0}/{:.0}) | {:.1} | {:.3} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
            rs.len(),
            med(|r| r.response_kb),
            med(|r| r.last_ms),
            med(|r| r.p50_ms),
            med(|r| r.cpu_ms),
            med(|r| r.user_ms),
            med(|r| r.sys_ms),
            med(|r| r.mb_sent),
            med(|r| r.cpu_ms_per_mb),
            med(|r| r.client_cpu_ms),
            med(|r| r.rss_empty_mb),
            med(|r| r.rss_before_mb),
            med(|r| r.rss_after_mb),
            med(|r| r.rss_peak_push_mb),
            med(|r| r.initial_ms),
            rs.iter().map(|r| r.encodes).max().unwrap_or(0),
        );
    }
    println!(
        "(medians of the runs; last/p50 client = time from the change command to the K-th / K/2-th client receiving the new version)"
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

async fn wait_all(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    k: usize,
    version_not: &str,
    timeout: Duration,
) -> (HashMap<usize, Seen>, String) {
    let mut got: HashMap<usize, Seen> = HashMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < k {
        let s = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out: {} of {k} clients got a new version", got.len()))
            .expect("clients ended");
        if s.version != version_not {
            got.insert(s.client, s);
        }
    }
    let version = got.values().next().map(|s| s.version.clone()).unwrap_or_default();
    assert!(got.values().all(|s| s.version == version), "clients disagree on the version");
    (got, version)
}

async fn one_run(args: &Args, k: usize) -> RunResult {
    let (mut server, addr, _resource_bytes) = tokio::task::block_in_place(|| ServerProc::start(args));
    let empty = tokio::task::block_in_place(|| server.stats());
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..k {
        let seen_tx = seen_tx.clone();
        tasks.spawn(async move {
            if let Err(e) = client(i, addr, seen_tx).await {
                eprintln!("client {i}: {e}");
            }
        });
        if i % 50 == 49 {
            // Pace connection setup a little so the accept queue never overflows.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let (initial, v0) = wait_all(&mut seen, k, "", args.timeout).await;
    let initial_ms = initial.values().map(|s| s.at).max().unwrap().duration_since(started).as_secs_f64() * 1e3;
    let response_bytes = initial.values().next().unwrap().bytes;
    assert!(initial.values().all(|s| s.resources == args.clusters));
    // Let ACKs land and the server go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = tokio::task::block_in_place(|| server.stats());
    assert_eq!(before.proxies as usize, k);

    assert_eq!(tokio::task::block_in_place(|| server.command("reset-peak")), "reset");
    let client_cpu0 = cpu_ns();
    let t0 = Instant::now();
    let reply = tokio::task::block_in_place(|| server.command("change"));
    assert_eq!(reply, "changed");
    let (pushed, v1) = wait_all(&mut seen, k, &v0, args.timeout).await;
    assert_ne!(v0, v1);
    let mut lat: Vec<f64> = pushed.values().map(|s| s.at.duration_since(t0).as_secs_f64() * 1e3).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let bytes_sent: usize = pushed.values().map(|s| s.bytes).sum();
    // ACKs of the push are part of its cost.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = tokio::task::block_in_place(|| server.stats());
    let client_cpu_ms = (cpu_ns() - client_cpu0) as f64 / 1e6;
    tasks.abort_all();
    drop(server);
    let mb_sent = bytes_sent as f64 / 1e6;
    let cpu_ms = (after.cpu_ns - before.cpu_ns) as f64 / 1e6;
    RunResult {
        k,
        initial_ms,
        last_ms: *lat.last().unwrap(),
        p50_ms: lat[lat.len() / 2],
        cpu_ms,
        mb_sent,
        cpu_ms_per_mb: cpu_ms / mb_sent,
        // Clock ticks are 10 ms on Linux (USER_HZ = 100).
        user_ms: (after.user_ticks - before.user_ticks) as f64 * 10.0,
        sys_ms: (after.sys_ticks - before.sys_ticks) as f64 * 10.0,
        client_cpu_ms,
        rss_empty_mb: empty.rss_kb as f64 / 1024.0,
        rss_before_mb: before.rss_kb as f64 / 1024.0,
        rss_after_mb: after.rss_kb as f64 / 1024.0,
        rss_peak_push_mb: after.peak_kb as f64 / 1024.0,
        response_kb: response_bytes as f64 / 1e3,
        encodes: after.encodes,
    }
}
