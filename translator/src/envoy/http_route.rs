//! VirtualService `http` rules as Envoy routes (istiod's `BuildHTTPRoutesForVirtualService`),
//! shared by sidecars and gateways.
//!
//! One Envoy route per `http[i].match[j]` (or one for a rule without matches), in order, stopping
//! after the first catch-all. Matches that cannot apply to this proxy are decided here, at build
//! time: `port` must equal the listener port; `sourceLabels`, `sourceNamespace` and `gateways`
//! must fit the proxy. Destinations become a cluster or `weighted_clusters` (weight 0 dropped);
//! a destination without a port uses the service's only port, else the listener port; a host
//! that is not in the registry still yields a cluster name (Envoy answers 503 NC).
//!
//! This file owns matching and destinations; every other part of a rule is a feature in
//! [`super::http`] that sets its own fields of the route.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, HeaderMatcher, QueryParameterMatcher, Route, RouteAction, RouteMatch, WeightedCluster, header_matcher,
    query_parameter_matcher, route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{BoolValue, Struct, UInt32Value, Value, value};

use super::Ctx;
use super::http::{cors, direct_response, fault, hash_policy, headers, mirror, redirect, retry, rewrite, timeout};
use crate::api::istio::{Destination, HttpMatchRequest, HttpRoute, StringMatch, StringMatchKind};
use crate::model::Service;
use crate::model::config::VirtualServiceConfig;
use crate::names;

/// What the routes are built for.
#[derive(Debug, Clone, Copy)]
pub struct RouteOpts<'o> {
    /// The listener port (sidecar: the route configuration's port; gateway: the server port).
    pub listen_port: u16,
    /// Gateway names the proxy stands for (`mesh` for sidecars, `ns/name` for a gateway server).
    pub gateway_names: &'o [&'o str],
    /// Whether the listener terminates TLS (redirect scheme default).
    pub is_tls: bool,
}

/// The Envoy routes of a VirtualService's `http` rules for one listener port. Empty when no rule
/// applies to this proxy and port.
pub fn virtual_service_routes(ctx: &Ctx<'_>, vs: &VirtualServiceConfig, opts: &RouteOpts<'_>) -> Vec<Route> {
    let mut out = Vec::with_capacity(vs.spec.http.len());
    let mut metadata = None;
    for http in &vs.spec.http {
        let mut catch_all = false;
        if http.r#match.is_empty() {
            if let Some(r) = translate_route(ctx, vs, http, None, opts, &mut metadata) {
                out.push(r);
            }
            catch_all = true;
        } else {
            for m in &http.r#match {
                if let Some(r) = translate_route(ctx, vs, http, Some(m), opts, &mut metadata) {
                    let all = is_catch_all(&r);
                    out.push(r);
                    // Routes match in order: nothing after a catch-all can be reached.
                    if all {
                        catch_all = true;
                        break;
                    }
                }
            }
        }
        if catch_all {
            break;
        }
    }
    out
}

