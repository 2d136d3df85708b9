//! What the translator may know about one proxy.

use super::Labels;

/// Kind of proxy, from the first field of the Envoy node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum NodeType {
    /// An application sidecar (`sidecar~...`).
    #[default]
    Sidecar,
    /// A gateway (`router~...`).
    Router,
}

/// How traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum InterceptionMode {
    /// iptables REDIRECT to 15001/15006, recovered with original_dst.
    #[default]
    Redirect,
    /// No interception: outbound listeners bind 127.0.0.1:<service port>.
    None,
}

impl NodeType {
    /// The first field of Istio's node id: `sidecar` or `router`.
    pub const fn as_str(self) -> &'static str {
        match self {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        }
    }
}

impl std::fmt::Display for NodeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NodeType {
    type Err = String;
    fn from_str(s: &str) -> Result<NodeType, String> {
        match s {
            "sidecar" => Ok(NodeType::Sidecar),
            "router" => Ok(NodeType::Router),
            other => Err(format!("{other:?} is not a proxy type (sidecar or router)")),
        }
    }
}

impl InterceptionMode {
    /// The node metadata value `INTERCEPTION_MODE`: `REDIRECT` or `NONE`.
    pub const fn as_str(self) -> &'static str {
        match self {
            InterceptionMode::Redirect => "REDIRECT",
            InterceptionMode::None => "NONE",
        }
    }
}

impl std::fmt::Display for InterceptionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InterceptionMode {
    type Err = String;
    /// Case-insensitive, as flags are typed by people; Istio's metadata value is upper case.
    fn from_str(s: &str) -> Result<InterceptionMode, String> {
        match s.to_ascii_uppercase().as_str() {
            "REDIRECT" => Ok(InterceptionMode::Redirect),
            "NONE" => Ok(InterceptionMode::None),
            _ => Err(format!("{s:?} is not an interception mode (REDIRECT or NONE)")),
        }
    }
}

/// The translation-relevant description of a proxy.
///
/// Only what is here can influence the translator's output, so proxies with equal profiles share one
/// translated configuration. Per-connection facts (node id, IP addresses, connection time) stay out.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ProxyProfile {
    /// Sidecar or gateway.
    pub node_type: NodeType,
    /// Namespace of the workload (config namespace).
    pub namespace: String,
    /// Workload labels.
    pub labels: Labels,
    /// Service account (short name).
    pub service_account: String,
    /// Traffic interception mode.
    pub interception: InterceptionMode,
    /// The proxy has no workload certificate (no node agent serves it SDS), so it neither
    /// originates nor terminates Istio mTLS: auto-mTLS and the inbound mTLS chains are left out
    /// instead of referencing secrets that never come (Envoy would hold each such cluster and
    /// listener back for its 15 s initial fetch timeout). Sailplane-specific node metadata
    /// `SAILPLANE_NO_WORKLOAD_CERT`, set by `sailplane bootstrap`; proxies of Istio's and
    /// Sailplane's agents have certificates.
    pub no_workload_cert: bool,
}
