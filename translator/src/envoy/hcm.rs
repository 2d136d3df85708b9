//! The HTTP connection manager every listener builder starts from: Istio's shared settings and
//! the HTTP filters of [`super::http::http_filters`] (each feature's filter lives with the feature;
//! that function only orders them). Listener builders add their route source and direction-specific
//! settings.

use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, RequestIdExtension,
    http_connection_manager::{CodecType, PathWithEscapedSlashesAction, UpgradeConfig},
};
use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use envoy_types::pb::google::protobuf::BoolValue;

use super::{any, http, secs};
use crate::model::Protocol;

/// Network filter name of the HTTP connection manager.
pub(crate) const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";

/// The connection manager as a listener network filter.
pub(crate) fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter { name: HTTP_CONNECTION_MANAGER.to_string(), config_type: Some(filter::ConfigType::TypedConfig(any(hcm))) }
}

/// Settings every Istio sidecar HCM shares.
pub(crate) fn base_hcm(stat_prefix: &str, protocol: Protocol) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_string(),
        http_filters: http::http_filters(protocol),
        // MeshConfig pathNormalization DEFAULT: RFC 3986 normalization, escaped slashes untouched.
        normalize_path: Some(BoolValue { value: true }),
        path_with_escaped_slashes_action: PathWithEscapedSlashesAction::KeepUnchanged as i32,
        use_remote_address: Some(BoolValue { value: false }),
        upgrade_configs: vec![UpgradeConfig { upgrade_type: "websocket".to_string(), ..Default::default() }],
        // Disabled: long-lived streams (gRPC, websockets) are the application's business.
        stream_idle_timeout: secs(0),
        request_id_extension: Some(RequestIdExtension {
            typed_config: Some(any(&UuidRequestIdConfig {
                use_request_id_for_trace_sampling: Some(BoolValue { value: true }),
                ..Default::default()
            })),
        }),
        proxy_100_continue: true,
        ..Default::default()
    }
}
