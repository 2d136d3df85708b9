//! The ADS gRPC service: `StreamAggregatedResources` (state of the world) and
//! `DeltaAggregatedResources` (incremental) on one tower service.
//!
//! Requests are decoded with prost through tonic's `Streaming`. Responses bypass tonic's encoder: each
//! stream writes pre-assembled protobuf bytes (see [`super::wire`]) into its own HTTP body, so a body
//! shared by a thousand streams goes to hyper as the same `Bytes` a thousand times, never copied or
//! re-encoded. One task per stream runs the protocol (see [`super::sotw`] and [`super::delta`]).

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use http_body::Frame;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic_prost::ProstCodec;
use tracing::{debug, warn};

use super::SnapshotSource;
use super::XdsApi;
use super::cache::BodyCache;
use super::delta::Delta;
use super::io::CoalescingIo;
use super::metrics::XdsMetrics;
use super::sds::SdsConfig;
use super::sotw::Sotw;
use super::status::StatusRegistry;
use super::stream::{self, Out, Shared};
use crate::identity::Identity;
use crate::tls::TlsConnectInfo;

/// gRPC path of the state-of-the-world method.
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// gRPC path of the Delta method.
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request accepted. A Delta reconnect lists every resource the proxy holds in
/// `initial_resource_versions`, which for large meshes exceeds tonic's 4 MiB default.
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Chunks queued between a stream task and its HTTP body. Small, so a slow proxy holds back its own
/// task instead of piling up responses; the chunks themselves are mostly shared bytes.
const BODY_QUEUE: usize = 4;

/// Identifier sent in every response's `control_plane` field.
const CONTROL_PLANE_ID: &str = "sailplane";

/// Errors of the xDS server.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The gRPC transport failed (bind, accept, HTTP/2).
    #[error("xds server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The ADS server. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer").field("proxies", &self.shared.status.len()).finish_non_exhaustive()
    }
}

impl XdsServer {
    /// A server taking snapshots from `source`, with a fresh [`StatusRegistry`] and its metrics
    /// registered in `registry`.
    pub fn new(source: Arc<dyn SnapshotSource>, registry: &mut Registry) -> XdsServer {
        Self::from_parts(source, Arc::new(StatusRegistry::new()), Arc::new(XdsMetrics::new(registry)))
    }

    /// A server taking snapshots from `source`, recording per-proxy status in `status` and counting in
    /// `metrics`.
    pub fn from_parts(
        source: Arc<dyn SnapshotSource>,
        status: Arc<StatusRegistry>,
        metrics: Arc<XdsMetrics>,
    ) -> XdsServer {
        XdsServer { shared: Arc::new(Shared::new(source, status, metrics, BodyCache::new(CONTROL_PLANE_ID))) }
    }

    /// Serves `kubernetes://` secrets over ADS from `config` (see `xds/sds.rs`), to proxies whose
    /// verified identity the config's authorizer allows. Without this, secret requests get nothing.
    /// Only the first call counts.
    pub fn serve_secrets(&self, config: SdsConfig) {
        if self.shared.sds.set(config).is_err() {
            warn!("sds already configured on this xds server; later configuration ignored");
        }
    }

    /// The tower service to mount with `tonic::transport::Server::builder().add_service(..)`.
    pub fn into_service(self) -> AdsService {
        AdsService { shared: self.shared }
    }

    /// Ends every stream (with UNAVAILABLE) now and any opened later: for shutting down when the
    /// service is mounted on a server of one's own.
    pub fn close(&self) {
        self.shared.close();
    }

    /// The status registry this server records into (for `/debug/syncz` and `/debug/config_dump`).
    pub fn status(&self) -> Arc<StatusRegistry> {
        Arc::clone(&self.shared.status)
    }

    /// The metrics this server counts into.
    pub fn metrics(&self) -> Arc<XdsMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// How many state-of-the-world bodies were encoded so far. Streams sharing a snapshot share its
    /// bodies, so this grows per snapshot and type, not per stream (exposed for tests and benchmarks).
    pub fn body_encodes(&self) -> u64 {
        self.shared.cache.encodes()
    }

    /// Serves ADS on `listener` until the transport fails (or the task is dropped).
    pub async fn serve(self, listener: TcpListener) -> Result<(), XdsError> {
        self.serve_with_shutdown(listener, std::future::pending()).await
    }

