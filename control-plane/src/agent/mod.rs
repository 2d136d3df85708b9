//! # The node agent (`sailplane agent`), Sailplane's pilot-agent
//!
//! Inputs: the workload's identity (namespace, service account, trust domain), a bearer token file,
//! the CA's address and root. Outputs: SDS on a Unix socket for the local Envoy (`default`, `ROOTCA`,
//! `file-cert:`, `file-root:`; see [`secrets`]), optionally the same certificate as files
//! ([`output`]), an Envoy bootstrap, and optionally a supervised Envoy ([`envoy`]).
//!
//! ```text
//! token file ──> CertManager ──CSR──> CA (15012, TLS) ──chain──> SecretCache ──> SDS streams ──> Envoy
//!                    │ new key per fetch, never sent               │
//!                    └── rotates at 50% of the lifetime ±1%        └──> OUTPUT_CERTS files
//! ```

pub mod ca_client;
pub mod envoy;
pub mod keys;
pub mod output;
pub mod sds;
pub mod secrets;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use self::ca_client::{CaClient, CaClientError};
use self::keys::{KeyError, KeyType};
use self::sds::SdsError;
use self::secrets::{SecretCache, WorkloadSecret};
use crate::identity::Identity;

/// Istio's default grace ratio: rotate once half of the lifetime has passed.
pub const DEFAULT_GRACE_RATIO: f64 = 0.5;
/// Istio's default jitter of the grace ratio (±1%), so a fleet started together does not renew together.
pub const DEFAULT_GRACE_JITTER: f64 = 0.01;
/// First retry delay after a failed fetch; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between fetch attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Agent errors.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The token file cannot be read.
    #[error("token file {path}: {source}")]
    Token {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("token file {0} is empty")]
    EmptyToken(String),
    /// Key or CSR generation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The CA call failed.
    #[error(transparent)]
    Ca(#[from] CaClientError),
    /// The CA's answer is not a certificate for our key and identity.
    #[error("certificate from the ca: {0}")]
    BadCertificate(String),
    /// The SDS server failed.
    #[error(transparent)]
    Sds(#[from] SdsError),
    /// A background task panicked.
    #[error("agent task failed: {0}")]
    Task(String),
}

/// How the workload certificate is obtained.
#[derive(Debug, Clone)]
pub struct CertOptions {
    /// The identity to request (must be the token's).
    pub identity: Identity,
    /// The bearer token, read before every request (Kubernetes rotates projected tokens).
    pub token_file: PathBuf,
    /// Requested lifetime (`SECRET_TTL`).
    pub secret_ttl: Duration,
    /// Key type.
    pub key_type: KeyType,
    /// `OUTPUT_CERTS`: where to write the certificate files, if anywhere.
    pub output_certs: Option<PathBuf>,
    /// Rotate once this fraction of the lifetime has passed.
    pub grace_ratio: f64,
    /// Random spread of `grace_ratio` (±).
    pub grace_jitter: f64,
}

/// Fetches the workload certificate and keeps it fresh.
#[derive(Debug)]
pub struct CertManager {
    options: CertOptions,
    client: CaClient,
    /// Root used when the CA's chain is a lone certificate (no root to take from it).
    ca_root_pem: String,
    cache: Arc<SecretCache>,
}

fn bad_cert(e: impl std::fmt::Display) -> AgentError {
    AgentError::BadCertificate(e.to_string())
}

/// Checks that `leaf_pem` is for `identity` and for the key whose SubjectPublicKeyInfo is `spki`;
/// returns its notAfter. A CA that answered with someone else's certificate must not be trusted.
fn check_leaf(leaf_pem: &str, identity: &Identity, spki: &[u8]) -> Result<SystemTime, AgentError> {
    let der = pem::parse(leaf_pem).map_err(bad_cert)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).map_err(bad_cert)?;
    if cert.public_key().raw != spki {
        return Err(bad_cert("the leaf is not for the key this agent generated"));
    }
    let want = identity.spiffe_uri();
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .map_err(bad_cert)?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|g| match g {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !uris.contains(&want) {
        return Err(bad_cert(format!("the leaf names {uris:?}, not {want}")));
    }
    let secs = u64::try_from(cert.validity().not_after.timestamp()).map_err(bad_cert)?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Ends a PEM text with exactly one newline, so concatenated blocks stay valid.
fn pem_line(s: &str) -> String {
    format!("{}\n", s.trim_end())
}

/// How long to wait before rotating `secret`: `grace_ratio` (plus `jitter_sample`, a value in
/// `[-jitter, jitter]`) of its lifetime counted from when it was received, as pilot-agent does.
pub fn rotation_delay(secret: &WorkloadSecret, grace_ratio: f64, jitter_sample: f64, now: SystemTime) -> Duration {
    let lifetime = secret.not_after.duration_since(secret.created).unwrap_or_default();
    let rotate_at = secret.created + lifetime.mul_f64((grace_ratio + jitter_sample).clamp(0.0, 1.0));
    rotate_at.duration_since(now).unwrap_or_default()
}

impl CertManager {
    /// A manager requesting certificates through `client` and publishing them into `cache`.
    /// `ca_root_pem` is the root that verifies the CA (used as the mesh root only if the CA's chain
    /// holds just the leaf).
    pub fn new(options: CertOptions, client: CaClient, ca_root_pem: String, cache: Arc<SecretCache>) -> CertManager {
        CertManager { options, client, ca_root_pem, cache }
    }

    /// The cache this manager publishes into.
    pub fn cache(&self) -> Arc<SecretCache> {
        Arc::clone(&self.cache)
    }

    fn read_token(&self) -> Result<String, AgentError> {
        let path = &self.options.token_file;
        let token = std::fs::read_to_string(path)
            .map_err(|source| AgentError::Token { path: path.display().to_string(), source })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(AgentError::EmptyToken(path.display().to_string()));
        }
        Ok(token.to_string())
    }

    /// Generates a key, has the CA sign it, and checks the answer. No side effects.
    pub async fn fetch(&self) -> Result<WorkloadSecret, AgentError> {
        let token = self.read_token()?;
        let (kind, identity) = (self.options.key_type, self.options.identity.clone());
        let key = tokio::task::spawn_blocking(move || keys::generate(kind, &identity))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))??;
        let chain = self.client.sign(key.csr_pem.clone(), self.options.secret_ttl, &token).await?;
        let created = SystemTime::now();
        let leaf = chain.first().ok_or_else(|| bad_cert("empty chain"))?;
        let not_after = check_leaf(leaf, &self.options.identity, &key.public_key_info)?;
        let root_pem = match chain.as_slice() {
            [_] => pem_line(&self.ca_root_pem),
            [.., root] => pem_line(root),
            [] => return Err(bad_cert("empty chain")),
        };
        let chain_pem: String = chain.iter().map(|c| pem_line(c)).collect();
        Ok(WorkloadSecret { chain_pem, key_pem: key.key_pem, root_pem, created, not_after })
    }

    /// Fetches a certificate, writes the output files (if configured) and publishes it to SDS.
    pub async fn refresh(&self) -> Result<Arc<WorkloadSecret>, AgentError> {
        let secret = self.fetch().await?;
        if let Some(dir) = &self.options.output_certs
            && let Err(e) = output::write_certs(dir, &secret)
        {
            // SDS still gets the certificate: Envoy must not lose its identity over a disk problem.
            error!(error = %e, "writing OUTPUT_CERTS");
        }
        self.cache.set_workload(secret);
        self.cache.workload().ok_or_else(|| AgentError::Task("workload secret vanished".into()))
    }

    /// Keeps a valid certificate forever: fetches, waits until the rotation time, fetches again;
    /// retries failures with exponential backoff (1 s doubling to 30 s).
    pub async fn run(self) {
        let mut retry = FIRST_RETRY;
        loop {
            match self.refresh().await {
                Ok(secret) => {
                    retry = FIRST_RETRY;
                    let jitter = self.options.grace_jitter;
                    let sample = if jitter > 0.0 { rand::random_range(-jitter..=jitter) } else { 0.0 };
                    let delay = rotation_delay(&secret, self.options.grace_ratio, sample, SystemTime::now());
                    let expires_in = secret.not_after.duration_since(SystemTime::now()).unwrap_or_default();
                    info!(
                        identity = %self.options.identity.spiffe_uri(),
                        expires_in_secs = expires_in.as_secs(),
                        rotate_in_secs = delay.as_secs_f64(),
                        "workload certificate issued"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_secs = retry.as_secs(), "fetching the workload certificate failed");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }
}

/// A running agent: SDS on its socket and the certificate manager. Stops when dropped or on
/// [`Agent::shutdown`].
#[derive(Debug)]
pub struct Agent {
    cache: Arc<SecretCache>,
    socket: PathBuf,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<(), AgentError>>,
}

impl Agent {
    /// Binds the SDS socket at `sds_socket` and starts serving and fetching.
    pub fn start(manager: CertManager, sds_socket: &Path) -> Result<Agent, AgentError> {
        let listener = sds::bind(sds_socket)?;
        let cache = manager.cache();
        let (stop, mut stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let sds_cache = Arc::clone(&cache);
        tasks.spawn(async move {
            let shutdown = async move {
                // Err: the Agent was dropped, which also means stop.
                let _ = stopped.wait_for(|s| *s).await;
            };
            sds::serve(listener, sds_cache, shutdown).await.map_err(AgentError::from)
        });
        tasks.spawn(async move {
            manager.run().await;
            Ok(())
        });
        info!(socket = %sds_socket.display(), "sds server listening");
        Ok(Agent { cache, socket: sds_socket.to_path_buf(), stop, tasks })
    }

    /// The secrets being served.
    pub fn cache(&self) -> Arc<SecretCache> {
        Arc::clone(&self.cache)
    }

    /// The SDS socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits until a background task ends (they run forever unless they fail) and returns its result.
    pub async fn failed(&mut self) -> Result<(), AgentError> {
        match self.tasks.join_next().await {
            Some(Ok(r)) => r.and(Err(AgentError::Task("a task ended unexpectedly".into()))),
            Some(Err(e)) => Err(AgentError::Task(e.to_string())),
            None => Ok(()),
        }
    }

    /// Stops serving: open SDS streams end, the socket file is removed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        // The SDS server drains; the manager sleeps forever, so it is aborted.
        let drain = async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok(Err(e)) = joined {
                    warn!(error = %e, "agent task ended with an error");
                }
            }
        };
        if tokio::time::timeout(Duration::from_millis(100), drain).await.is_err() {
            self.tasks.abort_all();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(created: SystemTime, life: Duration) -> WorkloadSecret {
        WorkloadSecret {
            chain_pem: String::new(),
            key_pem: String::new(),
            root_pem: String::new(),
            created,
            not_after: created + life,
        }
    }

    #[test]
    fn rotation_at_half_life_with_jitter() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = secret(t0, Duration::from_secs(100));
        assert_eq!(rotation_delay(&s, 0.5, 0.0, t0), Duration::from_secs(50));
        assert_eq!(rotation_delay(&s, 0.5, 0.01, t0), Duration::from_secs(51));
        assert_eq!(rotation_delay(&s, 0.5, -0.01, t0), Duration::from_secs(49));
        assert_eq!(rotation_delay(&s, 0.5, 0.0, t0 + Duration::from_secs(20)), Duration::from_secs(30));
        assert_eq!(rotation_delay(&s, 0.5, 0.0, t0 + Duration::from_secs(70)), Duration::ZERO, "overdue: now");
    }

    #[test]
    fn pem_lines_join() {
        assert_eq!(pem_line("a\n\n"), "a\n");
        assert_eq!(pem_line("a"), "a\n");
    }
}
