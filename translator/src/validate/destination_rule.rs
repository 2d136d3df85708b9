//! DestinationRule rules (Istio's `ValidateDestinationRule` and the CRD schema).

use std::collections::BTreeSet;

use crate::api::istio::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy,
    LoadBalancerSettings, LocalityLbSetting, OutlierDetection, TrafficPolicy, TunnelSettings,
};

use super::common::{
    Report, at, check_export_to, check_match_labels_selector, idx, is_ip, validate_duration, validate_fqdn,
    validate_labels, validate_port, validate_wildcard_domain,
};
use super::virtual_service::validate_subset_name;

pub(crate) fn check(r: &mut Report, namespace: &str, spec: &DestinationRuleSpec) {
    if spec.host.is_empty() {
        r.error("spec.host", "required value: host is required");
    } else {
        r.check("spec.host", validate_wildcard_domain(&spec.host));
    }
    if let Some(tp) = &spec.traffic_policy {
        check_traffic_policy(r, "spec.trafficPolicy", tp);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        let path = idx("spec.subsets", i);
        if !names.insert(subset.name.as_str()) {
            r.error(at(&path, "name"), format!("duplicate subset names: {}", subset.name));
        }
        r.check(at(&path, "name"), validate_subset_name(&subset.name));
        r.check(at(&path, "labels"), validate_labels(&subset.labels));
        if let Some(tp) = &subset.traffic_policy {
            check_traffic_policy(r, &at(&path, "trafficPolicy"), tp);
        }
    }
    check_export_to(r, "spec.exportTo", namespace, &spec.export_to, false, spec.workload_selector.is_some());
    check_match_labels_selector(r, "spec.workloadSelector", spec.workload_selector.as_ref());
}

fn check_traffic_policy(r: &mut Report, path: &str, tp: &TrafficPolicy) {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        r.error(path, "traffic policy must have at least one field");
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        r.error(path, "tunnel and proxyProtocol must not be set together");
        return;
    }
    if let Some(od) = &tp.outlier_detection {
        check_outlier_detection(r, &at(path, "outlierDetection"), od);
    }
    if let Some(cp) = &tp.connection_pool {
        check_connection_pool(r, &at(path, "connectionPool"), cp);
    }
    if let Some(lb) = &tp.load_balancer {
        check_load_balancer(r, &at(path, "loadBalancer"), lb, tp.outlier_detection.is_some());
    }
    if let Some(tls) = &tp.tls {
        check_client_tls(r, &at(path, "tls"), tls);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let ppath = idx(&at(path, "portLevelSettings"), i);
        match pl.port {
            None => r.error(at(&ppath, "port"), "portTrafficPolicy must have valid port"),
            Some(p) => r.check(at(&ppath, "port.number"), validate_port(i64::from(p.number))),
        }
        if pl.outlier_detection.is_none()
            && pl.connection_pool.is_none()
            && pl.load_balancer.is_none()
            && pl.tls.is_none()
        {
            r.error(ppath, "port traffic policy must have at least one field");
            continue;
        }
        if let Some(od) = &pl.outlier_detection {
            check_outlier_detection(r, &at(&ppath, "outlierDetection"), od);
        }
        if let Some(cp) = &pl.connection_pool {
            check_connection_pool(r, &at(&ppath, "connectionPool"), cp);
        }
        if let Some(lb) = &pl.load_balancer {
            check_load_balancer(r, &at(&ppath, "loadBalancer"), lb, pl.outlier_detection.is_some());
        }
        if let Some(tls) = &pl.tls {
            check_client_tls(r, &at(&ppath, "tls"), tls);
        }
    }
    if let Some(t) = &tp.tunnel {
        check_tunnel(r, &at(path, "tunnel"), t);
    }
    if let Some(rb) = &tp.retry_budget
        && let Some(p) = rb.percent
        && !(0.0..=100.0).contains(&p)
    {
        r.error(at(path, "retryBudget.percent"), format!("invalid value: {p}: must be between 0 and 100"));
    }
}

