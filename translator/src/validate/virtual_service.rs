//! VirtualService rules (Istio's `ValidateVirtualService` and the CRD schema).

use std::collections::BTreeMap;

use crate::api::istio::{
    CorsPolicy, Destination, HeaderOperations, Headers, HttpFaultInjection, HttpMatchRequest, HttpRedirect, HttpRetry,
    HttpRewrite, HttpRoute, HttpRouteDestination, RouteDestination, StringMatch, TlsMatchAttributes,
    VirtualServiceSpec,
};

use crate::model::host::{self, GatewayRef, MESH_GATEWAY};

use super::common::{
    Report, at, check_export_to, check_string_match, idx, is_dns1123_label, is_ip, key, validate_duration,
    validate_fqdn, validate_header_name, validate_header_value, validate_ip_subnet, validate_labels, validate_port,
    validate_regex, validate_wildcard_domain, validate_wildcard_domain_for_gateway,
};

/// Prefix of header match keys that route on JWT claims (gateways only).
const JWT_CLAIM_PREFIX: &str = "@request.auth.claims.";

const SUPPORTED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"];

const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Status codes Go's `http.StatusText` knows; `retryOn` accepts them as retriable codes.
fn is_known_http_status(code: u32) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

/// Whether the VirtualService applies only to gateways (its `gateways` list lacks `mesh`).
pub(crate) fn is_gateway_only(spec: &VirtualServiceSpec) -> bool {
    !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == MESH_GATEWAY)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RouteType {
    Independent,
    Root,
    Delegate,
}

pub(crate) fn check(r: &mut Report, namespace: &str, spec: &VirtualServiceSpec) {
    let delegate = spec.hosts.is_empty();
    if delegate {
        if !spec.gateways.is_empty() {
            r.error("spec.gateways", "delegate virtual service must have no gateways specified");
        }
        if !spec.tls.is_empty() {
            r.error("spec.tls", "delegate virtual service must have no tls route specified");
        }
        if !spec.tcp.is_empty() {
            r.error("spec.tcp", "delegate virtual service must have no tcp route specified");
        }
    }
    let applies_to_gateway = is_gateway_only(spec);
    let applies_to_mesh = !applies_to_gateway;
    check_gateway_names(r, "spec.gateways", &spec.gateways);

    if !applies_to_gateway {
        for (i, http) in spec.http.iter().enumerate() {
            for (j, m) in http.r#match.iter().enumerate() {
                let mpath = idx(&at(&idx("spec.http", i), "match"), j);
                for (field, map) in [("headers", &m.headers), ("withoutHeaders", &m.without_headers)] {
                    for k in map.keys().filter(|k| k.starts_with(JWT_CLAIM_PREFIX)) {
                        r.error(
                            key(&at(&mpath, field), k),
                            format!("JWT claim based routing (key: {k}) is only supported for gateway, found no gateways: {:?}", spec.gateways),
                        );
                    }
                }
            }
        }
    }

    let sni = spec.tls.iter().any(|t| t.r#match.iter().any(|m| !m.sni_hosts.is_empty()));
    let mut all_hosts_valid = true;
    for (i, h) in spec.hosts.iter().enumerate() {
        let result =
            if applies_to_gateway { validate_wildcard_domain_for_gateway(sni, h) } else { validate_wildcard_domain(h) };
        match result {
            Err(e) if !is_ip(h) => {
                r.error(idx("spec.hosts", i), e);
                all_hosts_valid = false;
            }
            Ok(()) if applies_to_mesh && h == "*" => {
                r.error(
                    idx("spec.hosts", i),
                    "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                );
                all_hosts_valid = false;
            }
            _ => {}
        }
    }
    if all_hosts_valid {
        for i in 0..spec.hosts.len() {
            for j in i + 1..spec.hosts.len() {
                if host::matches(&spec.hosts[i], &spec.hosts[j]) {
                    r.error(
                        idx("spec.hosts", j),
                        format!("duplicate hosts in virtual service: {} & {}", spec.hosts[i], spec.hosts[j]),
                    );
                }
            }
        }
    }

    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        r.error("spec", "http, tcp or tls must be provided in virtual service");
    }
    for (i, http) in spec.http.iter().enumerate() {
        check_http_route(r, &idx("spec.http", i), http, delegate);
    }
    for (i, tls) in spec.tls.iter().enumerate() {
        let path = idx("spec.tls", i);
        if tls.r#match.is_empty() {
            r.error(at(&path, "match"), "TLS route must have at least one match condition");
        }
        for (j, m) in tls.r#match.iter().enumerate() {
            check_tls_match(r, &idx(&at(&path, "match"), j), m, spec);
        }
        if tls.route.is_empty() {
            r.error(at(&path, "route"), "TLS route is required");
        }
        check_route_destinations(r, &at(&path, "route"), &tls.route);
    }
    for (i, tcp) in spec.tcp.iter().enumerate() {
        let path = idx("spec.tcp", i);
        for (j, m) in tcp.r#match.iter().enumerate() {
            let mpath = idx(&at(&path, "match"), j);
            for (k, s) in m.destination_subnets.iter().enumerate() {
                r.check(idx(&at(&mpath, "destinationSubnets"), k), validate_ip_subnet(s));
            }
            if let Some(p) = m.port {
                r.check(at(&mpath, "port"), validate_port(i64::from(p)));
            }
            r.check(at(&mpath, "sourceLabels"), validate_labels(&m.source_labels));
            check_gateway_names(r, &at(&mpath, "gateways"), &m.gateways);
        }
        if tcp.route.is_empty() {
            r.error(at(&path, "route"), "TCP route is required");
        }
        check_route_destinations(r, &at(&path, "route"), &tcp.route);
    }
    check_export_to(r, "spec.exportTo", namespace, &spec.export_to, false, false);
    check_unreachable_rules(r, spec);
}

