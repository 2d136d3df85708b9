//! SDS over ADS: `credentialName` secrets (`kubernetes://[<namespace>/]<name>` and their `-cacert`
//! halves), built from Kubernetes Secrets in the store and served only to proxies allowed to read them.
//!
//! Unlike every other type, secrets are not part of a profile's [`super::Snapshot`]: what a proxy may
//! receive depends on who it *is* (its verified certificate identity), not on what its node says, so
//! two proxies with equal profiles may get different answers. Each stream therefore resolves the
//! names it subscribed to against the mesh-wide [`SecretIndex`] and keeps its own small
//! `ResourceSet` of the secrets it may see ([`StreamSecrets`]); the protocol state machines treat
//! that set exactly like a snapshot's (SotW by requested names, Delta by difference).
//!
//! Rules (istiod's `SecretGen`):
//! - `kubernetes://NAME` names the Secret `NAME` in the namespace of the proxy's verified identity;
//!   `kubernetes://NS/NAME` names it explicitly.
//! - `...-cacert` is the CA half: `ca.crt` / `cacert` of a Secret literally named `NAME-cacert`, else of
//!   `NAME`. The plain name is the certificate and key only (`tls.crt` + `tls.key`, or generic
//!   `cert` + `key`).
//! - A proxy without a verified identity (plaintext 15010) gets no secret; one with an identity gets a
//!   secret only if its identity may read Secrets in that namespace ([`SecretAuthorizer`]: same
//!   namespace in file mode; same namespace and a SubjectAccessReview in Kubernetes). Refused and
//!   missing secrets are simply left out of the response, so Envoy keeps waiting for them (its
//!   listener stays warming), as with istiod; the refusal is logged once per stream and name.
//! - Private keys never reach `/debug/config_dump`: the status registry records a redacted copy.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use sailplane_translator::api::Object;
use sailplane_translator::{ResourceSet, TypeUrl};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::identity::Identity;
use crate::identity::{AuthError, Caller};

/// The future of [`SecretAccess::may_read_secrets`].
pub type AccessFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, AuthError>> + Send + 'a>>;

/// Whether a caller may be sent the Secrets of a namespace.
pub trait SecretAccess: Send + Sync + std::fmt::Debug + 'static {
    /// `Ok(true)` when `caller` may read Secrets in `namespace`.
    fn may_read_secrets<'a>(&'a self, caller: &'a Caller, namespace: &'a str) -> AccessFuture<'a>;
}

/// The names the translator gives `credentialName` secrets (`kubernetes://`, `-cacert`): one source
/// for the names Envoy will ask for.
pub use sailplane_translator::envoy::tls::{CACERT_SUFFIX, CREDENTIAL_PREFIX};

/// How long one authorization decision (a SubjectAccessReview) may take before the secret is
/// treated as refused for now (retried on the next change).
const AUTHORIZE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS material of one Kubernetes Secret, as istiod reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credential {
    /// Certificate chain (PEM) and private key (PEM), when the Secret has both.
    pub cert_and_key: Option<(Vec<u8>, Vec<u8>)>,
    /// CA bundle (PEM), when the Secret has one.
    pub ca: Option<Vec<u8>>,
}

impl Credential {
    /// Reads a Secret's data: `cert`/`key`/`cacert` (generic) first, then `tls.crt`/`tls.key`/`ca.crt`
    /// (type `kubernetes.io/tls`), as istiod does. `stringData` counts too (file mode: the API
    /// server would have merged it into `data`).
    pub fn from_secret(secret: &k8s_openapi::api::core::v1::Secret) -> Credential {
        let mut data: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
        for (k, v) in secret.data.iter().flatten() {
            data.insert(k, v.0.clone());
        }
        for (k, v) in secret.string_data.iter().flatten() {
            data.insert(k, v.as_bytes().to_vec());
        }
        let present = |k: &str| data.get(k).filter(|v| !v.is_empty()).cloned();
        let pair = |c: &str, k: &str| Some((present(c)?, present(k)?));
        Credential {
            cert_and_key: pair("cert", "key").or_else(|| pair("tls.crt", "tls.key")),
            ca: present("cacert").or_else(|| present("ca.crt")),
        }
    }
}

