//! Delta (incremental) ADS: one task per stream.
//!
//! For each type the stream tracks what the client holds, compactly: the snapshot it was last brought
//! up to (`base`, restricted to the subscription) plus per-name exceptions (`diff`): versions the
//! client reported in `initial_resource_versions` on reconnect, or `None` for names it asked for
//! again. A response carries only resources whose version differs from what the client holds, and
//! `removed_resources` for names it holds that no longer exist; afterwards the client holds exactly
//! the current snapshot, so `base` moves and `diff` empties.
//!
//! On a snapshot change a type costs O(1) when its map is the very map of `base`
//! (`ResourceSet::same_map`). When the snapshot says what changed since exactly `base`
//! (`Snapshot::changes`, `from` is `base`), only the changed names and the names in `diff` are
//! looked at; otherwise (a snapshot skipped by the watch channel, per-stream types) the whole
//! subscription is compared with `base`. The explicit `names` are interned server-wide (`cache.rs`):
//! streams subscribed to the same names share one set.
//!
//! Subscriptions are deltas and must never be dropped, so `resource_names_subscribe` /
//! `_unsubscribe` are applied even when the request's nonce is stale; only the ACK/NACK meaning of a
//! stale nonce is ignored. For LDS and CDS an empty first subscription, or `*`, is a wildcard.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use sailplane_translator::resources::{PerType, ResourceMap, Served};
use sailplane_translator::{Resource, ResourceSet, TypeUrl};
use tonic::Status;
use tracing::{debug, warn};

use super::Snapshot;
use super::XdsApi;
use super::stream::{Context, Out, Protocol};
use super::wire;

/// Per-type state of one Delta stream.
#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    wildcard: bool,
    /// Explicitly subscribed names.
    names: Arc<BTreeSet<String>>,
    /// The snapshot the client was last brought up to for this type.
    base: Option<Arc<ResourceSet>>,
    /// Exceptions to `base`: the version the client holds, or `None` if it holds nothing.
    diff: HashMap<String, Option<String>>,
    /// Names newly subscribed: if they do not exist, say so (in `removed_resources`) so the proxy
    /// stops waiting for them.
    announce: BTreeSet<String>,
    last_nonce: Option<String>,
    pending: bool,
    push_changed_at: Option<Instant>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// The Delta protocol of one stream.
#[derive(Default)]
pub(crate) struct Delta {
    types: PerType<TypeState>,
    /// Types Sailplane does not serve, already seen.
    unknown: HashSet<String>,
    unknown_pending: Vec<String>,
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    const API: XdsApi = XdsApi::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn subscription(&self, t: TypeUrl) -> Option<Arc<BTreeSet<String>>> {
        let ts = &self.types[t];
        ts.subscribed.then(|| Arc::clone(&ts.names))
    }

    fn on_request(&mut self, cx: &Context<'_>, req: DeltaDiscoveryRequest) {
        self.take_request(cx, req);
    }

    async fn respond(&mut self, cx: &Context<'_>, snap: &Snapshot, changed: bool, out: &Out) -> Result<(), Status> {
        self.send_owed(cx, snap, changed, out).await
    }
}

