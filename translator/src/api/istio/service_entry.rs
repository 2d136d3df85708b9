//! `ServiceEntry` and `WorkloadEntry` (networking.istio.io).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::WorkloadSelector;

/// `ServiceEntry.spec`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Hosts (FQDN or wildcard).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs or CIDRs.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<SePort>,
    /// `MESH_EXTERNAL` or `MESH_INTERNAL`.
    #[serde(default)]
    pub location: Option<SeLocation>,
    /// `NONE`, `STATIC`, `DNS`, `DNS_ROUND_ROBIN`.
    #[serde(default)]
    pub resolution: Option<SeResolution>,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Pods / WorkloadEntries selected as endpoints.
    #[serde(default)]
    pub workload_selector: Option<WorkloadSelector>,
    /// Namespaces the service is visible to.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// SANs to verify for mTLS.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// A ServiceEntry port.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SePort {
    /// Port number.
    pub number: u32,
    /// Protocol (`HTTP`, `HTTPS`, `TCP`, ...).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Port name.
    #[serde(default)]
    pub name: String,
    /// Port on the endpoints.
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// `ServiceEntry.location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SeLocation {
    /// Outside the mesh.
    MeshExternal,
    /// Inside the mesh.
    MeshInternal,
}

/// `ServiceEntry.resolution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SeResolution {
    /// Original destination.
    None,
    /// Endpoints given statically.
    Static,
    /// STRICT_DNS.
    Dns,
    /// LOGICAL_DNS.
    DnsRoundRobin,
}

impl SeResolution {
    /// Istio's name for the mode (`DNS_ROUND_ROBIN`).
    pub fn as_str(self) -> &'static str {
        match self {
            SeResolution::None => "NONE",
            SeResolution::Static => "STATIC",
            SeResolution::Dns => "DNS",
            SeResolution::DnsRoundRobin => "DNS_ROUND_ROBIN",
        }
    }
}

/// `WorkloadEntry.spec`, also the shape of a ServiceEntry endpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP, hostname or `unix://` path.
    #[serde(default)]
    pub address: String,
    /// Port overrides by service port name.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network.
    #[serde(default)]
    pub network: String,
    /// Locality `region/zone/subzone`.
    #[serde(default)]
    pub locality: String,
    /// LB weight.
    #[serde(default)]
    pub weight: u32,
    /// Service account.
    #[serde(default)]
    pub service_account: String,
}
