//! Building blocks shared by the per-kind rules: the diagnostic collector, field paths, and Istio's
//! checks for hosts, ports, durations, addresses, labels, selectors, regexes and headers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::LazyLock;

use regex::Regex;

use crate::api::istio::{MatchLabelsSelector, StringMatch, parse_duration};
use crate::diag::Diagnostic;

/// Collects the diagnostics of one object.
pub(crate) struct Report {
    object: String,
    out: Vec<Diagnostic>,
}

impl Report {
    /// A collector for `object` (`Kind ns/name`).
    pub(crate) fn new(object: impl Into<String>) -> Self {
        Self { object: object.into(), out: Vec::new() }
    }

    /// Records an error at `field`.
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(Diagnostic::error(self.object.clone(), field, message));
    }

    /// Records a warning at `field`.
    pub(crate) fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(Diagnostic::warning(self.object.clone(), field, message));
    }

    /// Records `result`'s error, if any, at `field`.
    pub(crate) fn check(&mut self, field: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(field, message);
        }
    }

    /// The diagnostics, in the order found.
    pub(crate) fn finish(self) -> Vec<Diagnostic> {
        self.out
    }
}

/// `base.child`.
pub(crate) fn at(base: &str, child: &str) -> String {
    if base.is_empty() { child.to_string() } else { format!("{base}.{child}") }
}

/// `base[index]`.
pub(crate) fn idx(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

/// `base[key]` for map entries.
pub(crate) fn key(base: &str, key: &str) -> String {
    format!("{base}[{key}]")
}

/// A fixed pattern, compiled on first use. `None` only if the literal were invalid, which the
/// tests rule out; a missing pattern matches nothing rather than panicking.
type Pattern = LazyLock<Option<Regex>>;

static DNS1123_LABEL: Pattern = LazyLock::new(|| Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").ok());
static WILDCARD_DNS1123_LABEL: Pattern =
    LazyLock::new(|| Regex::new(r"^(\*|(\*|\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?)$").ok());
static QUALIFIED_NAME: Pattern = LazyLock::new(|| Regex::new(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$").ok());
static LABEL_VALUE: Pattern = LazyLock::new(|| Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").ok());
static HEADER_NAME: Pattern = LazyLock::new(|| Regex::new(r"^[-_A-Za-z0-9]+$").ok());
static WE_PORT_NAME: Pattern = LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$").ok());

fn matches(p: &Pattern, s: &str) -> bool {
    p.as_ref().is_some_and(|r| r.is_match(s))
}

/// A DNS-1123 label: lowercase alphanumerics and `-`, at most 63 characters.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && matches(&DNS1123_LABEL, s)
}

/// A DNS-1123 label, optionally prefixed by `*` or `*.`, or `*` alone.
fn is_wildcard_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && matches(&WILDCARD_DNS1123_LABEL, s)
}

fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or_default();
    if !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"));
    }
    for (i, label) in parts.iter().enumerate() {
        // A trailing dot (`istio.io.`) is an unambiguous absolute name.
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!("domain name {domain:?} invalid (label {label:?} invalid)"));
        }
    }
    Ok(())
}

/// A fully qualified domain name.
pub(crate) fn validate_fqdn(fqdn: &str) -> Result<(), String> {
    dns1123_preconditions(fqdn)?;
    dns1123_labels(fqdn)
}

/// An FQDN whose first label may be a wildcard (`*.example.com`, `*`).
pub(crate) fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!("domain name {domain:?} invalid (label {first:?} invalid)"));
    }
    match rest {
        Some(r) => dns1123_labels(r),
        None => Ok(()),
    }
}

/// Like [`validate_wildcard_domain`], but SNI hosts of gateway-bound VirtualServices may also be
/// Istio's generated `outbound_.<port>_.<subset>_.<host>` names (AUTO_PASSTHROUGH).
pub(crate) fn validate_wildcard_domain_for_gateway(sni: bool, domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let first = domain.split('.').next().unwrap_or_default();
    if sni && first == "outbound_" {
        let rest = &domain["outbound_".len()..];
        // Istio's check is the pattern `outbound_.([0-8].*).*`: a separator, then a port digit.
        if rest.len() >= 2 && (b'0'..=b'8').contains(&rest.as_bytes()[1]) {
            return Ok(());
        }
        return Err(format!("domain name {domain:?} invalid (label {first:?} invalid)"));
    }
    validate_wildcard_domain(domain)
}

