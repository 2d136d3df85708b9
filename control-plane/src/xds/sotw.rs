//! State-of-the-world ADS: one task per stream.
//!
//! Rules (xDS protocol, and what Envoy relies on):
//! - the first request of each type is always answered, even with no resources (Envoy's init waits),
//!   with every subscribed resource;
//! - a request whose `response_nonce` is not the last nonce sent for its type is stale and ignored:
//!   a newer request carrying the full state follows;
//! - an ACK is never answered, unless it changes the subscription (then the full subscribed set is
//!   sent). An ACK is compared with the current subscription without allocating; only a different
//!   one is rebuilt, and subscriptions are interned server-wide (`cache.rs`), so streams asking for
//!   the same names share one set;
//! - a NACK (`error_detail`) is recorded and answered with nothing: the proxy keeps its last good
//!   config until the snapshot changes, and the next response of the type is complete;
//! - on a snapshot change a type is sent only if what this proxy would receive changed, in the order
//!   CDS, EDS, LDS, RDS, SDS. A type whose map is the very map last sent (`ResourceSet::same_map`)
//!   is skipped in O(1); otherwise the full body (shared, `cache.rs`) is compared by fingerprint
//!   (names and versions of the selected resources);
//! - EDS and RDS responses may carry only some of the subscribed resources (Envoy keeps the ones not
//!   mentioned): when the snapshot says what changed since the very set this stream last sent for the
//!   type (`Snapshot::changes`, `from` is that set), the last response was acknowledged, and the
//!   subscription is unchanged, only the changed names that are subscribed and exist are sent (and
//!   nothing if there are none). `version_info` is still the whole type's version. LDS and CDS
//!   (wildcard types) are always complete, and so is every response to a request;
//! - every CDS response is followed by a complete EDS response: a changed cluster warms until
//!   endpoints arrive for it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use sailplane_translator::resources::{PerType, Served};
use sailplane_translator::{ResourceSet, TypeUrl};
use tonic::Status;
use tracing::{debug, warn};

use super::Snapshot;
use super::XdsApi;
use super::cache::Subscription;
use super::stream::{Context, Out, Protocol};
use super::wire;

/// Per-type state of one stream.
#[derive(Debug, Default)]
struct TypeState {
    /// A request of this type arrived on this stream.
    subscribed: bool,
    sub: Subscription,
    /// Nonce of the last response of this type.
    last_nonce: Option<String>,
    /// Fingerprint of what the client holds of this type after the last response (`None` after a
    /// partial response: it would take a walk of the subscription to know).
    sent_fingerprint: Option<u64>,
    /// The set whose resources (restricted to `sub`) the client holds after the last response:
    /// `None` before the first and after a NACK.
    sent_from: Option<Arc<ResourceSet>>,
    /// The last response of this type was acknowledged.
    acked: bool,
    /// A request must be answered regardless of content.
    pending: bool,
    /// When the config change behind the last (push-triggered) response was first seen.
    push_changed_at: Option<Instant>,
}

/// The state-of-the-world protocol of one stream.
#[derive(Default)]
pub(crate) struct Sotw {
    types: PerType<TypeState>,
    /// Types Sailplane does not serve, by URL: whether a response is owed.
    unknown: HashMap<String, UnknownType>,
}

#[derive(Debug, Default)]
struct UnknownType {
    pending: bool,
    answered: bool,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    const API: XdsApi = XdsApi::Sotw;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn subscription(&self, t: TypeUrl) -> Option<Arc<BTreeSet<String>>> {
        let ts = &self.types[t];
        ts.subscribed.then(|| Arc::clone(&ts.sub.names))
    }

    fn on_request(&mut self, cx: &Context<'_>, req: DiscoveryRequest) {
        self.take_request(cx, req);
    }

    async fn respond(&mut self, cx: &Context<'_>, snap: &Snapshot, changed: bool, out: &Out) -> Result<(), Status> {
        self.send_owed(cx, snap, changed, out).await
    }
}

