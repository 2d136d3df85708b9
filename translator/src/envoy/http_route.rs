//! VirtualService `http` rules as Envoy routes (istiod's `BuildHTTPRoutesForVirtualService`),
//! shared by sidecars and gateways.
//!
//! One Envoy route per `http[i].match[j]` (or one for a rule without matches), in order, stopping
//! after the first catch-all. Matches that cannot apply to this proxy are decided here, at build
//! time: `port` must equal the listener port; `sourceLabels`, `sourceNamespace` and `gateways`
//! must fit the proxy. Destinations become a cluster or `weighted_clusters` (weight 0 dropped);
//! a destination without a port uses the service's only port, else the listener port; a host
//! that is not in the registry still yields a cluster name (Envoy answers 503 NC).

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, Metadata, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, WeightedCluster, header_matcher, query_parameter_matcher, redirect_action,
    retry_policy::{self, RetryBackOff, RetryHostPredicate, RetryPriority},
    route::Action,
    route_action::{self, ClusterSpecifier, HashPolicy, RequestMirrorPolicy, hash_policy},
    route_match::PathSpecifier,
    weighted_cluster::{ClusterWeight, cluster_weight},
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, Struct, UInt32Value, Value, value};

use super::{Ctx, any};
use crate::api::istio::{
    ConsistentHashLb, CorsPolicy, Destination, FaultAbort as IstioAbort, HeaderOperations, Headers, HttpFaultInjection,
    HttpMatchRequest, HttpRedirect, HttpRetry, HttpRoute, LoadBalancerSettings, Percent, RedirectPortSelection,
    StringMatch, StringMatchKind, UnmatchedPreflights, parse_duration,
};
use crate::model::Service;
use crate::model::config::VirtualServiceConfig;
use crate::names;

/// Filter names of per-route configuration.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// CORS filter name.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
/// `retry_on` of Istio's default retry policy.
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

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
        let ops = header_operations(h);
        out.request_headers_to_add = ops.request_add;
        out.response_headers_to_add = ops.response_add;
        out.request_headers_to_remove = ops.request_remove;
        out.response_headers_to_remove = ops.response_remove;
        authority = ops.authority;
    }
    if let Some(r) = &http.redirect {
        out.action = redirect_action(r, opts.listen_port, opts.is_tls);
    } else if let Some(d) = &http.direct_response {
        out.action = Some(Action::DirectResponse(DirectResponseAction {
            status: d.status,
            body: d.body.as_ref().and_then(|b| match (&b.string, &b.bytes) {
                (Some(s), _) => Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(s.clone())),
                    ..Default::default()
                }),
                (None, Some(b64)) => Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineBytes(base64_decode(b64).unwrap_or_default())),
                    ..Default::default()
                }),
                (None, None) => None,
            }),
            ..Default::default()
        }));
    } else {
        route_destination(ctx, http, opts.listen_port, &authority, &mut out);
    }
    out.decorator =
        Some(Decorator { operation: route_operation(&out, &vs.meta.name, opts.listen_port), ..Default::default() });
    if let Some(f) = http.fault.as_ref().and_then(translate_fault) {
        out.typed_per_filter_config.insert(FAULT_FILTER.to_string(), any(&f));
    }
    if let Some(c) = &http.cors_policy {
        out.typed_per_filter_config.insert(CORS_FILTER.to_string(), any(&translate_cors(c)));
    }
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

/// Header operations of a route or destination.
#[derive(Debug, Default)]
struct HeaderOps {
    request_add: Vec<HeaderValueOption>,
    response_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_remove: Vec<String>,
    /// A `Host`/`:authority` set or added: becomes a host rewrite.
    authority: String,
}

/// Pseudo headers and `Host` cannot be manipulated by Envoy's header lists.
fn is_internal_header(k: &str) -> bool {
    k.starts_with(':') || k.eq_ignore_ascii_case("host")
}

fn is_authority_header(k: &str) -> bool {
    k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host")
}

