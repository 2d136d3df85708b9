//! The CA's key material in Kubernetes, as istiod keeps it.
//!
//! - A plug-in CA from the Secret `cacerts` in the control plane's namespace (`ca-cert.pem`,
//!   `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`), when it exists.
//! - Otherwise the self-signed root in the Secret `istio-ca-secret` (`ca-cert.pem`, `ca-key.pem`, and
//!   `root-cert.pem`/`cert-chain.pem` for tools that read them). Every replica and every restart
//!   uses the same root, so certificates issued by one replica are trusted by proxies of another.
//!
//! Only the leader of the Lease creates the root: followers wait for the Secret to appear. The
//! create is additionally a compare-and-set (a POST of an existing name is refused with 409), so
//! even two replicas that both believe they lead end up with one root: the loser reads the winner's.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::ca::{Authority, CA_CERT, CA_KEY, CERT_CHAIN, CaError, CaOptions, ROOT_CERT};

/// The plug-in CA Secret (Istio's name).
pub const PLUGIN_SECRET: &str = "cacerts";
/// The self-signed root Secret (Istio's name).
pub const SELF_SIGNED_SECRET: &str = "istio-ca-secret";
/// Type of the self-signed root Secret (Istio's).
pub const SELF_SIGNED_SECRET_TYPE: &str = "istio.io/ca-root";
/// How often a follower looks for the root the leader creates.
const FOLLOWER_POLL: Duration = Duration::from_secs(1);

/// Why the CA could not be loaded from the cluster.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// The API server refused or failed a request.
    #[error("Secret {namespace}/{name}: {source}")]
    Api {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Secret lacks a key or holds unusable key material.
    #[error("Secret {namespace}/{name}: {reason}")]
    Material {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Creating the root failed.
    #[error("creating the self-signed root: {0}")]
    Generate(#[from] CaError),
    /// The leadership channel closed before a root existed.
    #[error("leader election stopped before the CA root was available")]
    ElectionStopped,
}

/// Where the loaded CA came from (for the log and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaOrigin {
    /// The `cacerts` Secret.
    Plugin,
    /// An existing `istio-ca-secret`.
    SelfSignedExisting,
    /// A root this replica created and stored in `istio-ca-secret`.
    SelfSignedCreated,
}

fn key(secret: &Secret, name: &str) -> Option<String> {
    let data = secret.data.as_ref()?.get(name)?;
    String::from_utf8(data.0.clone()).ok().filter(|s| !s.trim().is_empty())
}

fn material(secret: &Secret, reason: impl Into<String>) -> CaSecretError {
    CaSecretError::Material {
        namespace: secret.namespace().unwrap_or_default(),
        name: secret.name_any(),
        reason: reason.into(),
    }
}

fn required(secret: &Secret, name: &str) -> Result<String, CaSecretError> {
    key(secret, name).ok_or_else(|| material(secret, format!("missing key {name}")))
}

/// A CA from a Secret in the `cacerts` layout. The root defaults to the signing certificate (a
/// self-signed root is its own root).
fn authority_of(secret: &Secret, options: &CaOptions) -> Result<Authority, CaSecretError> {
    let cert = required(secret, CA_CERT)?;
    let key_pem = required(secret, CA_KEY)?;
    let root = key(secret, ROOT_CERT).unwrap_or_else(|| cert.clone());
    let chain = key(secret, CERT_CHAIN).unwrap_or_default();
    Authority::from_pem(&cert, &key_pem, &root, &chain, options.clone()).map_err(|e| material(secret, e.to_string()))
}

fn root_secret(namespace: &str, cert: &str, key_pem: &str) -> Secret {
    let data: BTreeMap<String, ByteString> = [(CA_CERT, cert), (CA_KEY, key_pem), (ROOT_CERT, cert), (CERT_CHAIN, "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(SELF_SIGNED_SECRET.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        type_: Some(SELF_SIGNED_SECRET_TYPE.to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Loads the mesh CA from the Secrets of `namespace`: `cacerts` when present, else
/// `istio-ca-secret`, which the leader (`leading`) creates when missing and followers wait for.
pub async fn load_authority(
    client: &Client,
    namespace: &str,
    options: &CaOptions,
    mut leading: watch::Receiver<bool>,
) -> Result<(Authority, CaOrigin), CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api_err =
        |name: &str, source| CaSecretError::Api { namespace: namespace.to_string(), name: name.to_string(), source };
    if let Some(plugin) = api.get_opt(PLUGIN_SECRET).await.map_err(|e| api_err(PLUGIN_SECRET, e))? {
        info!(secret = %format!("{namespace}/{PLUGIN_SECRET}"), "plug-in CA");
        return Ok((authority_of(&plugin, options)?, CaOrigin::Plugin));
    }
    let mut waiting_logged = false;
    loop {
        if let Some(root) = api.get_opt(SELF_SIGNED_SECRET).await.map_err(|e| api_err(SELF_SIGNED_SECRET, e))? {
            info!(secret = %format!("{namespace}/{SELF_SIGNED_SECRET}"), "self-signed CA root");
            return Ok((authority_of(&root, options)?, CaOrigin::SelfSignedExisting));
        }
        if *leading.borrow_and_update() {
            let (cert, key_pem) = Authority::generate_self_signed(options)?;
            match api.create(&PostParams::default(), &root_secret(namespace, &cert, &key_pem)).await {
                Ok(created) => {
                    info!(secret = %format!("{namespace}/{SELF_SIGNED_SECRET}"), "created the self-signed CA root");
                    return Ok((authority_of(&created, options)?, CaOrigin::SelfSignedCreated));
                }
                // Another replica stored its root first: use that one.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(api_err(SELF_SIGNED_SECRET, e)),
            }
        }
        if !waiting_logged {
            warn!(secret = %format!("{namespace}/{SELF_SIGNED_SECRET}"), "no CA root yet; waiting for the leader to create it");
            waiting_logged = true;
        }
        tokio::select! {
            changed = leading.changed() => changed.map_err(|_| CaSecretError::ElectionStopped)?,
            () = tokio::time::sleep(FOLLOWER_POLL) => {}
        }
    }
}
