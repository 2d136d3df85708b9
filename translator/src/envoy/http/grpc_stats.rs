//! gRPC statistics: the `envoy.filters.http.grpc_stats` filter in every connection manager, as
//! istiod configures it (filter state for telemetry, no per-method stats). No per-route
//! configuration.

use envoy_types::pb::envoy::extensions::filters::http::grpc_stats::v3::{FilterConfig, filter_config};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::google::protobuf::BoolValue;

/// Filter name.
pub const GRPC_STATS_FILTER: &str = "envoy.filters.http.grpc_stats";

/// The filter.
pub(crate) fn http_filter() -> HttpFilter {
    super::typed_filter(
        GRPC_STATS_FILTER,
        &FilterConfig {
            emit_filter_state: true,
            per_method_stat_specifier: Some(filter_config::PerMethodStatSpecifier::StatsForAllMethods(BoolValue {
                value: false,
            })),
            ..Default::default()
        },
    )
}