/// istiod's `translateAppendHeaders`: sorted by name, internal headers dropped.
fn header_values(headers: &BTreeMap<String, String>, append: bool, authority: &mut String) -> Vec<HeaderValueOption> {
    let mut out = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        if is_authority_header(k) {
            authority.clone_from(v);
        }
        if is_internal_header(k) {
            continue;
        }
        out.push(HeaderValueOption {
            header: Some(HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() }),
            append_action: if append {
                HeaderAppendAction::AppendIfExistsOrAdd as i32
            } else {
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            },
            ..Default::default()
        });
    }
    out
}

fn header_operations(h: &Headers) -> HeaderOps {
    let empty = HeaderOperations::default();
    let req = h.request.as_ref().unwrap_or(&empty);
    let resp = h.response.as_ref().unwrap_or(&empty);
    let mut set_authority = String::new();
    let mut add_authority = String::new();
    let mut request_add = header_values(&req.set, false, &mut set_authority);
    request_add.extend(header_values(&req.add, true, &mut add_authority));
    let mut ignored = String::new();
    let mut response_add = header_values(&resp.set, false, &mut ignored);
    response_add.extend(header_values(&resp.add, true, &mut ignored));
    let drop_internal = |v: &[String]| v.iter().filter(|k| !is_internal_header(k)).cloned().collect();
    HeaderOps {
        request_add,
        response_add,
        request_remove: drop_internal(&req.remove),
        response_remove: drop_internal(&resp.remove),
        // A `set` authority wins over an `add` one.
        authority: if set_authority.is_empty() { add_authority } else { set_authority },
    }
}

fn duration(d: StdDuration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A validated duration string as a protobuf duration (`None` if it does not parse).
pub fn proto_duration(s: &str) -> Option<Duration> {
    parse_duration(s).ok().map(duration)
}

#[allow(deprecated)]
fn redirect_action(r: &HttpRedirect, port: u16, is_tls: bool) -> Option<Action> {
    let mut a = RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PathRedirect(
            r.uri.clone().unwrap_or_default(),
        )),
        ..Default::default()
    };
    if let Some(s) = r.scheme.as_deref().filter(|s| !s.is_empty()) {
        a.scheme_rewrite_specifier = Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s.to_string()));
    }
    if r.port.is_some() || r.derive_port.is_some() {
        match (r.port, r.derive_port) {
            (Some(p), _) => a.port_redirect = p,
            // Envoy cannot derive the port per request, but routes are built per listener port.
            (None, Some(RedirectPortSelection::FromRequestPort)) => a.port_redirect = u32::from(port),
            (None, _) => {}
        }
        let scheme = r.scheme.as_deref().filter(|s| !s.is_empty()).unwrap_or(if is_tls { "https" } else { "http" });
        // No explicit :80 / :443 for their own scheme.
        if (a.port_redirect == 80 && scheme == "http") || (a.port_redirect == 443 && scheme == "https") {
            a.port_redirect = 0;
        }
    }
    use redirect_action::RedirectResponseCode as C;
    a.response_code = match r.redirect_code.unwrap_or(0) {
        0 | 301 => C::MovedPermanently,
        302 => C::Found,
        303 => C::SeeOther,
        307 => C::TemporaryRedirect,
        308 => C::PermanentRedirect,
        // Validation refuses other codes; istiod leaves such a route without an action.
        _ => return None,
    } as i32;
    Some(Action::Redirect(a))
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