/// Istio rejects wildcards anywhere but as the whole first label (`*.x`, `*`).
pub(crate) fn validate_partial_wildcard(host: &str) -> Result<(), String> {
    if host.contains('*') && host.len() != 1 && !host.starts_with("*.") {
        return Err(format!("partial wildcard {host:?} not allowed"));
    }
    Ok(())
}

fn sidecar_or_gateway_host_part(hostname: &str, is_gateway: bool) -> Vec<String> {
    let mut errs = Vec::new();
    if hostname != "*" && !hostname.contains('.') {
        errs.push("short names (non FQDN) are not allowed".to_string());
    }
    if let Err(e) = validate_wildcard_domain(hostname) {
        // Gateways also accept an IP address as a host.
        if !is_gateway || !is_ip(hostname) {
            errs.push(e);
        }
    }
    if let Err(e) = validate_partial_wildcard(hostname) {
        errs.push(e);
    }
    errs
}

/// A `namespace/host` entry of a Gateway server or a Sidecar egress listener. Gateways also accept
/// a bare host.
pub(crate) fn validate_namespace_slash_host(hostname: &str, is_gateway: bool) -> Vec<String> {
    let Some((ns, host)) = hostname.split_once('/') else {
        if is_gateway {
            return sidecar_or_gateway_host_part(hostname, true);
        }
        return vec!["host must be of form namespace/dnsName".to_string()];
    };
    let mut errs = Vec::new();
    if ns.is_empty() || host.is_empty() {
        errs.push("config namespace and dnsName in host entry cannot be empty".to_string());
    }
    let special: &[&str] = if is_gateway { &["*", "."] } else { &["*", ".", "~"] };
    if !special.contains(&ns) && !is_dns1123_label(ns) {
        let kind = if is_gateway { "gateway" } else { "sidecar" };
        errs.push(format!("invalid namespace value {ns:?} in {kind}"));
    }
    errs.extend(sidecar_or_gateway_host_part(host, is_gateway));
    errs
}

/// A port number.
pub(crate) fn validate_port(port: i64) -> Result<(), String> {
    if (1..=65535).contains(&port) { Ok(()) } else { Err(format!("port must be between 1-65535 (got {port})")) }
}

/// A port name: a DNS-1123 label.
pub(crate) fn validate_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) { Ok(()) } else { Err(format!("invalid port name: {name:?}")) }
}

/// A WorkloadEntry port-map key, as the CRD checks it.
pub(crate) fn is_valid_endpoint_port_name(name: &str) -> bool {
    name.len() < 63 && matches(&WE_PORT_NAME, name)
}

/// An application protocol Istio knows (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Tcp,
    Udp,
    Grpc,
    GrpcWeb,
    Http,
    HttpProxy,
    Http2,
    Https,
    Tls,
    Mongo,
    Redis,
    Mysql,
    Unsupported,
}

impl Proto {
    pub(crate) fn parse(s: &str) -> Proto {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "grpc" => Proto::Grpc,
            "grpc-web" => Proto::GrpcWeb,
            "http" => Proto::Http,
            "http_proxy" => Proto::HttpProxy,
            "http2" => Proto::Http2,
            "https" => Proto::Https,
            "tls" => Proto::Tls,
            "mongo" => Proto::Mongo,
            "redis" => Proto::Redis,
            "mysql" => Proto::Mysql,
            _ => Proto::Unsupported,
        }
    }

    pub(crate) fn is_http(self) -> bool {
        matches!(self, Proto::Http | Proto::HttpProxy | Proto::Http2 | Proto::Grpc | Proto::GrpcWeb)
    }

    pub(crate) fn is_tls(self) -> bool {
        matches!(self, Proto::Https | Proto::Tls)
    }

    pub(crate) fn is_tcp(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Https | Proto::Tls | Proto::Mongo | Proto::Redis | Proto::Mysql)
    }
}

/// A protocol name; empty means "sniff".
pub(crate) fn validate_protocol(p: &str) -> Result<(), String> {
    if !p.is_empty() && Proto::parse(p) == Proto::Unsupported {
        Err(format!("unsupported protocol: {p}"))
    } else {
        Ok(())
    }
}

