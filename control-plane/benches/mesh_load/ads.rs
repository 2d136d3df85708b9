//! Light ADS clients that behave like the Envoy sidecars of distinct pods.
//!
//! Each client has its own TCP and HTTP/2 connection (the `h2` crate directly, as `p1_fanout` does:
//! no tonic `Channel`, whose per-channel buffer task and tower stack would cost more than the
//! connection itself at 10,000 clients). It follows Envoy's order (CDS, then EDS for the EDS clusters
//! it got, then LDS, then RDS for the route names in the listeners' HTTP connection managers) and ACKs
//! every response (SotW: `version_info`, `response_nonce` and the `resource_names`; Delta:
//! `response_nonce`). Responses are decoded with minimal prost messages that read only names, and
//! nothing decoded is kept: a client holds interned name ids, versions and nonces.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use prost::Message;
use tokio::sync::{Semaphore, mpsc};

/// Cluster type URL.
pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// ClusterLoadAssignment type URL.
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Listener type URL.
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// RouteConfiguration type URL.
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Which ADS protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// State of the world.
    Sotw,
    /// Incremental (Delta) xDS.
    Delta,
}

// ---------------------------------------------------------------------------------------------------
// Minimal messages: only the fields a client needs; prost skips the rest without allocating.

#[derive(Clone, PartialEq, Message)]
struct LResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LAny>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

#[derive(Clone, PartialEq, Message)]
struct LAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

#[derive(Clone, PartialEq, Message)]
struct LDeltaResponse {
    #[prost(message, repeated, tag = "2")]
    resources: Vec<LResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
    #[prost(string, repeated, tag = "6")]
    removed: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct LResource {
    #[prost(message, optional, tag = "2")]
    resource: Option<LAny>,
    #[prost(string, tag = "3")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct LCluster {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int32, optional, tag = "2")]
    discovery_type: Option<i32>,
    #[prost(message, optional, tag = "3")]
    eds: Option<LEdsConfig>,
}

#[derive(Clone, PartialEq, Message)]
struct LEdsConfig {
    #[prost(string, tag = "2")]
    service_name: String,
}

#[derive(Clone, PartialEq, Message)]
struct LName {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, Message)]
struct LListener {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "3")]
    filter_chains: Vec<LFilterChain>,
    #[prost(message, optional, tag = "25")]
    default_filter_chain: Option<LFilterChain>,
}

#[derive(Clone, PartialEq, Message)]
struct LFilterChain {
    #[prost(message, repeated, tag = "3")]
    filters: Vec<LFilter>,
}

#[derive(Clone, PartialEq, Message)]
struct LFilter {
    #[prost(message, optional, tag = "4")]
    typed_config: Option<LAny>,
}

#[derive(Clone, PartialEq, Message)]
struct LHcm {
    #[prost(message, optional, tag = "3")]
    rds: Option<LRds>,
}

#[derive(Clone, PartialEq, Message)]
struct LRds {
    #[prost(string, tag = "2")]
    route_config_name: String,
}

// ---------------------------------------------------------------------------------------------------
// Shared state

/// Interned resource names (clients keep `u32` ids) and, per name, how many clients subscribe to it.
#[derive(Default)]
pub struct Names {
    inner: RwLock<NamesInner>,
}

#[derive(Default)]
struct NamesInner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
    subscribers: Vec<Arc<AtomicU32>>,
}

/// A subscription list shared by every client that has the same one, with its names already encoded
/// as `DiscoveryRequest.resource_names` (field 3), so a SotW ACK of 3,000 names costs one copy.
#[derive(Clone, Default)]
pub struct List {
    ids: Arc<[u32]>,
    encoded: Bytes,
}

impl Names {
    /// The id of `name`, interning it if new.
    pub fn intern(&self, name: &str) -> u32 {
        if let Some(id) = self.inner.read().unwrap().ids.get(name) {
            return *id;
        }
        let mut w = self.inner.write().unwrap();
        if let Some(id) = w.ids.get(name) {
            return *id;
        }
        let id = w.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        w.ids.insert(name.clone(), id);
        w.names.push(name);
        w.subscribers.push(Arc::new(AtomicU32::new(0)));
        id
    }