#[allow(deprecated)]
fn route_destination(ctx: &Ctx<'_>, http: &HttpRoute, listen_port: u16, authority: &str, out: &mut Route) {
    let timeout = http.timeout.as_deref().and_then(proto_duration).unwrap_or_default();
    let zero = timeout.seconds == 0 && timeout.nanos == 0;
    let mut action = RouteAction {
        // istiod still uses the deprecated field: its replacement regressed gRPC timeouts.
        max_grpc_timeout: Some(if zero { Duration::default() } else { timeout }),
        timeout: Some(timeout),
        ..Default::default()
    };
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
    if let Some(mirror) = &http.mirror
        && let Some(fraction) = mirror_percent(http.mirror_percentage.as_ref(), http.mirror_percent)
    {
        action
            .request_mirror_policies
            .push(mirror_policy(destination_cluster(mirror, ctx.service(&mirror.host), listen_port), fraction));
    }
    for m in &http.mirrors {
        if let (Some(d), Some(fraction)) = (&m.destination, mirror_percent(m.percentage.as_ref(), None)) {
            action
                .request_mirror_policies
                .push(mirror_policy(destination_cluster(d, ctx.service(&d.host), listen_port), fraction));
        }
    }
    let mut consistent_hash = false;
    if http.route.len() == 1 {
        let dst = &http.route[0];
        if let Some(d) = &dst.destination {
            action.cluster_specifier =
                Some(ClusterSpecifier::Cluster(destination_cluster(d, ctx.service(&d.host), listen_port)));
            if let Some(h) = &dst.headers {
                let ops = header_operations(h);
                out.request_headers_to_add.extend(ops.request_add);
                out.request_headers_to_remove.extend(ops.request_remove);
                out.response_headers_to_add.extend(ops.response_add);
                out.response_headers_to_remove.extend(ops.response_remove);
                // A route-level rewrite wins over the destination's authority.
                if !ops.authority.is_empty() && action.host_rewrite_specifier.is_none() {
                    action.host_rewrite_specifier =
                        Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(ops.authority));
                }
            }
            if let Some(h) = destination_hash(ctx, d).and_then(|h| hash_policy(&h)) {
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
                let ops = header_operations(h);
                cw.request_headers_to_add = ops.request_add;
                cw.request_headers_to_remove = ops.request_remove;
                cw.response_headers_to_add = ops.response_add;
                cw.response_headers_to_remove = ops.response_remove;
                if !ops.authority.is_empty() {
                    cw.host_rewrite_specifier =
                        Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(ops.authority));
                }
            }
            if let Some(h) = destination_hash(ctx, d).and_then(|h| hash_policy(&h)) {
                action.hash_policy.push(h);
            }
            clusters.push(cw);
        }
        action.cluster_specifier =
            Some(ClusterSpecifier::WeightedClusters(WeightedCluster { clusters, ..Default::default() }));
    }
    action.retry_policy = retry_policy(http.retries.as_ref(), consistent_hash);
    out.action = Some(Action::Route(action));
}

fn fraction(numerator: u32, denominator: DenominatorType) -> FractionalPercent {
    FractionalPercent { numerator, denominator: denominator as i32 }
}

/// Istio `Percent` (0-100, fractional) as parts per million.
fn percent(p: &Percent) -> FractionalPercent {
    // Truncation, as istiod's `uint32(p.Value * 10000)`.
    fraction((p.value * 10_000.0) as u32, DenominatorType::Million)
}

/// The mirrored share: an explicit percentage (0 disables), else the deprecated integer, else 100%.
fn mirror_percent(p: Option<&Percent>, legacy: Option<u32>) -> Option<RuntimeFractionalPercent> {
    let value = match (p, legacy) {
        (Some(p), _) if p.value > 0.0 => percent(p),
        (Some(_), _) => return None,
        (None, Some(l)) if l > 0 => fraction(l, DenominatorType::Hundred),
        (None, Some(_)) => return None,
        (None, None) => fraction(100, DenominatorType::Hundred),
    };
    Some(RuntimeFractionalPercent { default_value: Some(value), ..Default::default() })
}

fn mirror_policy(cluster: String, fraction: RuntimeFractionalPercent) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(fraction),
        trace_sampled: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

