//! Redirects (`http[].redirect`): a route whose action is an Envoy `RedirectAction`. No HTTP
//! filter: the router answers.

use envoy_types::pb::envoy::config::route::v3::{RedirectAction, redirect_action, route::Action};

use crate::api::istio::{HttpRedirect, RedirectPortSelection};

/// The redirect action for a listener on `port` (`is_tls`: the scheme a derived port implies).
/// `None` for a redirect code Envoy cannot send (istiod leaves such a route without an action).
#[allow(deprecated)]
pub(crate) fn action(r: &HttpRedirect, port: u16, is_tls: bool) -> Option<Action> {
    let mut a = RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PathRedirect(
            r.uri.clone().unwrap_or_default(),
        )),
        ..Default::default()
    };
    if let Some(s) = r.scheme.as_deref().filter(|s| !s.is_empty()) {
        a.scheme_rewrite_specifier = Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s.to_string()));
    }
    if r.port.is_some() || r.derive_port.is_some() {
        match (r.port, r.derive_port) {
            (Some(p), _) => a.port_redirect = p,
            // Envoy cannot derive the port per request, but routes are built per listener port.
            (None, Some(RedirectPortSelection::FromRequestPort)) => a.port_redirect = u32::from(port),
            (None, _) => {}
        }
        let scheme = r.scheme.as_deref().filter(|s| !s.is_empty()).unwrap_or(if is_tls { "https" } else { "http" });
        // No explicit :80 / :443 for their own scheme.
        if (a.port_redirect == 80 && scheme == "http") || (a.port_redirect == 443 && scheme == "https") {
            a.port_redirect = 0;
        }
    }
    use redirect_action::RedirectResponseCode as C;
    a.response_code = match r.redirect_code.unwrap_or(0) {
        0 | 301 => C::MovedPermanently,
        302 => C::Found,
        303 => C::SeeOther,
        307 => C::TemporaryRedirect,
        308 => C::PermanentRedirect,
        // Validation refuses other codes; istiod leaves such a route without an action.
        _ => return None,
    } as i32;
    Some(Action::Redirect(a))
}

#[cfg(test)]
mod tests {
    use redirect_action::RedirectResponseCode as C;
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case(Some(0), None, None, Some(C::MovedPermanently), 0, "")]
    #[case(Some(302), Some(8080), None, Some(C::Found), 8080, "")]
    #[case(Some(307), Some(443), Some("https"), Some(C::TemporaryRedirect), 0, "https")]
    #[case(Some(418), None, None, None, 0, "")]
    fn redirects(
        #[case] code: Option<u32>,
        #[case] port: Option<u32>,
        #[case] scheme: Option<&str>,
        #[case] want: Option<C>,
        #[case] want_port: u32,
        #[case] want_scheme: &str,
    ) {
        let r = HttpRedirect {
            uri: Some("/new".into()),
            redirect_code: code,
            port,
            scheme: scheme.map(str::to_string),
            ..Default::default()
        };
        match action(&r, 80, false) {
            Some(Action::Redirect(a)) => {
                assert_eq!(Some(a.response_code), want.map(|c| c as i32));
                assert_eq!(a.port_redirect, want_port);
                let s = match a.scheme_rewrite_specifier {
                    Some(redirect_action::SchemeRewriteSpecifier::SchemeRedirect(s)) => s,
                    _ => String::new(),
                };
                assert_eq!(s, want_scheme);
            }
            None => assert!(want.is_none()),
            other => panic!("unexpected {other:?}"),
        }
    }
}
