//! The `istio-ca-root-cert` ConfigMap (key `root-cert.pem`) in every namespace, as istiod keeps it:
//! injected proxies mount it to verify the CA and the control plane, and applications use it to
//! trust mesh certificates.
//!
//! Only the leader writes ([`super::leader`]). Namespaces come from the store (the Kubernetes source
//! watches them), so a new namespace gets its ConfigMap at the next push of the store; a periodic
//! resync repairs ConfigMaps that were edited or deleted. Writes are skipped when the content is
//! already right, so a resync of a correct cluster writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use sailplane_translator::api::Object;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::store::Store;
use crate::webhook::inject::IGNORED_NAMESPACES;

/// Name of the ConfigMap.
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Key holding the PEM root.
pub const ROOT_CERT_KEY: &str = "root-cert.pem";

/// Keeps the root-certificate ConfigMaps.
pub struct RootCertPublisher {
    client: Client,
    store: Arc<Store>,
    root_pem: String,
    leader: watch::Receiver<bool>,
    /// How often everything is re-checked while leading.
    pub resync: Duration,
}

impl RootCertPublisher {
    /// Publishes `root_pem` to the namespaces in `store` while `leader` is true.
    pub fn new(client: Client, store: Arc<Store>, root_pem: String, leader: watch::Receiver<bool>) -> Self {
        Self { client, store, root_pem, leader, resync: Duration::from_secs(60) }
    }

    fn namespaces(&self) -> Vec<String> {
        self.store
            .view()
            .objects
            .iter()
            .filter_map(|o| match &**o {
                Object::Namespace(ns) => {
                    let terminating = ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
                    ns.metadata.name.clone().filter(|_| !terminating)
                }
                _ => None,
            })
            .filter(|n| !IGNORED_NAMESPACES.contains(&n.as_str()))
            .collect()
    }

    /// Makes the ConfigMap right in `namespace`; returns whether it wrote.
    pub async fn ensure(&self, namespace: &str) -> Result<bool, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let mut data = BTreeMap::new();
        data.insert(ROOT_CERT_KEY.to_string(), self.root_pem.clone());
        match api.get_opt(ROOT_CERT_CONFIGMAP).await? {
            Some(cm) if cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)) == Some(&self.root_pem) => Ok(false),
            Some(mut cm) => {
                cm.data.get_or_insert_with(BTreeMap::new).insert(ROOT_CERT_KEY.to_string(), self.root_pem.clone());
                api.replace(ROOT_CERT_CONFIGMAP, &PostParams::default(), &cm).await?;
                Ok(true)
            }
            None => {
                let mut labels = BTreeMap::new();
                labels.insert("istio.io/config".to_string(), "true".to_string());
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(ROOT_CERT_CONFIGMAP.to_string()),
                        namespace: Some(namespace.to_string()),
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    },
                    data: Some(data),
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &cm).await?;
                Ok(true)
            }
        }
    }

    /// One pass over the namespaces not in `done` (all of them when `done` is empty); the ones now
    /// right are added to `done`. Returns how many ConfigMaps were written.
    pub async fn sync(&self, done: &mut BTreeSet<String>) -> usize {
        let current = self.namespaces();
        done.retain(|ns| current.contains(ns));
        let mut written = 0;
        let todo: Vec<String> = current.into_iter().filter(|ns| !done.contains(ns)).collect();
        for ns in todo {
            match self.ensure(&ns).await {
                Ok(wrote) => {
                    written += usize::from(wrote);
                    if wrote {
                        debug!(namespace = %ns, "root cert configmap written");
                    }
                    done.insert(ns);
                }
                Err(e) => warn!(namespace = %ns, error = %e, "cannot write the root cert configmap"),
            }
        }
        written
    }

    /// Runs until dropped. While leading: a full pass on gaining leadership and every `resync`
    /// (repairs edits and deletions), and a pass over new namespaces at every store change (so a
    /// busy store costs no API calls for namespaces already done).
    pub async fn run(mut self) {
        let mut changes = self.store.subscribe();
        let mut done = BTreeSet::new();
        loop {
            while !*self.leader.borrow_and_update() {
                done.clear();
                if self.leader.changed().await.is_err() {
                    return;
                }
            }
            let written = self.sync(&mut done).await;
            if written > 0 {
                info!(written, "root cert configmaps updated");
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(self.resync) => done.clear(),
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    done.clear();
                }
            }
        }
    }
}
