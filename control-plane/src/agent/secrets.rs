//! The secrets the agent can serve over SDS, by Istio's names:
//!
//! | name | content |
//! |---|---|
//! | `default` | the workload certificate chain and private key (`tls_certificate`) |
//! | `ROOTCA` | the mesh root (`validation_context.trusted_ca`) |
//! | `file-cert:<cert>~<key>` | a certificate chain and key read from the two files |
//! | `file-root:<path>` | trusted CAs read from the file |
//!
//! Every change (a new workload certificate, a write to a file a `file-*` secret names) bumps one
//! generation counter; SDS streams re-resolve their names then and push only what actually changed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;
use tracing::{debug, warn};

/// The workload certificate and key.
pub const WORKLOAD_SECRET: &str = "default";
/// The mesh root.
pub const ROOT_SECRET: &str = "ROOTCA";
/// Prefix of a certificate-and-key secret read from files: `file-cert:<cert path>~<key path>`.
pub const FILE_CERT_PREFIX: &str = "file-cert:";
/// Prefix of a trusted-CA secret read from a file: `file-root:<path>`.
pub const FILE_ROOT_PREFIX: &str = "file-root:";

/// Why a secret cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The name is none of the forms this agent serves.
    #[error("unknown secret name {0:?} (served: default, ROOTCA, file-cert:<cert>~<key>, file-root:<path>)")]
    UnknownName(String),
    /// A named file cannot be read or does not hold what it should.
    #[error("secret {name:?}: {path}: {reason}")]
    File {
        /// Secret name.
        name: String,
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file watcher could not be set up.
    #[error("watching {path}: {reason}")]
    Watch {
        /// Directory.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The workload's current certificate.
#[derive(Clone)]
pub struct WorkloadSecret {
    /// Certificate chain, PEM, leaf first (as the CA returned it, root included as Istio does).
    pub chain_pem: String,
    /// Private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The mesh root, PEM (the last certificate of the CA's chain).
    pub root_pem: String,
    /// When the certificate was received.
    pub created: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for WorkloadSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("WorkloadSecret")
            .field("created", &self.created)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

struct FileWatch {
    watcher: Option<notify::RecommendedWatcher>,
    dirs: HashSet<PathBuf>,
}

/// The secrets store shared by the certificate manager (writer) and the SDS streams (readers).
pub struct SecretCache {
    workload: RwLock<Option<Arc<WorkloadSecret>>>,
    generation: Arc<watch::Sender<u64>>,
    files: Mutex<FileWatch>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache").field("generation", &*self.generation.borrow()).finish_non_exhaustive()
    }
}

fn inline(bytes: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.as_bytes().to_vec())),
        ..Default::default()
    })
}

fn tls_certificate(name: &str, chain: &str, key: &str) -> Secret {
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(chain),
            private_key: inline(key),
            ..Default::default()
        })),
    }
}

fn validation_context(name: &str, trusted_ca: &str) -> Secret {
    Secret {
        name: name.to_string(),
        r#type: Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca: inline(trusted_ca),
            ..Default::default()
        })),
    }
}