fn check_tunnel(r: &mut Report, path: &str, t: &TunnelSettings) {
    if let Some(p) = &t.protocol
        && !p.is_empty()
        && p != "CONNECT"
        && p != "POST"
    {
        r.error(at(path, "protocol"), "tunnel protocol must be \"CONNECT\" or \"POST\"");
    }
    if let Err(e) = validate_fqdn(&t.target_host)
        && !is_ip(&t.target_host)
    {
        r.error(at(path, "targetHost"), format!("tunnel target host must be valid FQDN or IP address: {e}"));
    }
    if let Err(e) = validate_port(i64::from(t.target_port)) {
        r.error(at(path, "targetPort"), format!("tunnel target port is invalid: {e}"));
    }
}

fn check_outlier_detection(r: &mut Report, path: &str, od: &OutlierDetection) {
    if let Some(t) = &od.base_ejection_time {
        r.check(at(path, "baseEjectionTime"), validate_duration(t));
    }
    if od.consecutive_errors.is_some_and(|n| n != 0) {
        r.warn(
            at(path, "consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if !od.split_external_local_origin_errors.unwrap_or(false)
        && od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        r.error(
            at(path, "consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    if let Some(t) = &od.interval {
        r.check(at(path, "interval"), validate_duration(t));
    }
    for (field, v) in [("maxEjectionPercent", od.max_ejection_percent), ("minHealthPercent", od.min_health_percent)] {
        if let Some(v) = v
            && !(0..=100).contains(&v)
        {
            r.error(at(path, field), format!("percentage {v} is not in range 0..100"));
        }
    }
}

/// Connection pool settings (also used by the Sidecar's inbound pools).
pub(crate) fn check_connection_pool(r: &mut Report, path: &str, cp: &ConnectionPoolSettings) {
    if cp.http.is_none() && cp.tcp.is_none() {
        r.error(path, "connection pool must have at least one field");
        return;
    }
    if let Some(h) = &cp.http {
        let hpath = at(path, "http");
        for (field, v, what) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests, "http1 max pending requests"),
            ("http2MaxRequests", h.http2_max_requests, "http2 max requests"),
            ("maxRequestsPerConnection", h.max_requests_per_connection, "max requests per connection"),
            ("maxRetries", h.max_retries, "max retries"),
            ("maxConcurrentStreams", h.max_concurrent_streams, "max concurrent streams"),
        ] {
            if v.is_some_and(|v| v < 0) {
                r.error(at(&hpath, field), format!("{what} must be non-negative"));
            }
        }
        if let Some(t) = &h.idle_timeout {
            r.check(at(&hpath, "idleTimeout"), validate_duration(t));
        }
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && h.use_client_protocol == Some(true) {
            r.error(hpath.clone(), "use client protocol must not be true when H2UpgradePolicy is UPGRADE");
        }
        if let Some(ka) = &h.http2_keep_alive {
            for (field, v) in [("interval", &ka.interval), ("timeout", &ka.timeout)] {
                if let Some(t) = v {
                    r.check(at(&at(&hpath, "http2KeepAlive"), field), validate_duration(t));
                }
            }
        }
    }
    if let Some(t) = &cp.tcp {
        let tpath = at(path, "tcp");
        if t.max_connections.is_some_and(|v| v < 0) {
            r.error(at(&tpath, "maxConnections"), "max connections must be non-negative");
        }
        for (field, v) in [
            ("connectTimeout", &t.connect_timeout),
            ("maxConnectionDuration", &t.max_connection_duration),
            ("idleTimeout", &t.idle_timeout),
        ] {
            if let Some(d) = v {
                r.check(at(&tpath, field), validate_duration(d));
            }
        }
        if let Some(ka) = &t.tcp_keepalive {
            for (field, v) in [("time", &ka.time), ("interval", &ka.interval)] {
                if let Some(d) = v {
                    r.check(at(&at(&tpath, "tcpKeepalive"), field), validate_duration(d));
                }
            }
        }
    }
}

/// Envoy's primality test for Maglev table sizes (Istio copies it to match exactly).
fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let mut f = 3u64;
    while f.saturating_mul(f) <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

fn check_load_balancer(r: &mut Report, path: &str, lb: &LoadBalancerSettings, has_outlier: bool) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        r.error(path, "only one of simple or consistentHash may be set");
    }
    if let Some(ch) = &lb.consistent_hash {
        let cpath = at(path, "consistentHash");
        let keys = usize::from(ch.http_header_name.is_some())
            + usize::from(ch.http_cookie.is_some())
            + usize::from(ch.use_source_ip.is_some())
            + usize::from(ch.http_query_parameter_name.is_some());
        if keys > 1 {
            r.error(
                cpath.clone(),
                "only one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName may be set",
            );
        }
        if let Some(c) = &ch.http_cookie
            && c.name.is_empty()
        {
            r.error(at(&cpath, "httpCookie.name"), "name required for HttpCookie");
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            r.error(cpath.clone(), "only one of ringHash or maglev may be set");
        }
        if ch.minimum_ring_size.is_some_and(|n| n != 0) {
            r.warn(
                at(&cpath, "minimumRingSize"),
                "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
            );
            if ch.ring_hash.is_some() || ch.maglev.is_some() {
                r.error(
                    at(&cpath, "minimumRingSize"),
                    "only one of MinimumRingSize or Maglev/Ringhash can be specified",
                );
            }
        }
        if let Some(ml) = &ch.maglev {
            let size = ml.table_size.unwrap_or(0);
            let mpath = at(&cpath, "maglev.tableSize");
            if size == 0 {
                r.error(mpath.clone(), "tableSize must be set for maglev");
            }
            if size >= 5_000_011 {
                r.error(mpath.clone(), "tableSize must be less than 5000011 for maglev");
            }
            if !is_prime(size) {
                r.error(mpath, "tableSize must be a prime number for maglev");
            }
        }
    }
    if let Some(loc) = &lb.locality_lb_setting {
        check_locality_lb(r, &at(path, "localityLbSetting"), loc, has_outlier);
    }
    if let Some(d) = &lb.warmup_duration_secs {
        r.check(at(path, "warmupDurationSecs"), validate_duration(d));
    }
    if let Some(w) = &lb.warmup {
        let wpath = at(path, "warmup");
        match &w.duration {
            None => r.error(at(&wpath, "duration"), "required value: warmup duration is required"),
            Some(d) => r.check(at(&wpath, "duration"), validate_duration(d)),
        }
        if let Some(p) = w.minimum_percent
            && !(0.0..=100.0).contains(&p)
        {
            r.error(at(&wpath, "minimumPercent"), format!("invalid value: {p}: must be between 0 and 100"));
        }
        if let Some(a) = w.aggression
            && a < 0.0
        {
            r.error(at(&wpath, "aggression"), format!("invalid value: {a}: must be greater than or equal to 0"));
        }
    }
}