/// Gateway references: `mesh`, `name`, `ns/name` (and the legacy `name.ns`, with a warning), parsed
/// by [`GatewayRef`]. As Istio's webhook, `./name` is refused (`.` is not a namespace), though
/// istiod would read it as `name` in the VirtualService's namespace.
pub(crate) fn check_gateway_names(r: &mut Report, path: &str, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let field = idx(path, i);
        match GatewayRef::parse(name) {
            GatewayRef::Mesh | GatewayRef::Short(_) => r.check(field, validate_fqdn(name)),
            GatewayRef::Legacy { name: gw, namespace: ns } => {
                r.warn(
                    field.clone(),
                    format!(
                        "using legacy gatewayName format {name:?}; prefer the <namespace>/<name> format: \"{ns}/{gw}\""
                    ),
                );
                r.check(field, validate_fqdn(name));
            }
            GatewayRef::Qualified { namespace: ns, name: gw } => {
                if ns.is_empty() || gw.is_empty() {
                    r.error(field.clone(), "config namespace and gateway name cannot be empty");
                }
                if !is_dns1123_label(ns) {
                    r.error(field.clone(), format!("invalid value for namespace: {ns:?}"));
                }
                if !is_dns1123_label(gw) {
                    r.error(field, format!("invalid value for gateway name: {gw:?}"));
                }
            }
        }
    }
}

