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

use imbl::ordmap::DiffItem;
use sailplane_translator::ResourceSet;
use sailplane_translator::resources::PerType;
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
    /// How `resources` differs from the resources sent before it on the same channel, when the
    /// push stage knows: a stream that holds exactly `changes.from` for a type need only look at
    /// the names listed for it.
    pub changes: Option<Arc<Changes>>,
}

impl Snapshot {
    /// A snapshot of `resources` without change information.
    pub fn new(resources: Arc<ResourceSet>, push: u64, changed_at: Instant) -> Snapshot {
        Snapshot { resources, push, changed_at, changes: None }
    }
}

/// The difference between two resource sets, per type.
#[derive(Debug, Clone)]
pub struct Changes {
    /// The resources these changes apply to.
    pub from: Arc<ResourceSet>,
    /// Per type: `None` if the type's resources are unchanged, else every name added, changed or
    /// removed, sorted.
    pub names: PerType<Option<Vec<String>>>,
}

impl Changes {
    /// The changes from `from` to `to`: O(1) for types whose maps are shared, and for the others
    /// proportional to what differs (plus a walk over the parts the maps do not share).
    pub fn between(from: &Arc<ResourceSet>, to: &ResourceSet) -> Changes {
        let names = PerType::from_fn(|t| {
            if from.same_map(to, t) {
                return None;
            }
            // The maps are persistent: the diff skips the nodes they share, so a patched map costs
            // what was patched, not its size.
            let changed: Vec<String> = from
                .of(t)
                .diff(to.of(t))
                .map(|d| match d {
                    DiffItem::Add(name, _) | DiffItem::Remove(name, _) => name.clone(),
                    DiffItem::Update { new: (name, _), .. } => name.clone(),
                })
                .collect();
            (!changed.is_empty()).then_some(changed)
        });
        Changes { from: Arc::clone(from), names }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.names.values().all(Option::is_none)
    }
}

/// What the xDS server asks of the rest of the control plane.
pub trait SnapshotSource: Send + Sync + 'static {
    /// A proxy connected: returns the channel on which its snapshots arrive. The current value is the
    /// proxy's configuration now. Proxies with equal profiles may share one channel.
    fn connect(&self, proxy: &ProxyInfo) -> watch::Receiver<Arc<Snapshot>>;
    /// A proxy's stream ended.
    fn disconnect(&self, proxy: &ProxyInfo);
}
