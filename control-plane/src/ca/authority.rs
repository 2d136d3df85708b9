//! Key material and signing.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::identity::Identity;

/// File names of Istio's plug-in CA layout (the `cacerts` Secret), also used for the self-signed root.
pub const CA_CERT: &str = "ca-cert.pem";
/// Signing key.
pub const CA_KEY: &str = "ca-key.pem";
/// Root of trust.
pub const ROOT_CERT: &str = "root-cert.pem";
/// Chain from the signing certificate up to (and including) the root.
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// CA errors. Messages are meant for the caller (they become gRPC status messages).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing the CA directory failed.
    #[error("ca directory {path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Key or certificate material is unusable.
    #[error("ca material {what}: {reason}")]
    Material {
        /// Which file or object.
        what: String,
        /// Why.
        reason: String,
    },
    /// The CSR cannot be parsed or its signature is wrong.
    #[error("invalid csr: {0}")]
    BadCsr(String),
    /// The CSR asks for an identity the caller does not have.
    #[error("csr requests identity {requested:?} but the caller is {caller:?}")]
    IdentityMismatch {
        /// SAN in the CSR.
        requested: String,
        /// Authenticated identity.
        caller: String,
    },
    /// The requested lifetime exceeds the maximum.
    #[error("requested ttl {requested:?} is greater than the max allowed ttl {max:?}")]
    TtlTooLong {
        /// Requested.
        requested: Duration,
        /// Allowed.
        max: Duration,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
}

/// Lifetimes and naming.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// Trust domain of issued identities.
    pub trust_domain: String,
    /// Lifetime when the request names none (24 h).
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for (90 days).
    pub max_ttl: Duration,
    /// Lifetime of a self-signed root (10 years).
    pub root_ttl: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
            root_ttl: Duration::from_secs(10 * 365 * 24 * 3600),
        }
    }
}

/// A loaded CA.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
    /// Certificates after the leaf in a response: the signing cert, intermediates, root last.
    chain_after_leaf: Vec<String>,
    root_pem: String,
    options: CaOptions,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("not_after", &self.not_after).field("options", &self.options).finish()
    }
}

fn read(dir: &Path, name: &str) -> Result<String, CaError> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).map_err(|source| CaError::Io { path: path.display().to_string(), source })
}

fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let line = line.trim_end();
        if line.starts_with("-----BEGIN CERTIFICATE-----") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END CERTIFICATE-----") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

fn material(what: &str, e: impl std::fmt::Display) -> CaError {
    CaError::Material { what: what.to_string(), reason: e.to_string() }
}

fn not_after_of(pem: &str, what: &str) -> Result<OffsetDateTime, CaError> {
    let der = pem::parse(pem).map_err(|e| material(what, e))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).map_err(|e| material(what, e))?;
    Ok(cert.validity().not_after.to_datetime())
}

impl Authority {
    /// Loads a plug-in CA from a directory in Istio's `cacerts` layout (`ca-cert.pem`, `ca-key.pem`,
    /// `root-cert.pem`, `cert-chain.pem`).
    pub fn load_plugin(dir: &Path, options: CaOptions) -> Result<Authority, CaError> {
        let ca_cert = read(dir, CA_CERT)?;
        let ca_key = read(dir, CA_KEY)?;
        let root = read(dir, ROOT_CERT)?;
        let chain = read(dir, CERT_CHAIN).unwrap_or_default();
        Self::from_pem(&ca_cert, &ca_key, &root, &chain, options)
    }

