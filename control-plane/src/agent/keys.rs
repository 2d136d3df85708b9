//! The workload's private key and certificate signing request. The key is made here and never sent
//! anywhere: only the CSR (public key plus the requested SPIFFE URI) goes to the CA.

use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, SanType,
};
use rsa::pkcs8::EncodePrivateKey;
use rustls::pki_types::PrivatePkcs8KeyDer;

use crate::identity::Identity;

/// Which private key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256, signed with SHA-256 (fast, small; the default).
    #[default]
    Ec,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures, for peers that cannot do ECDSA.
    Rsa,
}

/// Key generation errors.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Generating or encoding the key failed.
    #[error("generating a {kind:?} key: {reason}")]
    Generate {
        /// Key type.
        kind: KeyType,
        /// Why.
        reason: String,
    },
    /// Building the CSR failed.
    #[error("building the csr for {identity}: {reason}")]
    Csr {
        /// SPIFFE URI.
        identity: String,
        /// Why.
        reason: String,
    },
}

/// A fresh private key and the CSR for it.
pub struct KeyAndCsr {
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// PKCS#10 request, PEM, with the SPIFFE URI as its only SAN.
    pub csr_pem: String,
    /// DER SubjectPublicKeyInfo of the key, to check that the certificate the CA returns is ours.
    pub public_key_info: Vec<u8>,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("KeyAndCsr").field("csr_pem", &self.csr_pem).finish_non_exhaustive()
    }
}

fn generate_key(kind: KeyType) -> Result<KeyPair, KeyError> {
    let err = |e: &dyn std::fmt::Display| KeyError::Generate { kind, reason: e.to_string() };
    match kind {
        KeyType::Ec => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| err(&e)),
        KeyType::Rsa => {
            // ring (rcgen's backend here) can sign with RSA but not generate RSA keys, so the RustCrypto
            // `rsa` crate generates it and rcgen takes it as PKCS#8.
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).map_err(|e| err(&e))?;
            let der = key.to_pkcs8_der().map_err(|e| err(&e))?;
            KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der.as_bytes()), &PKCS_RSA_SHA256)
                .map_err(|e| err(&e))
        }
    }
}

/// Generates a key of type `kind` and a CSR asking for `identity`. CPU-bound (RSA takes a while):
/// call it from a blocking task.
pub fn generate(kind: KeyType, identity: &Identity) -> Result<KeyAndCsr, KeyError> {
    let key = generate_key(kind)?;
    let uri = identity.spiffe_uri();
    let csr_err = |e: &dyn std::fmt::Display| KeyError::Csr { identity: uri.clone(), reason: e.to_string() };
    let mut params = CertificateParams::default();
    // Istio's CA ignores the subject; the identity is the URI SAN.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.clone().try_into().map_err(|e| csr_err(&e))?)];
    let csr = params.serialize_request(&key).map_err(|e| csr_err(&e))?;
    let csr_pem = csr.pem().map_err(|e| csr_err(&e))?;
    Ok(KeyAndCsr { key_pem: key.serialize_pem(), csr_pem, public_key_info: key.subject_public_key_info() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::CertificateSigningRequestParams;

    fn identity() -> Identity {
        Identity { trust_domain: "cluster.local".into(), namespace: "ns".into(), service_account: "sa".into() }
    }

    #[rstest::rstest]
    #[case(KeyType::Ec, &PKCS_ECDSA_P256_SHA256)]
    #[case(KeyType::Rsa, &PKCS_RSA_SHA256)]
    fn csr_carries_the_spiffe_uri_and_the_key(#[case] kind: KeyType, #[case] alg: &'static rcgen::SignatureAlgorithm) {
        let k = generate(kind, &identity()).unwrap();
        let csr = CertificateSigningRequestParams::from_pem(&k.csr_pem).unwrap();
        let sans: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, vec!["spiffe://cluster.local/ns/ns/sa/sa".to_string()]);
        assert_eq!(csr.public_key.algorithm(), alg);
        assert_eq!(csr.public_key.subject_public_key_info(), k.public_key_info);
        assert!(k.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
        // The PEM key loads back with the right algorithm.
        let back = KeyPair::from_pem_and_sign_algo(&k.key_pem, alg).unwrap();
        assert_eq!(back.subject_public_key_info(), k.public_key_info);
        assert!(!format!("{k:?}").contains("PRIVATE KEY"), "Debug must not print the key");
    }
}
