//! Encoded state-of-the-world bodies, shared by every stream that asks the same question of the same
//! snapshot.
//!
//! A body is keyed by the identity of the snapshot's `ResourceSet` (its `Arc` address), the type, and
//! the subscription (wildcard, or a fingerprint of the requested names). A thousand proxies sharing a
//! snapshot therefore share one encoded body: it is built once (the first stream builds it, the
//! others wait on a `OnceLock`) and handed out as [`Bytes`], so sending it is a reference-count bump.
//!
//! Each entry holds a `Weak` to its set. A `Weak` keeps the allocation (not the contents) alive, so the
//! address cannot be reused by a newer set while the entry exists; entries whose set is gone are swept
//! when the map has doubled since the last sweep.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use dashmap::DashMap;
use sailplane_translator::{Resource, ResourceSet, TypeUrl};

use super::wire;

/// What a stream is subscribed to for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// Every resource of the type.
    pub wildcard: bool,
    /// Explicitly requested names (shared, copied on write: subscriptions change rarely).
    pub names: Arc<BTreeSet<String>>,
    /// Fingerprint of `names`, for cache keys.
    pub fingerprint: u128,
}

impl Default for Subscription {
    fn default() -> Self {
        Self::from_parts(false, BTreeSet::new())
    }
}

impl Subscription {
    /// A subscription from names as a state-of-the-world request lists them: for LDS and CDS an empty
    /// list means everything (legacy wildcard); `*` means everything for every type.
    pub(crate) fn from_sotw_names(t: TypeUrl, names: &[String]) -> Subscription {
        let star = names.iter().any(|n| n == "*");
        let wildcard = star || (t.sotw_sends_all() && names.is_empty());
        Self::from_parts(wildcard, names.iter().filter(|n| *n != "*").cloned().collect())
    }

    /// A subscription from its parts.
    pub(crate) fn from_parts(wildcard: bool, names: BTreeSet<String>) -> Subscription {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for n in &names {
            h.update(n.as_bytes());
            h.update(&[0]);
        }
        Subscription { wildcard, names: Arc::new(names), fingerprint: h.digest128() }
    }
}

/// One shared state-of-the-world body.
#[derive(Debug)]
pub(crate) struct SotwBody {
    /// `version_info`: the type's version ([`ResourceSet::type_version`]).
    pub version: String,
    /// Hash over the names and versions of the resources in `bytes`: equal fingerprints mean the
    /// client would receive the same thing again.
    pub fingerprint: u64,
    /// Number of resources in the body.
    pub count: usize,
    /// The encoded body (every field but the nonce).
    pub bytes: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BodyKey {
    set: usize,
    t: TypeUrl,
    /// `None` for wildcard.
    names: Option<u128>,
}

#[derive(Debug)]
struct Slot<V> {
    set: Weak<ResourceSet>,
    cell: Arc<OnceLock<Arc<V>>>,
}

/// The shared body cache of one server.
#[derive(Debug)]
pub(crate) struct BodyCache {
    bodies: DashMap<BodyKey, Slot<SotwBody>>,
    versions: DashMap<(usize, TypeUrl), Slot<String>>,
    sweep_at: AtomicUsize,
    encodes: AtomicU64,
    control_plane: Bytes,
    control_plane_delta: Bytes,
}

/// Sweep no more often than when the map holds this many entries.
const MIN_SWEEP: usize = 64;

impl BodyCache {
    /// A cache whose responses name the control plane `identifier`.
    pub(crate) fn new(identifier: &str) -> Self {
        BodyCache {
            bodies: DashMap::new(),
            versions: DashMap::new(),
            sweep_at: AtomicUsize::new(MIN_SWEEP),
            encodes: AtomicU64::new(0),
            control_plane: wire::control_plane_field(wire::Api::Sotw, identifier),
            control_plane_delta: wire::control_plane_field(wire::Api::Delta, identifier),
        }
    }

    /// How many bodies were encoded so far (each cache miss encodes one).
    pub(crate) fn encodes(&self) -> u64 {
        self.encodes.load(Ordering::Relaxed)
    }

    /// The encoded `control_plane` field of state-of-the-world responses.
    pub(crate) fn control_plane(&self) -> &Bytes {
        &self.control_plane
    }

    /// The encoded `control_plane` field of Delta responses.
    pub(crate) fn control_plane_delta(&self) -> &Bytes {
        &self.control_plane_delta
    }

    /// The state-of-the-world body of type `t` for `sub` in `set`.
    pub(crate) fn sotw(&self, set: &Arc<ResourceSet>, t: TypeUrl, sub: &Subscription) -> Arc<SotwBody> {
        let key = BodyKey { set: Arc::as_ptr(set) as usize, t, names: (!sub.wildcard).then_some(sub.fingerprint) };
        let cell = cell_for(&self.bodies, key, set, &self.sweep_at);
        // The shard lock is released before building: other types and snapshots are not blocked,
        // and streams asking for this very body wait on the cell instead of building it again.
        Arc::clone(cell.get_or_init(|| {
            self.encodes.fetch_add(1, Ordering::Relaxed);
            Arc::new(self.build(set, t, sub))
        }))
    }

