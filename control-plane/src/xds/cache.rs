//! Encoded state-of-the-world bodies, shared by every stream that asks the same question of the same
//! snapshot.
//!
//! A body is keyed by the identity of the snapshot's `ResourceSet` (its `Arc` address), the type, and
//! the subscription (wildcard, or a fingerprint of the requested names). A thousand proxies sharing a
//! snapshot therefore share one encoded body: it is built once (the first stream builds it, the
//! others wait on a `OnceLock`) and handed out as [`Bytes`], so sending it is a reference-count bump.
//!
//! A partial body (state of the world EDS/RDS after a change, see `sotw.rs`) is keyed by the new set,
//! the set the change is from, the type and the subscription; it carries only the changed names.
//!
//! Each entry holds a `Weak` to its set (and to its from-set). A `Weak` keeps the allocation (not the
//! contents) alive, so the address cannot be reused by a newer set while the entry exists; entries
//! whose set is gone are swept when the map has doubled since the last sweep.
//!
//! Subscriptions are interned server-wide ([`BodyCache::intern`]): equal name sets share one
//! `Arc<BTreeSet<String>>`, found by fingerprint through a `Weak` and verified equal on a hit. Ten
//! thousand sidecars of one proxy class asking for the same 3,000 endpoint names hold one copy of
//! them, not ten thousand.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use sailplane_translator::{Resource, ResourceSet, TypeUrl};

use super::wire;

/// What a stream is subscribed to for one type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// Every resource of the type.
    pub wildcard: bool,
    /// Explicitly requested names, interned: streams with equal names share this set.
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
    /// list means everything (legacy wildcard); `*` means everything for every type. Not interned
    /// (see [`BodyCache::sotw_subscription`]).
    #[cfg(test)]
    pub(crate) fn from_sotw_names(t: TypeUrl, names: &[String]) -> Subscription {
        let (wildcard, names) = sotw_parts(t, names);
        Self::from_parts(wildcard, names)
    }

    /// A subscription from its parts.
    pub(crate) fn from_parts(wildcard: bool, names: BTreeSet<String>) -> Subscription {
        let fingerprint = names_fingerprint(&names);
        Subscription { wildcard, names: Arc::new(names), fingerprint }
    }

    /// Whether a state-of-the-world request listing `names` asks for exactly this subscription.
    /// Allocates nothing when the request lists its names sorted (as Envoy does), which is what
    /// every ACK of an unchanged subscription costs.
    pub(crate) fn same_as_sotw(&self, t: TypeUrl, names: &[String]) -> bool {
        let star = names.iter().any(|n| n == "*");
        let wildcard = star || (t.sotw_sends_all() && names.is_empty());
        if wildcard != self.wildcard {
            return false;
        }
        let mut count = 0;
        for n in names.iter().filter(|n| *n != "*") {
            if !self.names.contains(n) {
                return false;
            }
            count += 1;
        }
        if count != self.names.len() {
            return false;
        }
        // Every name is subscribed and there are as many: equal unless the request repeats a name.
        let mut listed = names.iter().filter(|n| *n != "*");
        let sorted = match listed.next() {
            None => true,
            Some(first) => listed.try_fold(first, |prev, n| (prev < n).then_some(n)).is_some(),
        };
        sorted || names.iter().filter(|n| *n != "*").map(String::as_str).collect::<BTreeSet<&str>>().len() == count
    }
}

/// What a state-of-the-world request's names say: wildcard, and the explicit names.
fn sotw_parts(t: TypeUrl, names: &[String]) -> (bool, BTreeSet<String>) {
    let star = names.iter().any(|n| n == "*");
    let wildcard = star || (t.sotw_sends_all() && names.is_empty());
    (wildcard, names.iter().filter(|n| *n != "*").cloned().collect())
}

/// A 128-bit hash of a name set (collisions are checked where it matters).
fn names_fingerprint(names: &BTreeSet<String>) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for n in names {
        h.update(n.as_bytes());
        h.update(&[0]);
    }
    h.digest128()
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
    /// The set a partial body's changes are from; 0 for a full body.
    from: usize,
    t: TypeUrl,
    /// `None` for wildcard.
    names: Option<u128>,
}

