//! HTTP features, one file each, in the layout of Envoy Gateway's
//! `internal/xds/translator/<feature>.go`: a feature owns what it puts on a route (its part of the
//! route action, or its `typed_per_filter_config` entry) and, when it has one, its HTTP filter in
//! the connection manager. [`http_filters`] is the one place that orders those filters.
//!
//! Routes: [`headers`], [`rewrite`], [`redirect`], [`direct_response`], [`timeout`], [`mirror`],
//! [`retry`], [`hash_policy`] (consistent hashing from the DestinationRule), [`fault`], [`cors`].
//! Connection-manager filters only: [`grpc_web`], [`grpc_stats`], [`router`].

pub mod cors;
pub mod direct_response;
pub mod fault;
pub mod grpc_stats;
pub mod grpc_web;
pub mod hash_policy;
pub mod headers;
pub mod mirror;
pub mod redirect;
pub mod retry;
pub mod rewrite;
pub mod router;
pub mod timeout;

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpFilter, http_filter};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};

use super::any;
use crate::api::istio::Percent;
use crate::model::Protocol;

/// The HTTP filters of a connection manager serving `protocol`, in order: the features' filters as
/// istiod orders them, the router last.
///
/// Istio's own `istio.alpn`, `istio.metadata_exchange` and `istio.stats` are not in upstream Envoy
/// and have no counterpart. Seam for later features: RBAC/authn filters go before `grpc_stats`.
pub fn http_filters(protocol: Protocol) -> Vec<HttpFilter> {
    let mut f = Vec::with_capacity(5);
    f.extend(grpc_web::http_filter(protocol));
    f.push(grpc_stats::http_filter());
    f.push(fault::http_filter());
    f.push(cors::http_filter());
    f.push(router::http_filter());
    f
}

/// A connection-manager HTTP filter with a typed configuration.
fn typed_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(config))),
        ..Default::default()
    }
}

fn fraction(numerator: u32, denominator: DenominatorType) -> FractionalPercent {
    FractionalPercent { numerator, denominator: denominator as i32 }
}

/// Istio `Percent` (0-100, fractional) as parts per million.
fn percent(p: &Percent) -> FractionalPercent {
    // Truncation, as istiod's `uint32(p.Value * 10000)`.
    fraction((p.value * 10_000.0) as u32, DenominatorType::Million)
}
