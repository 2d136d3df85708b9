//! An in-process fake Kubernetes API server on loopback, for the Kubernetes source and anything else
//! that talks to the API through kube-rs.
//!
//! It speaks the parts of the API that list-and-watch clients use, over plain HTTP/1.1:
//! - discovery: `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`;
//! - LIST (`resourceVersion` in the list metadata; items without `apiVersion`/`kind`, as the real
//!   server sends built-in kinds), field selectors (`a.b=c`, `a!=c`) and label selectors
//!   (`k=v`, `k!=v`, `k`, `!k`);
//! - WATCH from a resource version: replays the history after it, then streams ADDED, MODIFIED,
//!   DELETED and BOOKMARK events as newline-delimited JSON; a version older than the last
//!   compaction gets an ERROR event with a 410 Status (what the real server sends: HTTP 200 and the
//!   error in the stream);
//! - GET, POST, PUT and DELETE of single objects.
//!
//! Tests drive it directly: [`FakeApiServer::apply`] / [`FakeApiServer::delete`] change objects,
//! [`FakeApiServer::pause_watches`] + [`FakeApiServer::expire`] make changes only a re-list can see,
//! [`FakeApiServer::stop`] / [`FakeApiServer::start`] restart it on the same port (state kept, as
//! etcd keeps it), and [`FakeApiServer::requests`] tells which calls clients made.

#![allow(clippy::unwrap_used)] // test helpers fail the test on setup errors

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

/// One resource type the fake serves.
#[derive(Debug, Clone)]
pub struct ResourceType {
    /// API group (`""` for core).
    pub group: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural.
    pub plural: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
}

/// What the fake serves: resource types, and the versions of each group (first = preferred).
#[derive(Debug, Clone)]
pub struct Served {
    /// Resource types.
    pub resources: Vec<ResourceType>,
    /// Versions per group, preferred first.
    pub versions: BTreeMap<&'static str, Vec<&'static str>>,
}

impl Default for Served {
    fn default() -> Self {
        let r = |group, kind, plural, namespaced| ResourceType { group, kind, plural, namespaced };
        let resources = vec![
            r("", "Namespace", "namespaces", false),
            r("", "Service", "services", true),
            r("", "Pod", "pods", true),
            r("", "Secret", "secrets", true),
            r("", "ConfigMap", "configmaps", true),
            r("discovery.k8s.io", "EndpointSlice", "endpointslices", true),
            r("networking.istio.io", "VirtualService", "virtualservices", true),
            r("networking.istio.io", "DestinationRule", "destinationrules", true),
            r("networking.istio.io", "Gateway", "gateways", true),
            r("networking.istio.io", "ServiceEntry", "serviceentries", true),
            r("networking.istio.io", "Sidecar", "sidecars", true),
            r("networking.istio.io", "WorkloadEntry", "workloadentries", true),
            r("security.istio.io", "PeerAuthentication", "peerauthentications", true),
            r("coordination.k8s.io", "Lease", "leases", true),
            r("authentication.k8s.io", "TokenReview", "tokenreviews", false),
            r("authorization.k8s.io", "SubjectAccessReview", "subjectaccessreviews", false),
        ];
        let mut versions = BTreeMap::new();
        versions.insert("", vec!["v1"]);
        versions.insert("discovery.k8s.io", vec!["v1"]);
        versions.insert("coordination.k8s.io", vec!["v1"]);
        versions.insert("authentication.k8s.io", vec!["v1"]);
        versions.insert("authorization.k8s.io", vec!["v1"]);
        versions.insert("networking.istio.io", vec!["v1", "v1beta1", "v1alpha3"]);
        versions.insert("security.istio.io", vec!["v1", "v1beta1"]);
        Self { resources, versions }
    }
}