/// Whether `s` is an IPv4 or IPv6 address.
pub(crate) fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// An IP address.
pub(crate) fn validate_ip(s: &str) -> Result<(), String> {
    if is_ip(s) { Ok(()) } else { Err(format!("{s} is not a valid IP")) }
}

/// An IP address or a CIDR block.
pub(crate) fn validate_ip_subnet(s: &str) -> Result<(), String> {
    if s.matches('/').count() == 1 {
        let (addr, len) = s.split_once('/').unwrap_or_default();
        let max = match addr.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => return Err(format!("{s} is not a valid CIDR block")),
        };
        return match len.parse::<u8>() {
            Ok(n) if n <= max && !len.starts_with('+') => Ok(()),
            _ => Err(format!("{s} is not a valid CIDR block")),
        };
    }
    validate_ip(s)
}

/// A Unix socket path (after `unix://`): absolute file path or `@abstract`.
pub(crate) fn validate_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

/// A duration Istio accepts: at least 1ms, millisecond precision.
pub(crate) fn validate_duration(s: &str) -> Result<(), String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_millis(1) {
        return Err(format!("duration {s:?} must be greater than 1ms"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("duration {s:?}: only durations to ms precision are supported"));
    }
    Ok(())
}

/// Pod labels (or label constraints): Kubernetes label key and value syntax.
pub(crate) fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in labels {
        if !is_label_key(k) {
            return Err(format!("invalid tag key: {k:?}"));
        }
        if !(v.len() <= 63 && matches(&LABEL_VALUE, v)) {
            return Err(format!("invalid tag value: {v:?}"));
        }
    }
    Ok(())
}

fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || p.split('.').any(|l| !is_dns1123_label(l)))
    {
        return false;
    }
    !name.is_empty() && name.len() <= 63 && matches(&QUALIFIED_NAME, name)
}

/// Selector label rules shared by every kind: no empty keys, no wildcards.
pub(crate) fn check_selector_labels(r: &mut Report, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if k.is_empty() {
            r.error(key(path, k), format!("empty key is not supported in selector: \"{k}={v}\""));
        }
        if k.contains('*') || v.contains('*') {
            r.error(key(path, k), format!("wildcard is not supported in selector: \"{k}={v}\""));
        }
    }
}

/// `istio.type.v1beta1.WorkloadSelector` (`matchLabels`).
pub(crate) fn check_match_labels_selector(r: &mut Report, path: &str, selector: Option<&MatchLabelsSelector>) {
    if let Some(s) = selector {
        let labels_path = at(path, "matchLabels");
        check_selector_labels(r, &labels_path, &s.match_labels);
        if s.match_labels.is_empty() {
            r.warn(path, "workload selector specified without labels");
        }
    }
}

/// `exportTo` entries: `.`, `*`, namespaces (and `~` for ServiceEntries); no duplicates; `*` alone;
/// a DestinationRule with a workload selector only in its own namespace.
pub(crate) fn check_export_to(
    r: &mut Report,
    path: &str,
    namespace: &str,
    export_to: &[String],
    is_service_entry: bool,
    dr_with_selector: bool,
) {
    if export_to.is_empty() {
        return;
    }
    let mut seen = BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let field = idx(path, i);
        let k = if e == "." { namespace.to_string() } else { e.clone() };
        if seen.contains(&k) {
            if k != *e {
                r.error(field, format!("duplicate entries in exportTo: . and current namespace {namespace}"));
            } else {
                r.error(field, format!("duplicate entries in exportTo for entry {e}"));
            }
            continue;
        }
        let valid = k == "*" || (is_service_entry && e == "~") || is_dns1123_label(&k);
        if valid {
            seen.insert(k);
        } else {
            r.error(field, "only .,*, or a valid DNS 1123 label is allowed as exportTo entry");
        }
    }
    if dr_with_selector && !seen.is_empty() {
        if seen.contains(namespace) {
            if seen.len() > 1 {
                r.error(path, "destination rule with workload selector cannot have multiple entries in exportTo");
            }
        } else {
            r.error(path, "destination rule with workload selector cannot have exportTo beyond current namespace");
        }
    }
    if seen.contains("*") && export_to.len() > 1 {
        r.error(path, "cannot have both public (*) and non-public exportTo values for a resource");
    }
    if seen.contains("~") && export_to.len() > 1 {
        r.error(path, "cannot export service entry to no one (~) and someone");
    }
}

