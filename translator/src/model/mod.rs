//! The mesh model: services, endpoints, workloads and mesh settings, as the translator sees them.
//!
//! A [`World`] is built once per change from the typed objects of every source ([`world`]) and
//! shared read-only (behind an `Arc`) by every translation.

pub mod change;
pub mod classes;
pub mod config;
pub mod host;
pub mod mtls;
mod proxy;
pub mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use change::WorldChange;
pub use classes::LabelKeys;
pub use proxy::{InterceptionMode, NodeType, ProxyProfile};

use crate::diag::Diagnostic;

/// The Kubernetes cluster domain: Services are `<name>.<namespace>.svc.<domain>`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
pub use world::build_world;

/// Sorted string map used for labels and metadata.
pub type Labels = BTreeMap<String, String>;

/// Mesh-wide settings (the subset of Istio's MeshConfig Sailplane honours).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeshConfig {
    /// Namespace whose policies apply mesh-wide (`istio-system`).
    pub root_namespace: String,
    /// SPIFFE trust domain (`cluster.local`).
    pub trust_domain: String,
    /// What sidecars do with traffic to hosts not in the registry.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// Whether clients pick mTLS automatically for endpoints with sidecars.
    pub enable_auto_mtls: bool,
    /// `defaultConfig.proxyMetadata`: environment the agent hands to every proxy.
    pub proxy_metadata: Labels,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
            outbound_traffic_policy: OutboundTrafficPolicy::AllowAny,
            enable_auto_mtls: true,
            proxy_metadata: Labels::new(),
        }
    }
}

impl MeshConfig {
    /// Reads the subset of Istio's MeshConfig that Sailplane honours from a parsed YAML/JSON document:
    /// `rootNamespace`, `trustDomain`, `outboundTrafficPolicy.mode` (`ALLOW_ANY` / `REGISTRY_ONLY`),
    /// `enableAutoMtls`, `defaultConfig.proxyMetadata`. Missing keys keep Istio's defaults; other keys
    /// are ignored (MeshConfig has many settings Sailplane does not act on). A key of the wrong type
    /// is an error naming its path.
    pub fn from_yaml_value(v: &serde_json::Value) -> Result<MeshConfig, Diagnostic> {
        const OBJECT: &str = "MeshConfig";
        let mut mesh = MeshConfig::default();
        let root = match v {
            serde_json::Value::Null => return Ok(mesh),
            serde_json::Value::Object(m) => m,
            _ => return Err(Diagnostic::error(OBJECT, "", "mesh config must be a mapping")),
        };
        let string_at = |value: &serde_json::Value, path: &str| -> Result<String, Diagnostic> {
            value.as_str().map(str::to_string).ok_or_else(|| Diagnostic::error(OBJECT, path, "expected a string"))
        };
        if let Some(ns) = root.get("rootNamespace") {
            mesh.root_namespace = string_at(ns, "rootNamespace")?;
        }
        if let Some(td) = root.get("trustDomain") {
            mesh.trust_domain = string_at(td, "trustDomain")?;
        }
        if let Some(policy) = root.get("outboundTrafficPolicy") {
            let policy = policy
                .as_object()
                .ok_or_else(|| Diagnostic::error(OBJECT, "outboundTrafficPolicy", "expected a mapping"))?;
            if let Some(mode) = policy.get("mode") {
                mesh.outbound_traffic_policy = match string_at(mode, "outboundTrafficPolicy.mode")?.as_str() {
                    "ALLOW_ANY" => OutboundTrafficPolicy::AllowAny,
                    "REGISTRY_ONLY" => OutboundTrafficPolicy::RegistryOnly,
                    other => {
                        return Err(Diagnostic::error(
                            OBJECT,
                            "outboundTrafficPolicy.mode",
                            format!("unknown mode {other:?} (expected ALLOW_ANY or REGISTRY_ONLY)"),
                        ));
                    }
                };
            }
        }
        if let Some(auto) = root.get("enableAutoMtls") {
            mesh.enable_auto_mtls =
                auto.as_bool().ok_or_else(|| Diagnostic::error(OBJECT, "enableAutoMtls", "expected a boolean"))?;
        }
        if let Some(meta) = root.get("defaultConfig").and_then(|d| d.get("proxyMetadata")) {
            let meta = meta
                .as_object()
                .ok_or_else(|| Diagnostic::error(OBJECT, "defaultConfig.proxyMetadata", "expected a mapping"))?;
            for (k, v) in meta {
                // Kubernetes users often write unquoted numbers and booleans; the agent reads strings.
                let value = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(Diagnostic::error(
                            OBJECT,
                            format!("defaultConfig.proxyMetadata.{k}"),
                            "expected a string",
                        ));
                    }
                };
                mesh.proxy_metadata.insert(k.clone(), value);
            }
        }
        Ok(mesh)
    }
}

