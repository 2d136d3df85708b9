//! What every ADS stream shares, whatever its protocol: the server state, the connection's lifetime
//! (status entry, snapshot channel), the response body's sending half, the first request's checks,
//! the resources a stream serves from its own state, and the loop that drives a [`Protocol`].
//!
//! `server` (the tower service) sits above this module and `sotw` / `delta` beside it; neither
//! protocol depends on the service, and the service only picks a protocol and spawns [`run`].

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use http_body::Frame;
use sailplane_translator::resources::{Served, StreamSource};
use sailplane_translator::{ResourceSet, TypeUrl};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::XdsApi;
use super::cache::BodyCache;
use super::metrics::XdsMetrics;
use super::sds::{SdsConfig, StreamSecrets};
use super::status::{ProxyEntry, StatusRegistry};
use super::wire::Framed;
use super::{Snapshot, SnapshotSource};
use crate::identity::Identity;
use crate::proxy::ProxyInfo;

/// State shared by every stream of one server.
pub(crate) struct Shared {
    pub(crate) source: Arc<dyn SnapshotSource>,
    pub(crate) status: Arc<StatusRegistry>,
    pub(crate) metrics: Arc<XdsMetrics>,
    pub(crate) cache: BodyCache,
    /// SDS over ADS, when enabled (`XdsServer::serve_secrets`).
    pub(crate) sds: OnceLock<SdsConfig>,
    nonce_prefix: u32,
    nonce: AtomicU64,
    /// Set when the server shuts down: every stream then ends with UNAVAILABLE, so the proxies
    /// reconnect elsewhere and the HTTP/2 connections can drain.
    closing: watch::Sender<bool>,
}

impl Shared {
    /// State for a new server.
    pub(crate) fn new(
        source: Arc<dyn SnapshotSource>,
        status: Arc<StatusRegistry>,
        metrics: Arc<XdsMetrics>,
        cache: BodyCache,
    ) -> Shared {
        Shared {
            source,
            status,
            metrics,
            cache,
            sds: OnceLock::new(),
            nonce_prefix: rand::random(),
            nonce: AtomicU64::new(1),
            closing: watch::Sender::new(false),
        }
    }

    /// Ends every stream now and any opened later.
    pub(crate) fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes when the server shuts down.
    pub(crate) fn closed(&self) -> impl Future<Output = ()> + use<> {
        let mut closing = self.closing.subscribe();
        async move {
            // An error means the server is gone: closed as well.
            let _ = closing.wait_for(|closed| *closed).await;
        }
    }

    /// A nonce unique on this server (and, by its random prefix, across restarts).
    pub(crate) fn next_nonce(&self) -> String {
        let n = self.nonce.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}-{n}", self.nonce_prefix)
    }
}

/// The sending half of a stream's response body.
#[derive(Clone)]
pub(crate) struct Out {
    tx: mpsc::Sender<Frame<Bytes>>,
}

impl Out {
    /// The sending half of `tx`'s body.
    pub(crate) fn new(tx: mpsc::Sender<Frame<Bytes>>) -> Out {
        Out { tx }
    }

    /// Queues one framed state-of-the-world response.
    pub(crate) async fn send_framed(&self, framed: Framed) -> Result<(), Status> {
        self.send(framed.head).await?;
        match framed.body {
            Some(body) => self.send(body).await,
            None => Ok(()),
        }
    }

    /// Queues bytes already carrying their gRPC prefix.
    pub(crate) async fn send(&self, bytes: Bytes) -> Result<(), Status> {
        self.tx.send(Frame::data(bytes)).await.map_err(|_| Status::cancelled("client went away"))
    }

    /// Ends the body with `status` as its trailers. The client may be gone already; then there is no
    /// one to tell.
    pub(crate) async fn finish(&self, status: Status) {
        let mut trailers = tonic::codegen::http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert(Status::GRPC_STATUS, tonic::codegen::http::HeaderValue::from_static("13"));
        }
        let _ = self.tx.send(Frame::trailers(trailers)).await;
    }

    /// Completes when the client has gone (the body was dropped).
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// One proxy's stream: registered in the status registry and connected to the snapshot source for its
/// lifetime. Dropping it (the stream ended, however) undoes both.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    pub(crate) proxy: ProxyInfo,
    /// The identity of the proxy's certificate (`None` on the plaintext port).
    pub(crate) identity: Option<Identity>,
    pub(crate) entry: Arc<ProxyEntry>,
}