/// The consistent-hash settings of the DestinationRule for a destination (istiod's
/// `hashForHTTPDestination`): subset port-level, then subset, then port-level, then top level.
fn destination_hash(ctx: &Ctx<'_>, d: &Destination) -> Option<ConsistentHashLb> {
    let rule = ctx.destination_rule(&d.host)?;
    let spec = &rule.spec;
    let lb_hash = |lb: Option<&LoadBalancerSettings>| lb.and_then(|l| l.consistent_hash.clone());
    let port_hash = |tp: Option<&crate::api::istio::TrafficPolicy>| -> Option<ConsistentHashLb> {
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

/// A route hash policy from consistent-hash settings (ring hash / maglev pick the upstream by it).
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

/// Istio's default retry policy: 2 retries on connection failures, refused streams and gRPC
/// `unavailable`/`cancelled`, preferring hosts not yet tried (unless the route hashes
/// consistently). istiod no longer retries 503s by default (`EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`),
/// but keeps `retriable-status-codes` in `retry_on` so a VirtualService can add codes.
pub fn default_retry_policy(consistent_hash: bool) -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: Some(UInt32Value { value: 2 }),
        retry_host_predicate: if consistent_hash { Vec::new() } else { vec![previous_hosts()] },
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn previous_hosts() -> RetryHostPredicate {
    RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".to_string(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
            &PreviousHostsPredicate::default(),
        ))),
    }
}

/// istiod's `retry.ConvertPolicy`: no VirtualService retries means the default; `attempts: 0`
/// disables retries; otherwise the default with the user's attempts, conditions (numbers among
/// them are status codes), per-try timeout, host predicate, locality retry and backoff.
pub fn retry_policy(r: Option<&HttpRetry>, consistent_hash: bool) -> Option<RetryPolicy> {
    let mut out = default_retry_policy(consistent_hash);
    let Some(r) = r else { return Some(out) };
    if r.attempts <= 0 {
        return None;
    }
    out.num_retries = Some(UInt32Value { value: u32::try_from(r.attempts).unwrap_or(0) });
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.is_empty()) {
        let mut conditions = Vec::new();
        let mut codes = Vec::new();
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) if (100..600).contains(&code) => codes.push(code),
                _ => conditions.push(part),
            }
        }
        out.retry_on = conditions.join(",");
        if !codes.is_empty() && !out.retry_on.contains("retriable-status-codes") {
            out.retry_on.push_str(",retriable-status-codes");
        }
        out.retriable_status_codes = codes;
    }
    if let Some(t) = r.per_try_timeout.as_deref().and_then(proto_duration) {
        out.per_try_timeout = Some(t);
    }
    if let Some(prev) = r.retry_ignore_previous_hosts {
        out.retry_host_predicate = if prev { vec![previous_hosts()] } else { Vec::new() };
    }
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".to_string(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(any(&PreviousPrioritiesConfig {
                update_frequency: 2,
            }))),
        });
    }
    if let Some(b) = r.backoff.as_deref().and_then(proto_duration) {
        out.retry_back_off = Some(RetryBackOff { base_interval: Some(b), ..Default::default() });
    }
    Some(out)
}

/// gRPC status codes by name, as fault injection accepts them.
fn grpc_status(name: &str) -> Option<u32> {
    crate::api::istio::GRPC_STATUS_NAMES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i).ok())
        .or_else(|| name.parse().ok())
}

/// istiod's `TranslateFault`: fixed delays and HTTP/gRPC aborts (exponential delays and HTTP/2
/// errors are not supported by Istio and are dropped). A delay without a percentage delays 0%.
#[allow(deprecated)]
fn translate_fault(f: &HttpFaultInjection) -> Option<HttpFault> {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay.as_deref().and_then(proto_duration)?;
        Some(FaultDelay {
            percentage: Some(match &d.percentage {
                Some(p) => percent(p),
                None => fraction(u32::try_from(d.percent.unwrap_or(0)).unwrap_or(0), DenominatorType::Hundred),
            }),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(fixed)),
        })
    });
    let abort = f.abort.as_ref().and_then(translate_abort);
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(HttpFault { delay, abort, ..Default::default() })
}

fn translate_abort(a: &IstioAbort) -> Option<FaultAbort> {
    let error_type = if let Some(s) = a.http_status {
        fault_abort::ErrorType::HttpStatus(u32::try_from(s).ok()?)
    } else if let Some(g) = &a.grpc_status {
        fault_abort::ErrorType::GrpcStatus(grpc_status(g)?)
    } else {
        return None;
    };
    Some(FaultAbort {
        percentage: a.percentage.as_ref().map(percent),
        error_type: Some(error_type),
        ..Default::default()
    })
}

