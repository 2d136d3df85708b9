//! State-of-the-world ADS: one task per stream.
//!
//! Rules (xDS protocol, and what Envoy relies on):
//! - the first request of each type is always answered, even with no resources (Envoy's init waits);
//! - a request whose `response_nonce` is not the last nonce sent for its type is stale and ignored:
//!   a newer request carrying the full state follows;
//! - an ACK is never answered, unless it changes the subscription;
//! - a NACK (`error_detail`) is recorded and answered with nothing: the proxy keeps its last good
//!   config until the snapshot changes;
//! - on a snapshot change a type is sent only if what this proxy would receive changed (names and
//!   versions of the selected resources), in the order CDS, EDS, LDS, RDS, SDS;
//! - every CDS response is followed by EDS: a changed cluster warms until endpoints arrive for it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use sailplane_translator::TypeUrl;
use sailplane_translator::resources::PerType;
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
    /// Fingerprint of what that response carried.
    sent_fingerprint: Option<u64>,
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
                    return;
                }
                debug!(proxy, type_url = t.short(), nonce, version = %req.version_info, "ack");
                cx.conn.entry.acked(t, nonce, Some(&req.version_info));
                if let Some(at) = ts.push_changed_at.take() {
                    cx.shared.metrics.converged(at.elapsed());
                }
                let sub = Subscription::from_sotw_names(t, &req.resource_names);
                if sub != ts.sub {
                    ts.sub = sub;
                    ts.pending = true;
                }
                return;
            }
        }
        ts.subscribed = true;
        ts.sub = Subscription::from_sotw_names(t, &req.resource_names);
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
            let body = shared.cache.sotw(set, t, &ts.sub);
            if !ts.pending && ts.sent_fingerprint == Some(body.fingerprint) {
                continue;
            }
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
                resources = body.count, bytes = size, "sotw response"
            );
            ts.push_changed_at = (!ts.pending).then_some(snap.changed_at);
            ts.last_nonce = Some(nonce);
            ts.sent_fingerprint = Some(body.fingerprint);
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
}
