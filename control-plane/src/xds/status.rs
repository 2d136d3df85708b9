//! Per-proxy xDS status: who is connected, what each was sent, what it acknowledged or rejected.
//!
//! Streams update their own entry (a mutex per proxy, so streams never contend); the admin server reads
//! the registry to render `/debug/syncz` and `/debug/config_dump`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use sailplane_translator::resources::PerType;
use sailplane_translator::{Resource, ResourceSet, TypeUrl};
use serde_json::{Value, json};

use super::XdsApi;
use crate::proxy::ProxyInfo;

/// Sync state of one type for one proxy, as `istioctl proxy-status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// The last response was acknowledged.
    Synced,
    /// A response was sent and not (yet) acknowledged.
    Stale,
    /// Nothing of this type was sent.
    NotSent,
    /// The last response was rejected (NACK).
    Error,
}

impl SyncState {
    /// `SYNCED`, `STALE`, `NOT SENT` or `ERROR`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SyncState::Synced => "SYNCED",
            SyncState::Stale => "STALE",
            SyncState::NotSent => "NOT SENT",
            SyncState::Error => "ERROR",
        }
    }
}

/// What a proxy was last sent for one type: a snapshot's resources, restricted to the subscription.
/// Holding the snapshot's `Arc` instead of a list keeps this at a few words per proxy.
#[derive(Debug, Clone)]
struct SentView {
    set: Arc<ResourceSet>,
    /// `None` for wildcard.
    names: Option<Arc<BTreeSet<String>>>,
}

/// Status of one type on one stream.
#[derive(Debug, Clone, Default)]
pub struct TypeStatus {
    /// Version of the last response sent.
    pub sent_version: Option<String>,
    /// Nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// Version the proxy last acknowledged.
    pub acked_version: Option<String>,
    /// Nonce the proxy last acknowledged.
    pub acked_nonce: Option<String>,
    /// Text of the last rejection, until a later response is acknowledged.
    pub error: Option<String>,
    /// Nonce the last rejection referred to.
    pub error_nonce: Option<String>,
    /// Responses of this type sent on this stream.
    pub responses: u64,
    sent: Option<SentView>,
}

impl TypeStatus {
    /// The sync state derived from nonces.
    pub fn state(&self) -> SyncState {
        match &self.sent_nonce {
            None => SyncState::NotSent,
            Some(sent) if self.error.is_some() && self.error_nonce.as_ref() == Some(sent) => SyncState::Error,
            Some(sent) if self.acked_nonce.as_ref() == Some(sent) => SyncState::Synced,
            Some(_) => SyncState::Stale,
        }
    }
}

/// What was last sent to a proxy for one type (for `/debug/config_dump`).
#[derive(Debug, Clone)]
pub struct SentResources {
    /// The type.
    pub type_url: TypeUrl,
    /// `version_info` (SotW) or `system_version_info` (Delta) of the last response.
    pub version: String,
    /// Nonce of the last response.
    pub nonce: String,
    /// The resources the proxy holds after that response, by name.
    pub resources: Vec<Arc<Resource>>,
}

/// One connected proxy.
#[derive(Debug)]
pub struct ProxyEntry {
    conn: u64,
    info: ProxyInfo,
    /// SPIFFE URI of the proxy's verified certificate, if it connected over mTLS.
    identity: Option<String>,
    api: XdsApi,
    connected_at: SystemTime,
    connected_instant: Instant,
    state: Mutex<ProxyState>,
}

#[derive(Debug, Default)]
struct ProxyState {
    types: PerType<TypeStatus>,
    push: u64,
}

impl ProxyEntry {
    /// The proxy's identity.
    pub fn info(&self) -> &ProxyInfo {
        &self.info
    }

    /// The SPIFFE identity of its verified client certificate (`None`: plaintext port).
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// Which ADS flavour it speaks.
    pub fn api(&self) -> XdsApi {
        self.api
    }

    /// Status of type `t`, copied.
    pub fn type_status(&self, t: TypeUrl) -> TypeStatus {
        self.lock().types[t].clone()
    }

    fn lock(&self) -> MutexGuard<'_, ProxyState> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a response sent.
    pub(crate) fn sent(
        &self,
        t: TypeUrl,
        version: &str,
        nonce: &str,
        set: &Arc<ResourceSet>,
        names: Option<&Arc<BTreeSet<String>>>,
        push: u64,
    ) {
        let mut st = self.lock();
        st.push = st.push.max(push);
        let ts = &mut st.types[t];
        ts.sent_version = Some(version.to_string());
        ts.sent_nonce = Some(nonce.to_string());
        ts.responses += 1;
        ts.sent = Some(SentView { set: Arc::clone(set), names: names.cloned() });
    }

