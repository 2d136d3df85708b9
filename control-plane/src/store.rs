//! The config store: every object of every source, grouped by origin.
//!
//! An origin is the unit a source replaces at once (one file of the file source, one object of the
//! Kubernetes source). Sources send whole origins; the store keeps them, with the diagnostics found
//! while reading them, and bumps a generation that the push stage watches.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use sailplane_translator::Diagnostic;
use sailplane_translator::api::{Object, ObjectKey};
use tokio::sync::watch;

/// A change from a source.
#[derive(Debug, Clone)]
pub enum ConfigEvent {
    /// The origin now holds exactly these objects (and these problems were found reading it).
    Upsert {
        /// Origin id (for files: the path).
        origin: String,
        /// The typed objects, in source order.
        objects: Vec<Object>,
        /// Problems found while reading the origin.
        diagnostics: Vec<Diagnostic>,
    },
    /// The origin is gone.
    Remove {
        /// Origin id.
        origin: String,
    },
    /// A source finished its initial listing.
    Synced {
        /// Source name.
        source: String,
    },
}

#[derive(Debug, Default)]
struct Origin {
    objects: Vec<Arc<Object>>,
    diagnostics: Vec<Diagnostic>,
}

#[derive(Debug, Default)]
struct Inner {
    origins: BTreeMap<String, Origin>,
    synced: Vec<String>,
}

/// A consistent view of the store at one generation.
#[derive(Debug, Clone, Default)]
pub struct StoreView {
    /// Generation the view was taken at.
    pub generation: u64,
    /// Every object, one per key (on duplicate keys the first origin in path order wins).
    pub objects: Vec<Arc<Object>>,
    /// Problems found reading sources, including duplicate keys.
    pub diagnostics: Vec<Diagnostic>,
}

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    inner: RwLock<Inner>,
    generation: watch::Sender<u64>,
    sources: Vec<String>,
}

impl Store {
    /// A store expecting an initial sync from each named source before it reports ready.
    pub fn new(sources: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            generation: watch::channel(0).0,
            sources: sources.into_iter().map(Into::into).collect(),
        }
    }

    /// Applies one change. Returns whether anything changed.
    pub fn apply(&self, event: ConfigEvent) -> bool {
        let changed = {
            let mut inner = match self.inner.write() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            match event {
                ConfigEvent::Upsert { origin, objects, diagnostics } => {
                    let objects: Vec<Arc<Object>> = objects.into_iter().map(Arc::new).collect();
                    let same = inner
                        .origins
                        .get(&origin)
                        .is_some_and(|o| o.diagnostics == diagnostics && o.objects == objects);
                    if !same {
                        inner.origins.insert(origin, Origin { objects, diagnostics });
                    }
                    !same
                }
                ConfigEvent::Remove { origin } => inner.origins.remove(&origin).is_some(),
                ConfigEvent::Synced { source } => {
                    if inner.synced.contains(&source) {
                        false
                    } else {
                        inner.synced.push(source);
                        true
                    }
                }
            }
        };
        if changed {
            self.generation.send_modify(|g| *g += 1);
        }
        changed
    }

    /// Whether every source has finished its initial listing.
    pub fn synced(&self) -> bool {
        let inner = match self.inner.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.sources.iter().all(|s| inner.synced.contains(s))
    }

    /// A receiver that changes whenever the store does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A consistent copy of the current objects and diagnostics.
    pub fn view(&self) -> StoreView {
        let inner = match self.inner.read() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let generation = *self.generation.borrow();
        let mut seen: BTreeMap<ObjectKey, &str> = BTreeMap::new();
        let mut objects = Vec::new();
        let mut diagnostics = Vec::new();
        for (origin_id, origin) in &inner.origins {
            diagnostics.extend(origin.diagnostics.iter().cloned());
            for obj in &origin.objects {
                let key = obj.key();
                if let Some(first) = seen.get(&key) {
                    diagnostics.push(
                        Diagnostic::error(
                            key.to_string(),
                            "metadata.name",
                            format!("duplicate object; the one from {first} is used"),
                        )
                        .with_source(origin_id.clone()),
                    );
                    continue;
                }
                seen.insert(key, origin_id);
                objects.push(Arc::clone(obj));
            }
        }
        StoreView { generation, objects, diagnostics }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sailplane_translator::api::parse_object;
    use serde_json::json;

    fn ns(name: &str) -> Object {
        parse_object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).unwrap()
    }

    #[test]
    fn upsert_replaces_an_origin_and_bumps_generation() {
        let store = Store::new(["files"]);
        let rx = store.subscribe();
        assert!(store.apply(ConfigEvent::Upsert {
            origin: "a.yaml".into(),
            objects: vec![ns("a"), ns("b")],
            diagnostics: vec![]
        }));
        assert_eq!(*rx.borrow(), 1);
        // Identical content is not a change.
        assert!(!store.apply(ConfigEvent::Upsert {
            origin: "a.yaml".into(),
            objects: vec![ns("a"), ns("b")],
            diagnostics: vec![]
        }));
        assert_eq!(*rx.borrow(), 1);
        assert!(store.apply(ConfigEvent::Upsert {
            origin: "a.yaml".into(),
            objects: vec![ns("a")],
            diagnostics: vec![]
        }));
        assert_eq!(store.view().objects.len(), 1);
        assert!(store.apply(ConfigEvent::Remove { origin: "a.yaml".into() }));
        assert!(store.view().objects.is_empty());
        assert!(!store.apply(ConfigEvent::Remove { origin: "a.yaml".into() }));
    }

    #[test]
    fn duplicates_keep_the_first_and_are_reported() {
        let store = Store::new(["files"]);
        store.apply(ConfigEvent::Upsert { origin: "a.yaml".into(), objects: vec![ns("x")], diagnostics: vec![] });
        store.apply(ConfigEvent::Upsert { origin: "b.yaml".into(), objects: vec![ns("x")], diagnostics: vec![] });
        let view = store.view();
        assert_eq!(view.objects.len(), 1);
        assert_eq!(view.diagnostics.len(), 1);
        assert_eq!(view.diagnostics[0].source.as_deref(), Some("b.yaml"));
        assert!(view.diagnostics[0].message.contains("a.yaml"));
    }

    #[test]
    fn ready_after_every_source_synced() {
        let store = Store::new(["files", "kubernetes"]);
        assert!(!store.synced());
        store.apply(ConfigEvent::Synced { source: "files".into() });
        assert!(!store.synced());
        store.apply(ConfigEvent::Synced { source: "kubernetes".into() });
        assert!(store.synced());
    }
}
