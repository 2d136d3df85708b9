//! Leader election on a `coordination.k8s.io/v1` Lease, so that with several replicas (all of which
//! serve xDS, the CA and the webhooks) only one writes to the cluster: the `istio-ca-root-cert`
//! ConfigMaps, and later the CA root Secret and webhook CA bundles.
//!
//! client-go's algorithm: a replica holds the Lease by renewing it; another takes it over only after
//! the Lease went unchanged for the lease duration *as observed on its own clock* (so clock skew
//! between nodes does not matter). Every write carries the resourceVersion it read, so two replicas
//! racing for a free Lease cannot both win. A leader that cannot renew within the lease duration
//! steps down on its own before anyone else may take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// Istio's default lease name is `istio-leader`; Sailplane uses its own so both can coexist.
pub const DEFAULT_LEASE: &str = "sailplane-leader";

/// The host name (a pod's name in Kubernetes), or a random name when there is none.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() { format!("sailplane-{:08x}", rand::random::<u32>()) } else { host }
}

/// Lease settings.
#[derive(Clone)]
pub struct LeaderElection {
    client: Client,
    namespace: String,
    name: String,
    identity: String,
    /// How long a Lease must stay unrenewed before another replica may take it.
    pub lease_duration: Duration,
    /// How often the holder renews and the others check.
    pub retry_period: Duration,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What one round observed.
#[derive(Debug, Default)]
struct Observed {
    resource_version: Option<String>,
    since: Option<Instant>,
    last_renewed: Option<Instant>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElection {
    /// Election for Lease `name` in `namespace`, as `identity` (the pod name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Runs until the receiver side is gone; `true` in the channel while this replica leads.
    pub fn spawn(self) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let handle = tokio::spawn(async move {
            let mut observed = Observed::default();
            loop {
                let leading = match self.round(&mut observed).await {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(lease = %self.name, error = %e, "lease round failed");
                        // Keep leading only while the last renewal is still within the lease.
                        *tx.borrow() && observed.last_renewed.is_some_and(|t| t.elapsed() < self.lease_duration)
                    }
                };
                if leading {
                    observed.last_renewed = Some(Instant::now());
                }
                if *tx.borrow() != leading {
                    info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
                }
                tx.send_if_modified(|l| std::mem::replace(l, leading) != leading);
                tokio::select! {
                    _ = tokio::time::sleep(self.retry_period) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        (rx, handle)
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One acquire-or-renew attempt; `Ok(true)` when this replica holds the Lease afterwards.
    async fn round(&self, observed: &mut Observed) -> Result<bool, kube::Error> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let now = Timestamp::now();
        let Some(current) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(now, None, 0)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let rv = current.metadata.resource_version.clone();
        if observed.resource_version != rv {
            observed.resource_version = rv;
            observed.since = Some(Instant::now());
        }
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.lease_duration);
        let expired = holder.is_empty() || observed.since.is_none_or(|t| t.elapsed() >= duration);
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time.clone() } else { None };
        let mut lease = current;
        lease.spec = Some(self.spec(now, acquired, transitions));
        // The read resourceVersion stays in the metadata: a concurrent writer makes this a 409.
        match api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(updated) => {
                observed.resource_version = updated.metadata.resource_version;
                observed.since = Some(Instant::now());
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
