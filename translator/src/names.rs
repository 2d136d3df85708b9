//! Every Envoy-visible name Sailplane generates, in Istio's exact form.
//!
//! Tools built for Istio (istioctl, dashboards, EnvoyFilters written by users) find resources by
//! these names, so they follow istiod byte for byte. Nothing else in the crate formats a name.

/// Catch-all cluster that drops traffic (STATIC, no endpoints).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Outbound cluster to the original destination (ALLOW_ANY).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Inbound cluster to the original destination, bound to 127.0.0.6 so iptables lets it through.
/// Istio uses this one name for IPv4 and IPv6 (Envoy picks the source address family).
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";

/// Outbound capture listener (iptables REDIRECT to 15001).
pub const VIRTUAL_OUTBOUND_LISTENER: &str = "virtualOutbound";
/// Inbound capture listener (iptables REDIRECT to 15006).
pub const VIRTUAL_INBOUND_LISTENER: &str = "virtualInbound";
/// Loop guard chain on `virtualOutbound` (traffic addressed to 15001 itself).
pub const VIRTUAL_OUTBOUND_BLACKHOLE_CHAIN: &str = "virtualOutbound-blackhole";
/// Catch-all TCP chain on `virtualOutbound`.
pub const VIRTUAL_OUTBOUND_CATCHALL_TCP_CHAIN: &str = "virtualOutbound-catchall-tcp";
/// Loop guard chain on `virtualInbound` (traffic addressed to 15006 itself).
pub const VIRTUAL_INBOUND_BLACKHOLE_CHAIN: &str = "virtualInbound-blackhole";
/// Passthrough HTTP chain on `virtualInbound`; the passthrough TCP chains are named `virtualInbound`.
pub const VIRTUAL_INBOUND_CATCHALL_HTTP_CHAIN: &str = "virtualInbound-catchall-http";
/// Default filter chain of outbound per-port listeners (unmatched traffic: passthrough/blackhole).
pub const PASSTHROUGH_FILTER_CHAIN: &str = "PassthroughFilterChain";

/// Catch-all virtual host (and its route) under ALLOW_ANY.
pub const ALLOW_ANY_VHOST: &str = "allow_any";
/// Catch-all virtual host (and its route) under REGISTRY_ONLY.
pub const BLOCK_ALL_VHOST: &str = "block_all";
/// Name of the route generated for a service without a VirtualService.
pub const DEFAULT_ROUTE: &str = "default";

/// The wildcard IPv4 address listeners are named after.
pub const WILDCARD_ADDRESS: &str = "0.0.0.0";
/// Loopback address for NONE-mode listeners and STATIC inbound endpoints.
pub const LOCALHOST_ADDRESS: &str = "127.0.0.1";
/// Source address of inbound passthrough traffic (excluded from iptables capture).
pub const INBOUND_PASSTHROUGH_BIND_IPV4: &str = "127.0.0.6";

/// Outbound capture port.
pub const VIRTUAL_OUTBOUND_PORT: u16 = 15001;
/// Inbound capture port.
pub const VIRTUAL_INBOUND_PORT: u16 = 15006;

/// Traffic direction part of a cluster name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `outbound|...`
    Outbound,
    /// `inbound|...`
    Inbound,
}

impl Direction {
    /// `outbound` or `inbound`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Appends the decimal form of `n` (cluster names are built millions of times; `fmt` machinery
/// is several times slower than this).
fn push_u16(s: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for d in &digits[i..] {
        s.push(char::from(*d));
    }
}

/// `outbound|<port>|<subset>|<host>` (subset empty when none).
pub fn outbound_cluster(port: u16, subset: &str, host: &str) -> String {
    let mut s = String::with_capacity(16 + subset.len() + host.len());
    s.push_str("outbound|");
    push_u16(&mut s, port);
    s.push('|');
    s.push_str(subset);
    s.push('|');
    s.push_str(host);
    s
}

/// `inbound|<targetPort>||`.
pub fn inbound_cluster(target_port: u16) -> String {
    format!("inbound|{target_port}||")
}

/// The SNI form of a cluster name: `outbound_.<port>_.<subset>_.<host>`.
pub fn sni_cluster(port: u16, subset: &str, host: &str) -> String {
    let mut s = String::with_capacity(20 + subset.len() + host.len());
    s.push_str("outbound_.");
    push_u16(&mut s, port);
    s.push_str("_.");
    s.push_str(subset);
    s.push_str("_.");
    s.push_str(host);
    s
}

/// A parsed `direction|port|subset|host` cluster name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterName<'a> {
    /// Inbound or outbound.
    pub direction: Direction,
    /// Port number.
    pub port: u16,
    /// Subset name, empty when none.
    pub subset: &'a str,
    /// Host, empty for inbound clusters.
    pub host: &'a str,
}

