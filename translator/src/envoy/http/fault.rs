//! Fault injection (`http[].fault`, istiod's `TranslateFault`): an empty `envoy.filters.http.fault`
//! filter in every connection manager, configured per route through `typed_per_filter_config`.

use envoy_types::pb::envoy::config::route::v3::Route;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;

use super::{fraction, percent};
use crate::api::istio::{FaultAbort as IstioAbort, HttpFaultInjection, HttpRoute};
use crate::envoy::{any, proto_duration};

/// Filter name (also the `typed_per_filter_config` key).
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// The filter: without configuration of its own, it acts only on routes that configure it.
pub(crate) fn http_filter() -> HttpFilter {
    super::typed_filter(FAULT_FILTER, &HttpFault::default())
}

/// Adds the rule's fault injection, if it has one Envoy can express, to the route.
pub(crate) fn apply(route: &mut Route, http: &HttpRoute) {
    if let Some(f) = http.fault.as_ref().and_then(translate) {
        route.typed_per_filter_config.insert(FAULT_FILTER.to_string(), any(&f));
    }
}

/// Fixed delays and HTTP/gRPC aborts (exponential delays and HTTP/2 errors are not supported by
/// Istio and are dropped). A delay without a percentage delays 0%.
#[allow(deprecated)]
fn translate(f: &HttpFaultInjection) -> Option<HttpFault> {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay.as_deref().and_then(proto_duration)?;
        Some(FaultDelay {
            percentage: Some(match &d.percentage {
                Some(p) => percent(p),
                None => fraction(u32::try_from(d.percent.unwrap_or(0)).unwrap_or(0), DenominatorType::Hundred),
            }),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(fixed)),
        })
    });
    let abort = f.abort.as_ref().and_then(translate_abort);
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(HttpFault { delay, abort, ..Default::default() })
}

fn translate_abort(a: &IstioAbort) -> Option<FaultAbort> {
    let error_type = if let Some(s) = a.http_status {
        fault_abort::ErrorType::HttpStatus(u32::try_from(s).ok()?)
    } else if let Some(g) = &a.grpc_status {
        fault_abort::ErrorType::GrpcStatus(grpc_status(g)?)
    } else {
        return None;
    };
    Some(FaultAbort {
        percentage: a.percentage.as_ref().map(percent),
        error_type: Some(error_type),
        ..Default::default()
    })
}

/// gRPC status codes by name, as fault injection accepts them.
fn grpc_status(name: &str) -> Option<u32> {
    crate::api::istio::GRPC_STATUS_NAMES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i).ok())
        .or_else(|| name.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_names() {
        assert_eq!(grpc_status("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_status("unauthenticated"), Some(16));
        assert_eq!(grpc_status("7"), Some(7));
        assert_eq!(grpc_status("NOPE"), None);
    }
}