fn check_locality_lb(r: &mut Report, path: &str, lb: &LocalityLbSetting, has_outlier: bool) {
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        r.error(path, "can not simultaneously specify 'distribute' and 'failover'");
        return;
    }
    if !lb.failover.is_empty() {
        for label in &lb.failover_priority {
            if matches!(
                label.as_str(),
                "topology.kubernetes.io/region" | "topology.kubernetes.io/zone" | "topology.istio.io/subzone"
            ) {
                r.error(
                    at(path, "failoverPriority"),
                    format!(
                        "can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"
                    ),
                );
                return;
            }
        }
    }
    let mut sources = Vec::new();
    for (i, d) in lb.distribute.iter().enumerate() {
        let dpath = idx(&at(path, "distribute"), i);
        sources.push(d.from.clone());
        let mut total: u64 = 0;
        for w in d.to.values() {
            if *w == 0 || *w > 100 {
                r.error(at(&dpath, "to"), "locality weight must be in range [1, 100]");
                return;
            }
            total += u64::from(*w);
        }
        if total != 100 {
            r.error(at(&dpath, "to"), format!("total locality weight {total} != 100"));
            return;
        }
        let dests: Vec<String> = d.to.keys().cloned().collect();
        r.check(at(&dpath, "to"), check_localities(&dests));
    }
    r.check(at(path, "distribute"), check_localities(&sources));
    if (!lb.failover.is_empty() || !lb.failover_priority.is_empty()) && !has_outlier {
        r.warn(path, "outlier detection policy must be provided for failover");
    }
    for (i, f) in lb.failover.iter().enumerate() {
        let fpath = idx(&at(path, "failover"), i);
        if f.from == f.to {
            r.error(fpath.clone(), "locality lb failover settings must specify different regions");
        }
        if f.from.contains('/') || f.to.contains('/') {
            r.error(fpath.clone(), "locality lb failover only specify region");
        }
        if f.from.contains('*') || f.to.contains('*') {
            r.error(fpath, "locality lb failover region should not contain '*' wildcard");
        }
    }
}

