//! The push stage: debounces store changes, rebuilds the world once per change, and translates each
//! distinct proxy profile once.
//!
//! Proxies with equal [`ProxyProfile`]s share one `watch` channel, so they share one translated
//! [`Snapshot`] (and its encoded bytes) by `Arc`. A profile is retranslated on every world change, but
//! its subscribers are only woken when the result differs, so an unrelated edit pushes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sailplane_translator::model::{MeshConfig, build_world};
use sailplane_translator::{Diagnostic, ProxyProfile, ResourceSet, TypeUrl, World};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::proxy::ProxyInfo;
use crate::store::Store;
use crate::xds::{SecretIndex, Snapshot, SnapshotSource};

/// Debounce settings (Istio's `PILOT_DEBOUNCE_AFTER` / `PILOT_DEBOUNCE_MAX`).
#[derive(Debug, Clone, Copy)]
pub struct Debounce {
    /// Push once no change arrived for this long.
    pub after: Duration,
    /// Push at the latest this long after the first change of a burst.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self { after: Duration::from_millis(100), max: Duration::from_secs(10) }
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
    profiles: Mutex<HashMap<ProxyProfile, ProfileEntry>>,
    pushes: AtomicU64,
    metrics: Arc<Metrics>,
    /// The Kubernetes Secrets of the last push, for SDS over ADS (see `xds/sds.rs`).
    secrets: watch::Sender<Arc<SecretIndex>>,
}

impl Pusher {
    /// A pusher reading `store`, with mesh settings `mesh`.
    pub fn new(store: Arc<Store>, mesh: MeshConfig, debounce: Debounce, metrics: Arc<Metrics>) -> Self {
        let state =
            WorldState { world: Arc::new(World { mesh: mesh.clone(), ..World::default() }), ..WorldState::default() };
        Self {
            store,
            mesh,
            debounce,
            state: ArcSwap::from_pointee(state),
            profiles: Mutex::new(HashMap::new()),
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
        self.lock_profiles().len()
    }

    fn lock_profiles(&self) -> std::sync::MutexGuard<'_, HashMap<ProxyProfile, ProfileEntry>> {
        match self.profiles.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
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

    /// Rebuilds the world from the store and retranslates every connected profile. Synchronous and
    /// CPU-bound: run it off the async workers.
    pub fn push(&self, changed_at: Instant) {
        let started = Instant::now();
        let view = self.store.view();
        let (world, mut diagnostics) = build_world(view.objects.iter().map(|o| &**o), &self.mesh);
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
        let world = Arc::new(world);
        self.state.store(Arc::new(WorldState {
            world: Arc::clone(&world),
            diagnostics,
            generation: view.generation,
            push,
        }));
        // New connections from here on translate against the new world themselves; collect the
        // existing profiles after the swap so none is missed.
        let targets: Vec<(ProxyProfile, watch::Sender<Arc<Snapshot>>)> =
            self.lock_profiles().iter().map(|(p, e)| (p.clone(), e.tx.clone())).collect();
        let mut changed = 0usize;
        for (profile, tx) in &targets {
            let resources = sailplane_translator::build(&world, profile);
            self.metrics.translations.inc();
            let updated = tx.send_if_modified(|current| {
                if same_versions(&current.resources, &resources) {
                    return false;
                }
                *current = Arc::new(Snapshot { resources: Arc::new(resources), push, changed_at });
                true
            });
            changed += usize::from(updated);
        }
        info!(
            push,
            services = world.services.len(),
            profiles = targets.len(),
            changed,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "push"
        );
    }
}

/// Whether two sets hold the same resources (by name and content hash).
fn same_versions(a: &ResourceSet, b: &ResourceSet) -> bool {
    TypeUrl::ALL.iter().all(|t| {
        let (x, y) = (a.of(*t), b.of(*t));
        x.len() == y.len() && x.iter().zip(y.iter()).all(|((n1, r1), (n2, r2))| n1 == n2 && r1.version == r2.version)
    })
}

impl SnapshotSource for Pusher {
    fn connect(&self, proxy: &ProxyInfo) -> watch::Receiver<Arc<Snapshot>> {
        let mut profiles = self.lock_profiles();
        if let Some(entry) = profiles.get_mut(&proxy.profile) {
            entry.proxies += 1;
            debug!(proxy = %proxy.id, shared_with = entry.proxies - 1, "proxy joins a translated profile");
            return entry.tx.subscribe();
        }
        let state = self.state.load();
        let resources = sailplane_translator::build(&state.world, &proxy.profile);
        self.metrics.translations.inc();
        let snapshot = Snapshot { resources: Arc::new(resources), push: state.push, changed_at: Instant::now() };
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        profiles.insert(proxy.profile.clone(), ProfileEntry { tx, proxies: 1 });
        rx
    }

    fn disconnect(&self, proxy: &ProxyInfo) {
        let mut profiles = self.lock_profiles();
        if let Some(entry) = profiles.get_mut(&proxy.profile) {
            entry.proxies = entry.proxies.saturating_sub(1);
            if entry.proxies == 0 {
                profiles.remove(&proxy.profile);
            }
        }
    }
}
