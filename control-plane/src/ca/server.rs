//! The CA's gRPC API: `istio.v1.auth.IstioCertificateService/CreateCertificate`, wire-compatible with
//! istiod, so pilot-agent and `sailplane agent` can both use it.
//!
//! Input: a CSR, a requested lifetime, and the caller's credentials (a bearer token in the
//! `authorization` metadata; the TLS peer certificate is passed along too, for authenticators that
//! use it). Output: the signed chain, leaf first, root last.
//!
//! Who the caller is comes only from an [`Authenticator`], never from the CSR: the CSR's public key is
//! used, its SANs must be empty or exactly the caller's SPIFFE URI (see [`Authority::sign_csr`]).
//! File mode authenticates with tokens minted by `sailplane token create` ([`TokenAuthenticator`]);
//! Kubernetes mode will add a TokenReview authenticator behind the same trait.
//!
//! [`tls`] holds the TLS listener of the secure port (15012) this service is served on.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use sailplane_proto::istio::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use sailplane_proto::istio::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::token::TokenAuthority;
use super::{Authority, CaError};
use crate::identity::{AuthError, AuthFuture, Authenticator, Caller, Credentials, Identity};
use crate::tls;

/// File mode: bearer tokens signed by the control plane's own token key.
#[derive(Debug, Clone)]
pub struct TokenAuthenticator {
    tokens: Arc<TokenAuthority>,
}

impl TokenAuthenticator {
    /// Authenticates with tokens verified by `tokens`.
    pub fn new(tokens: Arc<TokenAuthority>) -> TokenAuthenticator {
        TokenAuthenticator { tokens }
    }
}

impl Authenticator for TokenAuthenticator {
    fn name(&self) -> &'static str {
        "token"
    }

    fn authenticate<'a>(&'a self, credentials: Credentials<'a>) -> AuthFuture<'a> {
        let result = match credentials.bearer_token {
            None => Ok(None),
            Some(token) => self
                .tokens
                .verify(token)
                .map(|s| Some(Caller { namespace: s.namespace, service_account: s.service_account }))
                .map_err(|e| AuthError::Rejected { authenticator: "token", reason: e.to_string() }),
        };
        Box::pin(std::future::ready(result))
    }
}

/// The `IstioCertificateService` implementation.
#[derive(Debug, Clone)]
pub struct CaService {
    authority: Arc<Authority>,
    authenticators: Arc<[Arc<dyn Authenticator>]>,
}

/// Reads `authorization: Bearer <token>`. A present but malformed header is an error rather than
/// "no token", so a client that gets its header wrong is told so.
fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
    let Some(value) = metadata.get("authorization") else { return Ok(None) };
    let value = value.to_str().map_err(|_| Status::unauthenticated("authorization header is not valid ASCII"))?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Status::unauthenticated("authorization header must be `Bearer <token>`"));
    }
    Ok(Some(token))
}

/// The gRPC status for a signing error.
fn status_of(e: CaError) -> Status {
    match e {
        CaError::BadCsr(_) | CaError::TtlTooLong { .. } => Status::invalid_argument(e.to_string()),
        CaError::IdentityMismatch { .. } => Status::permission_denied(e.to_string()),
        CaError::Io { .. } | CaError::Material { .. } | CaError::Sign(_) => Status::internal(e.to_string()),
    }
}