fn check_http_route(r: &mut Report, path: &str, http: &HttpRoute, delegate: bool) {
    let route_type = if delegate {
        RouteType::Delegate
    } else if http.delegate.is_some() {
        RouteType::Root
    } else {
        RouteType::Independent
    };
    let name = http.name.as_deref().unwrap_or_default();
    match route_type {
        RouteType::Root => {
            if http.redirect.is_some() {
                r.error(at(path, "redirect"), format!("root HTTP route {name} must not specify redirect"));
            }
            if !http.route.is_empty() {
                r.error(at(path, "route"), format!("root HTTP route {name} must not specify route"));
            }
            if http.direct_response.is_some() {
                r.error(at(path, "directResponse"), format!("root HTTP route {name} must not specify directResponse"));
            }
            if let Some(d) = &http.delegate
                && d.name.is_empty()
            {
                r.error(at(path, "delegate.name"), "required value: delegate must name a virtual service");
            }
        }
        RouteType::Delegate | RouteType::Independent => {
            if route_type == RouteType::Delegate && http.delegate.is_some() {
                r.error(at(path, "delegate"), "delegate HTTP route cannot contain delegate");
            }
            check_http_route_conflicts(r, path, http);
        }
    }

    for (j, m) in http.r#match.iter().enumerate() {
        check_http_match(r, &idx(&at(path, "match"), j), m, route_type);
    }
    if let Some(h) = &http.headers {
        check_headers(r, &at(path, "headers"), h);
    }
    if let Some(c) = &http.cors_policy {
        check_cors(r, &at(path, "corsPolicy"), c);
    }
    if let Some(f) = &http.fault {
        check_fault(r, &at(path, "fault"), f);
    }
    if let Some(p) = http.mirror_percent {
        if p > 100 {
            r.error(at(path, "mirrorPercent"), format!("mirror_percent must have a max value of 100 (it has {p})"));
        }
        r.warn(
            at(path, "mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(p) = http.mirror_percentage {
        if p.value > 100.0 {
            r.error(
                at(path, "mirrorPercentage"),
                format!("mirror_percentage must have a max value of 100 (it has {})", p.value),
            );
        }
        if p.value < 0.0 {
            r.error(
                at(path, "mirrorPercentage"),
                format!("mirror_percentage must have a min value of 0 (it has {})", p.value),
            );
        }
    }
    if http.mirror.is_some() && !http.mirrors.is_empty() {
        r.error(at(path, "mirrors"), "cannot specify both mirror and mirrors");
    }
    if let Some(m) = &http.mirror {
        check_destination(r, &at(path, "mirror"), m);
    }
    for (i, m) in http.mirrors.iter().enumerate() {
        let mpath = idx(&at(path, "mirrors"), i);
        match &m.destination {
            None => r.error(at(&mpath, "destination"), "required value: destination is required for mirrors"),
            Some(d) => check_destination(r, &at(&mpath, "destination"), d),
        }
        if let Some(p) = m.percentage {
            if p.value > 100.0 {
                r.error(
                    at(&mpath, "percentage"),
                    format!("mirror percentage must have a max value of 100 (it has {})", p.value),
                );
            }
            if p.value < 0.0 {
                r.error(
                    at(&mpath, "percentage"),
                    format!("mirror percentage must have a min value of 0 (it has {})", p.value),
                );
            }
        }
    }
    if let Some(red) = &http.redirect {
        check_redirect(r, &at(path, "redirect"), red);
    }
    if let Some(dr) = &http.direct_response {
        let dpath = at(path, "directResponse");
        if !(200..=600).contains(&dr.status) {
            r.error(at(&dpath, "status"), format!("HTTP status {} is not in range 200-599", dr.status));
        }
        if let Some(body) = &dr.body {
            if body.string.is_some() && body.bytes.is_some() {
                r.error(at(&dpath, "body"), "only one of string or bytes may be set");
            }
            let size =
                body.string.as_ref().map(String::len).or(body.bytes.as_ref().map(|b| b.len() * 3 / 4)).unwrap_or(0);
            if size > 1024 * 1024 {
                r.error(
                    at(&dpath, "body"),
                    "large direct_responses may impact control plane performance, must be less than 1MB",
                );
            } else if size > 100 * 1024 {
                r.warn(at(&dpath, "body"), "large direct_responses may impact control plane performance");
            }
        }
    }
    if let Some(retry) = &http.retries {
        check_retry(r, &at(path, "retries"), retry);
    }
    if let Some(rw) = &http.rewrite {
        check_rewrite(r, &at(path, "rewrite"), rw);
    }
    check_authority_rewrite(r, path, http);
    check_http_route_destinations(r, &at(path, "route"), &http.route);
    if let Some(t) = &http.timeout {
        r.check(at(path, "timeout"), validate_duration(t));
    }
}

fn check_http_route_conflicts(r: &mut Report, path: &str, http: &HttpRoute) {
    if http.redirect.is_some() {
        if !http.route.is_empty() {
            r.error(at(path, "redirect"), "HTTP route cannot contain both route and redirect");
        }
        if http.fault.is_some() {
            r.error(at(path, "redirect"), "HTTP route cannot contain both fault and redirect");
        }
        if http.rewrite.is_some() {
            r.error(at(path, "redirect"), "HTTP route rule cannot contain both rewrite and redirect");
        }
        if http.direct_response.is_some() {
            r.error(at(path, "redirect"), "HTTP route cannot contain both redirect and direct response");
        }
    } else if http.direct_response.is_some() {
        if !http.route.is_empty() {
            r.error(at(path, "directResponse"), "HTTP route cannot contain both route and direct response");
        }
        if http.fault.is_some() {
            r.error(at(path, "directResponse"), "HTTP route cannot contain both fault and direct response");
        }
        if http.rewrite.is_some() {
            r.error(at(path, "directResponse"), "HTTP route rule cannot contain both rewrite and direct response");
        }
    } else if http.route.is_empty() {
        r.error(at(path, "route"), "HTTP route, redirect or direct_response is required");
    }
}

fn check_http_match(r: &mut Report, path: &str, m: &HttpMatchRequest, route_type: RouteType) {
    let simple: [(&str, &Option<StringMatch>); 4] =
        [("uri", &m.uri), ("scheme", &m.scheme), ("method", &m.method), ("authority", &m.authority)];
    let maps: [(&str, &BTreeMap<String, StringMatch>); 3] =
        [("headers", &m.headers), ("queryParams", &m.query_params), ("withoutHeaders", &m.without_headers)];
    for (field, sm) in simple {
        if let Some(sm) = sm {
            check_string_match(r, &at(path, field), sm, field);
            if route_type != RouteType::Independent && sm.regex.is_some() {
                r.error(at(path, field), format!("{field} match does not support regex match for delegating"));
            }
        }
    }
    for (field, map) in maps {
        for (name, sm) in map {
            let kpath = key(&at(path, field), name);
            check_string_match(r, &kpath, sm, field);
            if field != "queryParams" && !name.starts_with(JWT_CLAIM_PREFIX) {
                r.check(kpath.clone(), validate_header_name(name));
            }
            if route_type != RouteType::Independent && sm.regex.is_some() {
                r.error(kpath, format!("{field} match {name} does not support regex match for delegating"));
            }
        }
    }
    if let Some(p) = m.port {
        r.check(at(path, "port"), validate_port(i64::from(p)));
    }
    r.check(at(path, "sourceLabels"), validate_labels(&m.source_labels));
    check_gateway_names(r, &at(path, "gateways"), &m.gateways);
    if let Some(ns) = &m.source_namespace
        && !ns.is_empty()
        && !is_dns1123_label(ns)
    {
        r.error(at(path, "sourceNamespace"), format!("sourceNamespace match {ns} is invalid"));
    }
}

fn header_with_authority_op_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_internal_header(name) && !is_authority_header(name) {
        return Err(format!("invalid header {name:?}: header cannot have \":\" prefix"));
    }
    Ok(())
}