impl Connection {
    /// Registers `proxy` and returns its snapshot channel.
    pub(crate) fn open(
        shared: &Arc<Shared>,
        proxy: ProxyInfo,
        identity: Option<Identity>,
        api: XdsApi,
    ) -> (Connection, watch::Receiver<Arc<Snapshot>>) {
        let spiffe = identity.as_ref().map(Identity::spiffe_uri);
        let entry = shared.status.register(&proxy, spiffe.clone(), api);
        shared.metrics.connect();
        let snapshots = shared.source.connect(&proxy);
        info!(proxy = %proxy.id, api = api.as_str(), identity = spiffe.as_deref().unwrap_or("none"), "proxy connected");
        (Connection { shared: Arc::clone(shared), proxy, identity, entry }, snapshots)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.source.disconnect(&self.proxy);
        self.shared.status.unregister(&self.entry);
        self.shared.metrics.disconnect();
        info!(proxy = %self.proxy.id, api = self.entry.api().as_str(), "proxy disconnected");
    }
}

/// The resources a stream serves from its own state rather than from the snapshot: the types whose
/// table row says [`Served::PerStream`]. What a proxy may receive of these depends on the identity
/// its certificate proved, so they cannot be shared by profile.
pub(crate) struct PerStream {
    /// `kubernetes://` secrets this stream may receive (see `xds/sds.rs`).
    secrets: StreamSecrets,
}

impl PerStream {
    fn new(conn: &Connection, shared: &Shared) -> PerStream {
        PerStream { secrets: StreamSecrets::new(&conn.proxy.id, conn.identity.clone(), shared.sds.get().cloned()) }
    }

    /// The set a response of type `t` is built from, and the copy the status registry records
    /// (per-stream sets may hold private keys, which `/debug/config_dump` must not show).
    pub(crate) fn sets<'a>(&'a self, t: TypeUrl, snap: &'a Snapshot) -> (&'a Arc<ResourceSet>, &'a Arc<ResourceSet>) {
        match t.info().served {
            Served::PerSnapshot => (&snap.resources, &snap.resources),
            Served::PerStream(StreamSource::Secrets) => (&self.secrets.set, &self.secrets.redacted),
        }
    }

    /// Resolves what each subscribed per-stream type names; whether what the proxy may receive
    /// changed.
    async fn refresh(&mut self, subscription: impl Fn(TypeUrl) -> Option<Arc<BTreeSet<String>>>) -> bool {
        let mut changed = false;
        for t in TypeUrl::ALL {
            let Served::PerStream(source) = t.info().served else { continue };
            let Some(names) = subscription(t) else { continue };
            changed |= match source {
                StreamSource::Secrets => self.secrets.refresh(&names).await,
            };
        }
        changed
    }

    /// Completes when a per-stream source may have changed.
    async fn changed(&mut self) {
        self.secrets.index_changed().await;
    }
}

/// A protocol run by [`run`]: the state machine of one stream.
pub(crate) trait Protocol: Default + Send {
    /// The request message.
    type Request: prost::Message + Default + Send + 'static;
    /// Which ADS method this is.
    const API: XdsApi;

    /// The node of a request (the first request of a stream must carry one).
    fn node(request: &Self::Request) -> Option<&Node>;