impl Sotw {
    fn take_request(&mut self, cx: &Context<'_>, req: DiscoveryRequest) {
        let Some(t) = TypeUrl::parse(&req.type_url) else {
            let u = self.unknown.entry(req.type_url.clone()).or_default();
            // Answer a type we do not serve once with an empty set, so the proxy does not wait on it.
            if !u.answered || req.response_nonce.is_empty() {
                u.pending = true;
            }
            return;
        };
        let proxy = &cx.conn.proxy.id;
        let ts = &mut self.types[t];
        let nonce = req.response_nonce.as_str();
        match ts.last_nonce.as_deref() {
            // First request of the type on this stream (a reconnecting proxy may carry an old nonce).
            None => {}
            // A request that acknowledges nothing asks for an answer.
            Some(_) if nonce.is_empty() => {}
            Some(last) if last != nonce => {
                debug!(proxy, type_url = t.short(), nonce, last, "stale nonce, request ignored");
                return;
            }
            Some(_) => {
                if let Some(error) = &req.error_detail {
                    warn!(proxy, type_url = t.short(), nonce, error = %error.message, "config rejected (NACK)");
                    cx.conn.entry.rejected(t, nonce, &error.message);
                    cx.shared.metrics.reject(t);
                    ts.push_changed_at = None;
                    // The proxy kept an older config: the next response must be complete.
                    ts.sent_from = None;
                    return;
                }
                debug!(proxy, type_url = t.short(), nonce, version = %req.version_info, "ack");
                cx.conn.entry.acked(t, nonce, Some(&req.version_info));
                if let Some(at) = ts.push_changed_at.take() {
                    cx.shared.metrics.converged(at.elapsed());
                }
                ts.acked = true;
                if !ts.sub.same_as_sotw(t, &req.resource_names) {
                    ts.sub = cx.shared.cache.sotw_subscription(t, &req.resource_names);
                    ts.pending = true;
                }
                return;
            }
        }
        ts.subscribed = true;
        if !ts.sub.same_as_sotw(t, &req.resource_names) {
            ts.sub = cx.shared.cache.sotw_subscription(t, &req.resource_names);
        }
        ts.pending = true;
    }

    /// Sends every response owed: requested types, and on a snapshot change every type whose content
    /// changed for this proxy.
    async fn send_owed(&mut self, cx: &Context<'_>, snap: &Snapshot, changed: bool, out: &Out) -> Result<(), Status> {
        let shared = cx.shared;
        let mut clusters_sent = false;
        for (t, ts) in self.types.iter_mut() {
            // Envoy warms a changed EDS cluster until endpoints arrive for it, and asks for them
            // with the names and nonce it already acknowledged: after CDS, EDS always follows
            // (as istiod's pushes do), even when the endpoints are unchanged.
            if t == TypeUrl::Endpoint && clusters_sent {
                ts.pending = true;
            }
            if !ts.subscribed || !(ts.pending || changed) {
                continue;
            }
            let (set, recorded) = cx.per_stream.sets(t, snap);
            let mut partial = false;
            let body = if ts.pending {
                shared.cache.sotw(set, t, &ts.sub)
            } else {
                match Self::unchanged_or_partial(ts, t, set, snap, shared) {
                    Some(Reply::Nothing) => {
                        ts.sent_from = Some(Arc::clone(set));
                        continue;
                    }
                    Some(Reply::Partial(body)) => {
                        partial = true;
                        body
                    }
                    None => {
                        let body = shared.cache.sotw(set, t, &ts.sub);
                        if ts.sent_fingerprint == Some(body.fingerprint) {
                            // After a NACK the proxy does not hold this: it stays `None`.
                            if ts.sent_from.is_some() {
                                ts.sent_from = Some(Arc::clone(set));
                            }
                            continue;
                        }
                        body
                    }
                }
            };
            let nonce = shared.next_nonce();
            let framed = wire::sotw_frame(&body.bytes, &nonce);
            let size = framed.len();
            out.send_framed(framed).await?;
            cx.conn.entry.sent(
                t,
                &body.version,
                &nonce,
                recorded,
                (!ts.sub.wildcard).then_some(&ts.sub.names),
                snap.push,
            );
            shared.metrics.push(t, size);
            debug!(
                proxy = %cx.conn.proxy.id, type_url = t.short(), version = %body.version, nonce,
                resources = body.count, bytes = size, partial, "sotw response"
            );
            ts.push_changed_at = (!ts.pending).then_some(snap.changed_at);
            ts.last_nonce = Some(nonce);
            ts.sent_fingerprint = (!partial).then_some(body.fingerprint);
            ts.sent_from = Some(Arc::clone(set));
            ts.acked = false;
            ts.pending = false;
            clusters_sent |= t == TypeUrl::Cluster;
        }
        for (type_url, u) in &mut self.unknown {
            if !u.pending {
                continue;
            }
            let nonce = shared.next_nonce();
            let body = wire::sotw_body("", type_url, std::iter::empty(), shared.cache.control_plane());
            out.send_framed(wire::sotw_frame(&body, &nonce)).await?;
            debug!(proxy = %cx.conn.proxy.id, type_url, nonce, "empty response for a type not served");
            u.pending = false;
            u.answered = true;
        }
        Ok(())
    }