fn header_op_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if name.eq_ignore_ascii_case("host") {
        return Err(format!("invalid header {name:?}: cannot set Host header"));
    }
    if is_internal_header(name) {
        return Err(format!("invalid header {name:?}: header cannot have \":\" prefix"));
    }
    Ok(())
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

fn check_header_ops(r: &mut Report, path: &str, ops: &HeaderOperations, request: bool) {
    for (field, map) in [("set", &ops.set), ("add", &ops.add)] {
        for (name, value) in map {
            let kpath = key(&at(path, field), name);
            let name_check = if request { header_with_authority_op_name(name) } else { header_op_name(name) };
            r.check(kpath.clone(), name_check);
            r.check(kpath, validate_header_value(value));
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        r.check(idx(&at(path, "remove"), i), header_op_name(name));
    }
}

fn check_headers(r: &mut Report, path: &str, h: &Headers) {
    if let Some(req) = &h.request {
        check_header_ops(r, &at(path, "request"), req, true);
    }
    if let Some(resp) = &h.response {
        check_header_ops(r, &at(path, "response"), resp, false);
    }
}

fn check_authority_rewrite(r: &mut Report, path: &str, http: &HttpRoute) {
    let mut current = http.rewrite.as_ref().and_then(|rw| rw.authority.clone()).unwrap_or_default();
    let Some(req) = http.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    for (k, v) in req.set.iter().chain(req.add.iter()) {
        if !is_authority_header(k) {
            continue;
        }
        if !current.is_empty() {
            r.error(
                at(path, "headers.request"),
                format!("authority header cannot be set multiple times: have {current:?}, attempting to set {v:?}"),
            );
            return;
        }
        current = v.clone();
    }
}

fn check_cors(r: &mut Report, path: &str, c: &CorsPolicy) {
    for (i, origin) in c.allow_origins.iter().enumerate() {
        let opath = idx(&at(path, "allowOrigins"), i);
        let value =
            origin.exact.as_deref().or(origin.prefix.as_deref()).or(origin.regex.as_deref()).unwrap_or_default();
        if value.is_empty() {
            r.error(opath.clone(), "'' is not a valid match type for CORS allow origins");
        }
        check_string_match(r, &opath, origin, "corsPolicy.allowOrigins");
    }
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !SUPPORTED_METHODS.contains(&m.as_str()) {
            r.error(idx(&at(path, "allowMethods"), i), format!("{m:?} is not a supported HTTP method"));
        }
    }
    for (field, list) in [("allowHeaders", &c.allow_headers), ("exposeHeaders", &c.expose_headers)] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" {
                r.check(idx(&at(path, field), i), validate_header_name(h));
            }
        }
    }
    if let Some(max_age) = &c.max_age {
        r.check(at(path, "maxAge"), validate_duration(max_age));
        if let Ok(d) = crate::api::istio::parse_duration(max_age)
            && d.subsec_nanos() > 0
        {
            r.error(at(path, "maxAge"), "max_age duration is accurate only to seconds precision");
        }
    }
}