/// Whether a route matches every request (prefix `/` or regex `.*`, no header or query matches).
pub fn is_catch_all(r: &Route) -> bool {
    let Some(m) = &r.r#match else { return false };
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => p == "/",
        Some(PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    path && m.headers.is_empty() && m.query_parameters.is_empty() && m.dynamic_metadata.is_empty()
}

/// Moves catch-all routes to the end, keeping the order of the others (gateways merge the routes
/// of several VirtualServices for one host).
pub fn sort_catch_all_last(routes: Vec<Route>) -> Vec<Route> {
    let (all, mut specific): (Vec<Route>, Vec<Route>) = routes.into_iter().partition(is_catch_all);
    specific.extend(all);
    specific
}

/// Whether a match's static conditions (gateways, or source labels and namespace) fit the proxy.
fn source_matches(ctx: &Ctx<'_>, m: &HttpMatchRequest, gateways: &[&str]) -> bool {
    if !m.gateways.is_empty() {
        return m.gateways.iter().any(|g| gateways.contains(&g.as_str()));
    }
    let labels_ok = m.source_labels.iter().all(|(k, v)| ctx.proxy.labels.get(k) == Some(v));
    labels_ok && m.source_namespace.as_deref().is_none_or(|ns| ns.is_empty() || ns == ctx.proxy.namespace)
}

/// `{istio: {config: /apis/networking.istio.io/v1/namespaces/<ns>/virtual-service/<name>}}`.
fn config_metadata(path: String) -> Metadata {
    let mut fields = std::collections::HashMap::with_capacity(1);
    fields.insert("config".to_string(), Value { kind: Some(value::Kind::StringValue(path)) });
    let mut filter_metadata = std::collections::HashMap::with_capacity(1);
    // One key per map: encoding stays deterministic despite prost's HashMaps.
    filter_metadata.insert("istio".to_string(), Struct { fields });
    Metadata { filter_metadata, ..Default::default() }
}

/// Route metadata naming the VirtualService (cached per VirtualService: one string per route).
fn vs_metadata(vs: &VirtualServiceConfig, cache: &mut Option<Metadata>) -> Metadata {
    cache.get_or_insert_with(|| config_metadata(vs.config_path())).clone()
}

/// Filter-chain metadata naming a VirtualService (TCP and TLS routes).
pub fn virtual_service_metadata(vs: &VirtualServiceConfig) -> Metadata {
    config_metadata(vs.config_path())
}

#[allow(deprecated)]
fn translate_route(
    ctx: &Ctx<'_>,
    vs: &VirtualServiceConfig,
    http: &HttpRoute,
    m: Option<&HttpMatchRequest>,
    opts: &RouteOpts<'_>,
    metadata: &mut Option<Metadata>,
) -> Option<Route> {
    if let Some(m) = m {
        if m.port.is_some_and(|p| p != 0 && p != u32::from(opts.listen_port)) {
            return None;
        }
        if !source_matches(ctx, m, opts.gateway_names) {
            return None;
        }
    }
    let mut name = http.name.clone().unwrap_or_default();
    if let Some(mn) = m.and_then(|m| m.name.as_deref()).filter(|n| !n.is_empty()) {
        name = format!("{name}.{mn}");
    }
    let mut out = Route {
        name,
        r#match: Some(route_match(m)),
        metadata: Some(vs_metadata(vs, metadata)),
        stat_prefix: m.and_then(|m| m.stat_prefix.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let mut authority = String::new();
    if let Some(h) = &http.headers {
        let ops = headers::header_operations(h);
        authority.clone_from(&ops.authority);
        ops.append_to_route(&mut out);
    }
    if let Some(r) = &http.redirect {
        out.action = redirect::action(r, opts.listen_port, opts.is_tls);
    } else if let Some(d) = &http.direct_response {
        out.action = direct_response::action(d);
    } else {
        route_destination(ctx, http, opts.listen_port, &authority, &mut out);
    }
    out.decorator =
        Some(Decorator { operation: route_operation(&out, &vs.meta.name, opts.listen_port), ..Default::default() });
    fault::apply(&mut out, http);
    cors::apply(&mut out, http);
    Some(out)
}

/// istiod's `TranslateRouteMatch`.
fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".to_string())), ..Default::default() };
    let Some(m) = m else { return out };
    for (name, sm) in &m.headers {
        out.headers.push(header_matcher(name, sm));
    }
    for (name, sm) in &m.without_headers {
        let mut h = header_matcher(name, sm);
        h.invert_match = true;
        // `treat_missing_header_as_empty` conflicts with present_match.
        if !is_present_match(sm) {
            h.treat_missing_header_as_empty = true;
        }
        out.headers.push(h);
    }
    // Stable order (headers and withoutHeaders interleave by name, as istiod sorts them).
    out.headers.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(uri) = &m.uri {
        match uri.kind() {
            Some(StringMatchKind::Exact(e)) => out.path_specifier = Some(PathSpecifier::Path(e.to_string())),
            Some(StringMatchKind::Prefix(p)) => out.path_specifier = Some(PathSpecifier::Prefix(p.to_string())),
            Some(StringMatchKind::Regex(r)) => {
                out.path_specifier =
                    Some(PathSpecifier::SafeRegex(RegexMatcher { regex: r.to_string(), ..Default::default() }))
            }
            None => {}
        }
    }
    out.case_sensitive = Some(BoolValue { value: !m.ignore_uri_case.unwrap_or(false) });
    if let Some(method) = &m.method {
        out.headers.push(header_matcher(":method", method));
    }
    if let Some(a) = &m.authority {
        out.headers.push(header_matcher(":authority", a));
    }
    if let Some(s) = &m.scheme {
        out.headers.push(header_matcher(":scheme", s));
    }
    for (name, sm) in &m.query_params {
        out.query_parameters.push(QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(if is_present_match(sm) {
                query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
            } else {
                query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(string_matcher(sm))
            }),
        });
    }
    out
}

/// An empty match, or the regex `*` (not RE2: Istio's shorthand for "present").
fn is_present_match(sm: &StringMatch) -> bool {
    match sm.kind() {
        None => true,
        Some(StringMatchKind::Regex(r)) => r == "*",
        _ => false,
    }
}

/// Istio `StringMatch` as an Envoy `StringMatcher`.
pub fn string_matcher(sm: &StringMatch) -> StringMatcher {
    let pattern = match sm.kind() {
        Some(StringMatchKind::Exact(e)) => Some(MatchPattern::Exact(e.to_string())),
        Some(StringMatchKind::Prefix(p)) => Some(MatchPattern::Prefix(p.to_string())),
        Some(StringMatchKind::Regex(r)) => {
            Some(MatchPattern::SafeRegex(RegexMatcher { regex: r.to_string(), ..Default::default() }))
        }
        None => None,
    };
    StringMatcher { match_pattern: pattern, ignore_case: false }
}

fn header_matcher(name: &str, sm: &StringMatch) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(if is_present_match(sm) {
            header_matcher::HeaderMatchSpecifier::PresentMatch(true)
        } else {
            header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(sm))
        }),
        ..Default::default()
    }
}