impl Delta {
    fn take_request(&mut self, cx: &Context<'_>, req: DeltaDiscoveryRequest) {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            // Answer a type we do not serve once, empty, so the proxy does not wait on it.
            if self.unknown.insert(req.type_url.clone()) {
                self.unknown_pending.push(req.type_url);
            }
            return;
        };
        let proxy = &cx.conn.proxy.id;
        let ts = &mut self.types[t];
        let nonce = req.response_nonce.as_str();
        if !nonce.is_empty() && ts.last_nonce.is_some() {
            if ts.last_nonce.as_deref() != Some(nonce) {
                debug!(proxy, type_url = t.short(), nonce, "stale nonce, ack/nack ignored");
            } else if let Some(error) = &req.error_detail {
                warn!(proxy, type_url = t.short(), nonce, error = %error.message, "config rejected (NACK)");
                cx.conn.entry.rejected(t, nonce, &error.message);
                cx.shared.metrics.reject(t);
                ts.push_changed_at = None;
            } else {
                debug!(proxy, type_url = t.short(), nonce, "ack");
                cx.conn.entry.acked(t, nonce, None);
                if let Some(at) = ts.push_changed_at.take() {
                    cx.shared.metrics.converged(at.elapsed());
                }
            }
        }
        let first = !ts.subscribed;
        let names_before = Arc::clone(&ts.names);
        if first {
            ts.subscribed = true;
            ts.pending = true;
            if t.sotw_sends_all() && req.resource_names_subscribe.is_empty() {
                ts.wildcard = true;
            }
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                if !ts.wildcard {
                    ts.wildcard = true;
                    ts.pending = true;
                }
                continue;
            }
            // A name subscribed again is sent again: the client asks because it does not hold it.
            if !first {
                ts.diff.insert(name.clone(), None);
            }
            // A per-stream resource that is not served (a secret absent, or refused) is not
            // announced as removed: Envoy's SDS rejects an update without the resource, and should
            // just keep waiting, as istiod makes it.
            if !t.per_stream() {
                ts.announce.insert(name.clone());
            }
            Arc::make_mut(&mut ts.names).insert(name);
            ts.pending = true;
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                ts.wildcard = false;
                continue;
            }
            if ts.names.contains(name) {
                Arc::make_mut(&mut ts.names).remove(name);
            }
            ts.diff.remove(name);
            ts.announce.remove(name);
        }
        if !Arc::ptr_eq(&names_before, &ts.names) {
            drop(names_before);
            let names = Arc::unwrap_or_clone(std::mem::take(&mut ts.names));
            ts.names = cx.shared.cache.intern(names).0;
        }
        if first {
            // Reconnect: what the client already holds is not sent again.
            for (name, version) in req.initial_resource_versions {
                ts.diff.insert(name, Some(version));
            }
        }
    }

    async fn send_owed(&mut self, cx: &Context<'_>, snap: &Snapshot, changed: bool, out: &Out) -> Result<(), Status> {
        let shared = cx.shared;
        let cp = shared.cache.control_plane_delta();
        // Clusters just sent: Envoy warms each until endpoints arrive for it, so their endpoints
        // are sent again even when unchanged (as istiod's pushes do).
        let mut clusters_sent: Vec<String> = Vec::new();
        for (t, ts) in self.types.iter_mut() {
            if t == TypeUrl::Endpoint && ts.subscribed {
                for name in clusters_sent.drain(..) {
                    if ts.wants(&name) {
                        ts.diff.insert(name, None);
                    }
                }
            }
            if !ts.subscribed || !(ts.pending || changed) {
                continue;
            }
            let (set, recorded) = cx.per_stream.sets(t, snap);
            let (updated, removed) = if ts.pending {
                changes(set.of(t), ts.base.as_deref().map(|b| b.of(t)), ts)
            } else {
                match known_changes(ts, t, set, snap) {
                    Some(names) if names.is_empty() => {
                        ts.base = Some(Arc::clone(set));
                        if !ts.diff.is_empty() {
                            ts.diff = HashMap::new();
                        }
                        continue;
                    }
                    Some(names) => changes_of(&names, set.of(t), ts.base.as_deref().map(|b| b.of(t)), ts),
                    None => changes(set.of(t), ts.base.as_deref().map(|b| b.of(t)), ts),
                }
            };
            ts.base = Some(Arc::clone(set));
            ts.diff = HashMap::new();
            ts.announce.clear();
            if updated.is_empty() && removed.is_empty() && !ts.pending {
                continue;
            }
            let version = shared.cache.type_version(set, t);
            let nonce = shared.next_nonce();
            let removed_refs: Vec<&str> = removed.iter().map(String::as_str).collect();
            let message = wire::delta_message(&version, t.as_str(), &updated, &removed_refs, &nonce, cp);
            let size = message.len();
            out.send(message).await?;
            cx.conn.entry.sent(t, &version, &nonce, recorded, (!ts.wildcard).then_some(&ts.names), snap.push);
            shared.metrics.push(t, size);
            debug!(
                proxy = %cx.conn.proxy.id, type_url = t.short(), version = %version, nonce,
                updated = updated.len(), removed = removed.len(), bytes = size, "delta response"
            );
            ts.push_changed_at = (!ts.pending).then_some(snap.changed_at);
            ts.last_nonce = Some(nonce);
            ts.pending = false;
            if t == TypeUrl::Cluster {
                clusters_sent = updated.iter().map(|r| r.name.clone()).collect();
            }
        }
        for type_url in self.unknown_pending.drain(..) {
            let nonce = shared.next_nonce();
            out.send(wire::delta_message("", &type_url, &[], &[], &nonce, cp)).await?;
            debug!(proxy = %cx.conn.proxy.id, type_url, nonce, "empty response for a type not served");
        }
        Ok(())
    }
}

