//! Istio's traffic-capture rules (what `istio-iptables` installs in REDIRECT mode), as
//! `iptables-restore` input for the injected init container.
//!
//! Outbound TCP is redirected to Envoy's 15001, inbound TCP to 15006. Traffic of the proxy itself
//! (uid/gid 1337) is never redirected, except its loopback calls to the pod's own non-loopback
//! address, which go to the inbound listener so that a pod calling itself through its Service still
//! passes its inbound policy (Istio does the same). Envoy's inbound passthrough source 127.0.0.6 is
//! returned untouched. The annotations `traffic.sidecar.istio.io/{include,exclude}InboundPorts`,
//! `{include,exclude}OutboundIPRanges` and `{include,exclude}OutboundPorts` narrow what is captured.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Uid and gid the proxy runs as; its own traffic is not captured.
pub const PROXY_UID: u32 = 1337;
/// Envoy's outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Envoy's inbound capture port.
pub const INBOUND_PORT: u16 = 15006;
/// Ports of the proxy itself that inbound capture always leaves alone (Envoy's Prometheus port,
/// the health port, the agent port), as Istio does.
pub const PROXY_INBOUND_PORTS: [u16; 3] = [15090, 15021, 15020];

/// A set that is either everything (`*`) or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<T> {
    /// `*`: everything.
    All,
    /// Only these (may be empty: nothing).
    Only(Vec<T>),
}

/// What the init container captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    /// Inbound ports redirected to 15006.
    pub include_inbound_ports: Selection<u16>,
    /// Inbound ports never redirected (added to [`PROXY_INBOUND_PORTS`]).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destinations (CIDRs) redirected to 15001.
    pub include_outbound_ranges: Selection<String>,
    /// Outbound destinations never redirected.
    pub exclude_outbound_ranges: Vec<String>,
    /// Outbound ports redirected even when their destination is not in the included ranges.
    pub include_outbound_ports: Vec<u16>,
    /// Outbound ports never redirected.
    pub exclude_outbound_ports: Vec<u16>,
}

impl Default for CaptureRules {
    fn default() -> Self {
        Self {
            include_inbound_ports: Selection::All,
            exclude_inbound_ports: Vec::new(),
            include_outbound_ranges: Selection::All,
            exclude_outbound_ranges: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
        }
    }
}

/// A value of a capture annotation that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not {expected}")]
pub struct ParseError {
    /// The offending item.
    pub value: String,
    /// What was expected.
    pub expected: &'static str,
}

/// Parses a comma-separated port list (`"80,8080"`); empty means none.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, ParseError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ParseError { value: p.to_string(), expected: "a port number 1-65535" }),
        })
        .collect()
}

/// Parses `*` or a comma-separated port list.
pub fn parse_port_selection(s: &str) -> Result<Selection<u16>, ParseError> {
    if s.trim() == "*" { Ok(Selection::All) } else { parse_ports(s).map(Selection::Only) }
}

/// Parses a comma-separated CIDR list (`"10.0.0.0/8,192.168.1.1/32"`); empty means none. A bare
/// address is a single host. Output is canonical (`a.b.c.d/len`).
pub fn parse_cidrs(s: &str) -> Result<Vec<String>, ParseError> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            let bad = || ParseError { value: c.to_string(), expected: "a CIDR like 10.0.0.0/8" };
            let (addr, len) = c.split_once('/').unwrap_or((c, ""));
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len: u8 = if len.is_empty() { max } else { len.parse().map_err(|_| bad())? };
            if len > max {
                return Err(bad());
            }
            Ok(format!("{addr}/{len}"))
        })
        .collect()
}

/// Parses `*` or a comma-separated CIDR list.
pub fn parse_cidr_selection(s: &str) -> Result<Selection<String>, ParseError> {
    if s.trim() == "*" { Ok(Selection::All) } else { parse_cidrs(s).map(Selection::Only) }
}

