//! The Kubernetes source: kube-rs watchers on the API server, one store origin per object.
//!
//! Watched: Namespaces, Services, EndpointSlices, Pods, Secrets that carry TLS material (what a
//! Gateway `credentialName` can name), the mesh ConfigMap (`istio` in the system namespace) and the
//! Istio kinds Sailplane supports. Istio kinds are watched at one served version each (objects of a
//! CRD are the same objects at every served version, so watching two versions would see each object
//! twice): the group's preferred version when Sailplane reads it, else the first of
//! `v1`, `v1beta1`, `v1alpha3` that the API server serves.
//!
//! Each object is its own origin, `kube:<Kind>/<namespace>/<name>`, parsed with the same parser as
//! the file source, so the store, diagnostics and push path are shared. `metadata.managedFields` is
//! dropped first: it is large, changes on every write and means nothing to a proxy.
//!
//! Consistency: the store is told the source is synced only after every watcher finished its first
//! list. When a watch cannot resume (410 Gone after etcd compaction, or an API server restart that
//! lost the resource version) kube's watcher lists again; the objects of the new list are upserted as
//! they arrive, and at the end of the list the origins of that kind which were not listed are
//! removed. So a re-list never empties the store in between (no push of a half world) and never
//! keeps an object that disappeared while the watch was down.
//!
//! The other Kubernetes API clients (TokenReview, SubjectAccessReview, the Lease, the CA root Secret
//! and the root-cert ConfigMaps) are not sources; they live in [`crate::kube`].

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use sailplane_translator::Diagnostic;
use sailplane_translator::api::{ISTIO_NETWORKING_VERSIONS, ISTIO_SECURITY_VERSIONS, parse_object};
use sailplane_translator::model::MeshConfig;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::store::{ConfigEvent, Store};

/// Name under which the Kubernetes source reports its initial sync.
pub const SOURCE_NAME: &str = "kubernetes";

/// Name of Istio's mesh ConfigMap (key `mesh` holds the MeshConfig YAML).
pub const MESH_CONFIGMAP: &str = "istio";

/// Flags of the Kubernetes source (flattened into `sailplane discovery`).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Read Services, EndpointSlices, Pods, Namespaces, TLS Secrets, the mesh ConfigMap and the Istio
    /// kinds from the Kubernetes API server (in-cluster service account, or KUBECONFIG / ~/.kube/config).
    #[arg(long)]
    pub kubernetes: bool,
    /// Namespace Sailplane runs in (istiod's `POD_NAMESPACE`): where the mesh ConfigMap `istio` is read.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub istio_namespace: String,
    /// This replica's identity in leader election (istiod's `POD_NAME`). Default: the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

/// Errors of the Kubernetes source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// No usable client configuration (neither in-cluster nor a kubeconfig).
    #[error("kubernetes client configuration: {0}")]
    Config(#[source] kube::Error),
    /// The API server refused or failed a request needed to start.
    #[error("kubernetes api {what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client error.
        source: kube::Error,
    },
    /// The mesh ConfigMap holds invalid MeshConfig.
    #[error("mesh configmap {namespace}/{name}: {message}")]
    MeshConfig {
        /// Namespace of the ConfigMap.
        namespace: String,
        /// Name of the ConfigMap.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// An Istio kind as Sailplane serves and watches it; also the source of the generated CRDs.
#[derive(Debug, Clone, Copy)]
pub struct IstioKind {
    /// Kind (`VirtualService`).
    pub kind: &'static str,
    /// API group (`networking.istio.io`).
    pub group: &'static str,
    /// Plural resource name (`virtualservices`).
    pub plural: &'static str,
    /// Singular resource name (`virtualservice`).
    pub singular: &'static str,
    /// kubectl short names (`vs`).
    pub short_names: &'static [&'static str],
    /// kubectl categories.
    pub categories: &'static [&'static str],
    /// Supported `apiVersion`s (`group/version`), most preferred first.
    pub api_versions: &'static [&'static str],
}

impl IstioKind {
    /// Versions (without the group), most preferred first.
    pub fn versions(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.api_versions.iter().map(|av| av.rsplit('/').next().unwrap_or(av))
    }
}