    /// Loads the self-signed root kept in `dir`, creating (and persisting) one on first use.
    pub fn load_or_create_self_signed(dir: &Path, options: CaOptions) -> Result<Authority, CaError> {
        if dir.join(CA_KEY).exists() {
            return Self::load_plugin(dir, options);
        }
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io { path: dir.display().to_string(), source })?;
        let (cert_pem, key_pem) = Self::generate_self_signed(&options)?;
        write_private(&dir.join(CA_KEY), &key_pem)?;
        for (name, text) in [(CA_CERT, &cert_pem), (ROOT_CERT, &cert_pem), (CERT_CHAIN, &String::new())] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| CaError::Io { path: path.display().to_string(), source })?;
        }
        Self::from_pem(&cert_pem, &key_pem, &cert_pem, "", options)
    }

    /// Creates a self-signed root (certificate and key, PEM) for `options.trust_domain`, valid for
    /// `options.root_ttl`. The caller persists it (a directory, or a Kubernetes Secret).
    pub fn generate_self_signed(options: &CaOptions) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| material("root key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, options.trust_domain.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + options.root_ttl;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(|e| material("root certificate", e))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A CA from PEM text: the signing certificate and its key, the root (first certificate of
    /// `root`), and the chain between them (may be empty).
    pub fn from_pem(
        ca_cert: &str,
        ca_key: &str,
        root: &str,
        chain: &str,
        options: CaOptions,
    ) -> Result<Authority, CaError> {
        let key = KeyPair::from_pem(ca_key).map_err(|e| material(CA_KEY, e))?;
        let issuer = Issuer::from_ca_cert_pem(ca_cert, key).map_err(|e| material(CA_CERT, e))?;
        let not_after = not_after_of(ca_cert, CA_CERT)?;
        let root_blocks = pem_blocks(root);
        let root_pem = root_blocks.first().cloned().ok_or_else(|| material(ROOT_CERT, "no certificate"))?;
        let mut chain_after_leaf = Vec::new();
        let signing = pem_blocks(ca_cert).into_iter().next().ok_or_else(|| material(CA_CERT, "no certificate"))?;
        chain_after_leaf.push(signing);
        for block in pem_blocks(chain) {
            if !chain_after_leaf.contains(&block) {
                chain_after_leaf.push(block);
            }
        }
        // The root comes last, once.
        chain_after_leaf.retain(|b| b != &root_pem);
        chain_after_leaf.push(root_pem.clone());
        Ok(Authority { issuer, not_after, chain_after_leaf, root_pem, options })
    }

    /// The root certificate (PEM) that proxies trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The options in force.
    pub fn options(&self) -> &CaOptions {
        &self.options
    }

    /// Signs `csr_pem` for `identity`. `requested_ttl` of `None` or zero means the default lifetime.
    /// Returns the chain: leaf first, then intermediates, root last.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        requested_ttl: Option<Duration>,
    ) -> Result<Vec<String>, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CaError::BadCsr(e.to_string()))?;
        let want = identity.spiffe_uri();
        for san in &csr.params.subject_alt_names {
            let requested = match san {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => d.as_str().to_string(),
                SanType::Rfc822Name(n) => n.as_str().to_string(),
                SanType::IpAddress(ip) => ip.to_string(),
                other => format!("{other:?}"),
            };
            if requested != want {
                return Err(CaError::IdentityMismatch { requested, caller: want });
            }
        }
        let ttl = match requested_ttl {
            None => self.options.default_ttl,
            Some(d) if d.is_zero() => self.options.default_ttl,
            Some(d) if d > self.options.max_ttl => {
                return Err(CaError::TtlTooLong { requested: d, max: self.options.max_ttl });
            }
            Some(d) => d,
        };
        let leaf = self.leaf_params(
            vec![SanType::URI(want.clone().try_into().map_err(|e| CaError::Sign(format!("{e}")))?)],
            ttl,
            true,
        );
        let cert = leaf.signed_by(&csr.public_key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.chain_after_leaf.iter().cloned());
        Ok(chain)
    }

    /// Issues a key and certificate for the control plane's own TLS server (DNS names and IPs as
    /// SANs). Returns `(chain PEM, key PEM)`.
    pub fn issue_server_cert(&self, names: &[String], ttl: Duration) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut sans = Vec::new();
        for n in names {
            match n.parse::<std::net::IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => sans.push(SanType::DnsName(n.clone().try_into().map_err(|e| CaError::Sign(format!("{e}")))?)),
            }
        }
        let params = self.leaf_params(sans, ttl, false);
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        let mut chain = cert.pem();
        for c in &self.chain_after_leaf {
            chain.push_str(c);
        }
        Ok((chain, key.serialize_pem()))
    }

    fn leaf_params(&self, sans: Vec<SanType>, ttl: Duration, client: bool) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = if client {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        // A small backdate tolerates clock skew between the CA and the proxies.
        params.not_before = now - time::Duration::minutes(1);
        // Never outlive the signing certificate.
        params.not_after = (now + ttl).min(self.not_after);
        params
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| CaError::Io { path: path.display().to_string(), source })?;
    f.write_all(text.as_bytes()).map_err(|source| CaError::Io { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn identity() -> Identity {
        Identity {
            trust_domain: "cluster.local".into(),
            namespace: "bookinfo".into(),
            service_account: "reviews".into(),
        }
    }

    fn csr(sans: Vec<String>) -> String {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(sans).unwrap_or_default();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn csr_uri(uri: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().unwrap())];
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn parse(pem_text: &str) -> (Vec<String>, OffsetDateTime, OffsetDateTime) {
        let der = pem::parse(pem_text).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).unwrap();
        let uris = cert
            .subject_alternative_name()
            .unwrap()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        (uris, cert.validity().not_before.to_datetime(), cert.validity().not_after.to_datetime())
    }

    #[test]
    fn self_signed_root_persists_and_signs_spiffe_certs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create_self_signed(dir.path(), CaOptions::default()).unwrap();
        let again = Authority::load_or_create_self_signed(dir.path(), CaOptions::default()).unwrap();
        assert_eq!(ca.root_pem(), again.root_pem(), "restart keeps the root");
        let chain = ca.sign_csr(&csr_uri(&identity().spiffe_uri()), &identity(), None).unwrap();
        assert_eq!(chain.len(), 2, "leaf then root");
        assert_eq!(chain[1], ca.root_pem());
        let (uris, nb, na) = parse(&chain[0]);
        assert_eq!(uris, vec!["spiffe://cluster.local/ns/bookinfo/sa/reviews".to_string()]);
        let life = na - nb;
        assert!(
            life >= time::Duration::hours(24) && life <= time::Duration::hours(24) + time::Duration::minutes(2),
            "{life}"
        );
        // The leaf verifies against the root's key.
        let root_der = pem::parse(ca.root_pem()).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(root_der.contents()).unwrap();
        let leaf_der = pem::parse(&chain[0]).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der.contents()).unwrap();
        leaf.verify_signature(Some(root.public_key())).expect("signed by the root");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn identity_comes_from_the_caller_not_the_csr() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create_self_signed(dir.path(), CaOptions::default()).unwrap();
        let err =
            ca.sign_csr(&csr_uri("spiffe://cluster.local/ns/kube-system/sa/admin"), &identity(), None).unwrap_err();
        assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
        let err = ca.sign_csr(&csr(vec!["evil.example.com".into()]), &identity(), None).unwrap_err();
        assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
        // A CSR without SANs gets the caller's identity.
        let chain = ca.sign_csr(&csr(vec![]), &identity(), None).unwrap();
        assert_eq!(parse(&chain[0]).0, vec![identity().spiffe_uri()]);
        assert!(matches!(ca.sign_csr("not a csr", &identity(), None), Err(CaError::BadCsr(_))));
    }

    #[test]
    fn ttl_limits() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create_self_signed(dir.path(), CaOptions::default()).unwrap();
        let too_long = Duration::from_secs(91 * 24 * 3600);
        assert!(matches!(ca.sign_csr(&csr(vec![]), &identity(), Some(too_long)), Err(CaError::TtlTooLong { .. })));
        let chain = ca.sign_csr(&csr(vec![]), &identity(), Some(Duration::from_secs(600))).unwrap();
        let (_, nb, na) = parse(&chain[0]);
        assert!(na - nb <= time::Duration::minutes(12));
    }

    #[test]
    fn ttl_is_clipped_to_the_signing_cert() {
        let dir = tempfile::tempdir().unwrap();
        let opts = CaOptions { root_ttl: Duration::from_secs(3600), ..CaOptions::default() };
        let ca = Authority::load_or_create_self_signed(dir.path(), opts).unwrap();
        let chain = ca.sign_csr(&csr(vec![]), &identity(), None).unwrap();
        let (_, _, na) = parse(&chain[0]);
        assert!(na <= OffsetDateTime::now_utc() + time::Duration::hours(1) + time::Duration::minutes(1));
    }

    #[test]
    fn plugin_ca_chain_order() {
        // A root and an intermediate made here, laid out as Istio's cacerts.
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::default();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let root = root_params.self_signed(&root_key).unwrap();
        let int_key = KeyPair::generate().unwrap();
        let mut int_params = CertificateParams::default();
        int_params.distinguished_name.push(DnType::CommonName, "intermediate");
        int_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let int = int_params.signed_by(&int_key, &Issuer::from_params(&root_params, &root_key)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CA_CERT), int.pem()).unwrap();
        std::fs::write(dir.path().join(CA_KEY), int_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join(ROOT_CERT), root.pem()).unwrap();
        std::fs::write(dir.path().join(CERT_CHAIN), format!("{}{}", int.pem(), root.pem())).unwrap();
        let ca = Authority::load_plugin(dir.path(), CaOptions::default()).unwrap();
        let chain = ca.sign_csr(&csr(vec![]), &identity(), None).unwrap();
        assert_eq!(chain.len(), 3, "leaf, intermediate, root");
        assert_eq!(chain[1].trim(), int.pem().trim());
        assert_eq!(chain[2].trim(), root.pem().trim());
    }

    #[test]
    fn spiffe_uris_round_trip() {
        assert_eq!(Identity::from_spiffe_uri(&identity().spiffe_uri()), Some(identity()));
        assert_eq!(Identity::from_spiffe_uri("spiffe://td/ns/a"), None);
        assert_eq!(Identity::from_spiffe_uri("https://td/ns/a/sa/b"), None);
    }
}