/// Reads a file that must hold a PEM block of `kind` (`CERTIFICATE`, `PRIVATE KEY`). Checked so a
/// half-written file is not pushed to Envoy (which would reject it and keep the old one anyway).
fn read_pem(name: &str, path: &str, kind: &str) -> Result<String, SecretError> {
    let err = |reason: String| SecretError::File { name: name.to_string(), path: path.to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let blocks = pem::parse_many(&text).map_err(|e| err(e.to_string()))?;
    if !blocks.iter().any(|b| b.tag().ends_with(kind)) {
        return Err(err(format!("no {kind} PEM block")));
    }
    Ok(text)
}

impl SecretCache {
    /// An empty cache: `default` and `ROOTCA` become available once a workload certificate is set.
    pub fn new() -> Arc<SecretCache> {
        let (generation, _) = watch::channel(0);
        Arc::new(SecretCache {
            workload: RwLock::new(None),
            generation: Arc::new(generation),
            files: Mutex::new(FileWatch { watcher: None, dirs: HashSet::new() }),
        })
    }

    /// Installs a new workload certificate (first fetch or rotation) and wakes the SDS streams.
    pub fn set_workload(&self, secret: WorkloadSecret) {
        *self.workload.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(secret));
        self.generation.send_modify(|g| *g += 1);
    }

    /// The current workload certificate, if one was fetched.
    pub fn workload(&self) -> Option<Arc<WorkloadSecret>> {
        self.workload.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A receiver that is notified whenever any secret may have changed.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The secret called `name`: `Ok(None)` while it is not available yet (no workload certificate
    /// fetched so far). `file-*` secrets are read from disk on every call, and their directories are
    /// watched from the first call on.
    pub fn resolve(&self, name: &str) -> Result<Option<Secret>, SecretError> {
        if name == WORKLOAD_SECRET {
            return Ok(self.workload().map(|w| tls_certificate(name, &w.chain_pem, &w.key_pem)));
        }
        if name == ROOT_SECRET {
            return Ok(self.workload().map(|w| validation_context(name, &w.root_pem)));
        }
        if let Some(rest) = name.strip_prefix(FILE_CERT_PREFIX) {
            let (cert, key) = rest.split_once('~').ok_or_else(|| SecretError::UnknownName(name.to_string()))?;
            self.watch(Path::new(cert))?;
            self.watch(Path::new(key))?;
            let chain = read_pem(name, cert, "CERTIFICATE")?;
            let key_pem = read_pem(name, key, "PRIVATE KEY")?;
            return Ok(Some(tls_certificate(name, &chain, &key_pem)));
        }
        if let Some(path) = name.strip_prefix(FILE_ROOT_PREFIX) {
            self.watch(Path::new(path))?;
            let roots = read_pem(name, path, "CERTIFICATE")?;
            return Ok(Some(validation_context(name, &roots)));
        }
        Err(SecretError::UnknownName(name.to_string()))
    }

    /// Watches the directory holding `file`. Directories, not files: tools (and Kubernetes Secret
    /// volumes) replace files by renaming, which a watch on the old inode would miss. Any event in a
    /// watched directory wakes the streams; they push only if content changed.
    fn watch(&self, file: &Path) -> Result<(), SecretError> {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if files.dirs.contains(&dir) {
            return Ok(());
        }
        let werr = |e: notify::Error| SecretError::Watch { path: dir.display().to_string(), reason: e.to_string() };
        if files.watcher.is_none() {
            let generation = Arc::clone(&self.generation);
            let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(e) if e.kind.is_access() => {}
                Ok(e) => {
                    debug!(paths = ?e.paths, kind = ?e.kind, "secret file changed");
                    generation.send_modify(|g| *g += 1);
                }
                Err(error) => warn!(%error, "secret file watch"),
            })
            .map_err(werr)?;
            files.watcher = Some(watcher);
        }
        if let Some(w) = files.watcher.as_mut() {
            w.watch(&dir, RecursiveMode::NonRecursive).map_err(werr)?;
        }
        files.dirs.insert(dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn inline_of(d: &Option<DataSource>) -> String {
        match d.as_ref().and_then(|d| d.specifier.as_ref()) {
            Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("not inline bytes: {other:?}"),
        }
    }

    #[test]
    fn workload_secrets_appear_once_set() {
        let cache = SecretCache::new();
        assert!(cache.resolve(WORKLOAD_SECRET).unwrap().is_none());
        assert!(cache.resolve(ROOT_SECRET).unwrap().is_none());
        let rx = cache.changes();
        cache.set_workload(WorkloadSecret {
            chain_pem: "CHAIN".into(),
            key_pem: "KEY".into(),
            root_pem: "ROOT".into(),
            created: SystemTime::now(),
            not_after: SystemTime::now(),
        });
        assert!(rx.has_changed().unwrap());
        let Some(secret::Type::TlsCertificate(t)) = cache.resolve(WORKLOAD_SECRET).unwrap().unwrap().r#type else {
            panic!("default is not a tls certificate")
        };
        assert_eq!(inline_of(&t.certificate_chain), "CHAIN");
        assert_eq!(inline_of(&t.private_key), "KEY");
        let Some(secret::Type::ValidationContext(v)) = cache.resolve(ROOT_SECRET).unwrap().unwrap().r#type else {
            panic!("ROOTCA is not a validation context")
        };
        assert_eq!(inline_of(&v.trusted_ca), "ROOT");
        assert!(matches!(cache.resolve("other"), Err(SecretError::UnknownName(_))));
        assert!(matches!(cache.resolve("file-cert:nokey"), Err(SecretError::UnknownName(_))));
    }

    #[tokio::test]
    async fn file_secrets_are_read_and_watched() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = cert_pem();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let cache = SecretCache::new();
        let name = format!("file-cert:{}~{}", cert_path.display(), key_path.display());
        let Some(secret::Type::TlsCertificate(t)) = cache.resolve(&name).unwrap().unwrap().r#type else {
            panic!("not a tls certificate")
        };
        assert_eq!(inline_of(&t.certificate_chain), cert);
        let root_name = format!("file-root:{}", cert_path.display());
        assert!(cache.resolve(&root_name).unwrap().is_some());

        let mut rx = cache.changes();
        rx.borrow_and_update();
        let (cert2, _) = cert_pem();
        std::fs::write(&cert_path, &cert2).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed()).await.unwrap().unwrap();
        let Some(secret::Type::TlsCertificate(t)) = cache.resolve(&name).unwrap().unwrap().r#type else {
            panic!("not a tls certificate")
        };
        assert_eq!(inline_of(&t.certificate_chain), cert2);

        std::fs::write(&cert_path, "half-written").unwrap();
        assert!(matches!(cache.resolve(&name), Err(SecretError::File { .. })));
        assert!(matches!(
            cache.resolve("file-root:/no/such/file.pem"),
            Err(SecretError::File { .. }) | Err(SecretError::Watch { .. })
        ));
    }
}