/// Every Secret's TLS material in the mesh, by namespace and name. Rebuilt by the push stage on
/// each change and shared by all streams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretIndex {
    by_key: BTreeMap<(String, String), Arc<Credential>>,
}

impl SecretIndex {
    /// Indexes the Secrets among `objects` (other kinds are ignored).
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Object>) -> SecretIndex {
        let by_key = objects
            .into_iter()
            .filter_map(|o| match o {
                Object::Secret(s) => {
                    let ns = s.metadata.namespace.clone().unwrap_or_else(|| "default".to_string());
                    let name = s.metadata.name.clone()?;
                    // Secrets without TLS material (tokens, passwords) can never be served.
                    let c = Credential::from_secret(s);
                    (c.cert_and_key.is_some() || c.ca.is_some()).then(|| ((ns, name), Arc::new(c)))
                }
                _ => None,
            })
            .collect();
        SecretIndex { by_key }
    }

    /// Number of Secrets indexed.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no Secret is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// A Secret's material.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<Credential>> {
        self.by_key.get(&(namespace.to_string(), name.to_string()))
    }

    /// Resolves a parsed SDS name to the Envoy `Secret` content, or why not.
    fn lookup(&self, r: &SecretRef) -> Result<Material, String> {
        if r.ca_only {
            // istiod looks for a Secret literally named `<name>-cacert` first, then `<name>`.
            let own = self.get(&r.namespace, &format!("{}{CACERT_SUFFIX}", r.name)).and_then(|c| c.ca.clone());
            let ca = match own {
                Some(ca) => ca,
                None => {
                    let base = self
                        .get(&r.namespace, &r.name)
                        .ok_or_else(|| format!("secret {}/{} not found", r.namespace, r.name))?;
                    base.ca.clone().ok_or_else(|| {
                        format!("secret {}/{} has no CA certificate (keys cacert or ca.crt)", r.namespace, r.name)
                    })?
                }
            };
            return Ok(Material::Ca(ca));
        }
        let c =
            self.get(&r.namespace, &r.name).ok_or_else(|| format!("secret {}/{} not found", r.namespace, r.name))?;
        let (cert, key) = c.cert_and_key.clone().ok_or_else(|| {
            format!(
                "secret {}/{} has no certificate and key (keys cert and key, or tls.crt and tls.key)",
                r.namespace, r.name
            )
        })?;
        Ok(Material::CertKey(cert, key))
    }
}

enum Material {
    CertKey(Vec<u8>, Vec<u8>),
    Ca(Vec<u8>),
}

/// A parsed `kubernetes://` SDS resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name, without `-cacert`.
    pub name: String,
    /// Whether the CA half was asked for (`-cacert`).
    pub ca_only: bool,
}

/// Parses `kubernetes://NAME`, `kubernetes://NS/NAME` and their `-cacert` forms; `NAME` alone is in
/// `default_namespace`. `None` for names Sailplane's control plane does not serve (`default`,
/// `ROOTCA`, `file-cert:...` come from the node agent).
pub fn parse_name(resource: &str, default_namespace: &str) -> Option<SecretRef> {
    let rest = resource.strip_prefix(CREDENTIAL_PREFIX)?;
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (default_namespace, rest),
    };
    let (name, ca_only) = match name.strip_suffix(CACERT_SUFFIX) {
        Some(base) => (base, true),
        None => (name, false),
    };
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    Some(SecretRef { namespace: namespace.to_string(), name: name.to_string(), ca_only })
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource { specifier: Some(Specifier::InlineBytes(bytes)), ..Default::default() })
}

