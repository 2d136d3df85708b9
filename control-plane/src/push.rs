//! The push stage: debounces store changes, rebuilds the world once per change, and translates
//! each proxy *class* once.
//!
//! A proxy's configuration has an outbound side and an inbound side, each a function of the world
//! and of the proxy's class for that side (its profile with labels restricted to the keys the
//! world's selectors read, see `sailplane_translator::model::classes`). Every connected proxy maps
//! to one (outbound class, inbound class) pair; each class is translated once per world and its
//! encoded resources are shared by `Arc`, and the resource maps are persistent, so a proxy class
//! costs only the nodes its inbound resources add. Typically one outbound translation serves every
//! sidecar of a namespace, and one small inbound translation every pod of a Deployment.
//!
//! A change costs what it changes: when the new world differs from the last only in endpoints
//! that nothing but EDS reads ([`WorldChange`]), every translation is kept and only the
//! `ClusterLoadAssignment`s of the changed services are rebuilt, once per distinct assignment.
//! Otherwise the classes are translated again, on every core. A proxy's channel is woken only when
//! its class's resources changed, and the snapshot carries which names changed ([`Changes`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use sailplane_translator::incremental::{Assignments, compose, update};
use sailplane_translator::model::{LabelKeys, MeshConfig, WorldChange, build_world};
use sailplane_translator::{Diagnostic, Part, ProxyProfile, ResourceSet, Translation, TypeUrl, World};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::proxy::ProxyInfo;
use crate::store::Store;
use crate::xds::{Changes, SecretIndex, Snapshot, SnapshotSource};

/// Debounce settings (Istio's `PILOT_DEBOUNCE_AFTER` / `PILOT_DEBOUNCE_MAX`).
///
/// A push happens once no change arrived for `after`, or `max` after the first change of a burst,
/// whichever is first. Istio's default `max` is 10 s, so under steady churn (a change every 25 ms)
/// its quiet window never opens and edits wait the whole 10 s. A Sailplane push costs what the
/// change changes, so there is no reason to hold edits back: the default `max` equals `after`,
/// making the first change of a burst open a fixed 100 ms batching window.
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// Push once no change arrived for this long.
    pub after: Duration,
    /// Push at the latest this long after the first change of a burst.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self { after: Duration::from_millis(100), max: Duration::from_millis(100) }
    }
}

/// The world as last built, with what was wrong in it.
#[derive(Debug, Default)]
pub struct WorldState {
    /// The world.
    pub world: Arc<World>,
    /// Problems found while building it (semantic, cross-object).
    pub diagnostics: Vec<Diagnostic>,
    /// Store generation it was built from.
    pub generation: u64,
    /// Push number (0 before the first build).
    pub push: u64,
}

/// A proxy class: its outbound and inbound classes.
type ClassKey = (ProxyProfile, ProxyProfile);

/// The translations of one world, shared by every proxy of a class.
#[derive(Default)]
struct Translations {
    /// The world they were made from.
    world: Arc<World>,
    /// Its selectors' label keys.
    keys: LabelKeys,
    /// Push number of the world.
    push: u64,
    outbound: DashMap<ProxyProfile, Arc<Translation>>,
    inbound: DashMap<ProxyProfile, Arc<Translation>>,
    classes: DashMap<ClassKey, Arc<Snapshot>>,
}

impl Translations {
    fn class_of(&self, profile: &ProxyProfile) -> ClassKey {
        class_of(profile, &self.keys)
    }

    fn outbound(&self, p: &ProxyProfile) -> Option<Arc<Translation>> {
        self.outbound.get(p).map(|r| Arc::clone(r.value()))
    }

    fn inbound(&self, p: &ProxyProfile) -> Option<Arc<Translation>> {
        self.inbound.get(p).map(|r| Arc::clone(r.value()))
    }

    fn class(&self, c: &ClassKey) -> Option<Arc<Snapshot>> {
        self.classes.get(c).map(|r| Arc::clone(r.value()))
    }
}

fn class_of(profile: &ProxyProfile, keys: &LabelKeys) -> ClassKey {
    (profile.outbound_class(keys), profile.inbound_class(keys))
}

struct ProfileEntry {
    tx: watch::Sender<Arc<Snapshot>>,
    proxies: usize,
}