    /// The id of `name`, if known.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.inner.read().unwrap().ids.get(name).copied()
    }

    /// The shared list of `ids` (sorted, deduplicated).
    fn list(&self, lists: &Mutex<HashMap<Arc<[u32]>, Bytes>>, ids: Vec<u32>) -> List {
        let mut cache = lists.lock().unwrap();
        if let Some((k, v)) = cache.get_key_value(ids.as_slice()) {
            return List { ids: k.clone(), encoded: v.clone() };
        }
        let r = self.inner.read().unwrap();
        let mut buf = BytesMut::new();
        for i in &ids {
            let n = r.names[*i as usize].as_bytes();
            buf.put_u8(0x1a);
            prost::encoding::encode_varint(n.len() as u64, &mut buf);
            buf.put_slice(n);
        }
        let ids: Arc<[u32]> = Arc::from(ids);
        let encoded = buf.freeze();
        cache.insert(ids.clone(), encoded.clone());
        List { ids, encoded }
    }

    fn names(&self, ids: &[u32]) -> Vec<String> {
        let r = self.inner.read().unwrap();
        ids.iter().map(|i| r.names[*i as usize].to_string()).collect()
    }

    fn add_subscribers(&self, ids: &[u32], delta: i32) {
        let r = self.inner.read().unwrap();
        for i in ids {
            if delta > 0 {
                r.subscribers[*i as usize].fetch_add(delta as u32, Ordering::Relaxed);
            } else {
                r.subscribers[*i as usize].fetch_sub((-delta) as u32, Ordering::Relaxed);
            }
        }
    }

    /// How many clients subscribe to `name` (EDS or RDS) right now.
    pub fn subscribers(&self, name: &str) -> u32 {
        let r = self.inner.read().unwrap();
        r.ids.get(name).map_or(0, |i| r.subscribers[*i as usize].load(Ordering::Relaxed))
    }
}

/// A change being timed: the first time each client receives resource `name` of `type_url` (whose
/// encoded bytes contain `needle`, when set) after `t0`.
pub struct Watch {
    /// Type URL of the resource.
    pub type_url: &'static str,
    /// Name of the resource.
    pub name: String,
    /// Bytes the new version contains (e.g. a new endpoint address), if any.
    pub needle: Option<Vec<u8>>,
    /// When the change was written.
    pub t0: Instant,
    /// How many clients are expected to receive it.
    pub expected: usize,
    seen: Vec<AtomicU64>,
    /// Latency of each client that got it.
    pub latencies: Mutex<Vec<Duration>>,
    /// Set when `expected` clients got it.
    pub done: tokio::sync::Notify,
    count: AtomicUsize,
}