/// `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OutboundTrafficPolicy {
    /// Unknown destinations pass through (`PassthroughCluster`).
    #[default]
    AllowAny,
    /// Unknown destinations are refused (`BlackHoleCluster`, 502 for HTTP).
    RegistryOnly,
}

/// Application protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// HTTP/1.1
    Http,
    /// HTTP/2 (cleartext or prior knowledge)
    Http2,
    /// gRPC
    Grpc,
    /// gRPC-Web
    GrpcWeb,
    /// TLS carrying HTTP (opaque to the proxy)
    Https,
    /// Opaque TCP
    Tcp,
    /// TLS (opaque, routed by SNI)
    Tls,
    /// MongoDB (treated as TCP)
    Mongo,
    /// MySQL (treated as TCP)
    Mysql,
    /// Redis (treated as TCP)
    Redis,
    /// Not declared: sniffed by the proxy.
    Unspecified,
}

impl Protocol {
    /// Whether the proxy routes this port as HTTP (with an HCM and RDS).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// Whether the port is treated as opaque TCP (including TLS).
    pub fn is_tcp(self) -> bool {
        !self.is_http() && self != Protocol::Unspecified
    }

    /// Parses Istio's protocol names, case-insensitively (`HTTP`, `http2`, `GRPC-Web`, ...).
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "https" => Protocol::Https,
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            "mongo" => Protocol::Mongo,
            "mysql" => Protocol::Mysql,
            "redis" => Protocol::Redis,
            _ => return None,
        })
    }

    /// Protocol from a port name (`http-web`, `grpc`, `tcp-db`) or appProtocol, as Istio infers it.
    /// Well-known server-first ports (25, 53, 3306, 27017) are TCP when nothing is declared.
    pub fn infer(name: &str, app_protocol: Option<&str>, port: u16) -> Protocol {
        let kubernetes_app_protocol = |a: &str| match a {
            "kubernetes.io/h2c" => Some(Protocol::Http2),
            "kubernetes.io/ws" | "kubernetes.io/wss" => Some(Protocol::Http),
            _ => None,
        };
        if let Some(p) = app_protocol.and_then(|a| Protocol::parse(a).or(kubernetes_app_protocol(a))) {
            return p;
        }
        let prefix = name.split('-').next().unwrap_or_default();
        // `grpc-web` is the one protocol whose name contains a dash.
        let lower = name.to_ascii_lowercase();
        if lower == "grpc-web" || lower.starts_with("grpc-web-") {
            return Protocol::GrpcWeb;
        }
        if let Some(p) = Protocol::parse(prefix) {
            return p;
        }
        match port {
            25 | 53 | 3306 | 27017 => Protocol::Tcp,
            _ => Protocol::Unspecified,
        }
    }
}

/// How a service's endpoints are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Endpoints are known to the control plane and sent over EDS.
    Static,
    /// Envoy resolves the endpoint hostnames with DNS, using every address (STRICT_DNS).
    Dns,
    /// Envoy resolves with DNS and uses one address at a time (LOGICAL_DNS).
    DnsRoundRobin,
    /// No resolution: traffic goes to the original destination.
    Passthrough,
}

/// Whether a service is part of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// Inside the mesh: auto-mTLS applies.
    MeshInternal,
    /// Outside the mesh: no auto-mTLS.
    MeshExternal,
}

/// Where a service was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceOrigin {
    /// A Kubernetes Service.
    Kubernetes,
    /// An Istio ServiceEntry.
    ServiceEntry,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Port name (may be empty for single-port Kubernetes services).
    pub name: String,
    /// Service port number.
    pub port: u16,
    /// Application protocol.
    pub protocol: Protocol,
    /// Numeric target port, when the service declares one.
    pub target_port: Option<u16>,
    /// Named target port, resolved per endpoint.
    pub target_port_name: Option<String>,
}

impl ServicePort {
    /// Key of this port in [`Endpoint::ports`]: the port name, or the port number as text when the
    /// port is unnamed.
    pub fn key(&self) -> String {
        if self.name.is_empty() { self.port.to_string() } else { self.name.clone() }
    }
}

/// One endpoint (a pod, a WorkloadEntry, a ServiceEntry endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// IP address, or hostname for DNS resolution.
    pub address: String,
    /// Port per service port name (or per service port number rendered as text when unnamed).
    /// When absent, the service port's target port (or the service port) is used.
    pub ports: BTreeMap<String, u16>,
    /// Workload labels.
    pub labels: Labels,
    /// Service account of the workload (short name).
    pub service_account: Option<String>,
    /// Namespace of the workload.
    pub namespace: String,
    /// Load-balancing weight (0 means unset).
    pub weight: u32,
    /// Locality `region/zone/subzone`, when known.
    pub locality: Option<String>,
    /// Whether the endpoint is ready to serve.
    pub ready: bool,
    /// Ports on which the workload's own PeerAuthentication is DISABLE (filled by the world
    /// builder, see [`mtls::mark_disabled_endpoints`]).
    pub mtls_disabled_ports: BTreeSet<u16>,
}