/// The push stage; also the [`SnapshotSource`] of the xDS server.
pub struct Pusher {
    store: Arc<Store>,
    mesh: MeshConfig,
    debounce: Debounce,
    state: ArcSwap<WorldState>,
    /// Connected proxies, by full profile (each its own channel, so a proxy whose class changes
    /// with the world keeps its channel).
    profiles: Mutex<HashMap<ProxyProfile, ProfileEntry>>,
    /// Translations of the last world translated (the published one, unless a push is under way).
    translations: ArcSwap<Translations>,
    pushes: AtomicU64,
    metrics: Arc<Metrics>,
    /// The Kubernetes Secrets of the last push, for SDS over ADS (see `xds/sds.rs`).
    secrets: watch::Sender<Arc<SecretIndex>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Pusher {
    /// A pusher reading `store`, with mesh settings `mesh`.
    pub fn new(store: Arc<Store>, mesh: MeshConfig, debounce: Debounce, metrics: Arc<Metrics>) -> Self {
        let world = Arc::new(World { mesh: mesh.clone(), ..World::default() });
        let state = WorldState { world: Arc::clone(&world), ..WorldState::default() };
        let translations = Translations { keys: LabelKeys::of(&world), world, ..Translations::default() };
        Self {
            store,
            mesh,
            debounce,
            state: ArcSwap::from_pointee(state),
            profiles: Mutex::new(HashMap::new()),
            translations: ArcSwap::from_pointee(translations),
            pushes: AtomicU64::new(0),
            metrics,
            secrets: watch::Sender::new(Arc::new(SecretIndex::default())),
        }
    }

    /// The world as last built.
    pub fn state(&self) -> Arc<WorldState> {
        self.state.load_full()
    }

    /// Whether at least one world was built after every source synced.
    pub fn ready(&self) -> bool {
        self.store.synced() && self.state.load().push > 0
    }

    /// The mesh's Secrets as of the last push; changes whenever a Secret's content does (the xDS
    /// server's SDS follows it).
    pub fn secrets(&self) -> watch::Receiver<Arc<SecretIndex>> {
        self.secrets.subscribe()
    }

    /// Number of distinct proxy profiles currently connected.
    pub fn profile_count(&self) -> usize {
        lock(&self.profiles).len()
    }

    /// Number of distinct proxy classes, outbound classes and inbound classes translated for the
    /// current world.
    pub fn class_counts(&self) -> (usize, usize, usize) {
        let t = self.translations.load();
        (t.classes.len(), t.outbound.len(), t.inbound.len())
    }

    /// Follows the store until it is dropped: debounce, then push.
    pub async fn run(self: Arc<Self>) {
        let mut rx = self.store.subscribe();
        // Sources may have filled the store before this task subscribed; a fresh receiver counts
        // that as seen, so start with one push rather than waiting for the next change.
        rx.mark_changed();
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            let first = Instant::now();
            let mut last = first;
            loop {
                let quiet = last + self.debounce.after;
                let hard = first + self.debounce.max;
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        last = Instant::now();
                    }
                    _ = tokio::time::sleep_until(quiet.min(hard).into()) => break,
                }
            }
            rx.borrow_and_update();
            self.metrics.debounce_time.observe(first.elapsed().as_secs_f64());
            let this = Arc::clone(&self);
            if let Err(e) = tokio::task::spawn_blocking(move || this.push(first)).await {
                warn!(error = %e, "push task failed");
            }
        }
    }

    /// Rebuilds the world from the store and brings every connected proxy class up to it.
    /// Synchronous and CPU-bound: run it off the async workers.
    pub fn push(&self, changed_at: Instant) {
        let started = Instant::now();
        let view = self.store.view();
        let (world, mut diagnostics) = build_world(view.objects.iter().map(|o| &**o), &self.mesh);
        let world_ms = started.elapsed().as_secs_f64() * 1e3;
        diagnostics.sort();
        let previous = self.state.load_full();
        if diagnostics != previous.diagnostics {
            for d in diagnostics.iter().filter(|d| !previous.diagnostics.contains(d)) {
                warn!(diagnostic = %d, "invalid config");
            }
        }
        let push = self.pushes.fetch_add(1, Ordering::Relaxed) + 1;
        let index = SecretIndex::from_objects(view.objects.iter().map(|o| &**o));
        let secrets_changed = self.secrets.send_if_modified(|current| {
            if **current == index {
                return false;
            }
            *current = Arc::new(index);
            true
        });
        if secrets_changed {
            debug!(push, secrets = self.secrets.borrow().len(), "secrets changed");
        }
        let old = self.translations.load_full();
        let change = WorldChange::between(&old.world, &world);
        let world = Arc::new(world);
        let keys = LabelKeys::of(&world);
        // Publish the world first: a proxy connecting from here on translates against it (and one
        // that translated against the old world sees the push number move and starts over), and
        // every proxy registered before this point is in `targets`.
        self.state.store(Arc::new(WorldState {
            world: Arc::clone(&world),
            diagnostics,
            generation: view.generation,
            push,
        }));
        let targets: Vec<(ProxyProfile, watch::Sender<Arc<Snapshot>>)> =
            lock(&self.profiles).iter().map(|(p, e)| (p.clone(), e.tx.clone())).collect();
        // Classes of worlds with different label keys are not comparable.
        let change = if keys == old.keys { change } else { WorldChange::Other };
        let next = Translations { world: Arc::clone(&world), keys, push, ..Translations::default() };
        let classes: HashSet<ClassKey> = targets.iter().map(|(p, _)| next.class_of(p)).collect();
        let translating = Instant::now();
        let next = self.translate(next, &old, &change, classes, changed_at);
        let translate_ms = translating.elapsed().as_secs_f64() * 1e3;
        let next = Arc::new(next);
        self.translations.store(Arc::clone(&next));
        let mut changed = 0usize;
        for (profile, tx) in &targets {
            let Some(snapshot) = next.class(&next.class_of(profile)) else { continue };
            let snapshot = &snapshot;
            changed += usize::from(tx.send_if_modified(|current| {
                if Arc::ptr_eq(current, snapshot) || unchanged(current, snapshot) {
                    return false;
                }
                *current = Arc::clone(snapshot);
                true
            }));
        }
        info!(
            push,
            services = world.services.len(),
            change = describe(&change),
            profiles = targets.len(),
            classes = next.classes.len(),
            outbound_classes = next.outbound.len(),
            inbound_classes = next.inbound.len(),
            changed,
            world_ms,
            translate_ms,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "push"
        );
    }

    /// Fills `next` with the translations of `classes`, reusing what `change` allows from `old`.
    fn translate(
        &self,
        next: Translations,
        old: &Translations,
        change: &WorldChange,
        classes: HashSet<ClassKey>,
        changed_at: Instant,
    ) -> Translations {
        let outbound: HashSet<&ProxyProfile> = classes.iter().map(|(o, _)| o).collect();
        let inbound: HashSet<&ProxyProfile> = classes.iter().map(|(_, i)| i).collect();
        let world = Arc::clone(&next.world);
        let assignments = Assignments::new(&world);
        let side = |profile: &ProxyProfile, part: Part, previous: Option<&Arc<Translation>>| -> Arc<Translation> {
            let t = update(&world, profile, part, previous, change, &assignments);
            if !previous.is_some_and(|p| Arc::ptr_eq(p, &t)) {
                self.metrics.translations.inc();
            }
            t
        };
        let jobs: Vec<(&ProxyProfile, Part)> =
            outbound.iter().map(|p| (*p, Part::Outbound)).chain(inbound.iter().map(|p| (*p, Part::Inbound))).collect();
        let done = parallel(&jobs, |(profile, part)| {
            let previous = match part {
                Part::Inbound => old.inbound(profile),
                _ => old.outbound(profile),
            };
            let previous = previous.as_ref();
            let mut t = side(profile, *part, previous);
            // An equal translation keeps the old `Arc`, so the class snapshot can be reused. A
            // patch already returns the old `Arc` when nothing changed, so only translations made
            // afresh are compared.
            if let Some(p) = previous
                && !matches!(change, WorldChange::Endpoints(_))
                && !Arc::ptr_eq(p, &t)
                && p.set == t.set
            {
                t = Arc::clone(p);
            }
            t
        });
        for ((profile, part), t) in jobs.iter().zip(done) {
            match part {
                Part::Inbound => next.inbound.insert((*profile).clone(), t),
                _ => next.outbound.insert((*profile).clone(), t),
            };
        }
        for class in classes {
            let (Some(o), Some(i)) = (next.outbound(&class.0), next.inbound(&class.1)) else { continue };
            let snapshot = match old.class(&class) {
                Some(prev)
                    if old.outbound(&class.0).is_some_and(|x| Arc::ptr_eq(&x, &o))
                        && old.inbound(&class.1).is_some_and(|x| Arc::ptr_eq(&x, &i)) =>
                {
                    prev
                }
                prev => {
                    let set = Arc::new(compose(&o, &i));
                    let changes = prev.map(|p| Arc::new(Changes::between(&p.resources, &set)));
                    Arc::new(Snapshot { resources: set, push: next.push, changed_at, changes })
                }
            };
            next.classes.insert(class, snapshot);
        }
        next
    }

    /// The snapshot of `profile`'s class in the published world (translated now if no connected
    /// proxy shares the class), and that world's push number.
    fn class_snapshot(&self, profile: &ProxyProfile) -> (Arc<Snapshot>, u64) {
        let state = self.state.load_full();
        let current = self.translations.load_full();
        let build = |world: &World, p: &ProxyProfile, part: Part| {
            self.metrics.translations.inc();
            Arc::new(sailplane_translator::build_part(world, p, part))
        };
        if current.push != state.push {
            // A push is translating the published world right now: translate this class alone.
            let class = class_of(profile, &LabelKeys::of(&state.world));
            let o = build(&state.world, &class.0, Part::Outbound);
            let i = build(&state.world, &class.1, Part::Inbound);
            return (Arc::new(Snapshot::new(Arc::new(compose(&o, &i)), state.push, Instant::now())), state.push);
        }
        let class = current.class_of(profile);
        if let Some(s) = current.class(&class) {
            return (s, current.push);
        }
        let o = current.outbound(&class.0).unwrap_or_else(|| {
            let o = build(&current.world, &class.0, Part::Outbound);
            Arc::clone(current.outbound.entry(class.0.clone()).or_insert(o).value())
        });
        let i = current.inbound(&class.1).unwrap_or_else(|| {
            let i = build(&current.world, &class.1, Part::Inbound);
            Arc::clone(current.inbound.entry(class.1.clone()).or_insert(i).value())
        });
        let snapshot = Arc::new(Snapshot::new(Arc::new(compose(&o, &i)), current.push, Instant::now()));
        let s = Arc::clone(current.classes.entry(class).or_insert(snapshot).value());
        (s, current.push)
    }
}