/// The Envoy `Secret` named `name`, and its copy with the private key redacted.
fn envoy_secret(name: &str, material: Material) -> (Secret, Secret) {
    match material {
        Material::CertKey(cert, key) => {
            let tls = |key: Option<DataSource>| Secret {
                name: name.to_string(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline(cert.clone()),
                    private_key: key,
                    ..Default::default()
                })),
            };
            let redacted =
                DataSource { specifier: Some(Specifier::InlineString("[redacted]".into())), ..Default::default() };
            (tls(inline(key)), tls(Some(redacted)))
        }
        Material::Ca(ca) => {
            let s = Secret {
                name: name.to_string(),
                r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: inline(ca),
                    ..Default::default()
                })),
            };
            (s.clone(), s)
        }
    }
}

/// The future of [`SecretAuthorizer::may_read`]: `Ok(true)` allowed, `Ok(false)` refused, `Err` the
/// decision could not be made (treated as refused for now).
pub type AuthorizeFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, String>> + Send + 'a>>;

/// Whether a verified proxy identity may be sent the Secrets of a namespace.
pub trait SecretAuthorizer: Send + Sync + Debug + 'static {
    /// Short name for logs (`same-namespace`, `kubernetes`).
    fn name(&self) -> &'static str;
    /// Decides for `identity` and the Secrets of `namespace`.
    fn may_read<'a>(&'a self, identity: &'a Identity, namespace: &'a str) -> AuthorizeFuture<'a>;
}

/// File mode: a proxy may read the Secrets of its own namespace only.
#[derive(Debug, Clone, Copy, Default)]
pub struct SameNamespace;

impl SecretAuthorizer for SameNamespace {
    fn name(&self) -> &'static str {
        "same-namespace"
    }

    fn may_read<'a>(&'a self, identity: &'a Identity, namespace: &'a str) -> AuthorizeFuture<'a> {
        Box::pin(std::future::ready(Ok(identity.namespace == namespace)))
    }
}

/// Kubernetes mode (istiod's rule): the Secret must be in the proxy's own namespace *and* the
/// proxy's service account must be allowed to `list secrets` there (SubjectAccessReview).
#[derive(Debug, Clone)]
pub struct KubernetesAccess {
    access: Arc<dyn SecretAccess>,
}

impl KubernetesAccess {
    /// Asks `access` (normally a [`crate::kubernetes::review::SubjectAccessReviewer`]).
    pub fn new(access: Arc<dyn SecretAccess>) -> Self {
        KubernetesAccess { access }
    }
}

impl SecretAuthorizer for KubernetesAccess {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn may_read<'a>(&'a self, identity: &'a Identity, namespace: &'a str) -> AuthorizeFuture<'a> {
        Box::pin(async move {
            if identity.namespace != namespace {
                return Ok(false);
            }
            let caller =
                Caller { namespace: identity.namespace.clone(), service_account: identity.service_account.clone() };
            self.access.may_read_secrets(&caller, namespace).await.map_err(|e| e.to_string())
        })
    }
}

/// What a server needs to serve SDS: the mesh's secrets and who may read them.
#[derive(Debug, Clone)]
pub struct SdsConfig {
    /// The current index; changes wake every stream subscribed to secrets.
    pub secrets: watch::Receiver<Arc<SecretIndex>>,
    /// The authorization rule.
    pub authorizer: Arc<dyn SecretAuthorizer>,
}

/// One stream's view of the secrets: the names it subscribed to, resolved and authorized.
pub(crate) struct StreamSecrets {
    proxy: String,
    identity: Option<Identity>,
    config: Option<SdsConfig>,
    index: Arc<SecretIndex>,
    /// The names `set` was built for, and whether it must be rebuilt anyway.
    built_for: Option<Arc<BTreeSet<String>>>,
    dirty: bool,
    /// Authorization decisions by namespace, until the index changes.
    decisions: HashMap<String, bool>,
    /// Names already warned about on this stream (one warning each).
    warned: HashSet<String>,
    /// The secrets this stream may receive, by requested name.
    pub(crate) set: Arc<ResourceSet>,
    /// The same with private keys redacted (for the status registry and config dumps).
    pub(crate) redacted: Arc<ResourceSet>,
}