const NETWORKING: &str = "networking.istio.io";
const SECURITY: &str = "security.istio.io";
const NET_CATEGORIES: &[&str] = &["istio-io", "networking-istio-io"];
const SEC_CATEGORIES: &[&str] = &["istio-io", "security-istio-io"];

/// The Istio kinds the translator reads (the [`sailplane_translator::api::Object`] variants).
pub const ISTIO_KINDS: [IstioKind; 7] = [
    IstioKind {
        kind: "DestinationRule",
        group: NETWORKING,
        plural: "destinationrules",
        singular: "destinationrule",
        short_names: &["dr"],
        categories: NET_CATEGORIES,
        api_versions: &ISTIO_NETWORKING_VERSIONS,
    },
    IstioKind {
        kind: "Gateway",
        group: NETWORKING,
        plural: "gateways",
        singular: "gateway",
        short_names: &["gw"],
        categories: NET_CATEGORIES,
        api_versions: &ISTIO_NETWORKING_VERSIONS,
    },
    IstioKind {
        kind: "ServiceEntry",
        group: NETWORKING,
        plural: "serviceentries",
        singular: "serviceentry",
        short_names: &["se"],
        categories: NET_CATEGORIES,
        api_versions: &ISTIO_NETWORKING_VERSIONS,
    },
    IstioKind {
        kind: "Sidecar",
        group: NETWORKING,
        plural: "sidecars",
        singular: "sidecar",
        short_names: &[],
        categories: NET_CATEGORIES,
        api_versions: &ISTIO_NETWORKING_VERSIONS,
    },
    IstioKind {
        kind: "VirtualService",
        group: NETWORKING,
        plural: "virtualservices",
        singular: "virtualservice",
        short_names: &["vs"],
        categories: NET_CATEGORIES,
        api_versions: &ISTIO_NETWORKING_VERSIONS,
    },
    IstioKind {
        kind: "WorkloadEntry",
        group: NETWORKING,
        plural: "workloadentries",
        singular: "workloadentry",
        short_names: &["we"],
        categories: NET_CATEGORIES,
        api_versions: &ISTIO_NETWORKING_VERSIONS,
    },
    IstioKind {
        kind: "PeerAuthentication",
        group: SECURITY,
        plural: "peerauthentications",
        singular: "peerauthentication",
        short_names: &["pa"],
        categories: SEC_CATEGORIES,
        api_versions: &ISTIO_SECURITY_VERSIONS,
    },
];

/// Which objects of a kind are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    All,
    /// Secrets that can serve as TLS credentials.
    TlsSecrets,
}

/// One watch: a resource at one version, optionally narrowed to a namespace and a field selector.
#[derive(Debug, Clone)]
struct Watch {
    resource: ApiResource,
    namespace: Option<String>,
    field_selector: Option<String>,
    keep: Keep,
}

fn core(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version,
        kind: kind.to_string(),
        plural: plural.to_string(),
    }
}

/// Keys of a Secret that make it TLS material for a gateway (`credentialName`): the
/// `kubernetes.io/tls` keys and Istio's generic-Secret keys.
const TLS_SECRET_KEYS: [&str; 6] = ["tls.crt", "tls.key", "ca.crt", "cert", "key", "cacert"];

/// Whether a Secret is TLS material. Service-account tokens, Helm release records and the like are
/// dropped: they are most Secrets of a cluster, and the proxies never need them.
fn is_tls_secret(obj: &Value) -> bool {
    if obj.get("type").and_then(Value::as_str) == Some("kubernetes.io/tls") {
        return true;
    }
    let has_key = |field: &str| {
        obj.get(field).and_then(Value::as_object).is_some_and(|m| TLS_SECRET_KEYS.iter().any(|k| m.contains_key(*k)))
    };
    let opaque = matches!(obj.get("type").and_then(Value::as_str), None | Some("Opaque") | Some(""));
    opaque && (has_key("data") || has_key("stringData"))
}

/// The origin id of one object.
pub fn origin_of(kind: &str, namespace: &str, name: &str) -> String {
    format!("kube:{kind}/{namespace}/{name}")
}

/// A client from the environment: in-cluster service account, else KUBECONFIG / `~/.kube/config`.
pub async fn client_from_env() -> Result<Client, KubeSourceError> {
    Client::try_default().await.map_err(KubeSourceError::Config)
}