/// The IPv4 `nat` table rules for `iptables-restore --noflush`.
pub fn restore_input(rules: &CaptureRules) -> String {
    let mut out = String::from("*nat\n");
    for chain in ["ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT"] {
        // Infallible: writing to a String.
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let mut rule = |r: String| {
        out.push_str(&r);
        out.push('\n');
    };
    rule(format!("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}"));
    rule(format!("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_PORT}"));

    // Inbound.
    let inbound_on = !matches!(&rules.include_inbound_ports, Selection::Only(p) if p.is_empty());
    if inbound_on {
        rule("-A PREROUTING -p tcp -j ISTIO_INBOUND".into());
        match &rules.include_inbound_ports {
            Selection::All => {
                let mut excluded: Vec<u16> = PROXY_INBOUND_PORTS.to_vec();
                excluded.extend(rules.exclude_inbound_ports.iter().copied());
                dedup(&mut excluded);
                for p in excluded {
                    rule(format!("-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN"));
                }
                rule("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".into());
            }
            Selection::Only(ports) => {
                let mut ports = ports.clone();
                dedup(&mut ports);
                for p in ports.iter().filter(|p| !rules.exclude_inbound_ports.contains(p)) {
                    rule(format!("-A ISTIO_INBOUND -p tcp --dport {p} -j ISTIO_IN_REDIRECT"));
                }
            }
        }
    }

    // Outbound.
    rule("-A OUTPUT -p tcp -j ISTIO_OUTPUT".into());
    let mut excluded_ports = rules.exclude_outbound_ports.clone();
    dedup(&mut excluded_ports);
    for p in excluded_ports {
        rule(format!("-A ISTIO_OUTPUT -p tcp --dport {p} -j RETURN"));
    }
    // Envoy's inbound passthrough connects from 127.0.0.6; leave it alone.
    rule("-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN".into());
    for (flag, id) in [("--uid-owner", PROXY_UID), ("--gid-owner", PROXY_UID)] {
        // The proxy calling the pod's own IP over loopback goes through the inbound listener.
        if inbound_on {
            rule(format!("-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner {flag} {id} -j ISTIO_IN_REDIRECT"));
        }
        // The application talking to itself over loopback is not captured.
        rule(format!("-A ISTIO_OUTPUT -o lo -m owner ! {flag} {id} -j RETURN"));
        // The proxy's own outbound connections are not captured.
        rule(format!("-A ISTIO_OUTPUT -m owner {flag} {id} -j RETURN"));
    }
    rule("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN".into());
    let mut excluded_ranges = rules.exclude_outbound_ranges.clone();
    dedup(&mut excluded_ranges);
    for cidr in excluded_ranges {
        rule(format!("-A ISTIO_OUTPUT -d {cidr} -j RETURN"));
    }
    let mut included_ports = rules.include_outbound_ports.clone();
    dedup(&mut included_ports);
    for p in included_ports {
        rule(format!("-A ISTIO_OUTPUT -p tcp --dport {p} -j ISTIO_REDIRECT"));
    }
    match &rules.include_outbound_ranges {
        Selection::All => rule("-A ISTIO_OUTPUT -j ISTIO_REDIRECT".into()),
        Selection::Only(ranges) => {
            let mut ranges = ranges.clone();
            dedup(&mut ranges);
            for cidr in ranges {
                rule(format!("-A ISTIO_OUTPUT -d {cidr} -j ISTIO_REDIRECT"));
            }
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// The init container's shell script: the rules fed to `iptables-restore --noflush` (so the pod's
/// existing rules, if any, stay) through a here-document (no file: the root filesystem may be
/// read-only), then printed for `kubectl logs`. Every value in the rules
/// was parsed as a number or a CIDR, so nothing in the script comes verbatim from the user.
pub fn init_script(rules: &CaptureRules) -> String {
    let input = restore_input(rules);
    format!("set -e\niptables-restore --noflush <<'EOF'\n{input}EOF\niptables-save -t nat\n")
}

fn dedup<T: Ord>(v: &mut Vec<T>) {
    v.sort();
    v.dedup();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_capture_everything_but_the_proxy() {
        let r = restore_input(&CaptureRules::default());
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
        assert!(r.contains("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"));
        assert!(r.contains("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"));
        assert!(r.contains("-A PREROUTING -p tcp -j ISTIO_INBOUND\n"));
        assert!(r.contains("-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN\n"));
        assert!(r.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT\n"));
        assert!(r.contains("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"));
        assert!(r.contains("-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN\n"));
        assert!(r.ends_with("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n"));
        // The proxy's exclusion comes before the catch-all redirect.
        assert!(r.find("--uid-owner 1337 -j RETURN").unwrap() < r.find("-A ISTIO_OUTPUT -j ISTIO_REDIRECT").unwrap());
    }

    #[test]
    fn annotations_narrow_the_capture() {
        let rules = CaptureRules {
            include_inbound_ports: parse_port_selection("8080, 9090").unwrap(),
            include_outbound_ranges: parse_cidr_selection("10.96.0.0/12,10.0.0.1").unwrap(),
            exclude_outbound_ports: parse_ports("5432").unwrap(),
            ..CaptureRules::default()
        };
        let r = restore_input(&rules);
        assert!(r.contains("-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT\n"));
        assert!(r.contains("-A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT\n"));
        assert!(!r.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"));
        assert!(r.contains("-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT\n"));
        assert!(r.contains("-A ISTIO_OUTPUT -d 10.0.0.1/32 -j ISTIO_REDIRECT\n"));
        assert!(!r.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
        assert!(r.contains("-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN\n"));
    }

    #[test]
    fn empty_inbound_ports_disable_inbound_capture() {
        let rules =
            CaptureRules { include_inbound_ports: parse_port_selection("").unwrap(), ..CaptureRules::default() };
        let r = restore_input(&rules);
        assert!(!r.contains("PREROUTING"));
        assert!(!r.contains("-j ISTIO_IN_REDIRECT"), "{r}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_ports("80,http").is_err());
        assert!(parse_ports("0").is_err());
        assert!(parse_cidrs("10.0.0.0/33").is_err());
        assert!(parse_cidrs("10.0.0.0/8; rm -rf /").is_err());
        assert_eq!(parse_cidrs(" 10.0.0.0/8 ,").unwrap(), ["10.0.0.0/8"]);
    }
}