/// The only names whose resources may differ between what the client holds of type `t` and `set`,
/// sorted, when that is known without walking the subscription: none when `set`'s map is `base`'s,
/// the changes the snapshot lists when they are from `base`, and always the exceptions in `diff`.
/// `None`: compare everything.
fn known_changes<'a>(ts: &'a TypeState, t: TypeUrl, set: &ResourceSet, snap: &'a Snapshot) -> Option<Vec<&'a str>> {
    let base = ts.base.as_ref()?;
    let changed: &[String] = if base.same_map(set, t) {
        &[]
    } else {
        let changes = snap.changes.as_ref()?;
        if !Arc::ptr_eq(&changes.from, base) || !matches!(t.info().served, Served::PerSnapshot) {
            return None;
        }
        changes.names[t].as_deref().unwrap_or(&[])
    };
    let mut names: Vec<&str> = changed.iter().map(String::as_str).filter(|n| ts.wants(n)).collect();
    if !ts.diff.is_empty() {
        names.extend(ts.diff.keys().map(String::as_str).filter(|n| ts.wants(n)));
        names.sort_unstable();
        names.dedup();
    }
    Some(names)
}

/// [`changes`], looking only at `names` (sorted): what differs between what the client holds and
/// `new` for those names.
fn changes_of<'a>(
    names: &[&str],
    new: &'a ResourceMap,
    base: Option<&ResourceMap>,
    ts: &TypeState,
) -> (Vec<&'a Resource>, Vec<String>) {
    let mut updated = Vec::new();
    let mut removed = Vec::new();
    for &name in names {
        let have = match ts.diff.get(name) {
            Some(v) => v.clone(),
            None => base.and_then(|b| b.get(name)).map(|r| r.version.clone()),
        };
        match new.get(name) {
            Some(r) if have.as_deref() != Some(r.version.as_str()) => updated.push(&**r),
            Some(_) => {}
            None if have.is_some() => removed.push(name.to_string()),
            None => {}
        }
    }
    (updated, removed)
}