fn check_percentage(r: &mut Report, path: &str, p: Option<crate::api::istio::Percent>) {
    if let Some(p) = p
        && (p.value < 0.0 || p.value > 100.0 || (p.value > 0.0 && p.value < 0.0001))
    {
        r.error(path, format!("percentage {} is neither 0.0, nor in range [0.0001, 100.0]", p.value));
    }
}

fn check_fault(r: &mut Report, path: &str, f: &HttpFaultInjection) {
    if f.abort.is_none() && f.delay.is_none() {
        r.error(path, "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(a) = &f.abort {
        let apath = at(path, "abort");
        check_percentage(r, &at(&apath, "percentage"), a.percentage);
        let set = usize::from(a.http_status.is_some())
            + usize::from(a.grpc_status.is_some())
            + usize::from(a.http2_error.is_some());
        if set > 1 {
            r.error(apath.clone(), "only one of httpStatus, grpcStatus or http2Error may be set");
        }
        if let Some(s) = a.http_status {
            if !(200..=600).contains(&s) {
                r.error(at(&apath, "httpStatus"), format!("HTTP status {s} is not in range 200-599"));
            }
        } else if let Some(g) = &a.grpc_status {
            if !crate::api::istio::GRPC_STATUS_NAMES.contains(&g.as_str()) {
                r.error(
                    at(&apath, "grpcStatus"),
                    format!("gRPC status {g:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'"),
                );
            }
        } else if a.http2_error.is_some() {
            r.error(at(&apath, "http2Error"), "HTTP/2 abort fault injection not supported yet");
        } else {
            r.warn(apath, "abort configured, but error type not set");
        }
    }
    if let Some(d) = &f.delay {
        let dpath = at(path, "delay");
        check_percentage(r, &at(&dpath, "percentage"), d.percentage);
        if let Some(p) = d.percent
            && !(0..=100).contains(&p)
        {
            r.error(at(&dpath, "percent"), format!("percentage {p} is not in range 0..100"));
        }
        if d.fixed_delay.is_some() && d.exponential_delay.is_some() {
            r.error(dpath.clone(), "only one of fixedDelay or exponentialDelay may be set");
        }
        if let Some(fd) = &d.fixed_delay {
            r.check(at(&dpath, "fixedDelay"), validate_duration(fd));
        }
        if let Some(ed) = &d.exponential_delay {
            r.check(at(&dpath, "exponentialDelay"), validate_duration(ed));
            r.error(at(&dpath, "exponentialDelay"), "exponentialDelay not supported yet");
        }
    }
}

/// A route or mirror destination.
pub(crate) fn check_destination(r: &mut Report, path: &str, d: &Destination) {
    if d.host == "*" {
        r.error(at(path, "host"), format!("invalid destination host {}", d.host));
    } else if d.host.is_empty() {
        r.error(at(path, "host"), "required value: destination host is required");
    } else {
        r.check(at(path, "host"), validate_wildcard_domain(&d.host));
    }
    if let Some(s) = &d.subset {
        r.check(at(path, "subset"), validate_subset_name(s));
    }
    if let Some(p) = d.port {
        r.check(at(path, "port.number"), validate_port(i64::from(p.number)));
    }
}

/// A subset name: a DNS-1123 label.
pub(crate) fn validate_subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("subset name cannot be empty".into());
    }
    if !is_dns1123_label(name) {
        return Err(format!("subset name is invalid: {name}"));
    }
    Ok(())
}

