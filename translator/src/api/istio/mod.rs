//! Istio API types (networking.istio.io, security.istio.io), with Istio's JSON field names.
//!
//! Every spec struct refuses unknown fields, so a typo (`resolutin`) is reported instead of silently
//! ignored. Values are kept as written: durations stay strings (`"1.5s"`, `"100ms"`) and ranges are
//! not checked here; [`crate::validate`] applies Istio's rules and names the offending field.
//!
//! `oneof` groups of Istio's protos are plain optional fields here (a [`StringMatch`] has `exact`,
//! `prefix` and `regex`); validation reports when more than one member is set.

mod destination_rule;
mod gateway;
mod security;
mod service_entry;
mod sidecar;
mod virtual_service;

pub use destination_rule::*;
pub use gateway::*;
pub use security::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// One Istio resource: Kubernetes envelope plus a typed spec.
///
/// The concrete kinds are aliases ([`VirtualService`], [`ServiceEntry`], ...), so
/// `vs.spec.hosts` and `ServiceEntry { spec, ..Default::default() }` read naturally.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioObject<S> {
    /// API version (`networking.istio.io/v1`, ...).
    #[serde(default)]
    pub api_version: String,
    /// Kind.
    #[serde(default)]
    pub kind: String,
    /// Object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec. A missing spec reads as the empty spec; the parser reports it for kinds whose spec is
    /// required (ServiceEntry, WorkloadEntry).
    #[serde(default)]
    pub spec: S,
    /// Status (ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// `networking.istio.io ServiceEntry`.
pub type ServiceEntry = IstioObject<ServiceEntrySpec>;
/// `networking.istio.io WorkloadEntry`.
pub type WorkloadEntry = IstioObject<WorkloadEntrySpec>;
/// `networking.istio.io VirtualService`.
pub type VirtualService = IstioObject<VirtualServiceSpec>;
/// `networking.istio.io DestinationRule`.
pub type DestinationRule = IstioObject<DestinationRuleSpec>;
/// `networking.istio.io Gateway`.
pub type Gateway = IstioObject<GatewaySpec>;
/// `networking.istio.io Sidecar`.
pub type Sidecar = IstioObject<SidecarSpec>;
/// `security.istio.io PeerAuthentication`.
pub type PeerAuthentication = IstioObject<PeerAuthenticationSpec>;

/// `workloadSelector` of networking kinds (ServiceEntry, Sidecar): `labels`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels to match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `istio.type.v1beta1.WorkloadSelector` (DestinationRule `workloadSelector`, policy `selector`):
/// `matchLabels`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabelsSelector {
    /// Labels to match.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// A port number selector (`port: {number: 80}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Port number.
    #[serde(default)]
    pub number: u32,
}

/// A percentage in `[0.0, 100.0]` (`{value: 12.5}`).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// The percentage.
    #[serde(default)]
    pub value: f64,
}

/// A port of a Gateway server or a Sidecar listener.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// Port number (0 for a Unix domain socket bind).
    #[serde(default)]
    pub number: u32,
    /// Protocol (`HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS`).
    #[serde(default)]
    pub protocol: String,
    /// Port name.
    #[serde(default)]
    pub name: String,
    /// Deprecated; has no effect on gateways and sidecars (validation says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// A duration string that is not one Istio accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `1h2m3.5s` / `100ms` / `0`.
    #[error("invalid duration {0:?} (expected a number with unit ns, us, ms, s, m or h, like \"1.5s\" or \"100ms\")")]
    Syntax(String),
    /// Negative durations have no meaning in Istio's API.
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
    /// Larger than any duration Envoy accepts.
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

/// Parses a duration as Istio accepts it: Go's `time.ParseDuration` syntax (`"1h30m"`, `"1.5s"`,
/// `"100ms"`, `"250us"`, `"0"`), which includes protobuf's JSON form (`"1.5s"`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    let syntax = || DurationError::Syntax(s.to_string());
    let body = s.strip_prefix('+').unwrap_or(s);
    if body.starts_with('-') {
        return Err(DurationError::Negative(s.to_string()));
    }
    if body == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if body.is_empty() {
        return Err(syntax());
    }
    let mut total_nanos: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(f) => {
                let frac_len = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                f.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(syntax());
        }
        let unit_len = after_num.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after_num.len());
        let (unit, next) = after_num.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(syntax()),
        };
        let int_value: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| DurationError::Overflow(s.to_string()))?
        };
        let mut value = int_value.checked_mul(unit_nanos).ok_or_else(|| DurationError::Overflow(s.to_string()))?;
        // The fraction is scaled digit by digit so `0.001s` is exactly one millisecond.
        let mut scale = unit_nanos;
        for d in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value += u128::from(d - b'0') * scale;
        }
        total_nanos = total_nanos.checked_add(value).ok_or_else(|| DurationError::Overflow(s.to_string()))?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| DurationError::Overflow(s.to_string()))?;
    // Lossless: the remainder is below one billion.
    let nanos = (total_nanos % 1_000_000_000) as u32;
    Ok(std::time::Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::time::Duration;

    #[rstest]
    #[case("1s", Duration::from_secs(1))]
    #[case("0.5s", Duration::from_millis(500))]
    #[case("100ms", Duration::from_millis(100))]
    #[case("1h30m", Duration::from_secs(5400))]
    #[case("1.5m", Duration::from_secs(90))]
    #[case("250us", Duration::from_micros(250))]
    #[case("0", Duration::ZERO)]
    #[case("0s", Duration::ZERO)]
    #[case("0.001s", Duration::from_millis(1))]
    fn durations_parse(#[case] text: &str, #[case] want: Duration) {
        assert_eq!(parse_duration(text), Ok(want));
    }

    #[rstest]
    #[case("")]
    #[case("5")]
    #[case("1d")]
    #[case("s")]
    #[case("1.s.")]
    #[case("abc")]
    fn bad_durations_are_rejected(#[case] text: &str) {
        assert!(matches!(parse_duration(text), Err(DurationError::Syntax(_))), "{text}");
    }

    #[test]
    fn negative_durations_are_rejected() {
        assert!(matches!(parse_duration("-1s"), Err(DurationError::Negative(_))));
    }
}