/// What the client must be sent to hold exactly `new` (restricted to its subscription): resources
/// whose version differs from what it holds, and names it holds that `new` lacks.
fn changes<'a>(new: &'a ResourceMap, base: Option<&ResourceMap>, ts: &TypeState) -> (Vec<&'a Resource>, Vec<String>) {
    let held = |name: &str, in_base: Option<&Arc<Resource>>| -> Option<String> {
        match ts.diff.get(name) {
            Some(v) => v.clone(),
            None => in_base.map(|r| r.version.clone()),
        }
    };
    let mut updated = Vec::new();
    let mut removed = Vec::new();
    if ts.wildcard {
        // Walk both sorted maps together: unchanged resources are the same `Arc`, so the common case
        // costs a pointer compare per resource.
        let mut new_it = new.iter().peekable();
        let mut base_it = base.into_iter().flat_map(|b| b.iter()).peekable();
        loop {
            let order = match (new_it.peek(), base_it.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((n, _)), Some((b, _))) => n.cmp(b),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some((name, r)) = new_it.next()
                        && held(name, None).as_deref() != Some(r.version.as_str())
                    {
                        updated.push(&**r);
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((name, b)) = base_it.next()
                        && held(name, Some(b)).is_some()
                    {
                        removed.push(name.clone());
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some((name, r)), Some((_, b))) = (new_it.next(), base_it.next()) {
                        let unchanged = if ts.diff.contains_key(name) {
                            held(name, Some(b)).as_deref() == Some(r.version.as_str())
                        } else {
                            Arc::ptr_eq(r, b) || r.version == b.version
                        };
                        if !unchanged {
                            updated.push(&**r);
                        }
                    }
                }
            }
        }
        // Names the client reported holding that neither map has.
        for (name, v) in &ts.diff {
            if v.is_some() && !new.contains_key(name) && !base.is_some_and(|b| b.contains_key(name)) {
                removed.push(name.clone());
            }
        }
    } else {
        for name in ts.names.iter() {
            let have = held(name, base.and_then(|b| b.get(name)));
            match new.get(name) {
                Some(r) if have.as_deref() != Some(r.version.as_str()) => updated.push(&**r),
                Some(_) => {}
                None if have.is_some() || ts.announce.contains(name) => removed.push(name.clone()),
                None => {}
            }
        }
    }
    // Newly subscribed names that do not exist (under a wildcard too) are announced as absent.
    for name in &ts.announce {
        if !new.contains_key(name) && ts.wants(name) && !removed.contains(name) {
            removed.push(name.clone());
        }
    }
    removed.sort();
    removed.dedup();
    (updated, removed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use super::*;

    fn set(items: &[(&str, &str)]) -> Arc<ResourceSet> {
        let mut s = ResourceSet::new();
        for (name, payload) in items {
            s.add(
                TypeUrl::Cluster,
                *name,
                &Cluster { name: name.to_string(), alt_stat_name: payload.to_string(), ..Default::default() },
            );
        }
        Arc::new(s)
    }

    fn names(r: &[&Resource]) -> Vec<String> {
        r.iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn streams_with_equal_subscriptions_share_one_set() {
        use crate::xds::stream::{Context, testing};
        use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
        let shared = testing::shared();
        let names: Vec<String> =
            (0..3000).map(|i| format!("outbound|80||svc-{i:04}.default.svc.cluster.local")).collect();
        let mut streams = Vec::new();
        for i in 0..100 {
            let (conn, per_stream) = testing::stream(&shared, &format!("p{i}"), XdsApi::Delta);
            let mut p = Delta::default();
            let cx = Context { shared: &shared, conn: &conn, per_stream: &per_stream };
            // In two requests: the set is interned once complete.
            for half in [&names[..1500], &names[1500..]] {
                p.on_request(
                    &cx,
                    DeltaDiscoveryRequest {
                        type_url: TypeUrl::Endpoint.as_str().into(),
                        resource_names_subscribe: half.to_vec(),
                        ..Default::default()
                    },
                );
            }
            streams.push((conn, per_stream, p));
        }
        let first = streams[0].2.subscription(TypeUrl::Endpoint).unwrap();
        assert_eq!(first.len(), 3000);
        assert!(streams.iter().all(|(_, _, p)| Arc::ptr_eq(&p.subscription(TypeUrl::Endpoint).unwrap(), &first)));
        assert_eq!(shared.cache.interned_sets(), 1);
    }

    #[test]
    fn wildcard_diff_against_base() {
        let old = set(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let new = set(&[("a", "1"), ("b", "2"), ("d", "1")]);
        let ts = TypeState { subscribed: true, wildcard: true, base: Some(Arc::clone(&old)), ..Default::default() };
        let (upd, rem) = changes(new.of(TypeUrl::Cluster), Some(old.of(TypeUrl::Cluster)), &ts);
        assert_eq!(names(&upd), ["b", "d"]);
        assert_eq!(rem, ["c"]);
    }

    #[test]
    fn initial_versions_suppress_and_remove() {
        let new = set(&[("a", "1"), ("b", "2")]);
        let a_version = new.get(TypeUrl::Cluster, "a").unwrap().version.clone();
        let mut ts = TypeState { subscribed: true, wildcard: true, ..Default::default() };
        ts.diff.insert("a".into(), Some(a_version));
        ts.diff.insert("b".into(), Some("old".into()));
        ts.diff.insert("gone".into(), Some("x".into()));
        let (upd, rem) = changes(new.of(TypeUrl::Cluster), None, &ts);
        assert_eq!(names(&upd), ["b"]);
        assert_eq!(rem, ["gone"]);
    }

    #[test]
    fn named_subscription_and_missing_names() {
        let new = set(&[("a", "1"), ("b", "1")]);
        let mut ts = TypeState { subscribed: true, ..Default::default() };
        Arc::make_mut(&mut ts.names).extend(["a".to_string(), "nope".to_string()]);
        ts.announce.extend(["a".to_string(), "nope".to_string()]);
        let (upd, rem) = changes(new.of(TypeUrl::Cluster), None, &ts);
        assert_eq!(names(&upd), ["a"], "b is not subscribed");
        assert_eq!(rem, ["nope"]);
    }
}
