//! gRPC-Web: the `envoy.filters.http.grpc_web` filter, in connection managers of `grpc-web` ports
//! only. No per-route configuration.

use envoy_types::pb::envoy::extensions::filters::http::grpc_web::v3::GrpcWeb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;

use crate::model::Protocol;

/// Filter name.
pub const GRPC_WEB_FILTER: &str = "envoy.filters.http.grpc_web";

/// The filter, for ports declared `grpc-web`.
pub(crate) fn http_filter(protocol: Protocol) -> Option<HttpFilter> {
    (protocol == Protocol::GrpcWeb).then(|| super::typed_filter(GRPC_WEB_FILTER, &GrpcWeb::default()))
}
