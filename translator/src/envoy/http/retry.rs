//! Retries (`http[].retries`, istiod's `retry.ConvertPolicy`): the route action's `retry_policy`.
//! No HTTP filter: the router retries.

use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy,
    retry_policy::{self, RetryBackOff, RetryHostPredicate, RetryPriority},
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::google::protobuf::UInt32Value;

use crate::api::istio::HttpRetry;
use crate::envoy::{any, proto_duration};

/// `retry_on` of Istio's default retry policy.
pub const DEFAULT_RETRY_ON: &str = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// Istio's default retry policy: 2 retries on connection failures, refused streams and gRPC
/// `unavailable`/`cancelled`, preferring hosts not yet tried (unless the route hashes
/// consistently). istiod no longer retries 503s by default (`EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`),
/// but keeps `retriable-status-codes` in `retry_on` so a VirtualService can add codes.
pub fn default_retry_policy(consistent_hash: bool) -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: Some(UInt32Value { value: 2 }),
        retry_host_predicate: if consistent_hash { Vec::new() } else { vec![previous_hosts()] },
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn previous_hosts() -> RetryHostPredicate {
    RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".to_string(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
            &PreviousHostsPredicate::default(),
        ))),
    }
}

/// No VirtualService retries means the default; `attempts: 0` disables retries; otherwise the
/// default with the user's attempts, conditions (numbers among them are status codes), per-try
/// timeout, host predicate, locality retry and backoff.
pub fn retry_policy(r: Option<&HttpRetry>, consistent_hash: bool) -> Option<RetryPolicy> {
    let mut out = default_retry_policy(consistent_hash);
    let Some(r) = r else { return Some(out) };
    if r.attempts <= 0 {
        return None;
    }
    out.num_retries = Some(UInt32Value { value: u32::try_from(r.attempts).unwrap_or(0) });
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.is_empty()) {
        let mut conditions = Vec::new();
        let mut codes = Vec::new();
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) if (100..600).contains(&code) => codes.push(code),
                _ => conditions.push(part),
            }
        }
        out.retry_on = conditions.join(",");
        if !codes.is_empty() && !out.retry_on.contains("retriable-status-codes") {
            out.retry_on.push_str(",retriable-status-codes");
        }
        out.retriable_status_codes = codes;
    }
    if let Some(t) = r.per_try_timeout.as_deref().and_then(proto_duration) {
        out.per_try_timeout = Some(t);
    }
    if let Some(prev) = r.retry_ignore_previous_hosts {
        out.retry_host_predicate = if prev { vec![previous_hosts()] } else { Vec::new() };
    }
    if r.retry_remote_localities == Some(true) {
        out.retry_priority = Some(RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".to_string(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(any(&PreviousPrioritiesConfig {
                update_frequency: 2,
            }))),
        });
    }
    if let Some(b) = r.backoff.as_deref().and_then(proto_duration) {
        out.retry_back_off = Some(RetryBackOff { base_interval: Some(b), ..Default::default() });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case(None, Some(2), 2, DEFAULT_RETRY_ON, vec![], true)]
    #[case(Some(HttpRetry { attempts: 3, retry_on: Some("5xx,503,gateway-error".into()), ..Default::default() }), None,
        3, "5xx,gateway-error,retriable-status-codes", vec![503], true)]
    #[case(Some(HttpRetry { attempts: 1, retry_ignore_previous_hosts: Some(false), ..Default::default() }), None,
        1, DEFAULT_RETRY_ON, vec![], false)]
    fn retries(
        #[case] r: Option<HttpRetry>,
        #[case] _unused: Option<u32>,
        #[case] n: u32,
        #[case] on: &str,
        #[case] codes: Vec<u32>,
        #[case] previous_hosts: bool,
    ) {
        let p = retry_policy(r.as_ref(), false).unwrap();
        assert_eq!(p.num_retries.unwrap().value, n);
        assert_eq!(p.retry_on, on);
        assert_eq!(p.retriable_status_codes, codes);
        assert_eq!(!p.retry_host_predicate.is_empty(), previous_hosts);
        assert_eq!(p.host_selection_retry_max_attempts, 5);
    }

    #[test]
    fn zero_attempts_disable_retries() {
        assert!(retry_policy(Some(&HttpRetry::default()), false).is_none());
    }
}