/// The cluster a destination names: `outbound|<port>|<subset>|<host>`, the port from the
/// destination, else the service's only port, else the listener port.
pub fn destination_cluster(d: &Destination, svc: Option<&Service>, listen_port: u16) -> String {
    let port = match d.port {
        Some(p) => u16::try_from(p.number).unwrap_or(listen_port),
        None => match svc {
            Some(s) if s.ports.len() == 1 => s.ports[0].port,
            _ => listen_port,
        },
    };
    names::outbound_cluster(port, d.subset.as_deref().unwrap_or_default(), &d.host)
}

fn route_destination(ctx: &Ctx<'_>, http: &HttpRoute, listen_port: u16, authority: &str, out: &mut Route) {
    let mut action = RouteAction::default();
    timeout::apply(&mut action, http);
    rewrite::apply(&mut action, http, authority);
    mirror::apply(ctx, &mut action, http, listen_port);
    let mut consistent_hash = false;
    if http.route.len() == 1 {
        let dst = &http.route[0];
        if let Some(d) = &dst.destination {
            action.cluster_specifier =
                Some(ClusterSpecifier::Cluster(destination_cluster(d, ctx.service(&d.host), listen_port)));
            if let Some(h) = &dst.headers {
                let mut ops = headers::header_operations(h);
                let authority = std::mem::take(&mut ops.authority);
                ops.append_to_route(out);
                rewrite::apply_destination_authority(&mut action, authority);
            }
            if let Some(h) = hash_policy::destination_hash(ctx, d).and_then(|h| hash_policy::hash_policy(&h)) {
                action.hash_policy.push(h);
                consistent_hash = true;
            }
        }
    } else {
        let mut clusters = Vec::with_capacity(http.route.len());
        for dst in &http.route {
            // Zero weights are dropped when there are several destinations.
            let (Some(d), true) = (&dst.destination, dst.weight > 0) else { continue };
            let mut cw = ClusterWeight {
                name: destination_cluster(d, ctx.service(&d.host), listen_port),
                weight: Some(UInt32Value { value: u32::try_from(dst.weight).unwrap_or(0) }),
                ..Default::default()
            };
            if let Some(h) = &dst.headers {
                let mut ops = headers::header_operations(h);
                let authority = std::mem::take(&mut ops.authority);
                ops.set_on_cluster_weight(&mut cw);
                rewrite::apply_cluster_weight_authority(&mut cw, authority);
            }
            if let Some(h) = hash_policy::destination_hash(ctx, d).and_then(|h| hash_policy::hash_policy(&h)) {
                action.hash_policy.push(h);
            }
            clusters.push(cw);
        }
        action.cluster_specifier =
            Some(ClusterSpecifier::WeightedClusters(WeightedCluster { clusters, ..Default::default() }));
    }
    action.retry_policy = retry::retry_policy(http.retries.as_ref(), consistent_hash);
    out.action = Some(Action::Route(action));
}

/// istiod's `GetRouteOperation`: `host:port/path` for a single-cluster route, else
/// `<vs name>:<port>/path`.
fn route_operation(r: &Route, vs_name: &str, port: u16) -> String {
    let path = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
        Some(PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(PathSpecifier::Path(p)) => p.clone(),
        Some(PathSpecifier::SafeRegex(re)) => re.regex.clone(),
        _ => "/*".to_string(),
    };
    if let Some(Action::Route(RouteAction { cluster_specifier: Some(ClusterSpecifier::Cluster(c)), .. })) = &r.action
        && let Some(parsed) = names::parse_cluster(c)
    {
        return format!("{}:{}{path}", parsed.host, parsed.port);
    }
    format!("{vs_name}:{port}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_all_routes_move_last_in_order() {
        let r = |name: &str, prefix: &str| Route {
            name: name.into(),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix(prefix.into())),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sorted = sort_catch_all_last(vec![r("a", "/"), r("b", "/x"), r("c", "/"), r("d", "/y")]);
        let names: Vec<&str> = sorted.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["b", "d", "a", "c"]);
    }
}
