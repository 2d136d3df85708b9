//! Host names as Istio compares them: exact names, `*.suffix` wildcards and the bare `*`.
//!
//! The rules follow Istio's `host.Name` (`Matches` is symmetric, `SubsetOf` is not), so routing
//! rules, DestinationRules, Sidecar imports and Gateway servers select the same services as istiod.

use std::net::IpAddr;

use super::CLUSTER_DOMAIN;

/// Whether `h` is a wildcard host (`*` or `*.example.com`).
pub fn is_wildcard(h: &str) -> bool {
    h.starts_with('*')
}

/// Whether two hosts can name the same service: equal, or one wildcard covers the other (both
/// wildcards: the shorter suffix covers the longer).
pub fn matches(a: &str, b: &str) -> bool {
    match (is_wildcard(a), is_wildcard(b)) {
        (true, true) => {
            let (sa, sb) = (&a[1..], &b[1..]);
            if sa.len() < sb.len() { sb.ends_with(sa) } else { sa.ends_with(sb) }
        }
        (true, false) => b.ends_with(&a[1..]),
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// Whether every name `a` covers is also covered by `b` (`reviews.x` ⊆ `*.x`, `*.a.x` ⊆ `*.x`).
pub fn subset_of(a: &str, b: &str) -> bool {
    match (is_wildcard(a), is_wildcard(b)) {
        (true, true) => a[1..].ends_with(&b[1..]),
        (true, false) => false,
        (false, true) => a.ends_with(&b[1..]),
        (false, false) => a == b,
    }
}

/// Istio's `ResolveShortnameToFQDN`: a name without a dot is a Kubernetes short name and becomes
/// `<name>.<namespace>.svc.cluster.local`; `*`, IP addresses and names with a dot stay as written.
pub fn resolve_short_name(h: &str, namespace: &str) -> String {
    if h.is_empty() || h == "*" || h.contains('.') || h.parse::<IpAddr>().is_ok() {
        return h.to_string();
    }
    format!("{h}.{namespace}.svc.{CLUSTER_DOMAIN}")
}

/// A gateway reference as a VirtualService writes it (`gateways`, `match[].gateways`), parsed the
/// way istiod reads it (`resolveGatewayName` in `pilot/pkg/model/virtualservice.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayRef<'a> {
    /// `mesh`: every sidecar, not a Gateway object.
    Mesh,
    /// `ns/name`. `./name` has namespace `.`, which istiod replaces by the VirtualService's
    /// namespace (Istio's webhook refuses `.` as a namespace, see [`GatewayRef::is_relative`]).
    Qualified {
        /// Namespace part, as written.
        namespace: &'a str,
        /// Name part.
        name: &'a str,
    },
    /// A bare `name`: a Gateway in the VirtualService's namespace.
    Short(&'a str),
    /// The legacy `name.ns[.svc.cluster.local]` form: the second label is the namespace.
    Legacy {
        /// First label.
        name: &'a str,
        /// Second label.
        namespace: &'a str,
    },
}

impl<'a> GatewayRef<'a> {
    /// Parses a reference (never fails: every string is one of the forms).
    pub fn parse(reference: &'a str) -> GatewayRef<'a> {
        if reference == MESH_GATEWAY {
            return GatewayRef::Mesh;
        }
        if let Some((namespace, name)) = reference.split_once('/') {
            return GatewayRef::Qualified { namespace, name };
        }
        match reference.split_once('.') {
            Some((name, rest)) => GatewayRef::Legacy { name, namespace: rest.split('.').next().unwrap_or(rest) },
            None => GatewayRef::Short(reference),
        }
    }

    /// Whether the reference is `./name`, relative to the VirtualService's namespace.
    pub fn is_relative(&self) -> bool {
        matches!(self, GatewayRef::Qualified { namespace: ".", .. })
    }

    /// The gateway as `ns/name` seen from a VirtualService in `namespace` (`mesh` stays `mesh`).
    pub fn resolve(&self, namespace: &str) -> String {
        match *self {
            GatewayRef::Mesh => MESH_GATEWAY.to_string(),
            GatewayRef::Qualified { namespace: ".", name } => format!("{namespace}/{name}"),
            GatewayRef::Qualified { namespace: ns, name } => format!("{ns}/{name}"),
            GatewayRef::Short(name) => format!("{namespace}/{name}"),
            GatewayRef::Legacy { name, namespace: ns } => format!("{ns}/{name}"),
        }
    }
}

/// Istio's `resolveGatewayName`: `mesh` stays; `ns/name` as written, `./name` in the rule's
/// namespace; legacy `name.ns[.svc...]` as `ns/name`; a bare `name` lives in the rule's namespace.
pub fn resolve_gateway_name(gw: &str, namespace: &str) -> String {
    GatewayRef::parse(gw).resolve(namespace)
}

/// The reserved gateway name meaning "all sidecars".
pub const MESH_GATEWAY: &str = "mesh";

/// The most specific of `candidates` covering `host`: an exact match, else the longest wildcard
/// that matches (Istio's `MostSpecificHostMatch`).
pub fn most_specific<'a, I>(host: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut best: Option<&'a str> = None;
    for c in candidates {
        if c == host {
            return Some(c);
        }
        if is_wildcard(c) && matches(c, host) && best.is_none_or(|b| c.len() > b.len()) {
            best = Some(c);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("a.com", "a.com", true)]
    #[case("a.com", "b.com", false)]
    #[case("*.com", "a.com", true)]
    #[case("a.com", "*.com", true)]
    #[case("*", "a.com", true)]
    #[case("*.a.com", "*.com", true)]
    #[case("*.b.com", "*.a.com", false)]
    #[case("*.com", "com", false)]
    #[case("*.b.a.com", "*.a.com", true)]
    #[case("*", "*.a.com", true)]
    #[case("*.a.com", "*.a.com", true)]
    #[case("*.foo.com", "bar.foo.com", true)]
    #[case("*.com", "*.foo.com", true)]
    #[case("*", "anything.io", true)]
    fn host_matching(#[case] a: &str, #[case] b: &str, #[case] want: bool) {
        assert_eq!(matches(a, b), want);
        assert_eq!(matches(b, a), want);
    }

    #[rstest]
    #[case("a.com", "*.com", true)]
    #[case("*.com", "a.com", false)]
    #[case("*.a.com", "*.com", true)]
    #[case("*.com", "*.a.com", false)]
    #[case("a.com", "*", true)]
    #[case("*.a.com", "a.com", false)]
    #[case("*", "*.a.com", false)]
    #[case("a.com", "a.com", true)]
    #[case("a.foo.com", "*.foo.com", true)]
    #[case("*.a.foo.com", "*.foo.com", true)]
    #[case("*.foo.com", "a.foo.com", false)]
    fn subsets(#[case] a: &str, #[case] b: &str, #[case] want: bool) {
        assert_eq!(subset_of(a, b), want);
    }

    #[rstest]
    #[case("reviews", "default", "reviews.default.svc.cluster.local")]
    #[case("reviews.prod", "default", "reviews.prod")]
    #[case("*", "default", "*")]
    #[case("10.0.0.1", "default", "10.0.0.1")]
    fn short_names(#[case] h: &str, #[case] ns: &str, #[case] want: &str) {
        assert_eq!(resolve_short_name(h, ns), want);
    }

    #[rstest]
    #[case::mesh("mesh", "default", "mesh")]
    #[case::short("gw", "default", "default/gw")]
    #[case::relative("./gw", "default", "default/gw")]
    #[case::relative_other_namespace("./gw", "prod", "prod/gw")]
    #[case::qualified("istio-system/gw", "default", "istio-system/gw")]
    #[case::qualified_same_namespace("default/gw", "default", "default/gw")]
    #[case::legacy_fqdn("gw.istio-system.svc.cluster.local", "default", "istio-system/gw")]
    #[case::legacy_name_ns("gw.istio-system", "default", "istio-system/gw")]
    fn gateway_names(#[case] g: &str, #[case] ns: &str, #[case] want: &str) {
        assert_eq!(resolve_gateway_name(g, ns), want);
    }

    #[rstest]
    #[case("mesh", GatewayRef::Mesh, false)]
    #[case("gw", GatewayRef::Short("gw"), false)]
    #[case("./gw", GatewayRef::Qualified { namespace: ".", name: "gw" }, true)]
    #[case("ns/gw", GatewayRef::Qualified { namespace: "ns", name: "gw" }, false)]
    #[case("gw.ns.svc.cluster.local", GatewayRef::Legacy { name: "gw", namespace: "ns" }, false)]
    #[case("/gw", GatewayRef::Qualified { namespace: "", name: "gw" }, false)]
    fn gateway_reference_forms(#[case] g: &str, #[case] want: GatewayRef<'_>, #[case] relative: bool) {
        assert_eq!(GatewayRef::parse(g), want);
        assert_eq!(GatewayRef::parse(g).is_relative(), relative);
    }

    #[test]
    fn most_specific_prefers_exact_then_longest_wildcard() {
        let c = ["*", "*.com", "*.a.com", "x.a.com"];
        assert_eq!(most_specific("x.a.com", c), Some("x.a.com"));
        assert_eq!(most_specific("y.a.com", c), Some("*.a.com"));
        assert_eq!(most_specific("b.org", c), Some("*"));
        assert_eq!(most_specific("b.org", ["*.com"]), None);
    }
}
