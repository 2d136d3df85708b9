//! Rewrites (`http[].rewrite`): path prefix or regex rewrite and host rewrite of the route action,
//! the host from `rewrite.authority`, else from a `Host`/`:authority` header operation
//! ([`super::headers`]). No HTTP filter: the router rewrites.

use envoy_types::pb::envoy::config::route::v3::{
    RouteAction, route_action,
    weighted_cluster::{ClusterWeight, cluster_weight},
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};

use crate::api::istio::HttpRoute;

/// The rule's path and host rewrites; `authority` is the host its `headers` set (or empty).
pub(crate) fn apply(action: &mut RouteAction, http: &HttpRoute, authority: &str) {
    let mut host_rewrite = authority.to_string();
    if let Some(rw) = &http.rewrite {
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher { regex: rr.r#match.clone(), ..Default::default() }),
                substitution: rr.rewrite.clone(),
            });
        } else if let Some(uri) = rw.uri.as_deref().filter(|u| !u.is_empty()) {
            action.prefix_rewrite = uri.to_string();
        }
        if let Some(a) = rw.authority.as_deref().filter(|a| !a.is_empty()) {
            host_rewrite = a.to_string();
        }
    }
    if !host_rewrite.is_empty() {
        action.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(host_rewrite));
    }
}

/// The host a single destination's `headers` set: a rewrite of the rule wins over it.
pub(crate) fn apply_destination_authority(action: &mut RouteAction, authority: String) {
    if !authority.is_empty() && action.host_rewrite_specifier.is_none() {
        action.host_rewrite_specifier = Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(authority));
    }
}

/// The host one weighted destination's `headers` set.
pub(crate) fn apply_cluster_weight_authority(cw: &mut ClusterWeight, authority: String) {
    if !authority.is_empty() {
        cw.host_rewrite_specifier = Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(authority));
    }
}