/// Parses `outbound|9080|v1|reviews.default.svc.cluster.local` or `inbound|8080||`.
pub fn parse_cluster(name: &str) -> Option<ClusterName<'_>> {
    let mut parts = name.splitn(4, '|');
    let direction = match parts.next()? {
        "outbound" => Direction::Outbound,
        "inbound" => Direction::Inbound,
        _ => return None,
    };
    let port = parts.next()?.parse().ok()?;
    let subset = parts.next()?;
    let host = parts.next()?;
    Some(ClusterName { direction, port, subset, host })
}

/// Listener named after its bind address and port: `0.0.0.0_9080`, `10.96.0.10_5432`.
pub fn listener(bind: &str, port: u16) -> String {
    format!("{bind}_{port}")
}

/// `host:port`, with IPv6 literals bracketed (Go's `net.JoinHostPort`): names virtual hosts and
/// sniffed route configurations.
pub fn domain_port(host: &str, port: u16) -> String {
    let mut s = String::with_capacity(host.len() + 8);
    if host.contains(':') {
        s.push('[');
        s.push_str(host);
        s.push(']');
    } else {
        s.push_str(host);
    }
    s.push(':');
    push_u16(&mut s, port);
    s
}

/// Shared outbound route configuration of an HTTP port: `"9080"`.
pub fn route_config(port: u16) -> String {
    port.to_string()
}

/// Route configuration of one sniffed service port with its own listener: `reviews.default.svc.cluster.local:9080`.
pub fn sniffed_route_config(host: &str, port: u16) -> String {
    domain_port(host, port)
}

/// Outbound virtual host of a service port: `reviews.default.svc.cluster.local:9080`.
pub fn vhost(host: &str, port: u16) -> String {
    domain_port(host, port)
}

/// Inbound virtual host: `inbound|http|<servicePort>`.
pub fn inbound_vhost(service_port: u16) -> String {
    format!("inbound|http|{service_port}")
}

/// Gateway route configuration of plain HTTP servers on a listener port: `http.8080`.
pub fn gateway_http_route(listener_port: u16) -> String {
    format!("http.{listener_port}")
}

/// Gateway route configuration of one HTTPS server terminating TLS:
/// `https.<serverPort>.<portName>.<gateway>.<namespace>`.
pub fn gateway_https_route(server_port: u16, port_name: &str, gateway: &str, namespace: &str) -> String {
    format!("https.{server_port}.{port_name}.{gateway}.{namespace}")
}

/// Stat prefixes carry a trailing `;` so Istio's stats tooling can split them.
pub fn delimited_stat_prefix(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1);
    s.push_str(prefix);
    s.push(';');
    s
}

/// HCM stat prefix of an outbound listener: `outbound_0.0.0.0_9080;`.
pub fn outbound_hcm_stat_prefix(listener_name: &str) -> String {
    delimited_stat_prefix(&format!("outbound_{listener_name}"))
}

/// HCM stat prefix of an inbound chain: `inbound_0.0.0.0_8080;`.
pub fn inbound_hcm_stat_prefix(chain_name: &str) -> String {
    delimited_stat_prefix(&format!("inbound_{chain_name}"))
}