impl CaService {
    /// A service signing with `authority`, trying `authenticators` in order (the first that
    /// recognises the credentials decides).
    pub fn new(authority: Arc<Authority>, authenticators: Vec<Arc<dyn Authenticator>>) -> CaService {
        CaService { authority, authenticators: authenticators.into() }
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self)
    }

    /// Runs the authenticators: the first success wins; refusals are reported together.
    async fn authenticate(&self, credentials: Credentials<'_>) -> Result<Caller, Status> {
        let mut refusals = Vec::new();
        let mut unavailable = false;
        for a in self.authenticators.iter() {
            match a.authenticate(credentials).await {
                Ok(Some(caller)) => return Ok(caller),
                Ok(None) => {}
                Err(e) => {
                    unavailable |= matches!(e, AuthError::Unavailable { .. });
                    refusals.push(e.to_string());
                }
            }
        }
        if refusals.is_empty() {
            return Err(Status::unauthenticated(
                "no credentials: send a token in the `authorization: Bearer <token>` metadata",
            ));
        }
        let message = format!("authentication failed: {}", refusals.join("; "));
        // A caller refused only because a backend was down should retry, not give up.
        Err(if unavailable { Status::unavailable(message) } else { Status::unauthenticated(message) })
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request.extensions().get::<tls::TlsConnectInfo>().cloned();
        let remote = peer.as_ref().and_then(|p| p.remote_addr);
        let credentials = Credentials {
            bearer_token: bearer_token(request.metadata())?,
            peer_certificates: peer.as_ref().and_then(|p| p.peer_certificates.as_deref()),
        };
        let caller = match self.authenticate(credentials).await {
            Ok(c) => c,
            Err(status) => {
                warn!(remote = ?remote, reason = status.message(), "certificate request refused");
                return Err(status);
            }
        };
        let req = request.into_inner();
        let ttl = match req.validity_duration {
            d if d < 0 => {
                return Err(Status::invalid_argument(format!("validity_duration {d} is negative")));
            }
            0 => None,
            // Positive i64 always fits u64.
            d => Some(Duration::from_secs(d.unsigned_abs())),
        };
        let identity = Identity {
            trust_domain: self.authority.options().trust_domain.clone(),
            namespace: caller.namespace,
            service_account: caller.service_account,
        };
        let spiffe = identity.spiffe_uri();
        match self.authority.sign_csr(&req.csr, &identity, ttl) {
            Ok(cert_chain) => {
                info!(identity = %spiffe, remote = ?remote, ttl_secs = ?ttl.map(|d| d.as_secs()), "certificate issued");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(e) => {
                warn!(identity = %spiffe, remote = ?remote, error = %e, "certificate request refused");
                Err(status_of(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", MetadataValue::try_from(value).unwrap());
        m
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer_token(&MetadataMap::new()).unwrap(), None);
        assert_eq!(bearer_token(&md("Bearer abc")).unwrap(), Some("abc"));
        assert_eq!(bearer_token(&md("bearer  abc ")).unwrap(), Some("abc"));
        assert_eq!(bearer_token(&md("Basic abc")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(bearer_token(&md("Bearer")).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn signing_errors_map_to_grpc_codes() {
        assert_eq!(status_of(CaError::BadCsr("x".into())).code(), tonic::Code::InvalidArgument);
        let too_long = CaError::TtlTooLong { requested: Duration::from_secs(2), max: Duration::from_secs(1) };
        assert_eq!(status_of(too_long).code(), tonic::Code::InvalidArgument);
        let mismatch = CaError::IdentityMismatch { requested: "a".into(), caller: "b".into() };
        assert_eq!(status_of(mismatch).code(), tonic::Code::PermissionDenied);
        assert_eq!(status_of(CaError::Sign("x".into())).code(), tonic::Code::Internal);
    }

    #[derive(Debug)]
    struct Fixed(Result<Option<Caller>, AuthError>);

    impl Authenticator for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn authenticate<'a>(&'a self, _: Credentials<'a>) -> AuthFuture<'a> {
            Box::pin(std::future::ready(self.0.clone()))
        }
    }

    fn service(auths: Vec<Fixed>) -> CaService {
        let dir = tempfile::tempdir().unwrap();
        let authority = Arc::new(Authority::load_or_create_self_signed(dir.path(), Default::default()).unwrap());
        CaService::new(authority, auths.into_iter().map(|a| Arc::new(a) as Arc<dyn Authenticator>).collect())
    }

    #[tokio::test]
    async fn authenticators_run_in_order() {
        let alice = Caller { namespace: "ns".into(), service_account: "alice".into() };
        let refused = AuthError::Rejected { authenticator: "fixed", reason: "nope".into() };
        let down = AuthError::Unavailable { authenticator: "kubernetes", reason: "timeout".into() };
        let none = Credentials::default();

        let s = service(vec![Fixed(Ok(None)), Fixed(Ok(Some(alice.clone())))]);
        assert_eq!(s.authenticate(none).await.unwrap(), alice);
        let s = service(vec![Fixed(Err(refused.clone())), Fixed(Ok(Some(alice.clone())))]);
        assert_eq!(s.authenticate(none).await.unwrap(), alice, "a later authenticator may accept");
        let s = service(vec![Fixed(Ok(None))]);
        let st = s.authenticate(none).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::Unauthenticated);
        assert!(st.message().contains("no credentials"), "{}", st.message());
        let s = service(vec![Fixed(Err(refused))]);
        let st = s.authenticate(none).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::Unauthenticated);
        assert!(st.message().contains("nope"), "{}", st.message());
        let s = service(vec![Fixed(Err(down))]);
        assert_eq!(s.authenticate(none).await.unwrap_err().code(), tonic::Code::Unavailable);
    }
}