impl StreamSecrets {
    /// The view of a stream of `proxy`, whose verified identity is `identity` (`None`: plaintext).
    pub(crate) fn new(proxy: &str, identity: Option<Identity>, config: Option<SdsConfig>) -> StreamSecrets {
        let index = config.as_ref().map(|c| Arc::clone(&c.secrets.borrow())).unwrap_or_default();
        StreamSecrets {
            proxy: proxy.to_string(),
            identity,
            config,
            index,
            built_for: None,
            dirty: true,
            decisions: HashMap::new(),
            warned: HashSet::new(),
            set: Arc::new(ResourceSet::new()),
            redacted: Arc::new(ResourceSet::new()),
        }
    }

    /// Completes when the mesh's secrets change (never, without SDS).
    pub(crate) async fn index_changed(&mut self) {
        let Some(config) = self.config.as_mut() else { return std::future::pending().await };
        if config.secrets.changed().await.is_err() {
            // The push stage is gone; the server shuts down through its own signal.
            return std::future::pending().await;
        }
        self.index = Arc::clone(&config.secrets.borrow_and_update());
        self.decisions.clear();
        self.dirty = true;
    }

    /// Brings `set` up to date for the subscribed `names`; returns whether its content changed.
    pub(crate) async fn refresh(&mut self, names: &Arc<BTreeSet<String>>) -> bool {
        let same_names = self.built_for.as_ref().is_some_and(|b| Arc::ptr_eq(b, names) || **b == **names);
        if same_names && !self.dirty {
            return false;
        }
        self.dirty = false;
        self.built_for = Some(Arc::clone(names));
        let mut set = ResourceSet::new();
        let mut redacted = ResourceSet::new();
        for name in names.iter() {
            if let Some((secret, masked)) = self.resolve(name).await {
                set.add(TypeUrl::Secret, name.clone(), &secret);
                redacted.add(TypeUrl::Secret, name.clone(), &masked);
            }
        }
        let changed = !same_secrets(&self.set, &set);
        if changed {
            self.set = Arc::new(set);
            self.redacted = Arc::new(redacted);
        }
        changed
    }

    fn warn_once(&mut self, name: &str, f: impl FnOnce(&str, &str)) {
        if self.warned.insert(name.to_string()) {
            f(&self.proxy, name);
        }
    }

    /// The secret `name` if this stream may have it.
    async fn resolve(&mut self, name: &str) -> Option<(Secret, Secret)> {
        let Some(identity) = self.identity.clone() else {
            if name.starts_with(CREDENTIAL_PREFIX) {
                self.warn_once(name, |proxy, secret| {
                    warn!(
                        proxy,
                        secret,
                        identity = "none",
                        "secret not served: the proxy is not authenticated (SDS needs xDS over mTLS on the secure port)"
                    );
                });
            }
            return None;
        };
        let Some(r) = parse_name(name, &identity.namespace) else {
            debug!(proxy = %self.proxy, secret = name, "secret name not served by the control plane");
            return None;
        };
        let config = self.config.clone()?;
        let allowed = match self.decisions.get(&r.namespace) {
            Some(a) => *a,
            None => {
                let decision =
                    tokio::time::timeout(AUTHORIZE_TIMEOUT, config.authorizer.may_read(&identity, &r.namespace)).await;
                match decision {
                    Ok(Ok(a)) => {
                        self.decisions.insert(r.namespace.clone(), a);
                        a
                    }
                    Ok(Err(reason)) => {
                        warn!(proxy = %self.proxy, identity = %identity.spiffe_uri(), secret = name, %reason, "secret not served: authorization unavailable");
                        return None;
                    }
                    Err(_) => {
                        warn!(proxy = %self.proxy, identity = %identity.spiffe_uri(), secret = name, "secret not served: authorization timed out");
                        return None;
                    }
                }
            }
        };
        let spiffe = identity.spiffe_uri();
        if !allowed {
            let (authorizer, namespace) = (config.authorizer.name(), r.namespace.clone());
            self.warn_once(name, |proxy, secret| {
                warn!(
                    proxy, identity = %spiffe, secret, namespace = %namespace, authorizer,
                    "secret not served: the proxy's identity may not read Secrets in this namespace"
                );
            });
            return None;
        }
        match self.index.lookup(&r) {
            Ok(material) => {
                self.warned.remove(name);
                Some(envoy_secret(name, material))
            }
            Err(reason) => {
                self.warn_once(name, |proxy, secret| {
                    warn!(proxy, identity = %spiffe, secret, %reason, "secret not served");
                });
                None
            }
        }
    }
}

