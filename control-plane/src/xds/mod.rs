//! The xDS server: ADS over gRPC, state-of-the-world and Delta.
//!
//! It knows the protocol (nonces, ACK/NACK, subscriptions, ordering), not Istio. Configuration arrives
//! as [`Snapshot`]s of encoded resources from a [`SnapshotSource`]; proxies whose profiles are equal
//! share one snapshot (and its encoded bytes) by `Arc`.
//!
//! - `server`: the tower/tonic service, one task per stream, and [`XdsServer::serve`];
//! - `sotw` / `delta`: the two protocol state machines;
//! - `wire`: responses assembled from pre-encoded `Any` bytes; `cache`: bodies shared across streams;
//! - `sds`: `kubernetes://` secrets per stream, by the proxy's verified identity;
//! - `io`: write coalescing for HTTP/2's small frames;
//! - `status`: per-proxy ACK/NACK state for `/debug/syncz` and `/debug/config_dump`; `metrics`.

mod cache;
mod delta;
mod io;
pub mod metrics;
pub mod sds;
mod server;
mod sotw;
pub mod status;
mod stream;
mod wire;

pub use metrics::XdsMetrics;
pub use sds::{SameNamespace, SdsConfig, SecretAuthorizer, SecretIndex};
pub use server::{AdsService, XdsError, XdsServer, listen};
pub use status::{SentResources, StatusRegistry, SyncState, TypeStatus};

use std::sync::Arc;
use std::time::Instant;

use sailplane_translator::ResourceSet;
use tokio::sync::watch;

use crate::proxy::ProxyInfo;

/// Which ADS flavour a stream speaks (and a bootstrap asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdsApi {
    /// `StreamAggregatedResources` (state of the world, `api_type: GRPC`): every response carries
    /// the full set of a type.
    Sotw,
    /// `DeltaAggregatedResources` (incremental, `api_type: DELTA_GRPC`): responses carry only
    /// changed and removed resources.
    Delta,
}

impl XdsApi {
    /// `sotw` or `delta`.
    pub const fn as_str(self) -> &'static str {
        match self {
            XdsApi::Sotw => "sotw",
            XdsApi::Delta => "delta",
        }
    }

    /// The bootstrap's `ads_config.api_type`.
    pub const fn api_type(self) -> &'static str {
        match self {
            XdsApi::Sotw => "GRPC",
            XdsApi::Delta => "DELTA_GRPC",
        }
    }
}

/// One translated configuration for one proxy profile.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The encoded resources.
    pub resources: Arc<ResourceSet>,
    /// Monotonic push number that produced this snapshot (for logs and debug).
    pub push: u64,
    /// When the change that led to this snapshot was first seen (for convergence time).
    pub changed_at: Instant,
}

/// What the xDS server asks of the rest of the control plane.
pub trait SnapshotSource: Send + Sync + 'static {
    /// A proxy connected: returns the channel on which its snapshots arrive. The current value is the
    /// proxy's configuration now. Proxies with equal profiles may share one channel.
    fn connect(&self, proxy: &ProxyInfo) -> watch::Receiver<Arc<Snapshot>>;
    /// A proxy's stream ended.
    fn disconnect(&self, proxy: &ProxyInfo);
}
