//! Bearer tokens for file mode: JWTs signed by the control plane, shaped like Kubernetes projected
//! service-account tokens (audience `istio-ca`), so VMs and local proxies can authenticate to the CA
//! without a cluster. In Kubernetes mode a TokenReview takes this module's place.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::KeyPair;
use serde::{Deserialize, Serialize};

/// The audience the CA accepts (Istio's).
pub const AUDIENCE: &str = "istio-ca";
/// Issuer written into tokens.
pub const ISSUER: &str = "sailplane";
/// File holding the token signing key, next to the CA files.
pub const TOKEN_KEY: &str = "token-key.pem";

/// Token errors. Messages go back to the caller.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is missing, malformed, badly signed, expired or for another audience.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The key could not be read or created.
    #[error("token key {path}: {reason}")]
    Key {
        /// Key file.
        path: String,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: NamedRef,
}

#[derive(Debug, Serialize, Deserialize)]
struct NamedRef {
    name: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    iat: u64,
    exp: u64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSubject {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// Signs and verifies tokens with one ECDSA P-256 key.
pub struct TokenAuthority {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAuthority")
    }
}

impl TokenAuthority {
    /// Loads the key from `dir`, creating it (mode 0600) on first use.
    pub fn load_or_create(dir: &Path) -> Result<TokenAuthority, TokenError> {
        let path = dir.join(TOKEN_KEY);
        let key_err = |reason: String| TokenError::Key { path: path.display().to_string(), reason };
        let pem = if path.exists() {
            std::fs::read_to_string(&path).map_err(|e| key_err(e.to_string()))?
        } else {
            std::fs::create_dir_all(dir).map_err(|e| key_err(e.to_string()))?;
            let key = KeyPair::generate().map_err(|e| key_err(e.to_string()))?;
            let pem = key.serialize_pem();
            super::authority::write_private(&path, &pem).map_err(|e| key_err(e.to_string()))?;
            pem
        };
        let key = KeyPair::from_pem(&pem).map_err(|e| key_err(e.to_string()))?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| key_err(e.to_string()))?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).map_err(|e| key_err(e.to_string()))?;
        Ok(TokenAuthority { encoding, decoding })
    }

    /// Mints a token for `namespace/service_account` valid for `ttl`.
    pub fn mint(&self, namespace: &str, service_account: &str, ttl: Duration) -> Result<String, TokenError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let claims = Claims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{namespace}:{service_account}"),
            aud: vec![AUDIENCE.into()],
            iat: now,
            exp: now + ttl.as_secs(),
            kubernetes: KubernetesClaims {
                namespace: namespace.into(),
                serviceaccount: NamedRef { name: service_account.into() },
            },
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Verifies signature, expiry (no leeway) and audience; returns the subject.
    pub fn verify(&self, token: &str) -> Result<TokenSubject, TokenError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let c = data.claims;
        let expected_sub =
            format!("system:serviceaccount:{}:{}", c.kubernetes.namespace, c.kubernetes.serviceaccount.name);
        if c.sub != expected_sub || c.kubernetes.namespace.is_empty() || c.kubernetes.serviceaccount.name.is_empty() {
            return Err(TokenError::Invalid("subject does not name a service account".into()));
        }
        Ok(TokenSubject { namespace: c.kubernetes.namespace, service_account: c.kubernetes.serviceaccount.name })
    }

    /// Mints a token with arbitrary audience and expiry (tests of refusal paths).
    #[cfg(test)]
    fn mint_raw(&self, aud: &str, iat: u64, exp: u64) -> String {
        let claims = Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:ns:sa".into(),
            aud: vec![aud.into()],
            iat,
            exp,
            kubernetes: KubernetesClaims { namespace: "ns".into(), serviceaccount: NamedRef { name: "sa".into() } },
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let ta = TokenAuthority::load_or_create(dir.path()).unwrap();
        let t = ta.mint("bookinfo", "reviews", Duration::from_secs(600)).unwrap();
        assert_eq!(
            ta.verify(&t).unwrap(),
            TokenSubject { namespace: "bookinfo".into(), service_account: "reviews".into() }
        );
        // Reloading the key verifies old tokens.
        let again = TokenAuthority::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&t).is_ok());
    }

    #[test]
    fn refuses_bad_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let ta = TokenAuthority::load_or_create(dir.path()).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(ta.verify(&ta.mint_raw("other-audience", now, now + 600)).is_err(), "wrong audience");
        assert!(ta.verify(&ta.mint_raw(AUDIENCE, now - 1200, now - 600)).is_err(), "expired");
        assert!(ta.verify("garbage").is_err());
        let other_dir = tempfile::tempdir().unwrap();
        let other = TokenAuthority::load_or_create(other_dir.path()).unwrap();
        let foreign = other.mint("ns", "sa", Duration::from_secs(600)).unwrap();
        assert!(ta.verify(&foreign).is_err(), "signed by another key");
        let mut tampered = ta.mint("ns", "sa", Duration::from_secs(600)).unwrap();
        tampered.push('x');
        assert!(ta.verify(&tampered).is_err());
    }
}
