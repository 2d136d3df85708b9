//! The SDS server the agent offers Envoy on a Unix socket (`envoy.service.secret.v3.SecretDiscoveryService`).
//!
//! Envoy's `sds_config` with an `api_config_source` of type `GRPC` opens `StreamSecrets` (state of
//! the world); `DELTA_GRPC` opens `DeltaSecrets`; both are served, plus the unary `FetchSecrets`.
//! Streams push again whenever a secret they subscribed to changes (rotation, a watched file), and
//! only then: an ACK, or a wake-up that changed nothing, sends nothing.
//!
//! A requested secret that is not available yet (the first certificate is still being fetched, a
//! file is missing) is left out of responses; Envoy keeps waiting for it (its listener or cluster
//! stays warming) and gets it as soon as it exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::secrets::SecretCache;

/// The SDS type URL.
pub const SECRET_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Responses queued per stream before the stream task waits for Envoy to read.
const STREAM_QUEUE: usize = 4;

/// SDS server errors.
#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    /// The socket could not be created.
    #[error("sds socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("sds server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The SDS gRPC service over a [`SecretCache`].
#[derive(Debug, Clone)]
pub struct SdsService {
    cache: Arc<SecretCache>,
    nonces: Arc<AtomicU64>,
}

impl SdsService {
    /// A service serving the secrets of `cache`.
    pub fn new(cache: Arc<SecretCache>) -> SdsService {
        SdsService { cache, nonces: Arc::new(AtomicU64::new(0)) }
    }

    /// The tonic service.
    pub fn into_server(self) -> SecretDiscoveryServiceServer<SdsService> {
        SecretDiscoveryServiceServer::new(self)
    }
}

/// Binds the SDS Unix socket at `path`: creates its directory, removes a stale socket left by a
/// previous run (the path is ours; a live agent on the same path would be a configuration error),
/// and refuses to replace anything that is not a socket.
pub fn bind(path: &Path) -> Result<UnixListener, SdsError> {
    let err = |source| SdsError::Socket { path: path.display().to_string(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path).map_err(err)?;
            debug!(path = %path.display(), "removed a stale sds socket");
        }
        // Never delete something that is not a socket: the path is probably a mistake.
        Ok(_) => return Err(err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a socket"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

/// Serves SDS from `cache` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    cache: Arc<SecretCache>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SdsError> {
    tonic::transport::Server::builder()
        .add_service(SdsService::new(cache).into_server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// One resolved secret and its version (a hash of its encoding).
struct Resolved {
    any: Any,
    version: String,
}

fn resolve(cache: &SecretCache, name: &str) -> Option<Resolved> {
    match cache.resolve(name) {
        Ok(Some(secret)) => {
            let value = secret.encode_to_vec();
            let version = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&value));
            Some(Resolved { any: Any { type_url: Secret::type_url(), value }, version })
        }
        Ok(None) => None,
        Err(error) => {
            warn!(secret = name, %error, "secret not available");
            None
        }
    }
}

fn check_type(type_url: &str) -> Result<(), Status> {
    if type_url.is_empty() || type_url == SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("this server only serves {SECRET_TYPE_URL}, not {type_url:?}")))
    }
}

impl SdsService {
    fn next_nonce(&self) -> String {
        self.nonces.fetch_add(1, Ordering::Relaxed).wrapping_add(1).to_string()
    }

