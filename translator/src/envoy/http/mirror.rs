//! Mirroring (`http[].mirror` with `mirrorPercentage`/`mirrorPercent`, and `http[].mirrors`): the
//! route action's `request_mirror_policies`. No HTTP filter: the router mirrors.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::{RouteAction, route_action::RequestMirrorPolicy};
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::BoolValue;

use super::{fraction, percent};
use crate::api::istio::{HttpRoute, Percent};
use crate::envoy::Ctx;
use crate::envoy::http_route::destination_cluster;

/// Adds a mirror policy per mirror of the rule (the legacy `mirror` first), skipping those with a
/// zero share.
pub(crate) fn apply(ctx: &Ctx<'_>, action: &mut RouteAction, http: &HttpRoute, listen_port: u16) {
    if let Some(mirror) = &http.mirror
        && let Some(fraction) = mirror_percent(http.mirror_percentage.as_ref(), http.mirror_percent)
    {
        action
            .request_mirror_policies
            .push(mirror_policy(destination_cluster(mirror, ctx.service(&mirror.host), listen_port), fraction));
    }
    for m in &http.mirrors {
        if let (Some(d), Some(fraction)) = (&m.destination, mirror_percent(m.percentage.as_ref(), None)) {
            action
                .request_mirror_policies
                .push(mirror_policy(destination_cluster(d, ctx.service(&d.host), listen_port), fraction));
        }
    }
}

/// The mirrored share: an explicit percentage (0 disables), else the deprecated integer, else 100%.
fn mirror_percent(p: Option<&Percent>, legacy: Option<u32>) -> Option<RuntimeFractionalPercent> {
    let value = match (p, legacy) {
        (Some(p), _) if p.value > 0.0 => percent(p),
        (Some(_), _) => return None,
        (None, Some(l)) if l > 0 => fraction(l, DenominatorType::Hundred),
        (None, Some(_)) => return None,
        (None, None) => fraction(100, DenominatorType::Hundred),
    };
    Some(RuntimeFractionalPercent { default_value: Some(value), ..Default::default() })
}

fn mirror_policy(cluster: String, fraction: RuntimeFractionalPercent) -> RequestMirrorPolicy {
    RequestMirrorPolicy {
        cluster,
        runtime_fraction: Some(fraction),
        trace_sampled: Some(BoolValue { value: false }),
        ..Default::default()
    }
}
