//! Direct responses (`http[].directResponse`): a route whose action answers with a status and an
//! inline body. No HTTP filter: the router answers. Route configurations carrying them allow
//! bodies up to Istio's limit (`MAX_DIRECT_RESPONSE_BODY_BYTES` in [`crate::envoy::route`]).

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::{DirectResponseAction, route::Action};

use crate::api::istio::HttpDirectResponse;

/// The direct-response action: the body as a string, or decoded from base64 `bytes`.
pub(crate) fn action(d: &HttpDirectResponse) -> Option<Action> {
    Some(Action::DirectResponse(DirectResponseAction {
        status: d.status,
        body: d.body.as_ref().and_then(|b| match (&b.string, &b.bytes) {
            (Some(s), _) => Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(s.clone())),
                ..Default::default()
            }),
            (None, Some(b64)) => Some(DataSource {
                specifier: Some(data_source::Specifier::InlineBytes(base64_decode(b64).unwrap_or_default())),
                ..Default::default()
            }),
            (None, None) => None,
        }),
        ..Default::default()
    }))
}

/// Standard base64 (with or without padding), as protobuf JSON encodes `bytes`.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("aGVsbG8=", b"hello".as_slice())]
    #[case("aGVsbG8", b"hello".as_slice())]
    #[case("", b"".as_slice())]
    fn base64(#[case] s: &str, #[case] want: &[u8]) {
        assert_eq!(base64_decode(s).unwrap(), want);
    }
}
