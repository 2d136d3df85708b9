//! Workload identity: the SPIFFE ID `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`
//! that the CA writes into certificates, the secure port reads from verified client certificates,
//! and SDS authorization and the agent key on. Its own module, so the xDS server, the CA and the
//! agent share the concept without depending on each other.
//!
//! It also holds how a caller proves who it is to the control plane: [`Credentials`] (a bearer token,
//! a client certificate) turned into a [`Caller`] by an [`Authenticator`] (the CA's own tokens in
//! file mode, a Kubernetes TokenReview in cluster mode).

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

use rustls::pki_types::CertificateDer;

/// A workload identity: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Trust domain.
    pub trust_domain: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

impl Identity {
    /// The SPIFFE URI.
    pub fn spiffe_uri(&self) -> String {
        format!("spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }

    /// Parses a SPIFFE URI of the `ns/<ns>/sa/<sa>` form.
    pub fn from_spiffe_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let td = parts.next()?;
        match (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()) {
            ("ns", ns, "sa", sa, None) if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => Some(Identity {
                trust_domain: td.to_string(),
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            }),
            _ => None,
        }
    }
}

/// An authenticated caller: the Kubernetes namespace and service account its credentials prove. The
/// trust domain is the CA's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// What a caller presented.
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// The token of an `authorization: Bearer <token>` header.
    pub bearer_token: Option<&'a str>,
    /// The TLS client certificate chain (leaf first), when the caller presented one.
    pub peer_certificates: Option<&'a [CertificateDer<'static>]>,
}

/// Why an authenticator refused credentials. The message goes back to the caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The credentials this authenticator understands are present but not acceptable (bad signature,
    /// expired, wrong audience, unknown service account, ...).
    #[error("{authenticator}: {reason}")]
    Rejected {
        /// Which authenticator.
        authenticator: &'static str,
        /// Why.
        reason: String,
    },
    /// The authenticator could not decide (for example the Kubernetes API did not answer).
    #[error("{authenticator} unavailable: {reason}")]
    Unavailable {
        /// Which authenticator.
        authenticator: &'static str,
        /// Why.
        reason: String,
    },
}

/// The future an [`Authenticator`] returns. Boxed so authenticators can be trait objects; a
/// TokenReview authenticator needs to await the Kubernetes API.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<Caller>, AuthError>> + Send + 'a>>;

/// Turns credentials into a [`Caller`].
///
/// `Ok(None)` means "not mine" (for example no bearer token for a token authenticator), so the next
/// authenticator is tried; `Err` means the credentials were examined and refused.
pub trait Authenticator: Send + Sync + Debug + 'static {
    /// Short name for logs and error messages (`token`, `kubernetes`).
    fn name(&self) -> &'static str;
    /// Authenticates `credentials`.
    fn authenticate<'a>(&'a self, credentials: Credentials<'a>) -> AuthFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_uris_round_trip_and_other_forms_are_refused() {
        let id = Identity { trust_domain: "td".into(), namespace: "ns".into(), service_account: "sa".into() };
        assert_eq!(id.spiffe_uri(), "spiffe://td/ns/ns/sa/sa");
        assert_eq!(Identity::from_spiffe_uri(&id.spiffe_uri()), Some(id));
        for bad in ["spiffe://td/ns/a", "https://td/ns/a/sa/b", "spiffe:///ns/a/sa/b", "spiffe://td/ns/a/sa/b/c"] {
            assert_eq!(Identity::from_spiffe_uri(bad), None, "{bad}");
        }
    }
}