/// istiod's `TranslateCORSPolicy`.
fn translate_cors(c: &CorsPolicy) -> EnvoyCorsPolicy {
    let allow_origin_string_match = if !c.allow_origins.is_empty() {
        c.allow_origins.iter().map(string_matcher).collect()
    } else {
        c.allow_origin
            .iter()
            .map(|o| StringMatcher { match_pattern: Some(MatchPattern::Exact(o.clone())), ignore_case: false })
            .collect()
    };
    EnvoyCorsPolicy {
        allow_origin_string_match,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .as_deref()
            .and_then(|m| parse_duration(m).ok())
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(fraction(100, DenominatorType::Hundred)),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
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

/// Standard base64 (with or without padding), as protobuf JSON encodes `bytes`.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("aGVsbG8=", b"hello".as_slice())]
    #[case("aGVsbG8", b"hello".as_slice())]
    #[case("", b"".as_slice())]
    fn base64(#[case] s: &str, #[case] want: &[u8]) {
        assert_eq!(base64_decode(s).unwrap(), want);
    }

    #[rstest]
    #[case(None, Some(2), 2, DEFAULT_RETRY_ON, vec![], true)]
    #[case(Some(HttpRetry { attempts: 3, retry_on: Some("5xx,503,gateway-error".into()), ..Default::default() }), None,
        3, "5xx,gateway-error,retriable-status-codes", vec![503], true)]
    #[case(Some(HttpRetry { attempts: 1, retry_ignore_previous_hosts: Some(false), ..Default::default() }), None,
        1, DEFAULT_RETRY_ON, vec![], false)]
    fn retries(
        #[case] r: Option<HttpRetry>,
        #[case] _unused: Option<u32>,
        #[case] n: u32,
        #[case] on: &str,
        #[case] codes: Vec<u32>,
        #[case] previous_hosts: bool,
    ) {
        let p = retry_policy(r.as_ref(), false).unwrap();
        assert_eq!(p.num_retries.unwrap().value, n);
        assert_eq!(p.retry_on, on);
        assert_eq!(p.retriable_status_codes, codes);
        assert_eq!(!p.retry_host_predicate.is_empty(), previous_hosts);
        assert_eq!(p.host_selection_retry_max_attempts, 5);
    }

    #[test]
    fn zero_attempts_disable_retries() {
        assert!(retry_policy(Some(&HttpRetry::default()), false).is_none());
    }

    #[rstest]
    #[case(Some(0), None, None, Some(C::MovedPermanently), 0, "")]
    #[case(Some(302), Some(8080), None, Some(C::Found), 8080, "")]
    #[case(Some(307), Some(443), Some("https"), Some(C::TemporaryRedirect), 0, "https")]
    #[case(Some(418), None, None, None, 0, "")]
    fn redirects(
        #[case] code: Option<u32>,
        #[case] port: Option<u32>,
        #[case] scheme: Option<&str>,
        #[case] want: Option<C>,
        #[case] want_port: u32,
        #[case] want_scheme: &str,
    ) {
        let r = HttpRedirect {
            uri: Some("/new".into()),
            redirect_code: code,
            port,
            scheme: scheme.map(str::to_string),
            ..Default::default()
        };
        match redirect_action(&r, 80, false) {
            Some(Action::Redirect(a)) => {
                assert_eq!(Some(a.response_code), want.map(|c| c as i32));
                assert_eq!(a.port_redirect, want_port);
                let s = match a.scheme_rewrite_specifier {
                    Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => s,
                    _ => String::new(),
                };
                assert_eq!(s, want_scheme);
            }
            None => assert!(want.is_none()),
            other => panic!("unexpected {other:?}"),
        }
    }

    use redirect_action::RedirectResponseCode as C;

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

    #[test]
    fn grpc_status_names() {
        assert_eq!(grpc_status("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_status("unauthenticated"), Some(16));
        assert_eq!(grpc_status("7"), Some(7));
        assert_eq!(grpc_status("NOPE"), None);
    }
}