    /// [`ResourceSet::type_version`], computed once per set and type.
    pub(crate) fn type_version(&self, set: &Arc<ResourceSet>, t: TypeUrl) -> Arc<String> {
        let cell = cell_for(&self.versions, (Arc::as_ptr(set) as usize, t), set, &self.sweep_at);
        Arc::clone(cell.get_or_init(|| Arc::new(set.type_version(t))))
    }

    fn build(&self, set: &Arc<ResourceSet>, t: TypeUrl, sub: &Subscription) -> SotwBody {
        let version = self.type_version(set, t);
        let map = set.of(t);
        let selected: Vec<&Resource> = if sub.wildcard {
            map.values().map(|r| &**r).collect()
        } else {
            sub.names.iter().filter_map(|n| map.get(n)).map(|r| &**r).collect()
        };
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for r in &selected {
            h.update(r.name.as_bytes());
            h.update(&[0]);
            h.update(r.version.as_bytes());
            h.update(&[0]);
        }
        let bytes = wire::sotw_body(&version, t.as_str(), selected.iter().copied(), &self.control_plane);
        SotwBody { version: version.to_string(), fingerprint: h.digest(), count: selected.len(), bytes }
    }
}

fn cell_for<K, V>(
    map: &DashMap<K, Slot<V>>,
    key: K,
    set: &Arc<ResourceSet>,
    sweep_at: &AtomicUsize,
) -> Arc<OnceLock<Arc<V>>>
where
    K: std::hash::Hash + Eq + Clone,
{
    if let Some(slot) = map.get(&key) {
        return Arc::clone(&slot.cell);
    }
    let cell = Arc::clone(
        &map.entry(key).or_insert_with(|| Slot { set: Arc::downgrade(set), cell: Arc::new(OnceLock::new()) }).cell,
    );
    let len = map.len();
    if len >= sweep_at.load(Ordering::Relaxed) {
        map.retain(|_, slot| slot.set.strong_count() > 0);
        sweep_at.store((map.len() * 2).max(MIN_SWEEP), Ordering::Relaxed);
    }
    cell
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use super::*;

    fn set(names: &[&str]) -> Arc<ResourceSet> {
        let mut s = ResourceSet::new();
        for n in names {
            s.add(TypeUrl::Cluster, *n, &Cluster { name: n.to_string(), ..Default::default() });
            s.add(TypeUrl::Endpoint, *n, &Cluster { name: format!("e-{n}"), ..Default::default() });
        }
        Arc::new(s)
    }

    #[test]
    fn one_encode_per_set_type_and_subscription() {
        let cache = BodyCache::new("");
        let s = set(&["a", "b"]);
        let all = Subscription::from_sotw_names(TypeUrl::Cluster, &[]);
        let first = cache.sotw(&s, TypeUrl::Cluster, &all);
        let second = cache.sotw(&s, TypeUrl::Cluster, &all);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(first.bytes.as_ptr(), second.bytes.as_ptr());
        assert_eq!(cache.encodes(), 1);
        assert_eq!(first.count, 2);
        assert_eq!(first.version, s.type_version(TypeUrl::Cluster));

        let named = Subscription::from_sotw_names(TypeUrl::Endpoint, &["b".into(), "missing".into()]);
        let eds = cache.sotw(&s, TypeUrl::Endpoint, &named);
        assert_eq!(eds.count, 1, "only requested names that exist");
        assert_eq!(cache.encodes(), 2);

        // An equal set in a different allocation is a different key.
        let s2 = set(&["a", "b"]);
        let third = cache.sotw(&s2, TypeUrl::Cluster, &all);
        assert_eq!(cache.encodes(), 3);
        assert_eq!(third.fingerprint, first.fingerprint, "same content, same fingerprint");
    }

    #[test]
    fn dead_sets_are_swept() {
        let cache = BodyCache::new("");
        let all = Subscription::from_sotw_names(TypeUrl::Cluster, &[]);
        for i in 0..(MIN_SWEEP * 3) {
            let s = set(&[&format!("c{i}")]);
            cache.sotw(&s, TypeUrl::Cluster, &all);
        }
        assert!(cache.bodies.len() <= MIN_SWEEP, "{} entries left", cache.bodies.len());
    }

    #[test]
    fn sotw_wildcard_rules() {
        assert!(Subscription::from_sotw_names(TypeUrl::Cluster, &[]).wildcard);
        assert!(Subscription::from_sotw_names(TypeUrl::Listener, &["*".into()]).wildcard);
        assert!(!Subscription::from_sotw_names(TypeUrl::Endpoint, &[]).wildcard);
        assert!(Subscription::from_sotw_names(TypeUrl::Endpoint, &["*".into()]).wildcard);
        let named = Subscription::from_sotw_names(TypeUrl::Cluster, &["a".into()]);
        assert!(!named.wildcard && named.names.contains("a") && named.names.len() == 1);
    }
}