/// The kind of change, for the push log line.
fn describe(change: &WorldChange) -> &'static str {
    match change {
        WorldChange::Same => "none",
        WorldChange::Endpoints(_) => "endpoints",
        WorldChange::Routes => "routes",
        WorldChange::Other => "full",
    }
}

/// Runs `f` over `jobs` on every core (the push runs on a blocking thread; so do these).
fn parallel<J: Sync, R: Send>(jobs: &[J], f: impl Fn(&J) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len());
    if threads <= 1 {
        return jobs.iter().map(&f).collect();
    }
    let chunk = jobs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            jobs.chunks(chunk).map(|c| scope.spawn(|| c.iter().map(&f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// Whether `next` holds what `current` holds: from `next`'s changes when they are relative to
/// `current` (the usual case: O(1)), else by comparing the sets.
fn unchanged(current: &Snapshot, next: &Snapshot) -> bool {
    match &next.changes {
        Some(c) if Arc::ptr_eq(&c.from, &current.resources) => c.is_empty(),
        _ => same_versions(&current.resources, &next.resources),
    }
}

/// Whether two sets hold the same resources (by name and content hash).
fn same_versions(a: &ResourceSet, b: &ResourceSet) -> bool {
    TypeUrl::ALL.iter().all(|t| {
        a.same_map(b, *t) || {
            let (x, y) = (a.of(*t), b.of(*t));
            x.len() == y.len()
                && x.iter().zip(y.iter()).all(|((n1, r1), (n2, r2))| n1 == n2 && r1.version == r2.version)
        }
    })
}

impl SnapshotSource for Pusher {
    fn connect(&self, proxy: &ProxyInfo) -> watch::Receiver<Arc<Snapshot>> {
        loop {
            {
                let mut profiles = lock(&self.profiles);
                if let Some(entry) = profiles.get_mut(&proxy.profile) {
                    entry.proxies += 1;
                    debug!(proxy = %proxy.id, shared_with = entry.proxies - 1, "proxy joins a connected profile");
                    return entry.tx.subscribe();
                }
            }
            // Translate without holding any lock (a connect storm of distinct classes uses every
            // core), and off the async worker when there is a multi-threaded runtime to hand its
            // other tasks to.
            let (snapshot, push) = in_place(|| self.class_snapshot(&proxy.profile));
            let mut profiles = lock(&self.profiles);
            if let Some(entry) = profiles.get_mut(&proxy.profile) {
                entry.proxies += 1;
                return entry.tx.subscribe();
            }
            // A push that published a newer world after the translation may have collected its
            // targets before this proxy registers: translate again rather than miss it.
            if self.state.load().push != push {
                continue;
            }
            let (tx, rx) = watch::channel(snapshot);
            profiles.insert(proxy.profile.clone(), ProfileEntry { tx, proxies: 1 });
            return rx;
        }
    }

    fn disconnect(&self, proxy: &ProxyInfo) {
        let mut profiles = lock(&self.profiles);
        if let Some(entry) = profiles.get_mut(&proxy.profile) {
            entry.proxies = entry.proxies.saturating_sub(1);
            if entry.proxies == 0 {
                profiles.remove(&proxy.profile);
            }
        }
    }
}

/// Runs CPU-bound `f` on this thread, telling a multi-threaded tokio runtime to move its other
/// tasks elsewhere meanwhile.
fn in_place<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