fn check_retry(r: &mut Report, path: &str, retry: &HttpRetry) {
    if retry.attempts < 0 {
        r.error(at(path, "attempts"), "attempts cannot be negative");
    }
    if retry.attempts == 0
        && (retry.per_try_timeout.is_some() || retry.retry_on.is_some() || retry.retry_remote_localities.is_some())
    {
        r.error(path, "http retry policy configured when attempts are set to 0 (disabled)");
    }
    if let Some(t) = &retry.per_try_timeout {
        r.check(at(path, "perTryTimeout"), validate_duration(t));
    }
    if let Some(b) = &retry.backoff {
        r.check(at(path, "backoff"), validate_duration(b));
    }
    if let Some(on) = &retry.retry_on {
        for policy in on.split(',') {
            let code_ok = policy.parse::<u32>().is_ok_and(is_known_http_status);
            if !code_ok && !RETRY_ON_POLICIES.contains(&policy) {
                r.error(at(path, "retryOn"), format!("{policy:?} is not a valid retryOn policy"));
            }
        }
    }
}

fn check_redirect(r: &mut Report, path: &str, red: &HttpRedirect) {
    let empty = |s: &Option<String>| s.as_deref().unwrap_or_default().is_empty();
    if empty(&red.uri) && empty(&red.authority) && red.port.is_none() && red.derive_port.is_none() && empty(&red.scheme)
    {
        r.error(path, "redirect must specify URI, authority, scheme, or port");
    }
    if red.port.is_some() && red.derive_port.is_some() {
        r.error(path, "only one of port or derivePort may be set");
    }
    if let Some(code) = red.redirect_code
        && code != 0
        && !(300..=399).contains(&code)
    {
        r.error(at(path, "redirectCode"), format!("{code} is not a valid redirect code, must be 3xx"));
    }
    if let Some(s) = &red.scheme
        && !s.is_empty()
        && s != "http"
        && s != "https"
    {
        r.error(at(path, "scheme"), "invalid redirect scheme, must be \"http\" or \"https\"");
    }
    if let Some(p) = red.port {
        r.check(at(path, "port"), validate_port(i64::from(p)));
    }
}

