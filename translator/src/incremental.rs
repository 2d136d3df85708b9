//! Reusing translations across worlds and proxies: the pure half of the push stage's caches.
//!
//! A proxy's configuration is [`compose`]d from the translations of its outbound and inbound
//! classes ([`crate::model::classes`]). When a world differs from the previous one only in
//! endpoints that nothing but EDS reads ([`crate::model::WorldChange::Endpoints`]), a previous
//! translation is brought up to date by [`patch_endpoints`], which rebuilds only the assignments
//! of the changed services. Both are checked against translations from scratch by the
//! differential tests (`tests/incremental.rs`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::envoy::endpoint::{self, EdsKey};
use crate::envoy::scope::Scope;
use crate::envoy::{Part, Translation, build_part};
use crate::model::{NodeType, ProxyProfile, Service, World, WorldChange};
use crate::resources::{Resource, ResourceSet, TypeUrl};

/// The translation of `part` (`Outbound` or `Inbound`) for `class` in `world`, from `previous` (the
/// same class and part translated for the previous world) where `change` (previous world to
/// `world`) allows. The caller passes [`WorldChange::Other`] when the label keys of the two worlds
/// differ (classes are not comparable then) or there is no previous world.
pub fn update(
    world: &World,
    class: &ProxyProfile,
    part: Part,
    previous: Option<&Arc<Translation>>,
    change: &WorldChange,
    assignments: &Assignments<'_>,
) -> Arc<Translation> {
    let Some(previous) = previous else { return Arc::new(build_part(world, class, part)) };
    match change {
        WorldChange::Same => Arc::clone(previous),
        WorldChange::Endpoints(changed) => patch_endpoints(previous, changed, assignments),
        // The inbound side reads no VirtualService.
        WorldChange::Routes if part == Part::Inbound => Arc::clone(previous),
        // Clusters depend on VirtualServices only through a Sidecar's imports (their destinations
        // are imported); gateways are few and translated whole.
        WorldChange::Routes if class.node_type == NodeType::Sidecar && Scope::new(world, class).sidecar.is_none() => {
            let routes = build_part(world, class, Part::Routes);
            let mut set = previous.set.clone();
            set.replace_type(TypeUrl::Listener, &routes.set);
            set.replace_type(TypeUrl::Route, &routes.set);
            Arc::new(Translation { set, eds: Arc::clone(&previous.eds) })
        }
        _ => Arc::new(build_part(world, class, part)),
    }
}

/// A proxy class's resources: its outbound side with its inbound side added. The two are
/// disjoint, and the maps persistent, so the result shares the outbound side's maps but for the
/// few nodes the inbound resources add.
pub fn compose(outbound: &Translation, inbound: &Translation) -> ResourceSet {
    let mut set = outbound.set.clone();
    set.extend_from(&inbound.set);
    set
}

/// The assignments of one world rebuilt so far, shared by every translation patched for it (an
/// assignment is the same for every proxy class that has it).
#[derive(Debug)]
pub struct Assignments<'w> {
    services: HashMap<(&'w str, &'w str), &'w Arc<Service>>,
    built: Mutex<HashMap<EdsKey, Option<Arc<Resource>>>>,
}

impl<'w> Assignments<'w> {
    /// An empty memo for `world`.
    pub fn new(world: &'w World) -> Self {
        let services = world.services.iter().map(|s| ((s.namespace.as_str(), s.hostname.as_str()), s)).collect();
        Assignments { services, built: Mutex::new(HashMap::new()) }
    }

    /// The assignment of `key` in this world (`None` if its service or port is gone).
    pub fn get(&self, key: &EdsKey) -> Option<Arc<Resource>> {
        if let Some(r) = self.lock().get(key) {
            return r.clone();
        }
        let r = self
            .services
            .get(&(key.namespace.as_str(), key.hostname.as_str()))
            .and_then(|svc| endpoint::assignment(key, svc))
            .map(Arc::new);
        self.lock().insert(key.clone(), r.clone());
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EdsKey, Option<Arc<Resource>>>> {
        match self.built.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// `previous` (a translation of the previous world) brought up to a world whose only difference is
/// the endpoints of the `changed` services (`(namespace, hostname)`): their assignments are
/// rebuilt from `assignments`, everything else is kept. Returns `previous` itself if none of its
/// assignments changed.
pub fn patch_endpoints(
    previous: &Arc<Translation>,
    changed: &BTreeSet<(String, String)>,
    assignments: &Assignments<'_>,
) -> Arc<Translation> {
    let mut next: Option<Translation> = None;
    for key in previous.eds.iter() {
        if !changed.iter().any(|(ns, host)| *ns == key.namespace && *host == key.hostname) {
            continue;
        }
        let resource = assignments.get(key);
        let current = previous.set.get(TypeUrl::Endpoint, &key.name);
        if current.map(|c| &c.version) == resource.as_ref().map(|r| &r.version) {
            continue;
        }
        let t = next.get_or_insert_with(|| (**previous).clone());
        match resource {
            Some(r) => t.set.insert_shared(TypeUrl::Endpoint, r),
            None => {
                t.set.remove(TypeUrl::Endpoint, &key.name);
            }
        }
    }
    next.map_or_else(|| Arc::clone(previous), Arc::new)
}