/// Whether two sets hold the same secrets (names and content hashes).
fn same_secrets(a: &ResourceSet, b: &ResourceSet) -> bool {
    let (x, y) = (a.of(TypeUrl::Secret), b.of(TypeUrl::Secret));
    x.len() == y.len() && x.iter().zip(y.iter()).all(|((n1, r1), (n2, r2))| n1 == n2 && r1.version == r2.version)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sailplane_translator::api::parse_object;
    use serde_json::json;

    fn secret(ns: &str, name: &str, data: serde_json::Value) -> Object {
        parse_object(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "stringData": data}))
            .unwrap()
    }

    fn id(ns: &str) -> Identity {
        Identity { trust_domain: "cluster.local".into(), namespace: ns.into(), service_account: "sa".into() }
    }

    #[test]
    fn resource_names() {
        let r = |ns: &str, name: &str, ca| Some(SecretRef { namespace: ns.into(), name: name.into(), ca_only: ca });
        assert_eq!(parse_name("kubernetes://cred", "a"), r("a", "cred", false));
        assert_eq!(parse_name("kubernetes://cred-cacert", "a"), r("a", "cred", true));
        assert_eq!(parse_name("kubernetes://b/cred", "a"), r("b", "cred", false));
        assert_eq!(parse_name("kubernetes://b/cred-cacert", "a"), r("b", "cred", true));
        assert_eq!(parse_name("default", "a"), None);
        assert_eq!(parse_name("file-root:/x", "a"), None);
        assert_eq!(parse_name("kubernetes://", "a"), None);
        assert_eq!(parse_name("kubernetes://a/b/c", "a"), None);
    }

    #[test]
    fn credentials_of_both_secret_layouts() {
        let index = SecretIndex::from_objects(&[
            secret("a", "tls", json!({"tls.crt": "C", "tls.key": "K", "ca.crt": "CA"})),
            secret("a", "generic", json!({"cert": "C2", "key": "K2", "cacert": "CA2"})),
            secret("a", "ca-only", json!({"ca.crt": "CA3"})),
            secret("a", "split", json!({"tls.crt": "C4", "tls.key": "K4"})),
            secret("a", "split-cacert", json!({"cacert": "CA4"})),
        ]);
        let get = |name: &str| match index.lookup(&parse_name(name, "a").unwrap()) {
            Ok(Material::CertKey(c, k)) => {
                format!("{}+{}", String::from_utf8(c).unwrap(), String::from_utf8(k).unwrap())
            }
            Ok(Material::Ca(ca)) => String::from_utf8(ca).unwrap(),
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(get("kubernetes://tls"), "C+K");
        assert_eq!(get("kubernetes://tls-cacert"), "CA");
        assert_eq!(get("kubernetes://generic"), "C2+K2");
        assert_eq!(get("kubernetes://generic-cacert"), "CA2");
        assert_eq!(get("kubernetes://ca-only-cacert"), "CA3");
        assert!(get("kubernetes://ca-only").contains("has no certificate and key"));
        assert_eq!(get("kubernetes://split-cacert"), "CA4", "a Secret named <name>-cacert wins");
        assert!(get("kubernetes://missing").contains("a/missing not found"));
        assert!(get("kubernetes://b/tls").contains("b/tls not found"));
    }

    fn config(index: SecretIndex) -> (watch::Sender<Arc<SecretIndex>>, SdsConfig) {
        let (tx, rx) = watch::channel(Arc::new(index));
        (tx, SdsConfig { secrets: rx, authorizer: Arc::new(SameNamespace) })
    }

    fn names(n: &[&str]) -> Arc<BTreeSet<String>> {
        Arc::new(n.iter().map(|s| s.to_string()).collect())
    }

    #[tokio::test]
    async fn streams_see_only_authorized_secrets() {
        let index = SecretIndex::from_objects(&[
            secret("a", "cred", json!({"tls.crt": "C", "tls.key": "PRIVATE-KEY-OF-A", "ca.crt": "CA"})),
            secret("b", "cred", json!({"tls.crt": "C", "tls.key": "K"})),
        ]);
        let (tx, cfg) = config(index);
        let wanted = names(&["kubernetes://cred", "kubernetes://cred-cacert", "kubernetes://b/cred", "default"]);

        let mut a = StreamSecrets::new("p", Some(id("a")), Some(cfg.clone()));
        assert!(a.refresh(&wanted).await);
        let got: Vec<&String> = a.set.of(TypeUrl::Secret).keys().collect();
        assert_eq!(got, ["kubernetes://cred", "kubernetes://cred-cacert"]);
        assert!(contains(&a.set.get(TypeUrl::Secret, "kubernetes://cred").unwrap().any, b"PRIVATE-KEY-OF-A"));
        let masked = a.redacted.get(TypeUrl::Secret, "kubernetes://cred").unwrap();
        assert!(
            !contains(&masked.any, b"PRIVATE-KEY-OF-A") && contains(&masked.any, b"[redacted]"),
            "private key redacted"
        );
        assert!(!a.refresh(&wanted).await, "nothing new");

        let mut b = StreamSecrets::new("p", Some(id("b")), Some(cfg.clone()));
        b.refresh(&wanted).await;
        let got: Vec<&String> = b.set.of(TypeUrl::Secret).keys().collect();
        assert_eq!(
            got,
            ["kubernetes://b/cred", "kubernetes://cred"],
            "b's own secret (by both names); it has no CA half"
        );

        let mut plain = StreamSecrets::new("p", None, Some(cfg));
        plain.refresh(&wanted).await;
        assert!(plain.set.is_empty(), "no identity, no secrets");

        // An edit reaches the stream.
        tx.send_replace(Arc::new(SecretIndex::from_objects(&[secret(
            "a",
            "cred",
            json!({"tls.crt": "C2", "tls.key": "K"}),
        )])));
        a.index_changed().await;
        assert!(a.refresh(&wanted).await);
        assert_eq!(a.set.of(TypeUrl::Secret).len(), 1, "the CA half is gone");
    }

    /// A SubjectAccessReview stand-in: allows exactly the listed (service account, namespace) pairs
    /// and counts questions.
    #[derive(Debug)]
    struct Reviews(Vec<(&'static str, &'static str)>, std::sync::atomic::AtomicUsize);

    impl SecretAccess for Reviews {
        fn may_read_secrets<'a>(&'a self, caller: &'a Caller, namespace: &'a str) -> AccessFuture<'a> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ok = self.0.iter().any(|(sa, ns)| *sa == caller.service_account && *ns == namespace);
            Box::pin(std::future::ready(Ok(ok)))
        }
    }

    #[tokio::test]
    async fn kubernetes_mode_needs_the_same_namespace_and_the_review() {
        let reviews = Arc::new(Reviews(vec![("sa", "a"), ("sa", "b")], 0.into()));
        let k = KubernetesAccess::new(Arc::clone(&reviews) as Arc<dyn SecretAccess>);
        assert!(k.may_read(&id("a"), "a").await.unwrap());
        assert!(!k.may_read(&id("a"), "b").await.unwrap(), "another namespace, even if RBAC allowed it");
        assert_eq!(reviews.1.load(std::sync::atomic::Ordering::SeqCst), 1, "no review for another namespace");
        let denied = Identity { service_account: "other".into(), ..id("a") };
        assert!(!k.may_read(&denied, "a").await.unwrap(), "the review decides within the namespace");
        assert!(SameNamespace.may_read(&id("a"), "a").await.unwrap());
        assert!(!SameNamespace.may_read(&id("a"), "b").await.unwrap());
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }
}