fn check_rewrite(r: &mut Report, path: &str, rw: &HttpRewrite) {
    let uri = rw.uri.as_deref().unwrap_or_default();
    let authority = rw.authority.as_deref().unwrap_or_default();
    if !uri.is_empty() && rw.uri_regex_rewrite.is_some() {
        r.error(path, "rewrite may only contain one of URI or UriRegexRewrite");
    }
    if uri.is_empty() && rw.uri_regex_rewrite.is_none() && authority.is_empty() {
        r.error(
            path,
            "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified",
        );
    }
    if let Some(rr) = &rw.uri_regex_rewrite {
        let rpath = at(path, "uriRegexRewrite");
        if rr.r#match.is_empty() || rr.rewrite.is_empty() {
            r.error(rpath, "UriRegexRewrite requires both Rewrite and Match fields to be specified");
        } else {
            r.check(at(&rpath, "match"), validate_regex(&rr.r#match, "HTTPRewrite.UriRegexRewrite.Match"));
        }
    }
}

fn check_http_route_destinations(r: &mut Report, path: &str, dests: &[HttpRouteDestination]) {
    let mut total: i64 = 0;
    for (i, d) in dests.iter().enumerate() {
        let dpath = idx(path, i);
        match &d.destination {
            None => r.error(at(&dpath, "destination"), "required value: destination is required"),
            Some(dest) => check_destination(r, &at(&dpath, "destination"), dest),
        }
        if let Some(h) = &d.headers {
            check_headers(r, &at(&dpath, "headers"), h);
        }
        if d.weight < 0 {
            r.error(at(&dpath, "weight"), format!("weight {} < 0", d.weight));
        }
        total += i64::from(d.weight);
    }
    if dests.len() > 1 && total == 0 {
        r.error(path, "total destination weight = 0");
    }
}

fn check_route_destinations(r: &mut Report, path: &str, dests: &[RouteDestination]) {
    let mut total: i64 = 0;
    for (i, d) in dests.iter().enumerate() {
        let dpath = idx(path, i);
        match &d.destination {
            None => r.error(at(&dpath, "destination"), "required value: destination is required"),
            Some(dest) => check_destination(r, &at(&dpath, "destination"), dest),
        }
        if d.weight < 0 {
            r.error(at(&dpath, "weight"), format!("weight {} < 0", d.weight));
        }
        total += i64::from(d.weight);
    }
    if dests.len() > 1 && total == 0 {
        r.error(path, "total destination weight = 0");
    }
}

fn check_tls_match(r: &mut Report, path: &str, m: &TlsMatchAttributes, spec: &VirtualServiceSpec) {
    if m.sni_hosts.is_empty() {
        r.error(at(path, "sniHosts"), "TLS match must have at least one SNI host");
    }
    for (i, sni) in m.sni_hosts.iter().enumerate() {
        let spath = idx(&at(path, "sniHosts"), i);
        let result = if is_gateway_only(spec) {
            validate_wildcard_domain_for_gateway(true, sni)
        } else {
            validate_wildcard_domain(sni)
        };
        if let Err(e) = result {
            if is_ip(sni) {
                r.warn(
                    spath,
                    format!("using an IP address ({sni:?}) goes against SNI spec and most clients do not support this"),
                );
            } else {
                r.error(spath, e);
            }
            continue;
        }
        if !spec.hosts.iter().any(|h| host::subset_of(sni, h)) {
            r.error(
                spath,
                format!(
                    "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
                    spec.hosts.join(", ")
                ),
            );
        }
    }
    for (i, s) in m.destination_subnets.iter().enumerate() {
        r.check(idx(&at(path, "destinationSubnets"), i), validate_ip_subnet(s));
    }
    if let Some(p) = m.port {
        r.check(at(path, "port"), validate_port(i64::from(p)));
    }
    r.check(at(path, "sourceLabels"), validate_labels(&m.source_labels));
    check_gateway_names(r, &at(path, "gateways"), &m.gateways);
}

/// Istio's unreachable-rule analysis (warnings): a catch-all rule before the last, and rules whose
/// every match repeats an earlier one.
fn check_unreachable_rules(r: &mut Report, spec: &VirtualServiceSpec) {
    fn analyze<M: PartialEq + Clone>(
        r: &mut Report,
        base: &str,
        rules: &[(String, Vec<M>)],
        normalize: impl Fn(&M) -> M,
    ) {
        let mut seen: Vec<(M, usize)> = Vec::new();
        let mut catch_all_seen = false;
        for (n, (name, matches)) in rules.iter().enumerate() {
            let path = idx(base, n);
            if matches.is_empty() {
                if catch_all_seen {
                    r.warn(
                        path,
                        format!("virtualService rule {name} not used (only the last rule can have no matches)"),
                    );
                }
                catch_all_seen = true;
                continue;
            }
            let mut duplicates = 0;
            for (j, m) in matches.iter().enumerate() {
                let norm = normalize(m);
                if let Some((_, prior)) = seen.iter().find(|(s, _)| *s == norm) {
                    r.warn(
                        idx(&at(&path, "match"), j),
                        format!("virtualService rule {name} match #{j} is not used (duplicate/overlapping match in rule {})", rules[*prior].0),
                    );
                    duplicates += 1;
                } else {
                    seen.push((norm, n));
                }
            }
            if duplicates == matches.len() {
                r.warn(path, format!("virtualService rule {name} not used (all matches used by prior rules)"));
            }
        }
    }
    let http: Vec<(String, Vec<HttpMatchRequest>)> = spec
        .http
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.as_ref().map(|n| format!("{n:?}")).unwrap_or_else(|| format!("#{i}")), h.r#match.clone()))
        .collect();
    analyze(r, "spec.http", &http, |m| HttpMatchRequest { name: None, ..m.clone() });
    let tcp: Vec<_> = spec.tcp.iter().enumerate().map(|(i, t)| (format!("#{i}"), t.r#match.clone())).collect();
    analyze(r, "spec.tcp", &tcp, Clone::clone);
    let tls: Vec<_> = spec.tls.iter().enumerate().map(|(i, t)| (format!("#{i}"), t.r#match.clone())).collect();
    analyze(r, "spec.tls", &tls, Clone::clone);
}
