//! Header manipulation (`http[].headers`, `http[].route[].headers`, istiod's
//! `translateAppendHeaders`): the header lists of a route or weighted cluster. A `Host` or
//! `:authority` set or added cannot be a header operation in Envoy; it becomes a host rewrite
//! ([`super::rewrite`]). No HTTP filter: the router applies the lists.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{Route, weighted_cluster::ClusterWeight};

use crate::api::istio::{HeaderOperations, Headers};

/// Header operations of a route or destination.
#[derive(Debug, Default)]
pub(crate) struct HeaderOps {
    request_add: Vec<HeaderValueOption>,
    response_add: Vec<HeaderValueOption>,
    request_remove: Vec<String>,
    response_remove: Vec<String>,
    /// A `Host`/`:authority` set or added: becomes a host rewrite.
    pub(crate) authority: String,
}

impl HeaderOps {
    /// Appends the operations to a route's lists (the rule's own, then its single destination's).
    pub(crate) fn append_to_route(self, r: &mut Route) {
        r.request_headers_to_add.extend(self.request_add);
        r.request_headers_to_remove.extend(self.request_remove);
        r.response_headers_to_add.extend(self.response_add);
        r.response_headers_to_remove.extend(self.response_remove);
    }

    /// Sets the operations of one weighted destination.
    pub(crate) fn set_on_cluster_weight(self, cw: &mut ClusterWeight) {
        cw.request_headers_to_add = self.request_add;
        cw.request_headers_to_remove = self.request_remove;
        cw.response_headers_to_add = self.response_add;
        cw.response_headers_to_remove = self.response_remove;
    }
}

/// Pseudo headers and `Host` cannot be manipulated by Envoy's header lists.
fn is_internal_header(k: &str) -> bool {
    k.starts_with(':') || k.eq_ignore_ascii_case("host")
}

fn is_authority_header(k: &str) -> bool {
    k.eq_ignore_ascii_case(":authority") || k.eq_ignore_ascii_case("host")
}

/// Sorted by name, internal headers dropped.
fn header_values(headers: &BTreeMap<String, String>, append: bool, authority: &mut String) -> Vec<HeaderValueOption> {
    let mut out = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        if is_authority_header(k) {
            authority.clone_from(v);
        }
        if is_internal_header(k) {
            continue;
        }
        out.push(HeaderValueOption {
            header: Some(HeaderValue { key: k.clone(), value: v.clone(), ..Default::default() }),
            append_action: if append {
                HeaderAppendAction::AppendIfExistsOrAdd as i32
            } else {
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            },
            ..Default::default()
        });
    }
    out
}

/// The operations of a `headers` block.
pub(crate) fn header_operations(h: &Headers) -> HeaderOps {
    let empty = HeaderOperations::default();
    let req = h.request.as_ref().unwrap_or(&empty);
    let resp = h.response.as_ref().unwrap_or(&empty);
    let mut set_authority = String::new();
    let mut add_authority = String::new();
    let mut request_add = header_values(&req.set, false, &mut set_authority);
    request_add.extend(header_values(&req.add, true, &mut add_authority));
    let mut ignored = String::new();
    let mut response_add = header_values(&resp.set, false, &mut ignored);
    response_add.extend(header_values(&resp.add, true, &mut ignored));
    let drop_internal = |v: &[String]| v.iter().filter(|k| !is_internal_header(k)).cloned().collect();
    HeaderOps {
        request_add,
        response_add,
        request_remove: drop_internal(&req.remove),
        response_remove: drop_internal(&resp.remove),
        // A `set` authority wins over an `add` one.
        authority: if set_authority.is_empty() { add_authority } else { set_authority },
    }
}