impl Watch {
    /// A watch for `clients` clients.
    pub fn new(
        type_url: &'static str,
        name: String,
        needle: Option<Vec<u8>>,
        t0: Instant,
        expected: usize,
        clients: usize,
    ) -> Arc<Watch> {
        Arc::new(Watch {
            type_url,
            name,
            needle,
            t0,
            expected,
            seen: (0..clients.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            latencies: Mutex::new(Vec::new()),
            done: tokio::sync::Notify::new(),
            count: AtomicUsize::new(0),
        })
    }

    /// How many clients got it so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn observe(&self, client: usize, bytes: &[u8], at: Instant) {
        if let Some(n) = &self.needle
            && !contains(bytes, n)
        {
            return;
        }
        let bit = 1u64 << (client % 64);
        if self.seen[client / 64].fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return;
        }
        self.latencies.lock().unwrap().push(at.duration_since(self.t0));
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 >= self.expected {
            self.done.notify_waiters();
            self.done.notify_one();
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// What clients report to the driver.
#[derive(Debug)]
pub enum Event {
    /// The client has CDS, EDS, LDS and RDS.
    Synced {
        /// Client index.
        client: usize,
        /// From the start of the connect to the first response.
        first_response: Duration,
        /// From the start of the connect to synced.
        synced: Duration,
    },
    /// The client gave up or its stream ended.
    Ended {
        /// Client index.
        client: usize,
        /// Why.
        reason: String,
        /// Whether it had synced before.
        was_synced: bool,
    },
}

/// State shared by all clients and the driver.
pub struct Shared {
    /// Interned names.
    pub names: Names,
    /// Active watches by resource name.
    pub watches: RwLock<HashMap<String, Vec<Arc<Watch>>>>,
    /// Bytes received by each client (gRPC frames, all types).
    pub bytes: Vec<AtomicU64>,
    /// Responses received by all clients.
    pub responses: AtomicU64,
    /// Client events.
    pub events: mpsc::UnboundedSender<Event>,
    lists: Mutex<HashMap<Arc<[u32]>, Bytes>>,
}

impl Shared {
    /// Shared state for `clients` clients.
    pub fn new(clients: usize) -> (Arc<Shared>, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            names: Names::default(),
            watches: RwLock::new(HashMap::new()),
            bytes: (0..clients).map(|_| AtomicU64::new(0)).collect(),
            responses: AtomicU64::new(0),
            events: tx,
            lists: Mutex::new(HashMap::new()),
        };
        (Arc::new(shared), rx)
    }

    /// Starts timing `w`.
    pub fn add_watch(&self, w: Arc<Watch>) {
        self.watches.write().unwrap().entry(w.name.clone()).or_default().push(w);
    }

    /// Stops timing `w`.
    pub fn remove_watch(&self, w: &Arc<Watch>) {
        let mut ws = self.watches.write().unwrap();
        if let Some(v) = ws.get_mut(&w.name) {
            v.retain(|x| !Arc::ptr_eq(x, w));
            if v.is_empty() {
                ws.remove(&w.name);
            }
        }
    }

    /// Total bytes received by all clients.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn observe(&self, client: usize, type_url: &str, name: &str, bytes: &[u8], at: Instant) {
        let ws = self.watches.read().unwrap();
        if ws.is_empty() {
            return;
        }
        if let Some(v) = ws.get(name) {
            for w in v.iter().filter(|w| w.type_url == type_url) {
                w.observe(client, bytes, at);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The pod a client pretends to be

/// One sidecar's identity, as Istio's agent reports it.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod IP.
    pub ip: String,
    /// Pod labels.
    pub labels: Vec<(String, String)>,
    /// Service account.
    pub service_account: String,
    /// Workload (Deployment) name.
    pub workload: String,
}

fn s(v: &str) -> Value {
    Value { kind: Some(Kind::StringValue(v.to_string())) }
}

impl Pod {
    /// The Envoy node Istio's agent would send for this pod.
    pub fn node(&self) -> Node {
        let labels = Struct { fields: self.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect() };
        let ns = &self.namespace;
        let mut fields: std::collections::BTreeMap<String, Value> = [
            ("NAMESPACE", s(ns)),
            ("SERVICE_ACCOUNT", s(&self.service_account)),
            ("INSTANCE_IPS", s(&self.ip)),
            ("CLUSTER_ID", s("Kubernetes")),
            ("ISTIO_VERSION", s("1.24.0")),
            ("INTERCEPTION_MODE", s("REDIRECT")),
            ("WORKLOAD_NAME", s(&self.workload)),
            ("OWNER", s(&format!("kubernetes://apis/apps/v1/namespaces/{ns}/deployments/{}", self.workload))),
            ("MESH_ID", s("cluster.local")),
            ("NAME", s(&self.name)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        fields.insert("LABELS".into(), Value { kind: Some(Kind::StructValue(labels)) });
        fields.insert("POD_PORTS".into(), s(r#"[{"name":"http","containerPort":8080,"protocol":"TCP"}]"#));
        Node {
            id: format!("sidecar~{}~{}.{ns}~{ns}.svc.cluster.local", self.ip, self.name),
            cluster: format!("{}.{ns}", self.workload),
            metadata: Some(Struct { fields: fields.into_iter().collect() }),
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// The client

const TYPES: [&str; 4] = [CDS, EDS, LDS, RDS];

fn type_index(t: &str) -> Option<usize> {
    TYPES.iter().position(|x| *x == t)
}

/// Per-client state: interned ids (in lists shared between clients), versions and nonces only.
struct State {
    index: usize,
    api: Api,
    /// EDS names subscribed (sorted ids).
    eds: List,
    /// RDS names subscribed (sorted ids).
    routes: List,
    /// Delta only: route names per listener id (a removed listener must drop its routes).
    listener_routes: HashMap<u32, Vec<u32>>,
    /// Delta only: EDS name per CDS cluster id, for clusters whose EDS name is not their name
    /// (istiod's are equal, so this stays empty).
    cluster_eds: HashMap<u32, u32>,
    version: [String; 4],
    nonce: [String; 4],
    got: [bool; 4],
    requested: [bool; 4],
    synced: bool,
}

type Out = h2::SendStream<Bytes>;

fn frame<M: Message>(m: &M) -> Bytes {
    frame_with(m, &[])
}

/// A gRPC frame of `m` followed by already-encoded fields of the same message.
fn frame_with<M: Message>(m: &M, tail: &[u8]) -> Bytes {
    let len = m.encoded_len() + tail.len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    m.encode(&mut buf).unwrap();
    buf.put_slice(tail);
    buf.freeze()
}

/// `sorted` (sorted, deduplicated) plus `added` minus `removed`.
fn merged(sorted: &[u32], mut added: Vec<u32>, removed: &[u32]) -> Vec<u32> {
    added.extend_from_slice(sorted);
    added.sort_unstable();
    added.dedup();
    if !removed.is_empty() {
        let mut rm = removed.to_vec();
        rm.sort_unstable();
        added.retain(|i| rm.binary_search(i).is_err());
    }
    added
}

impl State {
    fn send(&self, out: &mut Out, bytes: Bytes) -> Result<(), String> {
        out.send_data(bytes, false).map_err(|e| format!("send: {e}"))
    }

    /// SotW request (or ACK) for type `t` with the current names.
    fn sotw(&self, t: usize, node: Option<Node>) -> Bytes {
        let names: &[u8] = match t {
            1 => &self.eds.encoded,
            3 => &self.routes.encoded,
            _ => &[],
        };
        let req = DiscoveryRequest {
            node,
            type_url: TYPES[t].into(),
            version_info: self.version[t].clone(),
            response_nonce: self.nonce[t].clone(),
            ..Default::default()
        };
        frame_with(&req, names)
    }

    fn delta(&self, shared: &Shared, t: usize, sub: &[u32], unsub: &[u32], node: Option<Node>) -> Bytes {
        frame(&DeltaDiscoveryRequest {
            node,
            type_url: TYPES[t].into(),
            response_nonce: self.nonce[t].clone(),
            resource_names_subscribe: shared.names.names(sub),
            resource_names_unsubscribe: shared.names.names(unsub),
            ..Default::default()
        })
    }

    /// Replaces the subscription of type `t` (EDS or RDS) with `new` (sorted, deduplicated) and
    /// sends the request.
    fn resubscribe(&mut self, shared: &Shared, out: &mut Out, t: usize, new: Vec<u32>) -> Result<(), String> {
        let old = if t == 1 { &self.eds.ids } else { &self.routes.ids };
        if **old == *new && self.requested[t] {
            return Ok(());
        }
        let added: Vec<u32> = new.iter().filter(|i| old.binary_search(i).is_err()).copied().collect();
        let removed: Vec<u32> = old.iter().filter(|i| new.binary_search(i).is_err()).copied().collect();
        shared.names.add_subscribers(&added, 1);
        shared.names.add_subscribers(&removed, -1);
        let list = shared.names.list(&shared.lists, new);
        if t == 1 {
            self.eds = list;
        } else {
            self.routes = list;
        }
        self.requested[t] = true;
        let msg = match self.api {
            Api::Sotw => self.sotw(t, None),
            Api::Delta => self.delta(shared, t, &added, &removed, None),
        };
        self.send(out, msg)
    }

    /// Drops this client's subscriptions from the counts (its stream ended).
    fn unsubscribe_all(&mut self, shared: &Shared) {
        shared.names.add_subscribers(&self.eds.ids, -1);
        shared.names.add_subscribers(&self.routes.ids, -1);
        self.eds = List::default();
        self.routes = List::default();
    }

    fn ack(&self, shared: &Shared, out: &mut Out, t: usize) -> Result<(), String> {
        let msg = match self.api {
            Api::Sotw => self.sotw(t, None),
            Api::Delta => self.delta(shared, t, &[], &[], None),
        };
        self.send(out, msg)
    }

    fn request_lds(&mut self, shared: &Shared, out: &mut Out) -> Result<(), String> {
        if self.requested[2] {
            return Ok(());
        }
        self.requested[2] = true;
        self.ack(shared, out, 2)
    }

    /// Handles one response (a whole gRPC message without its prefix).
    fn on_response(&mut self, shared: &Shared, out: &mut Out, msg: Bytes, at: Instant) -> Result<(), String> {
        shared.responses.fetch_add(1, Ordering::Relaxed);
        let (t, resources, removed): Decoded = match self.api {
            Api::Sotw => {
                let r = LResponse::decode(msg).map_err(|e| format!("decode response: {e}"))?;
                let t = type_index(&r.type_url).ok_or_else(|| format!("unexpected type {}", r.type_url))?;
                self.version[t] = r.version_info;
                self.nonce[t] = r.nonce;
                (t, r.resources.into_iter().map(|a| (None, a.value)).collect(), Vec::new())
            }
            Api::Delta => {
                let r = LDeltaResponse::decode(msg).map_err(|e| format!("decode delta response: {e}"))?;
                let t = type_index(&r.type_url).ok_or_else(|| format!("unexpected type {}", r.type_url))?;
                self.nonce[t] = r.nonce;
                let res = r
                    .resources
                    .into_iter()
                    .map(|x| (Some(x.name), x.resource.map(|a| a.value).unwrap_or_default()))
                    .collect();
                (t, res, r.removed)
            }
        };
        self.got[t] = true;
        match t {
            0 => {
                let mut added = Vec::new();
                let mut gone = Vec::new();
                for (name, bytes) in &resources {
                    let c = LCluster::decode(bytes.clone()).map_err(|e| format!("decode cluster: {e}"))?;
                    let cname = name.as_deref().unwrap_or(&c.name);
                    shared.observe(self.index, CDS, cname, bytes, at);
                    if c.discovery_type != Some(3) {
                        continue;
                    }
                    let eds_name = c.eds.as_ref().map(|e| e.service_name.as_str()).filter(|n| !n.is_empty());
                    let eds_id = shared.names.intern(eds_name.unwrap_or(cname));
                    if self.api == Api::Delta && eds_name.is_some_and(|n| n != cname) {
                        self.cluster_eds.insert(shared.names.intern(cname), eds_id);
                    }
                    added.push(eds_id);
                }
                for r in &removed {
                    if let Some(cid) = shared.names.get(r) {
                        gone.push(self.cluster_eds.remove(&cid).unwrap_or(cid));
                    }
                }
                let eds = match self.api {
                    // The whole set each time.
                    Api::Sotw => merged(&[], added, &[]),
                    Api::Delta => merged(&self.eds.ids, added, &gone),
                };
                // Envoy asks for the endpoints of the new clusters, then ACKs CDS.
                if !eds.is_empty() || self.requested[1] {
                    self.resubscribe(shared, out, 1, eds)?;
                }
                if self.eds.ids.is_empty() {
                    self.request_lds(shared, out)?;
                }
                self.ack(shared, out, 0)?;
            }
            1 => {
                for (name, bytes) in &resources {
                    match name {
                        Some(n) => shared.observe(self.index, EDS, n, bytes, at),
                        None => {
                            let c = LName::decode(bytes.clone()).map_err(|e| format!("decode CLA: {e}"))?;
                            shared.observe(self.index, EDS, &c.name, bytes, at);
                        }
                    }
                }
                self.ack(shared, out, 1)?;
                self.request_lds(shared, out)?;
            }
            2 => {
                let mut routes = Vec::new();
                for (name, bytes) in &resources {
                    let l = LListener::decode(bytes.clone()).map_err(|e| format!("decode listener: {e}"))?;
                    let mut mine = Vec::new();
                    for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                        for f in &fc.filters {
                            if let Some(tc) = f.typed_config.as_ref().filter(|tc| tc.type_url == HCM) {
                                let h = LHcm::decode(tc.value.clone()).map_err(|e| format!("decode HCM: {e}"))?;
                                if let Some(rds) = h.rds.filter(|r| !r.route_config_name.is_empty()) {
                                    mine.push(shared.names.intern(&rds.route_config_name));
                                }
                            }
                        }
                    }
                    match self.api {
                        Api::Sotw => routes.extend(mine),
                        Api::Delta => {
                            let lid = shared.names.intern(name.as_deref().unwrap_or(&l.name));
                            self.listener_routes.insert(lid, mine);
                        }
                    }
                }
                if self.api == Api::Delta {
                    for r in &removed {
                        if let Some(lid) = shared.names.get(r) {
                            self.listener_routes.remove(&lid);
                        }
                    }
                    routes = self.listener_routes.values().flatten().copied().collect();
                }
                let routes = merged(&[], routes, &[]);
                if !routes.is_empty() || self.requested[3] {
                    self.resubscribe(shared, out, 3, routes)?;
                }
                self.ack(shared, out, 2)?;
            }
            _ => {
                for (name, bytes) in &resources {
                    match name {
                        Some(n) => shared.observe(self.index, RDS, n, bytes, at),
                        None => {
                            let c = LName::decode(bytes.clone()).map_err(|e| format!("decode route: {e}"))?;
                            shared.observe(self.index, RDS, &c.name, bytes, at);
                        }
                    }
                }
                self.ack(shared, out, 3)?;
            }
        }
        Ok(())
    }

    fn is_synced(&self) -> bool {
        self.got[0]
            && (self.eds.ids.is_empty() || self.got[1])
            && self.got[2]
            && (self.routes.ids.is_empty() || self.got[3])
    }
}

/// Options of one client.
#[derive(Clone)]
pub struct ClientOptions {
    /// Server address.
    pub addr: SocketAddr,
    /// SotW or Delta.
    pub api: Api,
    /// Bound on each connect attempt.
    pub connect_timeout: Duration,
    /// Bound on the wait for the first response.
    pub first_response_timeout: Duration,
}

/// Runs client `index` as `pod` until its stream ends. `ramp` holds at most N clients between
/// connecting and synced; the permit is released once this client has synced (or failed).
pub async fn run(index: usize, pod: Pod, opts: ClientOptions, shared: Arc<Shared>, ramp: Arc<Semaphore>) {
    let permit = ramp.acquire_owned().await.ok();
    let started = Instant::now();
    let mut permit = permit;
    let mut was_synced = false;
    let reason = match session(index, &pod, &opts, &shared, started, &mut permit, &mut was_synced).await {
        Ok(()) => "stream ended by the server".to_string(),
        Err(e) => e,
    };
    drop(permit);
    let _ = shared.events.send(Event::Ended { client: index, reason, was_synced });
}

async fn session(
    index: usize,
    pod: &Pod,
    opts: &ClientOptions,
    shared: &Shared,
    started: Instant,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    was_synced: &mut bool,
) -> Result<(), String> {
    let mut attempt = 0;
    let (out, response) = loop {
        attempt += 1;
        match tokio::time::timeout(opts.connect_timeout, open(opts.addr, opts.api)).await {
            Ok(Ok(x)) => break x,
            Ok(Err(e)) if attempt >= 3 => return Err(format!("connect after {attempt} attempts: {e}")),
            Err(_) if attempt >= 3 => return Err(format!("connect timed out {attempt} times")),
            _ => tokio::time::sleep(Duration::from_millis(200 * attempt)).await,
        }
    };
    let mut st = State {
        index,
        api: opts.api,
        eds: List::default(),
        routes: List::default(),
        listener_routes: HashMap::new(),
        cluster_eds: HashMap::new(),
        version: Default::default(),
        nonce: Default::default(),
        got: [false; 4],
        requested: [true, false, false, false],
        synced: false,
    };
    let first = match opts.api {
        Api::Sotw => st.sotw(0, Some(pod.node())),
        Api::Delta => st.delta(shared, 0, &[], &[], Some(pod.node())),
    };
    let mut out = out;
    st.send(&mut out, first)?;
    let result = receive(&mut st, out, response, opts, shared, started, permit, was_synced).await;
    st.unsubscribe_all(shared);
    result
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    st: &mut State,
    mut out: Out,
    response: h2::client::ResponseFuture,
    opts: &ClientOptions,
    shared: &Shared,
    started: Instant,
    permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    was_synced: &mut bool,
) -> Result<(), String> {
    let index = st.index;
    let response = response.await.map_err(|e| format!("response headers: {e}"))?;
    if response.status() != 200 {
        return Err(format!("HTTP status {}", response.status()));
    }
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let mut first_response: Option<Duration> = None;
    loop {
        let chunk = if first_response.is_none() {
            match tokio::time::timeout(opts.first_response_timeout, body.data()).await {
                Ok(c) => c,
                Err(_) => return Err("no first response in time".into()),
            }
        } else {
            body.data().await
        };
        let Some(chunk) = chunk else {
            let trailers = body.trailers().await.ok().flatten();
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string());
            let msg = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-message"))
                .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string());
            return Err(format!("stream ended (grpc-status {status:?}, message {msg:?})"));
        };
        let chunk = chunk.map_err(|e| format!("recv: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        let at = Instant::now();
        shared.bytes[index].fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let mut data = chunk;
        // Whole messages straight out of the chunk when nothing is pending (no copy).
        if buf.is_empty() {
            while data.len() >= 5 {
                let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                if data.len() < 5 + len {
                    break;
                }
                let mut msg = data.split_to(5 + len);
                msg.advance(5);
                first_response.get_or_insert_with(|| started.elapsed());
                st.on_response(shared, &mut out, msg, at)?;
            }
            if !data.is_empty() {
                if data.len() >= 5 {
                    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                    buf.reserve(5 + len);
                }
                buf.extend_from_slice(&data);
            }
        } else {
            buf.extend_from_slice(&data);
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf.len() < 5 + len {
                    buf.reserve(5 + len - buf.len());
                    break;
                }
                let mut msg = buf.split_to(5 + len).freeze();
                msg.advance(5);
                first_response.get_or_insert_with(|| started.elapsed());
                st.on_response(shared, &mut out, msg, at)?;
            }
            if buf.is_empty() {
                // Give the (possibly megabytes large) buffer back.
                buf = BytesMut::new();
            }
        }
        if !st.synced && st.is_synced() {
            st.synced = true;
            *was_synced = true;
            permit.take();
            let _ = shared.events.send(Event::Synced {
                client: index,
                first_response: first_response.unwrap_or_default(),
                synced: started.elapsed(),
            });
        }
    }
}

type Opened = (Out, h2::client::ResponseFuture);

async fn open(addr: SocketAddr, api: Api) -> Result<Opened, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (send, conn) = h2::client::Builder::new()
        // Envoy's defaults (268 MB) are larger still; a whole response fits without WINDOW_UPDATEs.
        .initial_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.map_err(|e| format!("ready: {e}"))?;
    let path = if api == Api::Sotw { SOTW_PATH } else { DELTA_PATH };
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, out) = send.send_request(request, false).map_err(|e| format!("request: {e}"))?;
    Ok((out, response))
}

/// A decoded response: type index, resources as (name, bytes), removed names.
type Decoded = (usize, Vec<(Option<String>, Bytes)>, Vec<String>);