    /// Records an acknowledgement of `nonce`. `version` is what the client reports (SotW); Delta ACKs
    /// carry none, so the version sent with that nonce is used.
    pub(crate) fn acked(&self, t: TypeUrl, nonce: &str, version: Option<&str>) {
        let mut st = self.lock();
        let ts = &mut st.types[t];
        ts.acked_nonce = Some(nonce.to_string());
        ts.acked_version = match version {
            Some(v) => Some(v.to_string()),
            None if ts.sent_nonce.as_deref() == Some(nonce) => ts.sent_version.clone(),
            None => None,
        };
        if ts.sent_nonce.as_deref() == Some(nonce) {
            ts.error = None;
            ts.error_nonce = None;
        }
    }

    /// Records a rejection of `nonce`.
    pub(crate) fn rejected(&self, t: TypeUrl, nonce: &str, error: &str) {
        let mut st = self.lock();
        let ts = &mut st.types[t];
        ts.error = Some(error.to_string());
        ts.error_nonce = Some(nonce.to_string());
    }

    fn syncz(&self) -> Value {
        let st = self.lock();
        let mut out = serde_json::Map::new();
        out.insert("proxy".into(), json!(self.info.id));
        out.insert("cluster_id".into(), json!(self.info.cluster));
        out.insert("namespace".into(), json!(self.info.profile.namespace));
        out.insert("ips".into(), json!(self.info.ips));
        out.insert("proxy_type".into(), json!(format!("{:?}", self.info.profile.node_type).to_lowercase()));
        out.insert("api".into(), json!(self.api.as_str()));
        out.insert("identity".into(), json!(self.identity));
        let since_epoch = self.connected_at.duration_since(UNIX_EPOCH).unwrap_or_default();
        out.insert("connected_at_unix_ms".into(), json!(since_epoch.as_millis() as u64));
        out.insert("connected_seconds".into(), json!(self.connected_instant.elapsed().as_secs()));
        out.insert("push".into(), json!(st.push));
        let mut details = serde_json::Map::new();
        for (t, ts) in st.types.iter() {
            let state = ts.state();
            out.insert(t.short().into(), json!(state.as_str()));
            details.insert(
                t.short().into(),
                json!({
                    "status": state.as_str(),
                    "sent_version": ts.sent_version,
                    "sent_nonce": ts.sent_nonce,
                    "acked_version": ts.acked_version,
                    "acked_nonce": ts.acked_nonce,
                    "error": ts.error,
                    "responses": ts.responses,
                }),
            );
        }
        out.insert("types".into(), Value::Object(details));
        Value::Object(out)
    }

    fn sent_resources(&self) -> Vec<SentResources> {
        let st = self.lock();
        st.types
            .iter()
            .filter_map(|(t, ts)| {
                let view = ts.sent.as_ref()?;
                let map = view.set.of(t);
                let resources = match &view.names {
                    None => map.values().cloned().collect(),
                    Some(names) => names.iter().filter_map(|n| map.get(n).cloned()).collect(),
                };
                Some(SentResources {
                    type_url: t,
                    version: ts.sent_version.clone().unwrap_or_default(),
                    nonce: ts.sent_nonce.clone().unwrap_or_default(),
                    resources,
                })
            })
            .collect()
    }
}

/// Every connected proxy, by id.
#[derive(Debug, Default)]
pub struct StatusRegistry {
    proxies: DashMap<String, Arc<ProxyEntry>>,
    next_conn: AtomicU64,
}