impl Endpoint {
    /// Whether the workload has an Istio sidecar (label `security.istio.io/tlsMode=istio`).
    pub fn has_sidecar(&self) -> bool {
        self.labels.get("security.istio.io/tlsMode").map(String::as_str) == Some("istio")
    }

    /// Whether auto-mTLS clients may use Istio mTLS to this endpoint on `port`: it has a sidecar
    /// and its PeerAuthentication does not disable mTLS there.
    pub fn accepts_mtls(&self, port: u16) -> bool {
        self.has_sidecar() && !self.mtls_disabled_ports.contains(&port)
    }
}

/// A service in the registry (Kubernetes Service or one host of a ServiceEntry).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// Fully qualified host (`reviews.default.svc.cluster.local`, `api.example.com`).
    pub hostname: String,
    /// Namespace of the declaring object.
    pub namespace: String,
    /// Name of the declaring object.
    pub name: String,
    /// Virtual IPs (ClusterIP or ServiceEntry addresses; may be CIDRs). Empty when none.
    pub addresses: Vec<String>,
    /// Ports, in declaration order.
    pub ports: Vec<ServicePort>,
    /// Endpoint resolution.
    pub resolution: Resolution,
    /// Mesh location.
    pub location: Location,
    /// Kind of the declaring object.
    pub origin: ServiceOrigin,
    /// Pod selector (Kubernetes Services and ServiceEntries with a workloadSelector).
    pub selector: Option<Labels>,
    /// Endpoints, sorted by address.
    pub endpoints: Vec<Endpoint>,
    /// Identities allowed to serve this service (short service-account names or full SPIFFE URIs).
    pub service_accounts: BTreeSet<String>,
    /// Namespaces this service is visible from (`*` for all, `.` resolved to its own namespace).
    pub export_to: BTreeSet<String>,
    /// Creation timestamp (RFC 3339), for oldest-wins rules.
    pub created: String,
}

impl Service {
    /// Whether a proxy in `namespace` may see this service.
    pub fn visible_from(&self, namespace: &str) -> bool {
        self.export_to.is_empty() || self.export_to.contains("*") || self.export_to.contains(namespace)
    }

    /// The port with number `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The port `ep` serves `sp` on, or `None` when the endpoint does not serve that port.
    ///
    /// Kubernetes endpoints carry an explicit port per service port (from the EndpointSlice or the
    /// pod's container ports), so a missing entry means "not served". ServiceEntry endpoints may
    /// override a port by name; otherwise they serve the target port (or the service port).
    pub fn endpoint_port(&self, ep: &Endpoint, sp: &ServicePort) -> Option<u16> {
        // Hot path (every endpoint of every cluster): look up by name without allocating.
        let explicit =
            if sp.name.is_empty() { ep.ports.get(&sp.port.to_string()) } else { ep.ports.get(sp.name.as_str()) };
        if let Some(p) = explicit {
            return Some(*p);
        }
        match self.origin {
            ServiceOrigin::Kubernetes => None,
            ServiceOrigin::ServiceEntry => Some(sp.target_port.unwrap_or(sp.port)),
        }
    }

    /// Whether this is a Kubernetes Service without a cluster IP (`clusterIP: None`).
    pub fn is_headless_kubernetes(&self) -> bool {
        self.origin == ServiceOrigin::Kubernetes && self.resolution == Resolution::Passthrough
    }
}

/// A workload (pod) in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Workload {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod IPs.
    pub ips: Vec<String>,
    /// Labels.
    pub labels: Labels,
    /// Service account.
    pub service_account: String,
    /// Container ports by name.
    pub named_ports: BTreeMap<String, u16>,
}

/// Everything the translator knows about the mesh at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct World {
    /// Mesh settings.
    pub mesh: MeshConfig,
    /// Services sorted by hostname (one per host: a Kubernetes Service wins over a ServiceEntry).
    pub services: Vec<Arc<Service>>,
    /// Namespace labels by namespace name.
    pub namespaces: BTreeMap<String, Labels>,
    /// Pods by `namespace/name`.
    pub workloads: BTreeMap<String, Workload>,
    /// Routing and policy configuration (VirtualServices, DestinationRules, Gateways, Sidecars,
    /// WorkloadEntries, PeerAuthentications), oldest first and indexed.
    pub config: config::Config,
}

impl World {
    /// The service with host `hostname`.
    pub fn service(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services.binary_search_by(|s| s.hostname.as_str().cmp(hostname)).ok().map(|i| &self.services[i])
    }

    /// Services a proxy in `namespace` may see.
    pub fn visible_services<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.services.iter().filter(move |s| s.visible_from(namespace))
    }
}