    /// Serves ADS on `listener` until `shutdown` completes. Connections are wrapped so HTTP/2's 16 KiB
    /// frames leave in large writes (see `xds/io.rs`); mounting [`XdsServer::into_service`] on another
    /// tonic server works too, without that.
    pub async fn serve_with_shutdown<F>(self, listener: TcpListener, shutdown: F) -> Result<(), XdsError>
    where
        F: Future<Output = ()> + Send,
    {
        // Cached bodies expire on use and, when nothing is asked for (an idle mesh), here.
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.cache.expire();
            }
        });
        let incoming = TcpListenerStream::new(listener).map(|accepted| {
            accepted.map(|tcp| {
                // Responses are written whole and flushed: nothing to gain from Nagle, only delay.
                if let Err(error) = tcp.set_nodelay(true) {
                    debug!(%error, "TCP_NODELAY not set");
                }
                CoalescingIo::new(tcp)
            })
        });
        tonic::transport::Server::builder()
            // Dead peers (a killed proxy's half-open connection) are noticed and their streams freed.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(self.clone().into_service())
            .serve_with_incoming_shutdown(incoming, async {
                shutdown.await;
                // Streams never end by themselves; without this the graceful drain would wait forever.
                self.close();
            })
            .await?;
        Ok(())
    }
}

/// Binds the xDS listener with a deep accept queue. A control plane restart makes every proxy
/// reconnect at once; tokio's `TcpListener::bind` asks for 1,024 and overflowing it resets
/// connections (seen with 1,000 clients in the P1 benchmark).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The ADS tower service (see [`XdsServer::into_service`]).
#[derive(Clone)]
pub struct AdsService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsService").finish_non_exhaustive()
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

impl<B> tower::Service<http::Request<B>> for AdsService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let api = match req.uri().path() {
            SOTW_PATH => XdsApi::Sotw,
            DELTA_PATH => XdsApi::Delta,
            _ => return ready(Ok(Status::unimplemented("unknown method").into_http())),
        };
        // Only identity is supported; Envoy does not compress ADS requests unless told to.
        if req.headers().get("grpc-encoding").is_some_and(|v| v.as_bytes() != b"identity") {
            return ready(Ok(Status::unimplemented("compressed requests are not supported").into_http()));
        }
        let identity = match peer_identity(req.extensions().get::<TlsConnectInfo>()) {
            Ok(identity) => identity,
            Err(status) => {
                let remote = req.extensions().get::<TlsConnectInfo>().and_then(|i| i.remote_addr);
                warn!(remote = ?remote, reason = status.message(), "xds stream refused");
                return ready(Ok(status.into_http()));
            }
        };
        let (tx, rx) = mpsc::channel(BODY_QUEUE);
        let out = Out::new(tx);
        let shared = Arc::clone(&self.shared);
        let body = req.into_body();
        match api {
            XdsApi::Sotw => {
                let decoder = ProstCodec::<DiscoveryResponse, DiscoveryRequest>::default().decoder();
                let requests = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES));
                tokio::spawn(finish(stream::run::<Sotw>(shared, identity, requests, out.clone()), out));
            }
            XdsApi::Delta => {
                let decoder = ProstCodec::<DeltaDiscoveryResponse, DeltaDiscoveryRequest>::default().decoder();
                let requests = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES));
                tokio::spawn(finish(stream::run::<Delta>(shared, identity, requests, out.clone()), out));
            }
        }
        let mut response = http::Response::new(tonic::body::Body::new(AdsBody { rx }));
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        ready(Ok(response))
    }
}

/// Who the peer of a stream is, as its transport proved it.
///
/// - No TLS information: the plaintext port (15010); no identity, so no secrets.
/// - The secure port (15012): the client certificate, verified against the mesh root during the
///   handshake, must be there and carry a SPIFFE URI; that URI is the proxy's identity (never the
///   node metadata). The handshake only *requests* a certificate, because CA callers on the same port
///   have none yet; xDS is refused without one, as istiod does (`XDS_AUTH`).
fn peer_identity(tls: Option<&TlsConnectInfo>) -> Result<Option<Identity>, Status> {
    let Some(tls) = tls else { return Ok(None) };
    if tls.peer_certificates.as_ref().is_none_or(|c| c.is_empty()) {
        return Err(Status::unauthenticated(
            "xds on the secure port requires a client certificate issued by the mesh CA (or use the plaintext xds port)",
        ));
    }
    match tls.peer_identity() {
        Some(identity) => Ok(Some(identity)),
        None => Err(Status::unauthenticated(
            "the client certificate carries no SPIFFE identity (spiffe://<td>/ns/<ns>/sa/<sa>)",
        )),
    }
}

/// Runs a stream and ends its body with the gRPC status as trailers.
async fn finish(stream: impl Future<Output = Result<(), Status>>, out: Out) {
    let status = match stream.await {
        Ok(()) => Status::ok(""),
        Err(status) => status,
    };
    out.finish(status).await;
}

/// The response body: whatever the stream task queues, then trailers.
struct AdsBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl http_body::Body for AdsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}