/// Localities `region[/zone[/subzone]]` with at most one trailing `*`, none overlapping.
fn check_localities(localities: &[String]) -> Result<(), String> {
    let mut seen: Vec<Vec<String>> = Vec::new();
    for loc in localities {
        let stars = loc.matches('*').count();
        if stars > 1 || (stars == 1 && !loc.ends_with('*')) {
            return Err(format!("locality {loc} wildcard '*' number can not exceed 1 and must be in the end"));
        }
        let parts: Vec<String> = loc.splitn(3, '/').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!("locality {loc} must not contain empty region/zone/subzone info"));
        }
        // Two localities overlap when one is a prefix of the other or either ends in `*` at a
        // level the other shares.
        let covers = |a: &[String], b: &[String]| -> bool {
            a.iter().zip(b.iter()).all(|(x, y)| x == y || x == "*" || y == "*")
                && (a.len() <= b.len() || a.last().is_some_and(|l| l == "*"))
        };
        if seen.iter().any(|s| covers(s, &parts) || covers(&parts, s)) {
            return Err(format!("locality {loc} overlap with previous specified ones"));
        }
        seen.push(parts);
    }
    Ok(())
}

/// Upstream TLS (Istio's `ValidateTLS`).
pub(crate) fn check_client_tls(r: &mut Report, path: &str, tls: &ClientTlsSettings) {
    let set = |s: &Option<String>| s.as_deref().is_some_and(|v| !v.is_empty());
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    if tls.insecure_skip_verify == Some(true) {
        if mode == ClientTlsMode::Simple
            && (set(&tls.ca_certificates) || set(&tls.credential_name) || !tls.subject_alt_names.is_empty())
        {
            r.error(
                path,
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
            );
        }
        if mode == ClientTlsMode::Mutual && (set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty()) {
            r.error(path, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true");
        }
    }
    if matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) && set(&tls.credential_name) {
        if set(&tls.client_certificate) || set(&tls.ca_certificates) || set(&tls.private_key) || set(&tls.ca_crl) {
            r.error(path, "cannot specify client certificates or CA certificate or CA CRL If credentialName is set");
        }
        return;
    }
    if mode == ClientTlsMode::Mutual {
        if !set(&tls.client_certificate) {
            r.error(at(path, "clientCertificate"), "client certificate required for mutual tls");
        }
        if !set(&tls.private_key) {
            r.error(at(path, "privateKey"), "private key required for mutual tls");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(2, true)]
    #[case(65537, true)]
    #[case(65536, false)]
    #[case(9, false)]
    #[case(5_000_011, true)]
    fn primes(#[case] n: u64, #[case] want: bool) {
        assert_eq!(is_prime(n), want);
    }

    #[rstest]
    #[case(&["us-west/*", "us-east"], true)]
    #[case(&["us-west/*", "us-west/zone1"], false)]
    #[case(&["us-west", "us-west"], false)]
    #[case(&["*", "us-east"], false)]
    #[case(&["us-west/z1/*", "us-west/z2"], true)]
    #[case(&["us/*/x"], false)]
    #[case(&["us//x"], false)]
    fn localities(#[case] locs: &[&str], #[case] ok: bool) {
        let v: Vec<String> = locs.iter().map(|s| s.to_string()).collect();
        assert_eq!(check_localities(&v).is_ok(), ok, "{locs:?}");
    }
}
