//! security.istio.io kinds: `PeerAuthentication`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::MatchLabelsSelector;

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads this applies to; none means the whole namespace (or mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<MatchLabelsSelector>,
    /// Mode for every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Modes per workload (target) port. `None` when absent; an empty map is invalid.
    #[serde(default, deserialize_with = "port_keyed", skip_serializing_if = "Option::is_none")]
    pub port_level_mtls: Option<BTreeMap<u32, MutualTls>>,
}

/// Reads a map keyed by port numbers written as strings (`"8080": {...}`), naming the key that is
/// not a number (the range is checked by validation, so `"0"` still parses).
fn port_keyed<'de, D>(d: D) -> Result<Option<BTreeMap<u32, MutualTls>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw: Option<BTreeMap<String, MutualTls>> = Option::deserialize(d)?;
    raw.map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                k.trim().parse::<u32>().map(|p| (p, v)).map_err(|_| {
                    serde::de::Error::custom(format!("type conversion error from string {k:?} to port number"))
                })
            })
            .collect()
    })
    .transpose()
}

/// `mtls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// Mode (default UNSET: inherit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

/// `mtls.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent level (PERMISSIVE at the top).
    Unset,
    /// Plaintext only.
    Disable,
    /// Plaintext or mTLS.
    Permissive,
    /// mTLS only.
    Strict,
}
