//! Asking the API server who a caller is and what it may read, for the CA and SDS in Kubernetes.
//!
//! - [`TokenReviewAuthenticator`]: the CA's [`Authenticator`] for pods. A pod presents its projected
//!   service-account token (audience `istio-ca`); a TokenReview with that audience says whether the
//!   token is valid and whose it is (`system:serviceaccount:<namespace>:<name>`).
//! - [`SubjectAccessReviewer`]: whether a proxy's service account may read Secrets in a namespace,
//!   asked before a gateway is sent a `credentialName` Secret over SDS (Istio asks `list secrets` in
//!   the Secret's namespace).

use std::fmt;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::debug;

use crate::identity::{AuthError, AuthFuture, Authenticator, Caller, Credentials};
use crate::xds::sds::{AccessFuture, SecretAccess};

/// The audience of tokens meant for the CA (istiod's).
pub const CA_AUDIENCE: &str = "istio-ca";

const NAME: &str = "kubernetes";

/// Authenticates CA callers by TokenReview.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: Client,
    audience: String,
}

impl fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewAuthenticator").field("audience", &self.audience).finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// Reviews tokens through `client`, requiring audience [`CA_AUDIENCE`].
    pub fn new(client: Client) -> Self {
        Self { client, audience: CA_AUDIENCE.to_string() }
    }

    /// Asks the API server about `token`.
    pub async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let rejected = |reason: String| AuthError::Rejected { authenticator: NAME, reason };
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable { authenticator: NAME, reason: format!("tokenreview: {e}") })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "token not authenticated".into());
            return Err(rejected(why));
        }
        // The API server echoes the audiences the token is valid for; an empty list means the
        // server does not support audiences, which the request already asked it to enforce.
        if let Some(audiences) = status.audiences.filter(|a| !a.is_empty())
            && !audiences.contains(&self.audience)
        {
            return Err(rejected(format!("token is not for audience {:?} (it is for {audiences:?})", self.audience)));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let caller = parse_service_account(&username)
            .ok_or_else(|| rejected(format!("{username:?} is not a service account")))?;
        debug!(namespace = %caller.namespace, service_account = %caller.service_account, "tokenreview: authenticated");
        Ok(caller)
    }
}

/// `system:serviceaccount:<namespace>:<name>` -> caller.
pub fn parse_service_account(username: &str) -> Option<Caller> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some(Caller { namespace: namespace.to_string(), service_account: name.to_string() })
}

impl Authenticator for TokenReviewAuthenticator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn authenticate<'a>(&'a self, credentials: Credentials<'a>) -> AuthFuture<'a> {
        Box::pin(async move {
            match credentials.bearer_token {
                None => Ok(None),
                Some(token) => self.review(token).await.map(Some),
            }
        })
    }
}

/// [`SecretAccess`] by SubjectAccessReview.
#[derive(Clone)]
pub struct SubjectAccessReviewer {
    client: Client,
}

impl fmt::Debug for SubjectAccessReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectAccessReviewer").finish_non_exhaustive()
    }
}

impl SubjectAccessReviewer {
    /// Reviews through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// Asks whether `caller` may `list` Secrets in `namespace` (what Istio asks).
    pub async fn review(&self, caller: &Caller, namespace: &str) -> Result<bool, AuthError> {
        let user = format!("system:serviceaccount:{}:{}", caller.namespace, caller.service_account);
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.clone()),
                groups: Some(vec![
                    "system:serviceaccounts".to_string(),
                    format!("system:serviceaccounts:{}", caller.namespace),
                    "system:authenticated".to_string(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some("list".to_string()),
                    resource: Some("secrets".to_string()),
                    version: Some("v1".to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable { authenticator: NAME, reason: format!("subjectaccessreview: {e}") })?;
        let allowed = answer.status.is_some_and(|s| s.allowed && s.denied != Some(true));
        debug!(%user, namespace, allowed, "subjectaccessreview: list secrets");
        Ok(allowed)
    }
}

impl SecretAccess for SubjectAccessReviewer {
    fn may_read_secrets<'a>(&'a self, caller: &'a Caller, namespace: &'a str) -> AccessFuture<'a> {
        Box::pin(self.review(caller, namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        let c = parse_service_account("system:serviceaccount:back-end:default");
        assert_eq!(c, Some(Caller { namespace: "back-end".into(), service_account: "default".into() }));
        assert_eq!(parse_service_account("system:node:kind-control-plane"), None);
        assert_eq!(parse_service_account("system:serviceaccount::x"), None);
        assert_eq!(parse_service_account("system:serviceaccount:a:b:c"), None);
        assert_eq!(parse_service_account("alice"), None);
    }
}
