//! Consistent hashing of requests (DestinationRule `loadBalancer.consistentHash`): the route
//! action's `hash_policy`, which ring hash and maglev clusters pick upstreams by. No HTTP filter.

use envoy_types::pb::envoy::config::route::v3::route_action::{HashPolicy, hash_policy};

use crate::api::istio::{ConsistentHashLb, Destination, LoadBalancerSettings, TrafficPolicy};
use crate::envoy::{Ctx, proto_duration};
use crate::model::Service;

/// The consistent-hash settings of the DestinationRule for a destination (istiod's
/// `hashForHTTPDestination`): subset port-level, then subset, then port-level, then top level.
pub(crate) fn destination_hash(ctx: &Ctx<'_>, d: &Destination) -> Option<ConsistentHashLb> {
    let rule = ctx.destination_rule(&d.host)?;
    let spec = &rule.spec;
    let lb_hash = |lb: Option<&LoadBalancerSettings>| lb.and_then(|l| l.consistent_hash.clone());
    let port_hash = |tp: Option<&TrafficPolicy>| -> Option<ConsistentHashLb> {
        let port = d.port?.number;
        tp?.port_level_settings
            .iter()
            .find(|s| s.port.is_some_and(|p| p.number == port))
            .and_then(|s| lb_hash(s.load_balancer.as_ref()))
    };
    let top = spec.traffic_policy.as_ref();
    let subset = d
        .subset
        .as_deref()
        .and_then(|name| spec.subsets.iter().find(|s| s.name == name))
        .and_then(|s| s.traffic_policy.as_ref());
    port_hash(subset)
        .or_else(|| subset.and_then(|s| lb_hash(s.load_balancer.as_ref())))
        .or_else(|| port_hash(top))
        .or_else(|| top.and_then(|t| lb_hash(t.load_balancer.as_ref())))
}

/// The consistent-hash settings of the DestinationRule for a service port (istiod's
/// `hashForService`), for routes of services without a VirtualService.
pub fn service_hash(ctx: &Ctx<'_>, svc: &Service, port: u16) -> Option<HashPolicy> {
    let rule = ctx.destination_rule(&svc.hostname)?;
    let tp = rule.spec.traffic_policy.as_ref()?;
    let top = tp.load_balancer.as_ref().and_then(|l| l.consistent_hash.clone());
    let pls = tp
        .port_level_settings
        .iter()
        .find(|s| s.port.is_some_and(|p| p.number == u32::from(port)))
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.consistent_hash.clone());
    hash_policy(&pls.or(top)?)
}

/// A route hash policy from consistent-hash settings.
pub fn hash_policy(h: &ConsistentHashLb) -> Option<HashPolicy> {
    let spec = if let Some(name) = &h.http_header_name {
        hash_policy::PolicySpecifier::Header(hash_policy::Header { header_name: name.clone(), ..Default::default() })
    } else if let Some(c) = &h.http_cookie {
        hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name: c.name.clone(),
            ttl: c.ttl.as_deref().and_then(proto_duration),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if let Some(src) = h.use_source_ip {
        hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties { source_ip: src })
    } else if let Some(q) = &h.http_query_parameter_name {
        hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter { name: q.clone() })
    } else {
        return None;
    };
    Some(HashPolicy { policy_specifier: Some(spec), terminal: false })
}