#[derive(Debug)]
struct Slot<V> {
    set: Weak<ResourceSet>,
    /// For partial bodies: the from-set (kept allocated so its address is not reused).
    from: Option<Weak<ResourceSet>>,
    cell: Arc<OnceLock<Arc<V>>>,
    /// When the slot was made: bodies are dropped from the cache [`BODY_TTL`] after (see
    /// [`BodyCache::expire`]).
    created: Instant,
}

impl<V> Slot<V> {
    fn alive(&self) -> bool {
        self.set.strong_count() > 0 && self.from.as_ref().is_none_or(|f| f.strong_count() > 0)
    }
}

/// The shared body cache of one server.
#[derive(Debug)]
pub(crate) struct BodyCache {
    bodies: DashMap<BodyKey, Slot<SotwBody>>,
    versions: DashMap<(usize, TypeUrl), Slot<String>>,
    sweep_at: AtomicUsize,
    /// Interned subscription name sets, by fingerprint.
    subscriptions: DashMap<u128, Weak<BTreeSet<String>>>,
    subscriptions_sweep_at: AtomicUsize,
    /// When bodies were last expired.
    expired_at: std::sync::Mutex<Instant>,
    encodes: AtomicU64,
    control_plane: Bytes,
    control_plane_delta: Bytes,
}

/// Sweep no more often than when the map holds this many entries.
const MIN_SWEEP: usize = 64;

/// How long an encoded body stays in the cache. Every stream that shares a snapshot asks for its
/// body within moments of the snapshot changing (a fan-out to 1,000 proxies takes about 250 ms), so
/// a few seconds keep one encode per snapshot, type and subscription. Kept for as long as the
/// snapshot lives instead, the full bodies of every proxy class (CDS alone is 2.5 MB on a
/// 1,000-service mesh) would be held once per class, megabytes per connected proxy when classes
/// are small. A body asked for again later is encoded again: a copy of the resources' bytes.
const BODY_TTL: Duration = Duration::from_secs(3);

impl BodyCache {
    /// A cache whose responses name the control plane `identifier`.
    pub(crate) fn new(identifier: &str) -> Self {
        BodyCache {
            bodies: DashMap::new(),
            versions: DashMap::new(),
            sweep_at: AtomicUsize::new(MIN_SWEEP),
            subscriptions: DashMap::new(),
            subscriptions_sweep_at: AtomicUsize::new(MIN_SWEEP),
            expired_at: std::sync::Mutex::new(Instant::now()),
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

    /// `names`, shared with every equal set interned before (and still held by someone), and its
    /// fingerprint.
    pub(crate) fn intern(&self, names: BTreeSet<String>) -> (Arc<BTreeSet<String>>, u128) {
        let fingerprint = names_fingerprint(&names);
        if let Some(existing) = self.subscriptions.get(&fingerprint).and_then(|w| w.upgrade())
            && *existing == names
        {
            return (existing, fingerprint);
        }
        let names = Arc::new(names);
        match self.subscriptions.entry(fingerprint) {
            dashmap::Entry::Occupied(mut e) => match e.get().upgrade() {
                // Interned meanwhile by another stream.
                Some(existing) if *existing == *names => return (existing, fingerprint),
                // A collision (astronomically rare): this set simply is not shared.
                Some(_) => return (names, fingerprint),
                None => {
                    e.insert(Arc::downgrade(&names));
                }
            },
            dashmap::Entry::Vacant(e) => {
                e.insert(Arc::downgrade(&names));
            }
        }
        if self.subscriptions.len() >= self.subscriptions_sweep_at.load(Ordering::Relaxed) {
            self.subscriptions.retain(|_, w| w.strong_count() > 0);
            self.subscriptions_sweep_at.store((self.subscriptions.len() * 2).max(MIN_SWEEP), Ordering::Relaxed);
        }
        (names, fingerprint)
    }

    /// The interned subscription a state-of-the-world request of type `t` listing `names` asks for.
    pub(crate) fn sotw_subscription(&self, t: TypeUrl, names: &[String]) -> Subscription {
        let (wildcard, names) = sotw_parts(t, names);
        let (names, fingerprint) = self.intern(names);
        Subscription { wildcard, names, fingerprint }
    }

    /// How many distinct interned name sets are alive (for tests and debugging).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn interned_sets(&self) -> usize {
        self.subscriptions.iter().filter(|w| w.strong_count() > 0).count()
    }

    /// Drops bodies older than [`BODY_TTL`] (streams sending one hold their own reference). Scans at
    /// most once per second.
    pub(crate) fn expire(&self) {
        let Ok(mut last) = self.expired_at.try_lock() else { return };
        if last.elapsed() < Duration::from_secs(1) {
            return;
        }
        *last = Instant::now();
        self.expire_older_than(BODY_TTL);
    }

    fn expire_older_than(&self, ttl: Duration) {
        self.bodies.retain(|_, slot| slot.alive() && slot.created.elapsed() < ttl);
    }

    /// How many bodies the cache holds (for tests and debugging).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn cached_bodies(&self) -> usize {
        self.bodies.len()
    }