/// Reads the MeshConfig from the ConfigMap `name` in `namespace` (key `mesh`). `Ok(None)` when the
/// ConfigMap does not exist (Istio's defaults apply then), an error when it cannot be read or holds
/// invalid MeshConfig. Also returns the raw `mesh` text, to notice later edits.
pub async fn read_mesh_config(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<(MeshConfig, String)>, KubeSourceError> {
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = api
        .get_opt(name)
        .await
        .map_err(|source| KubeSourceError::Api { what: format!("get configmap {namespace}/{name}"), source })?;
    let Some(cm) = cm else { return Ok(None) };
    let text = cm.data.as_ref().and_then(|d| d.get("mesh")).cloned().unwrap_or_default();
    let mesh = parse_mesh_text(&text).map_err(|message| KubeSourceError::MeshConfig {
        namespace: namespace.to_string(),
        name: name.to_string(),
        message,
    })?;
    Ok(Some((mesh, text)))
}

fn parse_mesh_text(text: &str) -> Result<MeshConfig, String> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("data.mesh: invalid yaml: {e}"))?;
    MeshConfig::from_yaml_value(&value).map_err(|d| d.to_string())
}

/// Options of the Kubernetes source.
#[derive(Debug, Clone)]
pub struct KubeSourceOptions {
    /// Namespace of the mesh ConfigMap.
    pub istio_namespace: String,
    /// The `mesh` text the running config was built from, if any; a different text later is
    /// reported (the mesh config is read at start).
    pub initial_mesh: Option<String>,
}

/// Watches the API server and feeds the store.
pub struct KubeSource {
    client: Client,
    store: Arc<Store>,
    options: KubeSourceOptions,
}

impl KubeSource {
    /// A source reading through `client` into `store`.
    pub fn new(client: Client, store: Arc<Store>, options: KubeSourceOptions) -> Self {
        Self { client, store, options }
    }

    /// Resolves which version of each Istio kind to watch. Kinds whose group or version the API
    /// server does not serve (CRDs not installed) are skipped with a warning.
    async fn istio_watches(&self) -> Result<Vec<Watch>, KubeSourceError> {
        let mut out = Vec::new();
        for group_name in [NETWORKING, SECURITY] {
            let group = match kube::discovery::group(&self.client, group_name).await {
                Ok(g) => g,
                Err(kube::Error::Discovery(e)) => {
                    warn!(group = group_name, error = %e, "istio api group not served (CRDs not installed?); its kinds are not watched");
                    continue;
                }
                Err(source) => {
                    return Err(KubeSourceError::Api { what: format!("discovery of {group_name}"), source });
                }
            };
            for ik in ISTIO_KINDS.iter().filter(|k| k.group == group_name) {
                let served_with_kind = |v: &str| {
                    group.versioned_resources(v).into_iter().find(|(ar, _)| ar.kind == ik.kind).map(|(ar, _)| ar)
                };
                let preferred =
                    group.preferred_version().filter(|p| ik.versions().any(|v| v == *p)).and_then(&served_with_kind);
                let chosen = preferred.or_else(|| ik.versions().find_map(&served_with_kind));
                match chosen {
                    Some(resource) => {
                        debug!(kind = ik.kind, api_version = %resource.api_version, "watching istio kind");
                        out.push(Watch { resource, namespace: None, field_selector: None, keep: Keep::All });
                    }
                    None => warn!(
                        kind = ik.kind,
                        group = group_name,
                        "no supported version of this kind is served; not watched"
                    ),
                }
            }
        }
        Ok(out)
    }

    fn core_watches(&self) -> Vec<Watch> {
        let all = |resource: ApiResource, keep: Keep| Watch { resource, namespace: None, field_selector: None, keep };
        vec![
            all(core("", "v1", "Namespace", "namespaces"), Keep::All),
            all(core("", "v1", "Service", "services"), Keep::All),
            all(core("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"), Keep::All),
            all(core("", "v1", "Pod", "pods"), Keep::All),
            all(core("", "v1", "Secret", "secrets"), Keep::TlsSecrets),
            Watch {
                resource: core("", "v1", "ConfigMap", "configmaps"),
                namespace: Some(self.options.istio_namespace.clone()),
                field_selector: Some(format!("metadata.name={MESH_CONFIGMAP}")),
                keep: Keep::All,
            },
        ]
    }