    /// Takes in one request.
    fn on_request(&mut self, cx: &Context<'_>, request: Self::Request);

    /// The names subscribed for type `t`, if the type is subscribed on this stream.
    fn subscription(&self, t: TypeUrl) -> Option<Arc<BTreeSet<String>>>;

    /// Sends every response owed; `changed`: the snapshot or a per-stream source changed.
    fn respond(
        &mut self,
        cx: &Context<'_>,
        snap: &Snapshot,
        changed: bool,
        out: &Out,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

/// What a protocol's handlers see of their stream.
pub(crate) struct Context<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) conn: &'a Connection,
    pub(crate) per_stream: &'a PerStream,
}

/// Runs one stream of protocol `P` to its end.
pub(crate) async fn run<P: Protocol>(
    shared: Arc<Shared>,
    identity: Option<Identity>,
    mut requests: Streaming<P::Request>,
    out: Out,
) -> Result<(), Status> {
    let Some((first, proxy)) = first_request(&mut requests, identity.as_ref(), P::node).await? else {
        return Ok(());
    };
    let (conn, mut snapshots) = Connection::open(&shared, proxy, identity, P::API);
    let mut current = Arc::clone(&snapshots.borrow_and_update());
    let closed = shared.closed();
    tokio::pin!(closed);
    let mut per_stream = PerStream::new(&conn, &shared);
    let mut protocol = P::default();
    protocol.on_request(&Context { shared: &shared, conn: &conn, per_stream: &per_stream }, first);
    let mut changed = false;
    loop {
        changed |= per_stream.refresh(|t| protocol.subscription(t)).await;
        protocol
            .respond(&Context { shared: &shared, conn: &conn, per_stream: &per_stream }, &current, changed, &out)
            .await?;
        changed = false;
        let request = tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => Some(request),
                Ok(None) => return Ok(()),
                Err(status) => {
                    debug!(proxy = %conn.proxy.id, %status, "stream ended");
                    return Ok(());
                }
            },
            snapshot = snapshots.changed() => {
                if snapshot.is_err() {
                    return Err(Status::unavailable("the control plane is shutting down"));
                }
                current = Arc::clone(&snapshots.borrow_and_update());
                changed = true;
                None
            },
            // Only a per-stream source may have changed: `refresh` above says whether it did.
            () = per_stream.changed() => None,
            () = out.closed() => return Ok(()),
            () = &mut closed => return Err(Status::unavailable("the control plane is shutting down")),
        };
        if let Some(request) = request {
            protocol.on_request(&Context { shared: &shared, conn: &conn, per_stream: &per_stream }, request);
        }
    }
}

/// Reads the first request of a stream and identifies the proxy from its node. `Ok(None)`: the client
/// left before saying anything.
///
/// A verified proxy must not claim another namespace than its certificate's (istiod's identity
/// check): the namespace decides its configuration and which `kubernetes://NAME` secrets it means.
async fn first_request<T, N>(
    requests: &mut Streaming<T>,
    identity: Option<&Identity>,
    node: N,
) -> Result<Option<(T, ProxyInfo)>, Status>
where
    N: FnOnce(&T) -> Option<&Node>,
{
    let first = match requests.message().await {
        Ok(Some(first)) => first,
        Ok(None) => return Ok(None),
        Err(status) => {
            debug!(%status, "stream failed before its first request");
            return Ok(None);
        }
    };
    let proxy = ProxyInfo::from_node(node(&first)).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if let Some(identity) = identity
        && identity.namespace != proxy.profile.namespace
    {
        warn!(proxy = %proxy.id, identity = %identity.spiffe_uri(), namespace = %proxy.profile.namespace, "xds stream refused: namespace does not match the certificate");
        return Err(Status::permission_denied(format!(
            "proxy {} claims namespace {:?}, but its certificate is for {}",
            proxy.id,
            proxy.profile.namespace,
            identity.spiffe_uri()
        )));
    }
    Ok(Some((first, proxy)))
}

/// Streams without a transport, for the protocols' unit tests: their state machines are driven
/// with requests by hand.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::xds::XdsMetrics;

    struct OneSnapshot(watch::Sender<Arc<Snapshot>>);

    impl SnapshotSource for OneSnapshot {
        fn connect(&self, _proxy: &ProxyInfo) -> watch::Receiver<Arc<Snapshot>> {
            self.0.subscribe()
        }
        fn disconnect(&self, _proxy: &ProxyInfo) {}
    }

    /// A server's shared state, serving an empty snapshot.
    pub(crate) fn shared() -> Arc<Shared> {
        let snapshot = Snapshot::new(Arc::new(ResourceSet::new()), 0, std::time::Instant::now());
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Arc::new(Shared::new(
            Arc::new(OneSnapshot(tx)),
            Arc::new(StatusRegistry::new()),
            Arc::new(XdsMetrics::unregistered()),
            BodyCache::new("test"),
        ))
    }

    /// The connection and per-stream state of sidecar `pod`.
    #[allow(clippy::unwrap_used)]
    pub(crate) fn stream(shared: &Arc<Shared>, pod: &str, api: XdsApi) -> (Connection, PerStream) {
        let node =
            Node { id: format!("sidecar~10.0.0.1~{pod}.default~default.svc.cluster.local"), ..Default::default() };
        let proxy = ProxyInfo::from_node(Some(&node)).unwrap();
        let (conn, _) = Connection::open(shared, proxy, None, api);
        let per_stream = PerStream::new(&conn, shared);
        (conn, per_stream)
    }
}
