//! The webhook's TLS: a certificate from PEM files (re-read when they change, as a mounted Secret
//! is updated in place on rotation), or a generated self-signed one (tests, local runs).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The certificate or key is unusable.
    #[error("webhook certificate: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn load_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&read(cert)?).collect::<Result<Vec<_>, _>>().map_err(config_err)?;
    if chain.is_empty() {
        return Err(TlsError::Config(format!("no certificate in {}", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(config_err)?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(config_err)
}

/// How often, at most, the files' modification times are checked.
const RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// Serves the certificate of two PEM files, re-reading them when they change.
#[derive(Debug)]
struct FileResolver {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<Loaded>,
}

fn modified(paths: [&Path; 2]) -> Option<SystemTime> {
    paths.iter().filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).max()
}

impl ResolvesServerCert for FileResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let now = modified([&self.cert, &self.key]);
            if now != loaded.modified {
                match load_key(&self.cert, &self.key) {
                    Ok(k) => {
                        info!(cert = %self.cert.display(), "webhook certificate reloaded");
                        loaded.key = Arc::new(k);
                        loaded.modified = now;
                    }
                    // A rotation writes two files; a half-written pair is retried on the next check.
                    Err(e) => {
                        warn!(error = %e, "webhook certificate changed but cannot be loaded; keeping the old one")
                    }
                }
            }
        }
        Some(Arc::clone(&loaded.key))
    }
}

fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A server configuration presenting the certificate chain in `cert` with the key in `key` (PEM),
/// re-read when either file changes.
pub fn from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certified = load_key(cert, key)?;
    let resolver = FileResolver {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        loaded: Mutex::new(Loaded {
            key: Arc::new(certified),
            modified: modified([cert, key]),
            checked: Instant::now(),
        }),
    };
    server_config(Arc::new(resolver))
}

/// A generated self-signed certificate for `names`, and its PEM (what a client must trust).
pub fn self_signed(names: &[String]) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec()).map_err(config_err)?;
    let pem = generated.cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der()));
    let certified = CertifiedKey::from_der(vec![generated.cert.der().clone()], key, &provider()).map_err(config_err)?;
    let resolver = rustls::sign::SingleCertAndKey::from(certified);
    Ok((server_config(Arc::new(resolver))?, pem))
}
