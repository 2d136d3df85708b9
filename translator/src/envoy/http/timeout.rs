//! Request timeouts (`http[].timeout`): the route action's `timeout` and `max_grpc_timeout`. No
//! HTTP filter: the router enforces them.

use envoy_types::pb::envoy::config::route::v3::RouteAction;
use envoy_types::pb::google::protobuf::Duration;

use crate::api::istio::HttpRoute;
use crate::envoy::proto_duration;

/// The rule's timeout, 0 (none) when unset.
#[allow(deprecated)]
pub(crate) fn apply(action: &mut RouteAction, http: &HttpRoute) {
    let timeout = http.timeout.as_deref().and_then(proto_duration).unwrap_or_default();
    let zero = timeout.seconds == 0 && timeout.nanos == 0;
    // istiod still uses the deprecated field: its replacement regressed gRPC timeouts.
    action.max_grpc_timeout = Some(if zero { Duration::default() } else { timeout });
    action.timeout = Some(timeout);
}