    /// On a snapshot change, what type `t` needs without building its full body: `Nothing` when
    /// its map is the one last sent, or the change touches nothing subscribed; `Partial` with the
    /// changed subscribed resources when the change is known to apply to what the client holds;
    /// `None` when only a full comparison can tell.
    fn unchanged_or_partial(
        ts: &TypeState,
        t: TypeUrl,
        set: &Arc<ResourceSet>,
        snap: &Snapshot,
        shared: &super::stream::Shared,
    ) -> Option<Reply> {
        let from = ts.sent_from.as_ref()?;
        if Arc::ptr_eq(from, set) || from.same_map(set, t) {
            return Some(Reply::Nothing);
        }
        let changes = snap.changes.as_ref()?;
        if !Arc::ptr_eq(&changes.from, from) || !matches!(t.info().served, Served::PerSnapshot) {
            return None;
        }
        let Some(changed) = &changes.names[t] else { return Some(Reply::Nothing) };
        if t.sotw_sends_all() || ts.sub.wildcard {
            return None;
        }
        match shared.cache.sotw_partial(set, from, t, &ts.sub, changed) {
            None => Some(Reply::Nothing),
            // An unacknowledged response may yet be rejected: then only a complete one is right.
            Some(body) if ts.acked => Some(Reply::Partial(body)),
            Some(_) => None,
        }
    }
}

/// What a type owes on a snapshot change, short of a full comparison.
enum Reply {
    Nothing,
    Partial(Arc<super::cache::SotwBody>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::stream::testing;

    fn eds_request(names: &[String], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: TypeUrl::Endpoint.as_str().into(),
            resource_names: names.to_vec(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn streams_with_equal_subscriptions_share_one_set() {
        const STREAMS: usize = 200;
        let shared = testing::shared();
        let names: Vec<String> =
            (0..3000).map(|i| format!("outbound|80||svc-{i:04}.default.svc.cluster.local")).collect();
        let mut streams = Vec::new();
        for i in 0..STREAMS {
            let (conn, per_stream) = testing::stream(&shared, &format!("p{i}"), XdsApi::Sotw);
            let mut p = Sotw::default();
            let cx = Context { shared: &shared, conn: &conn, per_stream: &per_stream };
            // Envoy lists names in its own order: the set is the same.
            let mut listed = names.clone();
            if i % 2 == 1 {
                listed.reverse();
            }
            p.on_request(&cx, eds_request(&listed, ""));
            streams.push((conn, per_stream, p));
        }
        assert_eq!(shared.cache.interned_sets(), 1, "one set for {STREAMS} equal subscriptions");
        let first = streams[0].2.subscription(TypeUrl::Endpoint).unwrap();
        assert_eq!(first.len(), 3000);
        for (_, _, p) in &streams {
            assert!(Arc::ptr_eq(&p.subscription(TypeUrl::Endpoint).unwrap(), &first));
        }

        // An ACK with the same names keeps the set (and asks for nothing); other names get another.
        let (conn, per_stream, p) = &mut streams[0];
        let cx = Context { shared: &shared, conn, per_stream };
        p.types[TypeUrl::Endpoint].last_nonce = Some("n1".into());
        p.types[TypeUrl::Endpoint].pending = false;
        p.on_request(&cx, eds_request(&names, "n1"));
        assert!(Arc::ptr_eq(&p.subscription(TypeUrl::Endpoint).unwrap(), &first));
        assert!(!p.types[TypeUrl::Endpoint].pending, "an ACK is not answered");
        p.on_request(&cx, eds_request(&names[1..], "n1"));
        assert!(p.types[TypeUrl::Endpoint].pending, "a re-subscription is answered");
        assert_eq!(p.subscription(TypeUrl::Endpoint).unwrap().len(), 2999);
        assert_eq!(shared.cache.interned_sets(), 2);
        drop((streams, first));
        assert_eq!(shared.cache.interned_sets(), 0, "sets nobody holds are not kept");
    }
}