/// An RE2 pattern (Envoy's regex engine); Rust's `regex` accepts the same syntax.
pub(crate) fn validate_regex(pattern: &str, what: &str) -> Result<(), String> {
    if pattern.len() > 1024 {
        return Err(format!("{what:?}: regex is too large, max length allowed is 1024"));
    }
    Regex::new(pattern).map(|_| ()).map_err(|e| {
        let detail = e.to_string().lines().last().unwrap_or_default().trim().to_string();
        format!("{what:?}: invalid regex {pattern:?}: {detail}; Istio uses RE2 style regex-based match (https://github.com/google/re2/wiki/Syntax)")
    })
}

/// A [`StringMatch`]: one member at most, a compilable regex.
pub(crate) fn check_string_match(r: &mut Report, path: &str, m: &StringMatch, what: &str) {
    if m.members_set() > 1 {
        r.error(path, "only one of exact, prefix or regex may be set");
    }
    if let Some(re) = &m.regex {
        if re.is_empty() {
            r.error(at(path, "regex"), format!("{what:?}: regex string match should not be empty"));
        } else {
            r.check(at(path, "regex"), validate_regex(re, what));
        }
    }
}

/// An HTTP header name.
pub(crate) fn validate_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if !matches(&HEADER_NAME, name) {
        return Err(format!("header name {name} is not a valid header name"));
    }
    Ok(())
}

/// An HTTP header value for Envoy: no control characters, `%` either doubled or enclosing a
/// command (`%HOSTNAME%`).
pub(crate) fn validate_header_value(value: &str) -> Result<(), String> {
    if value.chars().any(|c| (c as u32) < 0x20 && c != '\t' || c == '\u{7f}') {
        return Err(format!("header value configuration {value} is invalid"));
    }
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if bytes.get(i + 1) == Some(&b'%') {
                i += 2;
                continue;
            }
            match value[i + 1..].find('%') {
                Some(end) if end > 0 => i += end + 2,
                _ => {
                    return Err(format!(
                        "header value configuration: invalid header value {value:?}: a % must be doubled or close a command like %HOSTNAME%"
                    ));
                }
            }
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// The cipher suites Envoy (BoringSSL) accepts by name.
pub(crate) const VALID_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("example.com", true)]
    #[case("*.example.com", true)]
    #[case("*", true)]
    #[case("*x", true)]
    #[case("foo.*.com", false)]
    #[case("Example.com", false)]
    #[case("a.123", false)]
    #[case("istio.io.", true)]
    #[case("", false)]
    fn wildcard_domains(#[case] host: &str, #[case] ok: bool) {
        assert_eq!(validate_wildcard_domain(host).is_ok(), ok, "{host}");
    }

    #[rstest]
    #[case("1.2.3.4", true)]
    #[case("1.2.3.4/16", true)]
    #[case("1.2.3.4/99", false)]
    #[case("2001:db8::/64", true)]
    #[case("001:db8::", true)]
    #[case("x/1", false)]
    fn subnets(#[case] s: &str, #[case] ok: bool) {
        assert_eq!(validate_ip_subnet(s).is_ok(), ok, "{s}");
    }

    #[rstest]
    #[case("foo", true)]
    #[case("%HOSTNAME%", true)]
    #[case("100%%", true)]
    #[case("prefix %HOSTNAME% suffix", true)]
    #[case("abc%123", false)]
    #[case("%START_TIME%%", false)]
    fn header_values(#[case] v: &str, #[case] ok: bool) {
        assert_eq!(validate_header_value(v).is_ok(), ok, "{v}");
    }

    #[rstest]
    #[case("1ms", true)]
    #[case("0.5s", true)]
    #[case("0s", false)]
    #[case("1.0005s", false)]
    #[case("soon", false)]
    fn durations(#[case] d: &str, #[case] ok: bool) {
        assert_eq!(validate_duration(d).is_ok(), ok, "{d}");
    }

    #[test]
    fn fixed_patterns_compile() {
        for p in [&DNS1123_LABEL, &WILDCARD_DNS1123_LABEL, &QUALIFIED_NAME, &LABEL_VALUE, &HEADER_NAME, &WE_PORT_NAME] {
            assert!(p.is_some());
        }
    }
}