impl StatusRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stream. A reconnecting proxy replaces its older stream's entry.
    pub(crate) fn register(&self, info: &ProxyInfo, identity: Option<String>, api: XdsApi) -> Arc<ProxyEntry> {
        let entry = Arc::new(ProxyEntry {
            conn: self.next_conn.fetch_add(1, Ordering::Relaxed),
            info: info.clone(),
            identity,
            api,
            connected_at: SystemTime::now(),
            connected_instant: Instant::now(),
            state: Mutex::new(ProxyState::default()),
        });
        self.proxies.insert(info.id.clone(), Arc::clone(&entry));
        entry
    }

    /// Removes a stream's entry, unless a newer stream of the same proxy replaced it.
    pub(crate) fn unregister(&self, entry: &ProxyEntry) {
        self.proxies.remove_if(&entry.info.id, |_, e| e.conn == entry.conn);
    }

    /// Number of connected proxies.
    pub fn len(&self) -> usize {
        self.proxies.len()
    }

    /// Whether no proxy is connected.
    pub fn is_empty(&self) -> bool {
        self.proxies.is_empty()
    }

    /// Ids of connected proxies, sorted.
    pub fn proxy_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.proxies.iter().map(|e| e.key().clone()).collect();
        ids.sort();
        ids
    }

    /// A connected proxy.
    pub fn get(&self, proxy_id: &str) -> Option<Arc<ProxyEntry>> {
        self.proxies.get(proxy_id).map(|e| Arc::clone(e.value()))
    }

    /// Sync state of type `t` for a connected proxy.
    pub fn state(&self, proxy_id: &str, t: TypeUrl) -> Option<SyncState> {
        Some(self.get(proxy_id)?.type_status(t).state())
    }

    /// The `/debug/syncz` document: a JSON array with one object per connected proxy, sorted by id:
    /// `{"proxy", "cluster_id", "namespace", "ips", "proxy_type", "api", "connected_at_unix_ms",
    /// "connected_seconds", "push", "identity" (SPIFFE URI of the verified client certificate, or null),
    /// "cds"|"eds"|"lds"|"rds"|"sds": "SYNCED"|"STALE"|"NOT SENT"|"ERROR",
    /// "types": {<short>: {"status", "sent_version", "sent_nonce", "acked_version", "acked_nonce",
    /// "error", "responses"}}}`.
    pub fn syncz(&self) -> Value {
        let mut entries: Vec<Arc<ProxyEntry>> = self.proxies.iter().map(|e| Arc::clone(e.value())).collect();
        entries.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        Value::Array(entries.iter().map(|e| e.syncz()).collect())
    }

    /// What was last sent to a proxy, per type in push order (types never sent are left out), with the
    /// version and nonce of each; `None` if the proxy is not connected.
    pub fn sent_by_type(&self, proxy_id: &str) -> Option<Vec<SentResources>> {
        Some(self.get(proxy_id)?.sent_resources())
    }

    /// What was last sent to a proxy, flattened: every resource it holds with its type, types in push
    /// order and names sorted within a type; `None` if the proxy is not connected.
    pub fn sent(&self, proxy_id: &str) -> Option<Vec<(TypeUrl, Arc<Resource>)>> {
        let by_type = self.sent_by_type(proxy_id)?;
        Some(by_type.into_iter().flat_map(|s| s.resources.into_iter().map(move |r| (s.type_url, r))).collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Node;

    use super::*;

    fn info(id: &str) -> ProxyInfo {
        let node = Node { id: format!("sidecar~10.0.0.1~{id}.ns~ns.svc.cluster.local"), ..Default::default() };
        ProxyInfo::from_node(Some(&node)).unwrap()
    }

    #[test]
    fn state_follows_nonces() {
        let reg = StatusRegistry::new();
        let p = info("a");
        let e = reg.register(&p, None, XdsApi::Sotw);
        let set = Arc::new(ResourceSet::new());
        assert_eq!(reg.state(&p.id, TypeUrl::Cluster), Some(SyncState::NotSent));
        e.sent(TypeUrl::Cluster, "v1", "n1", &set, None, 1);
        assert_eq!(reg.state(&p.id, TypeUrl::Cluster), Some(SyncState::Stale));
        e.acked(TypeUrl::Cluster, "n1", Some("v1"));
        assert_eq!(reg.state(&p.id, TypeUrl::Cluster), Some(SyncState::Synced));
        e.sent(TypeUrl::Cluster, "v2", "n2", &set, None, 2);
        e.rejected(TypeUrl::Cluster, "n2", "bad cluster");
        assert_eq!(reg.state(&p.id, TypeUrl::Cluster), Some(SyncState::Error));
        let syncz = reg.syncz();
        assert_eq!(syncz[0]["cds"], "ERROR");
        assert_eq!(syncz[0]["types"]["cds"]["error"], "bad cluster");
        assert_eq!(syncz[0]["lds"], "NOT SENT");
        e.sent(TypeUrl::Cluster, "v3", "n3", &set, None, 3);
        assert_eq!(reg.state(&p.id, TypeUrl::Cluster), Some(SyncState::Stale));
        e.acked(TypeUrl::Cluster, "n3", None);
        assert_eq!(reg.get(&p.id).unwrap().type_status(TypeUrl::Cluster).acked_version.as_deref(), Some("v3"));
        assert_eq!(reg.state(&p.id, TypeUrl::Cluster), Some(SyncState::Synced));
    }

    #[test]
    fn reconnect_keeps_newer_entry() {
        let reg = StatusRegistry::new();
        let p = info("a");
        let old = reg.register(&p, None, XdsApi::Sotw);
        let new = reg.register(&p, None, XdsApi::Delta);
        reg.unregister(&old);
        assert_eq!(reg.get(&p.id).map(|e| e.api()), Some(XdsApi::Delta));
        reg.unregister(&new);
        assert!(reg.is_empty());
    }
}