/// Tracing decorator operation: `reviews.default.svc.cluster.local:9080/*`.
pub fn trace_operation(host: &str, port: u16) -> String {
    format!("{}/*", domain_port(host, port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case(9080, "", "reviews.default.svc.cluster.local", "outbound|9080||reviews.default.svc.cluster.local")]
    #[case(9080, "v1", "reviews.default.svc.cluster.local", "outbound|9080|v1|reviews.default.svc.cluster.local")]
    #[case(443, "", "api.example.com", "outbound|443||api.example.com")]
    fn outbound_cluster_names(#[case] port: u16, #[case] subset: &str, #[case] host: &str, #[case] want: &str) {
        assert_eq!(outbound_cluster(port, subset, host), want);
        let parsed = parse_cluster(want).unwrap();
        assert_eq!(
            (parsed.direction, parsed.port, parsed.subset, parsed.host),
            (Direction::Outbound, port, subset, host)
        );
    }

    #[rstest]
    #[case(0, "0")]
    #[case(7, "7")]
    #[case(80, "80")]
    #[case(65535, "65535")]
    fn port_digits(#[case] n: u16, #[case] want: &str) {
        let mut s = String::new();
        push_u16(&mut s, n);
        assert_eq!(s, want);
    }

    #[rstest]
    #[case(9080, "v1", "reviews.default.svc.cluster.local", "outbound_.9080_.v1_.reviews.default.svc.cluster.local")]
    #[case(80, "", "a.com", "outbound_.80_._.a.com")]
    fn sni_names(#[case] port: u16, #[case] subset: &str, #[case] host: &str, #[case] want: &str) {
        assert_eq!(sni_cluster(port, subset, host), want);
    }

    #[test]
    fn inbound_names() {
        assert_eq!(inbound_cluster(8080), "inbound|8080||");
        let p = parse_cluster("inbound|8080||").unwrap();
        assert_eq!((p.direction, p.port, p.host), (Direction::Inbound, 8080, ""));
        assert_eq!(inbound_vhost(9080), "inbound|http|9080");
        assert_eq!(inbound_hcm_stat_prefix(&listener(WILDCARD_ADDRESS, 8080)), "inbound_0.0.0.0_8080;");
    }

    #[rstest]
    #[case("BlackHoleCluster")]
    #[case("outbound|x||h")]
    #[case("sideways|1||h")]
    #[case("outbound|1|")]
    fn non_service_cluster_names_do_not_parse(#[case] name: &str) {
        assert!(parse_cluster(name).is_none());
    }

    #[rstest]
    #[case("0.0.0.0", 9080, "0.0.0.0_9080")]
    #[case("10.96.0.10", 5432, "10.96.0.10_5432")]
    #[case("127.0.0.1", 80, "127.0.0.1_80")]
    fn listener_names(#[case] bind: &str, #[case] port: u16, #[case] want: &str) {
        assert_eq!(listener(bind, port), want);
    }

    #[test]
    fn route_and_vhost_names() {
        assert_eq!(route_config(9080), "9080");
        assert_eq!(sniffed_route_config("a.b.svc.cluster.local", 8000), "a.b.svc.cluster.local:8000");
        assert_eq!(vhost("reviews.default.svc.cluster.local", 9080), "reviews.default.svc.cluster.local:9080");
        assert_eq!(vhost("2001:db8::1", 80), "[2001:db8::1]:80");
        assert_eq!(outbound_hcm_stat_prefix("0.0.0.0_9080"), "outbound_0.0.0.0_9080;");
        assert_eq!(trace_operation("", 0), ":0/*");
        assert_eq!(trace_operation("a.com", 80), "a.com:80/*");
        assert_eq!(gateway_http_route(8080), "http.8080");
        assert_eq!(gateway_https_route(443, "https", "gw", "istio-system"), "https.443.https.gw.istio-system");
    }

    #[test]
    fn fixed_names_match_istio() {
        assert_eq!(
            [BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, INBOUND_PASSTHROUGH_CLUSTER, ALLOW_ANY_VHOST, BLOCK_ALL_VHOST],
            ["BlackHoleCluster", "PassthroughCluster", "InboundPassthroughCluster", "allow_any", "block_all"]
        );
        assert_eq!(
            [
                VIRTUAL_OUTBOUND_LISTENER,
                VIRTUAL_INBOUND_LISTENER,
                VIRTUAL_OUTBOUND_BLACKHOLE_CHAIN,
                VIRTUAL_INBOUND_CATCHALL_HTTP_CHAIN
            ],
            ["virtualOutbound", "virtualInbound", "virtualOutbound-blackhole", "virtualInbound-catchall-http"]
        );
    }
}