    /// The SotW response for `names`: the available ones, and a version naming exactly their content.
    fn sotw_response(&self, names: &BTreeSet<String>) -> Option<DiscoveryResponse> {
        let resolved: Vec<(&String, Resolved)> =
            names.iter().filter_map(|n| resolve(&self.cache, n).map(|r| (n, r))).collect();
        if resolved.is_empty() {
            return None;
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (name, r) in &resolved {
            h.update(name.as_bytes());
            h.update(&[0]);
            h.update(r.version.as_bytes());
            h.update(&[0]);
        }
        Some(DiscoveryResponse {
            version_info: format!("{:016x}", h.digest()),
            resources: resolved.into_iter().map(|(_, r)| r.any).collect(),
            type_url: SECRET_TYPE_URL.to_string(),
            nonce: String::new(),
            ..Default::default()
        })
    }

    async fn run_sotw(
        self,
        mut requests: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let mut changes = self.cache.changes();
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut subscribed = false;
        let mut last_version = String::new();
        let mut last_nonce = String::new();
        let mut node = String::new();
        loop {
            let names_changed = tokio::select! {
                msg = requests.message() => {
                    let req = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => { debug!(node, "sds stream closed"); return; }
                        Err(status) => { debug!(node, %status, "sds stream ended"); return; }
                    };
                    if let Err(status) = check_type(&req.type_url) {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    if let Some(n) = &req.node { node.clone_from(&n.id); }
                    // A response to an older nonce is superseded by one Envoy has not seen yet.
                    if !req.response_nonce.is_empty() && req.response_nonce != last_nonce {
                        continue;
                    }
                    if let Some(e) = &req.error_detail {
                        warn!(node, version = req.version_info, nonce = req.response_nonce, error = e.message, "envoy rejected secrets (NACK)");
                    }
                    let new: BTreeSet<String> = req.resource_names.into_iter().collect();
                    let changed = !subscribed || new != names;
                    subscribed = true;
                    names = new;
                    changed
                }
                changed = changes.changed() => {
                    if changed.is_err() { return; }
                    false
                }
            };
            if !subscribed {
                continue;
            }
            let Some(mut response) = self.sotw_response(&names) else { continue };
            // A new subscription is always answered; otherwise only a content change is pushed.
            if !names_changed && response.version_info == last_version {
                continue;
            }
            response.nonce = self.next_nonce();
            last_nonce.clone_from(&response.nonce);
            last_version.clone_from(&response.version_info);
            info!(node, names = ?names, version = response.version_info, "pushing secrets");
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }

    async fn run_delta(
        self,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) {
        let mut changes = self.cache.changes();
        let mut subscribed: BTreeSet<String> = BTreeSet::new();
        // What Envoy has, by name: the version sent (or reported on reconnect).
        let mut sent: HashMap<String, String> = HashMap::new();
        let mut first = true;
        let mut node = String::new();
        loop {
            tokio::select! {
                msg = requests.message() => {
                    let req = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => { debug!(node, "delta sds stream closed"); return; }
                        Err(status) => { debug!(node, %status, "delta sds stream ended"); return; }
                    };
                    if let Err(status) = check_type(&req.type_url) {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    if let Some(n) = &req.node { node.clone_from(&n.id); }
                    if let Some(e) = &req.error_detail {
                        warn!(node, nonce = req.response_nonce, error = e.message, "envoy rejected secrets (NACK)");
                    }
                    if first {
                        sent.extend(req.initial_resource_versions);
                        first = false;
                    }
                    for n in req.resource_names_unsubscribe {
                        subscribed.remove(&n);
                        sent.remove(&n);
                    }
                    subscribed.extend(req.resource_names_subscribe);
                }
                changed = changes.changed() => {
                    if changed.is_err() { return; }
                }
            }
            let mut resources = BTreeMap::new();
            for name in &subscribed {
                if let Some(r) = resolve(&self.cache, name)
                    && sent.get(name) != Some(&r.version)
                {
                    resources.insert(name.clone(), r);
                }
            }
            if resources.is_empty() {
                continue;
            }
            let resources: Vec<Resource> = resources
                .into_iter()
                .map(|(name, r)| {
                    sent.insert(name.clone(), r.version.clone());
                    Resource { name, version: r.version, resource: Some(r.any), ..Default::default() }
                })
                .collect();
            let names: Vec<&str> = resources.iter().map(|r| r.name.as_str()).collect();
            info!(node, names = ?names, "pushing secrets (delta)");
            let response = DeltaDiscoveryResponse {
                resources,
                type_url: SECRET_TYPE_URL.to_string(),
                nonce: self.next_nonce(),
                ..Default::default()
            };
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(self.clone().run_delta(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(self.clone().run_sotw(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(&self, request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
        let req = request.into_inner();
        check_type(&req.type_url)?;
        let names: BTreeSet<String> = req.resource_names.into_iter().collect();
        let mut response = self
            .sotw_response(&names)
            .ok_or_else(|| Status::unavailable(format!("none of {names:?} is available yet")))?;
        response.nonce = self.next_nonce();
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_replaces_stale_sockets_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/SDS");
        let first = bind(&path).unwrap();
        drop(first);
        // The socket file is left behind by the dropped listener: a restart must still bind.
        assert!(path.exists());
        let _second = bind(&path).unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "data").unwrap();
        assert!(matches!(bind(&file), Err(SdsError::Socket { .. })));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data", "left untouched");
    }

    #[test]
    fn only_the_secret_type_is_served() {
        assert!(check_type("").is_ok());
        assert!(check_type(SECRET_TYPE_URL).is_ok());
        let st = check_type("type.googleapis.com/envoy.config.cluster.v3.Cluster").unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
    }
}