    /// The state-of-the-world body of type `t` for `sub` in `set`.
    pub(crate) fn sotw(&self, set: &Arc<ResourceSet>, t: TypeUrl, sub: &Subscription) -> Arc<SotwBody> {
        self.expire();
        let key =
            BodyKey { set: Arc::as_ptr(set) as usize, from: 0, t, names: (!sub.wildcard).then_some(sub.fingerprint) };
        let cell = cell_for(&self.bodies, key, set, None, &self.sweep_at);
        // The shard lock is released before building: other types and snapshots are not blocked,
        // and streams asking for this very body wait on the cell instead of building it again.
        Arc::clone(cell.get_or_init(|| {
            self.encodes.fetch_add(1, Ordering::Relaxed);
            Arc::new(self.build(set, t, sub))
        }))
    }

    /// A partial state-of-the-world body of type `t` in `set`: only those of `changed` (the names
    /// changed from `from` to `set`) that `sub` subscribes and `set` holds; `None` if that is none.
    /// Its `version` is still the whole type's, and its `fingerprint` is `0` (it does not describe
    /// what the client holds afterwards).
    pub(crate) fn sotw_partial(
        &self,
        set: &Arc<ResourceSet>,
        from: &Arc<ResourceSet>,
        t: TypeUrl,
        sub: &Subscription,
        changed: &[String],
    ) -> Option<Arc<SotwBody>> {
        self.expire();
        let key = BodyKey {
            set: Arc::as_ptr(set) as usize,
            from: Arc::as_ptr(from) as usize,
            t,
            names: (!sub.wildcard).then_some(sub.fingerprint),
        };
        let cell = cell_for(&self.bodies, key, set, Some(from), &self.sweep_at);
        let body = Arc::clone(cell.get_or_init(|| {
            self.encodes.fetch_add(1, Ordering::Relaxed);
            let version = self.type_version(set, t);
            let map = set.of(t);
            let selected: Vec<&Resource> = changed
                .iter()
                .filter(|n| sub.wildcard || sub.names.contains(*n))
                .filter_map(|n| map.get(n))
                .map(|r| &**r)
                .collect();
            let bytes = wire::sotw_body(&version, t.as_str(), selected.iter().copied(), &self.control_plane);
            Arc::new(SotwBody { version: version.to_string(), fingerprint: 0, count: selected.len(), bytes })
        }));
        (body.count > 0).then_some(body)
    }