    /// Starts every watcher, reports the initial sync once all of them listed, then follows changes
    /// until dropped. Errors only when discovery fails at start; watch errors are retried with
    /// backoff forever.
    pub async fn run(self) -> Result<(), KubeSourceError> {
        let mut watches = self.core_watches();
        watches.extend(self.istio_watches().await?);
        let (synced_tx, mut synced_rx) = mpsc::unbounded_channel::<String>();
        let mut tasks = tokio::task::JoinSet::new();
        for w in watches.iter().cloned() {
            let follower = Follower {
                client: self.client.clone(),
                store: Arc::clone(&self.store),
                watch: w,
                synced: Some(synced_tx.clone()),
                initial_mesh: self.options.initial_mesh.clone(),
            };
            tasks.spawn(follower.run());
        }
        drop(synced_tx);
        let mut pending: BTreeSet<String> = watches.iter().map(|w| w.resource.kind.clone()).collect();
        while !pending.is_empty() {
            match synced_rx.recv().await {
                Some(kind) => {
                    pending.remove(&kind);
                }
                None => break,
            }
        }
        self.store.apply(ConfigEvent::Synced { source: SOURCE_NAME.into() });
        info!(kinds = watches.len(), "kubernetes source synced");
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// The watcher of one kind and what it has put into the store.
struct Follower {
    client: Client,
    store: Arc<Store>,
    watch: Watch,
    synced: Option<mpsc::UnboundedSender<String>>,
    initial_mesh: Option<String>,
}

impl Follower {
    async fn run(mut self) {
        let ar = self.watch.resource.clone();
        let api: Api<DynamicObject> = match &self.watch.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        let mut config = watcher::Config::default();
        if let Some(fs) = &self.watch.field_selector {
            config = config.fields(fs);
        }
        let stream = watcher::watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        // Origins of this kind currently in the store.
        let mut known: BTreeSet<String> = BTreeSet::new();
        // Origins seen in the list in progress, if a (re-)list is running.
        let mut listing: Option<BTreeSet<String>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => {
                    debug!(kind = %ar.kind, "listing");
                    listing = Some(BTreeSet::new());
                }
                Ok(Event::InitApply(obj)) => {
                    let (origin, kept) = self.apply(obj);
                    if kept {
                        known.insert(origin.clone());
                        if let Some(l) = listing.as_mut() {
                            l.insert(origin);
                        }
                    } else {
                        known.remove(&origin);
                    }
                }
                Ok(Event::InitDone) => {
                    let listed = listing.take().unwrap_or_default();
                    let gone: Vec<String> = known.difference(&listed).cloned().collect();
                    for origin in gone {
                        debug!(kind = %ar.kind, %origin, "not in the new list; removed");
                        self.store.apply(ConfigEvent::Remove { origin });
                    }
                    info!(kind = %ar.kind, api_version = %ar.api_version, objects = listed.len(), "listed");
                    known = listed;
                    if let Some(tx) = self.synced.take() {
                        let _ = tx.send(ar.kind.clone());
                    }
                }
                Ok(Event::Apply(obj)) => {
                    let (origin, kept) = self.apply(obj);
                    if kept {
                        known.insert(origin);
                    } else {
                        known.remove(&origin);
                    }
                }
                Ok(Event::Delete(obj)) => {
                    let origin = self.origin(&obj);
                    known.remove(&origin);
                    debug!(kind = %ar.kind, %origin, "deleted");
                    self.store.apply(ConfigEvent::Remove { origin });
                }
                Err(e) => {
                    // The watcher recovers by itself (resume, or re-list after 410); the backoff
                    // keeps a down API server from being hammered.
                    warn!(kind = %ar.kind, error = %e, "watch error; retrying");
                }
            }
        }
    }

    fn origin(&self, obj: &DynamicObject) -> String {
        let ns = obj.metadata.namespace.as_deref().unwrap_or_default();
        let name = obj.metadata.name.as_deref().unwrap_or_default();
        origin_of(&self.watch.resource.kind, ns, name)
    }

