//! CORS (`http[].corsPolicy`, istiod's `TranslateCORSPolicy`): an empty `envoy.filters.http.cors`
//! filter in every connection manager, configured per route through `typed_per_filter_config`.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::Route;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::{Cors, CorsPolicy as EnvoyCorsPolicy};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::BoolValue;

use super::fraction;
use crate::api::istio::{CorsPolicy, HttpRoute, UnmatchedPreflights, parse_duration};
use crate::envoy::any;
use crate::envoy::http_route::string_matcher;

/// Filter name (also the `typed_per_filter_config` key).
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// The filter: without configuration of its own, it acts only on routes that configure it.
pub(crate) fn http_filter() -> HttpFilter {
    super::typed_filter(CORS_FILTER, &Cors::default())
}

/// Adds the rule's CORS policy, if it has one, to the route.
pub(crate) fn apply(route: &mut Route, http: &HttpRoute) {
    if let Some(c) = &http.cors_policy {
        route.typed_per_filter_config.insert(CORS_FILTER.to_string(), any(&translate(c)));
    }
}

fn translate(c: &CorsPolicy) -> EnvoyCorsPolicy {
    let allow_origin_string_match = if !c.allow_origins.is_empty() {
        c.allow_origins.iter().map(string_matcher).collect()
    } else {
        c.allow_origin
            .iter()
            .map(|o| StringMatcher { match_pattern: Some(MatchPattern::Exact(o.clone())), ignore_case: false })
            .collect()
    };
    EnvoyCorsPolicy {
        allow_origin_string_match,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .as_deref()
            .and_then(|m| parse_duration(m).ok())
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(fraction(100, DenominatorType::Hundred)),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue {
            value: c.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        }),
        ..Default::default()
    }
}