    /// [`ResourceSet::type_version`], computed once per set and type.
    pub(crate) fn type_version(&self, set: &Arc<ResourceSet>, t: TypeUrl) -> Arc<String> {
        let cell = cell_for(&self.versions, (Arc::as_ptr(set) as usize, t), set, None, &self.sweep_at);
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
    from: Option<&Arc<ResourceSet>>,
    sweep_at: &AtomicUsize,
) -> Arc<OnceLock<Arc<V>>>
where
    K: std::hash::Hash + Eq + Clone,
{
    if let Some(slot) = map.get(&key) {
        return Arc::clone(&slot.cell);
    }
    let cell = Arc::clone(
        &map.entry(key)
            .or_insert_with(|| Slot {
                set: Arc::downgrade(set),
                from: from.map(Arc::downgrade),
                cell: Arc::new(OnceLock::new()),
                created: Instant::now(),
            })
            .cell,
    );
    let len = map.len();
    if len >= sweep_at.load(Ordering::Relaxed) {
        map.retain(|_, slot| slot.alive());
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
    fn bodies_expire_and_are_encoded_again() {
        let cache = BodyCache::new("");
        let s = set(&["a", "b"]);
        let all = Subscription::from_sotw_names(TypeUrl::Cluster, &[]);
        let first = cache.sotw(&s, TypeUrl::Cluster, &all);
        assert_eq!(cache.cached_bodies(), 1);
        cache.expire_older_than(BODY_TTL);
        assert_eq!(cache.cached_bodies(), 1, "a fresh body is kept");
        cache.expire_older_than(Duration::ZERO);
        assert_eq!(cache.cached_bodies(), 0, "the cache lets go of old bodies although the set lives");
        let again = cache.sotw(&s, TypeUrl::Cluster, &all);
        assert_eq!(cache.encodes(), 2);
        assert_eq!(first.bytes, again.bytes);
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
    fn equal_subscriptions_are_interned_once() {
        let cache = BodyCache::new("");
        let names: Vec<String> = (0..100).map(|i| format!("outbound|80||svc-{i}.default.svc.cluster.local")).collect();
        let subs: Vec<Subscription> = (0..50).map(|_| cache.sotw_subscription(TypeUrl::Endpoint, &names)).collect();
        assert!(subs.iter().all(|s| Arc::ptr_eq(&s.names, &subs[0].names)), "one shared set");
        assert_eq!(cache.interned_sets(), 1);
        let other = cache.sotw_subscription(TypeUrl::Endpoint, &names[..10]);
        assert!(!Arc::ptr_eq(&other.names, &subs[0].names));
        assert_eq!(cache.interned_sets(), 2);
        // Delta builds its sets itself: the same name set interns to the same Arc.
        let (delta, fp) = cache.intern(names.iter().cloned().collect());
        assert!(Arc::ptr_eq(&delta, &subs[0].names));
        assert_eq!(fp, subs[0].fingerprint);
        drop((subs, delta));
        assert_eq!(cache.interned_sets(), 1, "a set nobody holds is not kept");
        drop(other);
        assert_eq!(cache.interned_sets(), 0);
    }

    #[test]
    fn ack_comparison_without_rebuilding() {
        let s = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let sub = Subscription::from_sotw_names(TypeUrl::Endpoint, &s(&["a", "b", "c"]));
        assert!(sub.same_as_sotw(TypeUrl::Endpoint, &s(&["a", "b", "c"])));
        assert!(sub.same_as_sotw(TypeUrl::Endpoint, &s(&["c", "a", "b"])), "order does not matter");
        assert!(!sub.same_as_sotw(TypeUrl::Endpoint, &s(&["a", "b"])));
        assert!(!sub.same_as_sotw(TypeUrl::Endpoint, &s(&["a", "b", "d"])));
        assert!(!sub.same_as_sotw(TypeUrl::Endpoint, &s(&["a", "a", "b"])), "a repeat hides a missing name");
        assert!(!sub.same_as_sotw(TypeUrl::Endpoint, &s(&["a", "b", "c", "*"])), "wildcard differs");
        let cds = Subscription::from_sotw_names(TypeUrl::Cluster, &[]);
        assert!(cds.same_as_sotw(TypeUrl::Cluster, &[]));
        assert!(cds.same_as_sotw(TypeUrl::Cluster, &s(&["*"])));
        assert!(!cds.same_as_sotw(TypeUrl::Cluster, &s(&["a"])));
        let none = Subscription::from_sotw_names(TypeUrl::Endpoint, &[]);
        assert!(none.same_as_sotw(TypeUrl::Endpoint, &[]));
    }

    #[test]
    fn partial_bodies_carry_subscribed_changed_names() {
        let cache = BodyCache::new("");
        let old = set(&["a", "b", "c"]);
        let new = set(&["a", "b", "c"]);
        let sub = Subscription::from_sotw_names(TypeUrl::Endpoint, &["a".into(), "b".into()]);
        let changed = ["b".to_string(), "c".to_string(), "gone".to_string()];
        let body = cache.sotw_partial(&new, &old, TypeUrl::Endpoint, &sub, &changed).unwrap();
        assert_eq!(body.count, 1, "c is not subscribed, gone does not exist");
        assert_eq!(body.version, new.type_version(TypeUrl::Endpoint), "the whole type's version");
        let again = cache.sotw_partial(&new, &old, TypeUrl::Endpoint, &sub, &changed).unwrap();
        assert!(Arc::ptr_eq(&body, &again), "shared across streams");
        let only_a = Subscription::from_sotw_names(TypeUrl::Endpoint, &["a".into()]);
        assert!(cache.sotw_partial(&new, &old, TypeUrl::Endpoint, &only_a, &changed).is_none());
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