    /// Puts one object into the store; returns its origin and whether it was kept (when the kind's
    /// filter drops it, any earlier version of it is removed).
    fn apply(&self, obj: DynamicObject) -> (String, bool) {
        let origin = self.origin(&obj);
        let value = match to_document(obj, &self.watch.resource) {
            Ok(v) => v,
            Err(e) => {
                let d = Diagnostic::error(origin.clone(), "", format!("cannot encode object: {e}"))
                    .with_source(origin.clone());
                self.store.apply(ConfigEvent::Upsert { origin: origin.clone(), objects: vec![], diagnostics: vec![d] });
                return (origin, true);
            }
        };
        if self.watch.keep == Keep::TlsSecrets && !is_tls_secret(&value) {
            self.store.apply(ConfigEvent::Remove { origin: origin.clone() });
            return (origin, false);
        }
        if self.watch.resource.kind == "ConfigMap" {
            self.check_mesh(&value);
        }
        let event = match parse_object(value) {
            Ok(object) => ConfigEvent::Upsert { origin: origin.clone(), objects: vec![object], diagnostics: vec![] },
            Err(d) => {
                warn!(diagnostic = %d, %origin, "invalid object");
                ConfigEvent::Upsert {
                    origin: origin.clone(),
                    objects: vec![],
                    diagnostics: vec![d.with_source(origin.clone())],
                }
            }
        };
        self.store.apply(event);
        (origin, true)
    }

    /// The mesh config is read once at start; say so when the ConfigMap changes afterwards.
    fn check_mesh(&self, cm: &Value) {
        let text = cm.pointer("/data/mesh").and_then(Value::as_str).unwrap_or_default();
        let initial = self.initial_mesh.as_deref().unwrap_or_default();
        if text != initial {
            match parse_mesh_text(text) {
                Ok(_) => warn!(
                    configmap = MESH_CONFIGMAP,
                    "mesh config changed; restart sailplane to apply it (it is read at start)"
                ),
                Err(e) => warn!(configmap = MESH_CONFIGMAP, error = %e, "mesh config changed and is invalid"),
            }
        }
    }
}

/// The object as a document for [`parse_object`]: `apiVersion`/`kind` set (list items carry none),
/// `managedFields` dropped.
fn to_document(obj: DynamicObject, resource: &ApiResource) -> Result<Value, serde_json::Error> {
    let mut value = serde_json::to_value(obj)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(resource.api_version.clone()));
        map.insert("kind".into(), Value::String(resource.kind.clone()));
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn tls_secrets_are_kept_and_others_dropped() {
        assert!(is_tls_secret(&json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}})));
        assert!(is_tls_secret(&json!({"type": "Opaque", "data": {"cert": "", "key": "", "cacert": ""}})));
        assert!(is_tls_secret(&json!({"data": {"ca.crt": ""}})));
        assert!(!is_tls_secret(&json!({"type": "Opaque", "data": {"password": ""}})));
        assert!(!is_tls_secret(&json!({"type": "kubernetes.io/service-account-token", "data": {"ca.crt": ""}})));
        assert!(!is_tls_secret(&json!({"type": "helm.sh/release.v1", "data": {"release": ""}})));
    }

    #[test]
    fn documents_get_their_type_and_lose_managed_fields() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "n", "managedFields": [{"manager": "kubectl"}]},
            "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        let doc = to_document(obj, &core("", "v1", "Service", "services")).unwrap();
        assert_eq!(doc["apiVersion"], "v1");
        assert_eq!(doc["kind"], "Service");
        assert!(doc["metadata"].get("managedFields").is_none());
        assert_eq!(doc["spec"]["ports"][0]["port"], 80);
        assert!(parse_object(doc).is_ok());
    }

    #[test]
    fn istio_kind_versions_strip_the_group() {
        let vs = ISTIO_KINDS.iter().find(|k| k.kind == "VirtualService").unwrap();
        assert_eq!(vs.versions().collect::<Vec<_>>(), ["v1", "v1beta1", "v1alpha3"]);
        let pa = ISTIO_KINDS.iter().find(|k| k.kind == "PeerAuthentication").unwrap();
        assert_eq!(pa.versions().collect::<Vec<_>>(), ["v1", "v1beta1"]);
    }
}