impl Served {
    /// Serves `group` at these versions only (preferred first); an empty list removes the group.
    pub fn with_versions(mut self, group: &'static str, versions: &[&'static str]) -> Self {
        if versions.is_empty() {
            self.versions.remove(group);
            self.resources.retain(|r| r.group != group);
        } else {
            self.versions.insert(group, versions.to_vec());
        }
        self
    }

    fn by_kind(&self, kind: &str) -> Option<&ResourceType> {
        self.resources.iter().find(|r| r.kind == kind)
    }

    fn by_plural(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.resources.iter().find(|r| r.group == group && r.plural == plural)
    }

    fn serves(&self, group: &str, version: &str) -> bool {
        self.versions.get(group).is_some_and(|v| v.contains(&version))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjKey {
    group: String,
    plural: String,
    namespace: String,
    name: String,
}

#[derive(Debug)]
struct Record {
    rv: u64,
    kind: &'static str,
    group: String,
    plural: String,
    object: Value,
}

#[derive(Debug, Clone)]
enum Live {
    Event(Arc<Record>),
    Expire,
    Bookmark,
}

struct State {
    served: Served,
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: Vec<Arc<Record>>,
    compacted_at: u64,
    paused: bool,
    live: broadcast::Sender<Live>,
    requests: Vec<String>,
    list_delay: BTreeMap<String, Duration>,
    /// TokenReview answers: token -> (username, audiences the token is for).
    tokens: BTreeMap<String, (String, Vec<String>)>,
    /// SubjectAccessReview grants: (user, verb, resource, namespace).
    grants: BTreeSet<(String, String, String, String)>,
    /// Answer reviews with 500 (an API server in trouble).
    reviews_fail: bool,
}

type Shared = Arc<Mutex<State>>;

/// The fake API server. Stops on drop.
pub struct FakeApiServer {
    state: Shared,
    addr: SocketAddr,
    shutdown: Option<watch::Sender<bool>>,
}

impl FakeApiServer {
    /// Starts with the default resource types on a free loopback port.
    pub async fn start_new() -> FakeApiServer {
        Self::start_serving(Served::default()).await
    }

    /// Starts serving `served` on a free loopback port.
    pub async fn start_serving(served: Served) -> FakeApiServer {
        let state = Arc::new(Mutex::new(State {
            served,
            rv: 1,
            objects: BTreeMap::new(),
            history: Vec::new(),
            compacted_at: 0,
            paused: false,
            live: broadcast::channel(16384).0,
            requests: Vec::new(),
            list_delay: BTreeMap::new(),
            tokens: BTreeMap::new(),
            grants: BTreeSet::new(),
            reviews_fail: false,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = FakeApiServer { state, addr, shutdown: None };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, rx) = watch::channel(false);
        self.shutdown = Some(tx);
        tokio::spawn(accept_loop(listener, Arc::clone(&self.state), rx));
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Writes a kubeconfig pointing at this server into `dir` and returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Stops serving: the listener closes and every open connection (watches included) is cut.
    /// Objects and history are kept.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        // Let the accept loop and the connections see the signal and close their sockets.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// Serves again on the same port (after [`FakeApiServer::stop`]).
    pub async fn start(&mut self) {
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot rebind {}: {last:?}", self.addr);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates or replaces an object (a full document with apiVersion, kind, metadata). Returns the
    /// object as stored (with its new resourceVersion).
    pub fn apply(&self, object: Value) -> Value {
        let mut st = self.lock();
        apply_locked(&mut st, object).unwrap()
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let mut st = self.lock();
        let rt = st.served.by_kind(kind).cloned().unwrap_or_else(|| panic!("kind {kind} not served"));
        let key = ObjKey {
            group: rt.group.into(),
            plural: rt.plural.into(),
            namespace: if rt.namespaced { namespace.into() } else { String::new() },
            name: name.into(),
        };
        delete_locked(&mut st, &key).is_some()
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.lock();
        let rt = st.served.by_kind(kind)?;
        let key = ObjKey {
            group: rt.group.into(),
            plural: rt.plural.into(),
            namespace: if rt.namespaced { namespace.into() } else { String::new() },
            name: name.into(),
        };
        st.objects.get(&key).cloned()
    }

    /// Key `key` of Secret `namespace/name`, base64-decoded as text, if it exists.
    pub fn secret_text(&self, namespace: &str, name: &str, key: &str) -> Option<String> {
        use base64::Engine as _;
        let s = self.get("Secret", namespace, name)?;
        let data = base64::engine::general_purpose::STANDARD.decode(s["data"][key].as_str()?).ok()?;
        String::from_utf8(data).ok()
    }

    /// From now on, changes are recorded but not streamed to open watches (as if the watches were
    /// stuck), until [`FakeApiServer::expire`].
    pub fn pause_watches(&self) {
        self.lock().paused = true;
    }

    /// Compacts the history (as etcd does): every open watch gets a 410 ERROR event and ends, and a
    /// watch from an older resource version gets 410 too, so clients must list again.
    pub fn expire(&self) {
        let mut st = self.lock();
        st.compacted_at = st.rv;
        st.history.clear();
        st.paused = false;
        let _ = st.live.send(Live::Expire);
    }

    /// Compacts the history without touching open watches.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.compacted_at = st.rv;
        st.history.clear();
    }

    /// Sends a BOOKMARK (current resource version) on every watch that asked for bookmarks.
    pub fn bookmark(&self) {
        let st = self.lock();
        let _ = st.live.send(Live::Bookmark);
    }

    /// Delays LIST responses of `plural` (to observe readiness before every list finished).
    pub fn delay_list(&self, plural: &str, delay: Duration) {
        self.lock().list_delay.insert(plural.into(), delay);
    }

    /// TokenReviews of `token` authenticate `system:serviceaccount:<namespace>:<service_account>`
    /// for `audiences`.
    pub fn add_token(&self, token: &str, namespace: &str, service_account: &str, audiences: &[&str]) {
        let user = format!("system:serviceaccount:{namespace}:{service_account}");
        self.lock().tokens.insert(token.into(), (user, audiences.iter().map(|a| a.to_string()).collect()));
    }

    /// SubjectAccessReviews allow `user` to `verb` `resource` in `namespace`.
    pub fn grant(&self, user: &str, verb: &str, resource: &str, namespace: &str) {
        self.lock().grants.insert((user.into(), verb.into(), resource.into(), namespace.into()));
    }

    /// Makes TokenReviews and SubjectAccessReviews fail with 500 (or work again).
    pub fn fail_reviews(&self, fail: bool) {
        self.lock().reviews_fail = fail;
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Number of LIST requests (not watches) for `plural`.
    pub fn list_count(&self, plural: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                let (path, query) = r.split_once('?').unwrap_or((r, ""));
                path.starts_with("GET ") && path.ends_with(&format!("/{plural}")) && !query.contains("watch=true")
            })
            .count()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or_default()
}

fn apply_locked(st: &mut State, mut object: Value) -> Result<Value, (StatusCode, String)> {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let rt =
        st.served.by_kind(&kind).cloned().ok_or((StatusCode::NOT_FOUND, format!("kind {kind:?} is not served")))?;
    let name = meta_str(&object, "name").to_string();
    if name.is_empty() {
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "metadata.name is required".into()));
    }
    let namespace = if rt.namespaced {
        let ns = meta_str(&object, "namespace");
        if ns.is_empty() { "default".to_string() } else { ns.to_string() }
    } else {
        String::new()
    };
    let key = ObjKey { group: rt.group.into(), plural: rt.plural.into(), namespace: namespace.clone(), name };
    st.rv += 1;
    let rv = st.rv;
    let existed = st.objects.get(&key).cloned();
    let meta = object
        .as_object_mut()
        .ok_or((StatusCode::BAD_REQUEST, "object must be a mapping".into()))?
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let meta = meta.as_object_mut().ok_or((StatusCode::BAD_REQUEST, "metadata must be a mapping".into()))?;
    meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    if rt.namespaced {
        meta.insert("namespace".into(), Value::String(namespace));
    }
    let uid = existed
        .as_ref()
        .map(|e| meta_str(e, "uid").to_string())
        .unwrap_or_else(|| format!("00000000-0000-0000-0000-{rv:012}"));
    meta.insert("uid".into(), Value::String(uid));
    st.objects.insert(key, object.clone());
    let kind = if existed.is_some() { "MODIFIED" } else { "ADDED" };
    record(st, kind, rt.group, rt.plural, object.clone());
    Ok(object)
}

fn delete_locked(st: &mut State, key: &ObjKey) -> Option<Value> {
    let mut object = st.objects.remove(key)?;
    st.rv += 1;
    let rv = st.rv;
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
    let (group, plural) = (key.group.clone(), key.plural.clone());
    record(st, "DELETED", &group, &plural, object.clone());
    Some(object)
}

fn record(st: &mut State, kind: &'static str, group: &str, plural: &str, object: Value) {
    let rec = Arc::new(Record { rv: st.rv, kind, group: group.into(), plural: plural.into(), object });
    st.history.push(Arc::clone(&rec));
    if !st.paused {
        let _ = st.live.send(Live::Event(rec));
    }
}

async fn accept_loop(listener: TcpListener, state: Shared, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let state = Arc::clone(&state);
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc_state = Arc::clone(&state);
            let svc_shutdown = conn_shutdown.clone();
            let service =
                hyper::service::service_fn(move |req| respond(Arc::clone(&svc_state), svc_shutdown.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                // Dropping the connection future closes the socket: a hard stop, like a crash.
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(b)) => {
                out.push(b);
                i += 2;
            }
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Looks up a dotted field path (`metadata.name`, `type`) as a string.
fn field(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, Default)]
struct Selector {
    fields: Vec<(String, bool, String)>,
    labels: Vec<(String, LabelReq)>,
}

#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

impl Selector {
    fn parse(fields: Option<&String>, labels: Option<&String>) -> Result<Selector, String> {
        let mut sel = Selector::default();
        for term in fields.map(String::as_str).unwrap_or_default().split(',').filter(|t| !t.is_empty()) {
            if let Some((k, v)) = term.split_once("!=") {
                sel.fields.push((k.into(), false, v.into()));
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                sel.fields.push((k.into(), true, v.into()));
            } else {
                return Err(format!("unsupported field selector {term:?}"));
            }
        }
        for term in labels.map(String::as_str).unwrap_or_default().split(',').filter(|t| !t.is_empty()) {
            let req = if let Some((k, v)) = term.split_once("!=") {
                (k.to_string(), LabelReq::Ne(v.into()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k.to_string(), LabelReq::Eq(v.into()))
            } else if let Some(k) = term.strip_prefix('!') {
                (k.to_string(), LabelReq::Absent)
            } else if term.contains(' ') || term.contains('(') {
                return Err(format!("unsupported label selector {term:?}"));
            } else {
                (term.to_string(), LabelReq::Exists)
            };
            sel.labels.push(req);
        }
        Ok(sel)
    }

    fn matches(&self, obj: &Value) -> bool {
        let fields_ok = self.fields.iter().all(|(k, eq, v)| (field(obj, k) == *v) == *eq);
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|(k, req)| match req {
            LabelReq::Eq(v) => label(k) == Some(v.as_str()),
            LabelReq::Ne(v) => label(k) != Some(v.as_str()),
            LabelReq::Exists => label(k).is_some(),
            LabelReq::Absent => label(k).is_none(),
        });
        fields_ok && labels_ok
    }
}

/// Where a request points.
struct Target {
    group: String,
    version: String,
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
}

impl Target {
    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    fn matches(&self, rec_group: &str, rec_plural: &str, obj: &Value) -> bool {
        rec_group == self.group
            && rec_plural == self.rt.plural
            && self.namespace.as_deref().is_none_or(|ns| meta_str(obj, "namespace") == ns)
    }

    /// The object as served at this version; list items lose their type fields.
    fn present(&self, obj: &Value, in_list: bool) -> Value {
        let mut o = obj.clone();
        if let Some(m) = o.as_object_mut() {
            if in_list {
                m.remove("apiVersion");
                m.remove("kind");
            } else {
                m.insert("apiVersion".into(), Value::String(self.api_version()));
                m.insert("kind".into(), Value::String(self.rt.kind.into()));
            }
        }
        o
    }
}

fn discovery(st: &State, segments: &[&str]) -> Option<Value> {
    let served = &st.served;
    let resource_list = |group: &str, version: &str| {
        let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        let resources: Vec<Value> = served
            .resources
            .iter()
            .filter(|r| r.group == group)
            .map(|r| {
                json!({"name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                       "kind": r.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
            })
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    };
    match segments {
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
                                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        ["api", "v1"] => Some(resource_list("", "v1")),
        ["apis"] => {
            let groups: Vec<Value> = served
                .versions
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, versions)| {
                    let vs: Vec<Value> =
                        versions.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
                    json!({"name": g, "versions": vs, "preferredVersion": vs[0].clone()})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", g, v] if served.serves(g, v) => Some(resource_list(g, v)),
        _ => None,
    }
}

fn target(st: &State, segments: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segments {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    if !st.served.serves(group, version) {
        return None;
    }
    let (namespace, plural, name) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let rt = st.served.by_plural(group, plural)?.clone();
    if namespace.is_some() && !rt.namespaced {
        return None;
    }
    Some(Target {
        group: group.into(),
        version: version.into(),
        rt,
        namespace: namespace.map(String::from),
        name: name.map(String::from),
    })
}

async fn respond(
    state: Shared,
    shutdown: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query());
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let lock = || state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    {
        let mut st = lock();
        let line = match parts.uri.query() {
            Some(q) => format!("{} {}?{}", parts.method, path, percent_decode(q)),
            None => format!("{} {}", parts.method, path),
        };
        st.requests.push(line);
    }
    if parts.method == Method::GET
        && let Some(doc) = discovery(&lock(), &segments)
    {
        return Ok(json_response(StatusCode::OK, &doc));
    }
    let Some(target) = target(&lock(), &segments) else {
        return Ok(status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ));
    };
    let selector = match Selector::parse(query.get("fieldSelector"), query.get("labelSelector")) {
        Ok(s) => s,
        Err(e) => return Ok(status_response(StatusCode::BAD_REQUEST, "BadRequest", &e)),
    };
    if parts.method == Method::POST && matches!(target.rt.plural, "tokenreviews" | "subjectaccessreviews") {
        let review: Value = serde_json::from_slice(&body).unwrap_or_default();
        return Ok(answer_review(&lock(), &target, review));
    }
    let key_of = |name: &str, ns: Option<&str>| ObjKey {
        group: target.group.clone(),
        plural: target.rt.plural.into(),
        namespace: if target.rt.namespaced { ns.unwrap_or("default").to_string() } else { String::new() },
        name: name.into(),
    };
    let not_found = |name: &str| {
        status_response(StatusCode::NOT_FOUND, "NotFound", &format!("{} \"{name}\" not found", target.rt.plural))
    };
    match (&parts.method, target.name.as_deref()) {
        (&Method::GET, Some(name)) => {
            let st = lock();
            Ok(match st.objects.get(&key_of(name, target.namespace.as_deref())) {
                Some(o) => json_response(StatusCode::OK, &target.present(o, false)),
                None => not_found(name),
            })
        }
        (&Method::GET, None) if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
            Ok(watch_response(state, shutdown, target, selector, &query))
        }
        (&Method::GET, None) => {
            let delay = lock().list_delay.get(target.rt.plural).copied();
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let st = lock();
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|(k, o)| {
                    k.group == target.group
                        && k.plural == target.rt.plural
                        && target.namespace.as_deref().is_none_or(|ns| k.namespace == ns)
                        && selector.matches(o)
                })
                .map(|(_, o)| target.present(o, true))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": format!("{}List", target.rt.kind), "apiVersion": target.api_version(),
                        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            ))
        }
        (&Method::POST, None) | (&Method::PUT, Some(_)) => {
            let mut object: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return Ok(status_response(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string())),
            };
            if let (Some(ns), Some(meta)) =
                (target.namespace.as_deref(), object.get_mut("metadata").and_then(Value::as_object_mut))
            {
                meta.entry("namespace").or_insert_with(|| Value::String(ns.into()));
            }
            if let Some(m) = object.as_object_mut() {
                m.insert("kind".into(), Value::String(target.rt.kind.into()));
                m.insert("apiVersion".into(), Value::String(target.api_version()));
            }
            let name = meta_str(&object, "name").to_string();
            let mut st = lock();
            let exists = st.objects.contains_key(&key_of(&name, target.namespace.as_deref()));
            if parts.method == Method::POST && exists {
                return Ok(status_response(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", target.rt.plural),
                ));
            }
            if parts.method == Method::PUT && !exists {
                return Ok(not_found(&name));
            }
            // Optimistic concurrency: a replace must carry the version it read, if any.
            let sent_rv = meta_str(&object, "resourceVersion").to_string();
            if parts.method == Method::PUT && !sent_rv.is_empty() {
                let stored = st
                    .objects
                    .get(&key_of(&name, target.namespace.as_deref()))
                    .map(|o| meta_str(o, "resourceVersion").to_string());
                if stored.as_deref() != Some(sent_rv.as_str()) {
                    return Ok(status_response(
                        StatusCode::CONFLICT,
                        "Conflict",
                        &format!(
                            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                            target.rt.plural
                        ),
                    ));
                }
            }
            Ok(match apply_locked(&mut st, object) {
                Ok(stored) => {
                    let code = if exists { StatusCode::OK } else { StatusCode::CREATED };
                    json_response(code, &target.present(&stored, false))
                }
                Err((code, msg)) => status_response(code, "Invalid", &msg),
            })
        }
        (&Method::DELETE, Some(name)) => {
            let mut st = lock();
            Ok(match delete_locked(&mut st, &key_of(name, target.namespace.as_deref())) {
                Some(o) => json_response(StatusCode::OK, &target.present(&o, false)),
                None => not_found(name),
            })
        }
        _ => Ok(status_response(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported by the fake")),
    }
}

fn event_line(kind: &str, object: Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

fn gone_line(rv: u64, compacted: u64) -> Bytes {
    event_line(
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("too old resource version: {rv} ({compacted})"), "reason": "Expired", "code": 410}),
    )
}

fn watch_response(
    state: Shared,
    mut shutdown: watch::Receiver<bool>,
    target: Target,
    selector: Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let from: Option<u64> = query.get("resourceVersion").and_then(|v| v.parse().ok()).filter(|v| *v > 0);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query.get("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()).map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    tokio::spawn(async move {
        // Snapshot and subscription under one lock: nothing falls between the replay and the stream.
        let (replay, mut live, mut last) = {
            let st = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match from {
                Some(rv) if rv < st.compacted_at => {
                    let _ = tx.try_send(gone_line(rv, st.compacted_at));
                    return;
                }
                Some(rv) => {
                    let replay: Vec<Bytes> = st
                        .history
                        .iter()
                        .filter(|r| {
                            r.rv > rv && target.matches(&r.group, &r.plural, &r.object) && selector.matches(&r.object)
                        })
                        .map(|r| event_line(r.kind, target.present(&r.object, false)))
                        .collect();
                    (replay, st.live.subscribe(), st.rv)
                }
                None => {
                    // No version: the current objects as ADDED, then changes (the real server's
                    // "any version" watch).
                    let replay: Vec<Bytes> = st
                        .objects
                        .iter()
                        .filter(|(k, o)| {
                            k.group == target.group
                                && k.plural == target.rt.plural
                                && target.matches(&k.group, &k.plural, o)
                                && selector.matches(o)
                        })
                        .map(|(_, o)| event_line("ADDED", target.present(o, false)))
                        .collect();
                    (replay, st.live.subscribe(), st.rv)
                }
            }
        };
        for line in replay {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let next = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, live.recv()).await.ok(),
                    None => Some(live.recv().await),
                }
            };
            let msg = tokio::select! {
                m = next => m,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            };
            let line = match msg {
                None => return, // timeoutSeconds elapsed: end the watch, as the real server does
                Some(Ok(Live::Event(rec))) => {
                    if rec.rv <= last
                        || !target.matches(&rec.group, &rec.plural, &rec.object)
                        || !selector.matches(&rec.object)
                    {
                        continue;
                    }
                    last = rec.rv;
                    event_line(rec.kind, target.present(&rec.object, false))
                }
                Some(Ok(Live::Expire)) => {
                    let (rv, compacted) = {
                        let st = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        (last, st.compacted_at)
                    };
                    let _ = tx.send(gone_line(rv, compacted)).await;
                    return;
                }
                Some(Ok(Live::Bookmark)) => {
                    if !bookmarks {
                        continue;
                    }
                    let rv = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).rv;
                    event_line(
                        "BOOKMARK",
                        json!({"kind": target.rt.kind, "apiVersion": target.api_version(),
                                                   "metadata": {"resourceVersion": rv.to_string()}}),
                    )
                }
                // Lagged or closed: end the watch; the client resumes from its last version.
                Some(Err(_)) => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// Answers a TokenReview or SubjectAccessReview from the tables set by the test.
fn answer_review(st: &State, target: &Target, mut review: Value) -> Response<Body> {
    if st.reviews_fail {
        return status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "review backend unavailable");
    }
    let status = if target.rt.plural == "tokenreviews" {
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let wanted: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default();
        match st.tokens.get(token) {
            Some((user, audiences)) => {
                let common: Vec<&String> = wanted.iter().filter(|w| audiences.contains(w)).collect();
                if !wanted.is_empty() && common.is_empty() {
                    json!({"authenticated": false, "error": "[invalid bearer token, token audiences [\"wrong\"] is invalid for the target audiences]"})
                } else {
                    let ns = user.split(':').nth(2).unwrap_or_default();
                    json!({"authenticated": true, "audiences": common,
                           "user": {"username": user, "uid": "u-1", "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"]}})
                }
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        }
    } else {
        let spec = &review["spec"];
        let attrs = &spec["resourceAttributes"];
        let key = (
            spec["user"].as_str().unwrap_or_default().to_string(),
            attrs["verb"].as_str().unwrap_or_default().to_string(),
            attrs["resource"].as_str().unwrap_or_default().to_string(),
            attrs["namespace"].as_str().unwrap_or_default().to_string(),
        );
        if st.grants.contains(&key) {
            json!({"allowed": true, "reason": "granted by the fake"})
        } else {
            json!({"allowed": false})
        }
    };
    if let Some(m) = review.as_object_mut() {
        m.insert("status".into(), status);
        m.insert("apiVersion".into(), Value::String(target.api_version()));
        m.insert("kind".into(), Value::String(target.rt.kind.into()));
    }
    json_response(StatusCode::CREATED, &review)
}
