//! The router: `envoy.filters.http.router`, the last filter of every connection manager.

use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;

/// Filter name.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// The filter.
pub(crate) fn http_filter() -> HttpFilter {
    super::typed_filter(ROUTER_FILTER, &Router::default())
}
