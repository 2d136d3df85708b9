//! TLS on both ends of a sidecar, for the DestinationRule TLS origination and rotation cases.
//!
//! - [`Pki`]: a private "enterprise" CA made with rcgen, issuing server and client certificates
//!   (not the mesh CA: SIMPLE and MUTUAL origination talk to servers outside the mesh).
//! - [`mesh_cert`]: a workload certificate for any `ns/sa`, minted by the control plane's real CA
//!   on its secure port with a `sailplane token create` token (for servers that pretend to be mesh
//!   workloads, as the ISTIO_MUTUAL cases need).
//! - [`TlsEchoServer`]: an HTTPS/1.1 backend with any certificate, optionally requiring client
//!   certificates from a given CA, that answers with its name and what it saw of the client's
//!   certificate (subject, URI SANs, serial) and counts failed handshakes.
//! - [`MeshSidecar`]: `sailplane agent --run-envoy`, the way a VM or laptop runs a sidecar: the agent
//!   gets the workload certificate from the CA with a token, serves it to Envoy over SDS on a Unix
//!   socket, and Envoy takes its configuration over ADS on the secure port with mTLS.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::control_plane::ControlPlane;
use crate::http::{self, Response};
use crate::wait::eventually;
use crate::{XdsApi, log_tail, paths, ports};

/// A certificate chain and its private key, PEM.
#[derive(Clone)]
pub struct CertKey {
    /// Leaf first.
    pub chain_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey").field("chain_pem", &self.chain_pem).finish_non_exhaustive()
    }
}

impl CertKey {
    /// Writes `<stem>.pem` and `<stem>-key.pem` into `dir` and returns their paths (certificate,
    /// key), as a DestinationRule's `clientCertificate` and `privateKey` name them.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert, &self.chain_pem).with_context(|| format!("writing {}", cert.display()))?;
        std::fs::write(&key, &self.key_pem).with_context(|| format!("writing {}", key.display()))?;
        Ok((cert, key))
    }
}

/// A self-signed CA that issues test certificates.
pub struct Pki {
    name: String,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA whose subject is `CN=<name>`.
    pub fn new(name: &str) -> anyhow::Result<Pki> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key)?;
        Ok(Pki { name: name.to_string(), ca_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    /// The CA certificate, PEM (what a `caCertificates` file holds).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `<dir>/<name>-ca.pem` and returns the path.
    pub fn write_ca(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("{}-ca.pem", self.name));
        std::fs::write(&path, &self.ca_pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A server certificate for the DNS names `dns` (the first is also the CN).
    pub fn server_cert(&self, dns: &[&str]) -> anyhow::Result<CertKey> {
        let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        if let Some(first) = dns.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate with subject `CN=<cn>` and, if given, a URI SAN.
    pub fn client_cert(&self, cn: &str, uri: Option<&str>) -> anyhow::Result<CertKey> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(uri) = uri {
            params.subject_alt_names.push(SanType::URI(uri.try_into()?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> anyhow::Result<CertKey> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        // Distinct serials, so a server can tell certificates apart in reports.
        params.serial_number = Some(rcgen::SerialNumber::from(rand::random::<u64>()));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertKey { chain_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Runs `sailplane token create` for `ns/sa` against `cp`'s CA directory, writing the token to `out`
/// (what a VM operator does before starting the agent).
pub fn create_token(cp: &ControlPlane, ns: &str, sa: &str, ttl: &str, out: &Path) -> anyhow::Result<()> {
    let bin = paths::sailplane_bin()?;
    let result = Command::new(&bin)
        .args(["token", "create", "--namespace", ns, "--service-account", sa, "--ttl", ttl])
        .arg("--ca-dir")
        .arg(cp.ca_dir())
        .arg("-o")
        .arg(out)
        .output()
        .context("running sailplane token create")?;
    if !result.status.success() {
        bail!("sailplane token create failed ({}): {}", result.status, String::from_utf8_lossy(&result.stderr));
    }
    Ok(())
}

/// The mesh root of `cp` (PEM).
pub fn mesh_root(cp: &ControlPlane) -> anyhow::Result<String> {
    let path = cp.ca_dir().join("root-cert.pem");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A workload certificate for `spiffe://cluster.local/ns/<ns>/sa/<sa>` from `cp`'s CA: a key and
/// CSR made here, signed over the CA's gRPC API on the secure port with a token for that identity.
/// The chain ends with the mesh root.
pub async fn mesh_cert(cp: &ControlPlane, ns: &str, sa: &str, ttl: Duration) -> anyhow::Result<CertKey> {
    use sailplane::agent::ca_client::CaClient;
    use sailplane::agent::keys::{self, KeyType};

    let scratch = tempfile::Builder::new().prefix("sailplane-token-").tempdir()?;
    let token_file = scratch.path().join("token");
    create_token(cp, ns, sa, "1h", &token_file)?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let identity = sailplane::identity::Identity {
        trust_domain: "cluster.local".into(),
        namespace: ns.into(),
        service_account: sa.into(),
    };
    let keys = keys::generate(KeyType::Ec, &identity)?;
    let client = CaClient::new(&format!("127.0.0.1:{}", cp.secure_port), &mesh_root(cp)?, None)?;
    let chain = client.sign(keys.csr_pem, ttl, &token).await.context("CA CreateCertificate")?;
    let chain_pem = chain.iter().map(|c| if c.ends_with('\n') { c.clone() } else { format!("{c}\n") }).collect();
    Ok(CertKey { chain_pem, key_pem: keys.key_pem })
}

/// What the server saw of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// Subject, as `CN=...`.
    pub subject: String,
    /// URI SANs (SPIFFE identities).
    pub uri_sans: Vec<String>,
    /// Serial number, hex.
    pub serial: String,
}

impl PeerCert {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> anyhow::Result<PeerCert> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| anyhow::anyhow!("parsing certificate: {e}"))?;
        let uri_sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(PeerCert {
            subject: cert.subject().to_string(),
            uri_sans,
            serial: cert.tbs_certificate.raw_serial_as_string(),
        })
    }

    /// The leaf of a PEM chain.
    pub fn from_pem(pem: &str) -> anyhow::Result<PeerCert> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .context("no certificate in PEM")?
            .context("bad PEM")?;
        Self::from_der(&der)
    }

    fn json(&self) -> Value {
        json!({"subject": self.subject, "uri_sans": self.uri_sans, "serial": self.serial})
    }
}

/// One request a [`TlsEchoServer`] answered.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Path and query.
    pub path: String,
    /// `Host` header.
    pub host: String,
    /// The client's certificate on that connection, if it presented one.
    pub client: Option<PeerCert>,
    /// ALPN agreed on the connection, if any.
    pub alpn: Option<String>,
}

struct Shared {
    name: String,
    requests: Mutex<Vec<SeenRequest>>,
    handshake_failures: AtomicU64,
    last_handshake_error: Mutex<Option<String>>,
}

/// Bounds what a long request loop keeps in memory.
const KEEP_REQUESTS: usize = 10_000;

/// How the [`TlsEchoServer`] treats clients.
#[derive(Debug, Clone, Default)]
pub struct TlsEchoOptions {
    /// Require a client certificate that chains to one of these CAs (PEM); `None`: no client
    /// certificate is asked for.
    pub client_ca_pem: Option<String>,
    /// Close the connection after each response, so every request is a new handshake (rotation
    /// cases: each request shows the client certificate current at that moment).
    pub close_each: bool,
}

/// An HTTPS/1.1 server on loopback answering every request with `200` and JSON
/// `{"name", "path", "host", "tls": true, "client": {"subject", "uri_sans", "serial"} | null}`.
/// Dropping it stops accepting.
pub struct TlsEchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl TlsEchoServer {
    /// Starts `name` on 127.0.0.1 and a free port with certificate `cert`.
    pub async fn start(name: &str, cert: &CertKey, options: TlsEchoOptions) -> anyhow::Result<TlsEchoServer> {
        Self::start_on(name, Ipv4Addr::LOCALHOST, ports::free_port()?, cert, options).await
    }

    /// Starts `name` on `ip:port` with certificate `cert`.
    pub async fn start_on(
        name: &str,
        ip: Ipv4Addr,
        port: u16,
        cert: &CertKey,
        options: TlsEchoOptions,
    ) -> anyhow::Result<TlsEchoServer> {
        let config = server_config(cert, options.client_ca_pem.as_deref())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let addr = SocketAddr::new(IpAddr::V4(ip), port);
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding TLS echo {name} on {addr}"))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            requests: Mutex::new(Vec::new()),
            handshake_failures: AtomicU64::new(0),
            last_handshake_error: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&shared), options.close_each));
        Ok(TlsEchoServer { addr, shared, task })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests answered so far, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// TLS handshakes that failed (a client without a certificate, or one the server refused, or a
    /// client that refused the server's certificate).
    pub fn handshake_failures(&self) -> u64 {
        self.shared.handshake_failures.load(Ordering::Relaxed)
    }

    /// The error of the last failed handshake, for reports.
    pub fn last_handshake_error(&self) -> Option<String> {
        self.shared.last_handshake_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for TlsEchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn server_config(cert: &CertKey, client_ca_pem: Option<&str>) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("server chain PEM")?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).context("server key PEM")?;
    let builder =
        rustls::ServerConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
    let mut config = match client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.context("client CA PEM")?)?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier).with_single_cert(chain, key)?
        }
        None => builder.with_no_client_auth().with_single_cert(chain, key)?,
    };
    // No ALPN list: the server accepts whatever the client offers (Istio clients offer
    // `istio-http/1.1` and the like) and speaks HTTP/1.1; an ALPN list without overlap would make
    // rustls fail the handshake.
    config.alpn_protocols = Vec::new();
    Ok(config)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    close_each: bool,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return handshake_failed(&shared, e.to_string()),
                Err(_) => return handshake_failed(&shared, "handshake timed out".into()),
            };
            let (_, session) = tls.get_ref();
            let client =
                session.peer_certificates().and_then(|c| c.first()).and_then(|der| PeerCert::from_der(der).ok());
            let alpn = session.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned());
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let shared = Arc::clone(&shared);
                let client = client.clone();
                let alpn = alpn.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &req, client, alpn)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(!close_each)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

fn handshake_failed(shared: &Shared, error: String) {
    shared.handshake_failures.fetch_add(1, Ordering::Relaxed);
    *shared.last_handshake_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
}

fn answer(
    shared: &Shared,
    req: &hyper::Request<hyper::body::Incoming>,
    client: Option<PeerCert>,
    alpn: Option<String>,
) -> hyper::Response<Full<Bytes>> {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = json!({
        "name": shared.name,
        "path": path,
        "host": host,
        "tls": true,
        "alpn": alpn,
        "client": client.as_ref().map(PeerCert::json),
        "headers": headers,
    });
    {
        let mut seen = shared.requests.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() < KEEP_REQUESTS {
            seen.push(SeenRequest { path, host, client, alpn });
        }
    }
    let mut response = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// Who a [`MeshSidecar`] is.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Service account (the identity its token and certificate carry).
    pub service_account: String,
    /// Workload labels.
    pub labels: Vec<(String, String)>,
    /// `SECRET_TTL`: the workload certificate's requested lifetime (rotated at half of it).
    pub secret_ttl: String,
    /// `OUTPUT_CERTS`: where the agent also writes the certificate files.
    pub output_certs: Option<PathBuf>,
    /// ADS variant Envoy uses.
    pub xds_api: XdsApi,
}

impl SidecarSpec {
    /// A sidecar for pod `pod` in namespace `default` with service account `sa`, label `app=<pod>`,
    /// SECRET_TTL 1h, no OUTPUT_CERTS.
    pub fn new(pod: &str, sa: &str) -> SidecarSpec {
        SidecarSpec {
            pod: pod.into(),
            namespace: "default".into(),
            service_account: sa.into(),
            labels: vec![("app".into(), pod.into())],
            secret_ttl: "1h".into(),
            output_certs: None,
            xds_api: XdsApi::Sotw,
        }
    }

    /// The Istio node id.
    pub fn node_id(&self) -> String {
        let ns = &self.namespace;
        format!("sidecar~127.0.0.1~{}.{ns}~{ns}.svc.cluster.local", self.pod)
    }
}

/// `sailplane agent --run-envoy` for one sidecar (interception NONE: outbound listeners on
/// 127.0.0.1:<service port>), xDS over mTLS on the control plane's secure port. Stopped with SIGTERM
/// on drop (the agent then stops its Envoy), killed if it does not exit.
pub struct MeshSidecar {
    child: Child,
    /// Envoy's admin port on 127.0.0.1.
    pub admin_port: u16,
    /// The node id.
    pub node_id: String,
    log: PathBuf,
    _scratch: TempDir,
}

impl MeshSidecar {
    /// Mints a token for the spec's identity, starts the agent and its Envoy, and waits until
    /// Envoy is LIVE (its first CDS and LDS came over ADS on the secure port).
    pub async fn start(cp: &ControlPlane, spec: &SidecarSpec) -> anyhow::Result<MeshSidecar> {
        let scratch = tempfile::Builder::new().prefix("sailplane-agent-").tempdir()?;
        let dir = scratch.path();
        let token = dir.join("istio-token");
        create_token(cp, &spec.namespace, &spec.service_account, "1h", &token)?;
        let root = dir.join("root-cert.pem");
        std::fs::write(&root, mesh_root(cp)?)?;
        let admin_port = ports::free_port()?;
        let log = dir.join("agent.log");
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let labels = spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
        let secure = format!("127.0.0.1:{}", cp.secure_port);
        let mut cmd = Command::new(paths::sailplane_bin()?);
        cmd.arg("agent")
            .args(["--run-envoy", "--interception-mode", "NONE", "--ip", "127.0.0.1"])
            .args(["--pod", &spec.pod, "--namespace", &spec.namespace, "--service-account", &spec.service_account])
            .args(["--admin-port", &admin_port.to_string()])
            // Not port 15012 (tests pick free ports), so mTLS is asked for explicitly.
            .args(["--xds-address", &secure, "--xds-tls"])
            .args(["--xds-api", &spec.xds_api.to_string()])
            .arg("--token-file")
            .arg(&token)
            .arg("--sds-socket")
            .arg(dir.join("SDS"))
            .arg("--output")
            .arg(dir.join("envoy-rev.yaml"))
            .env("CA_ADDR", &secure)
            .env("CA_ROOT_CA", &root)
            .env("SECRET_TTL", &spec.secret_ttl)
            .env("ENVOY_BIN", paths::envoy_bin()?)
            .env("SAILPLANE_LOG", std::env::var("SAILPLANE_LOG").unwrap_or_else(|_| "info,sailplane=debug".into()))
            .env("NO_COLOR", "1")
            .env_remove("OUTPUT_CERTS");
        if !labels.is_empty() {
            cmd.args(["--labels", &labels]);
        }
        if let Some(out_dir) = &spec.output_certs {
            cmd.env("OUTPUT_CERTS", out_dir);
        }
        // SAILPLANE_TEST_ENVOY_LOG (for example `debug` or `info,config:debug`) when digging into a failure.
        let level = std::env::var("SAILPLANE_TEST_ENVOY_LOG").unwrap_or_else(|_| "info".into());
        let (level, components) = level.split_once(',').unwrap_or((level.as_str(), ""));
        cmd.args(["--", "--concurrency", "1", "--drain-time-s", "1", "--log-level", level]);
        if !components.is_empty() {
            cmd.args(["--component-log-level", components]);
        }
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().context("spawning sailplane agent")?;
        let mut sidecar = MeshSidecar { child, admin_port, node_id: spec.node_id(), log, _scratch: scratch };
        if let Err(e) = sidecar.wait_live().await {
            let exited = sidecar.child.try_wait().ok().flatten();
            bail!("{e:#}\nagent exit status: {exited:?}\n--- agent and envoy log ---\n{}", sidecar.log_tail(60));
        }
        Ok(sidecar)
    }

    async fn wait_live(&self) -> anyhow::Result<()> {
        eventually("the agent's Envoy to say LIVE on /ready", Duration::from_secs(40), || async move {
            let r = self.admin_get("/ready").await?;
            if r.status == 200 && r.body.trim() == "LIVE" {
                Ok(())
            } else {
                bail!("status {}: {}", r.status, r.body.trim())
            }
        })
        .await
    }

    /// `GET` on Envoy's admin interface.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Response> {
        http::get(&format!("http://127.0.0.1:{}{path}", self.admin_port)).await
    }

    /// Envoy's `/config_dump` as JSON.
    pub async fn config_dump(&self) -> anyhow::Result<Value> {
        let r = self.admin_get("/config_dump?include_eds").await?;
        r.json()
    }

    /// The dynamic active cluster `name` from Envoy's config dump, if it has it.
    pub async fn cluster_config(&self, name: &str) -> anyhow::Result<Option<Value>> {
        self.cluster_config_in(name, "dynamic_active_clusters").await
    }

    /// Cluster `name` from one section of the config dump (`dynamic_active_clusters`,
    /// `dynamic_warming_clusters`).
    pub async fn cluster_config_in(&self, name: &str, section: &str) -> anyhow::Result<Option<Value>> {
        let r = self.admin_get(&format!("/config_dump?resource={section}")).await?;
        let v = r.json()?;
        Ok(v.get("configs").and_then(Value::as_array).and_then(|cs| {
            cs.iter()
                .filter_map(|c| c.get("cluster"))
                .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
                .cloned()
        }))
    }

    /// Names of the SDS secrets Envoy holds (active and warming).
    pub async fn secret_names(&self) -> anyhow::Result<Vec<String>> {
        let r = self.admin_get("/config_dump?resource=dynamic_active_secrets").await?;
        let mut names: Vec<String> = r
            .json()?
            .get("configs")
            .and_then(Value::as_array)
            .map(|cs| cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string)).collect())
            .unwrap_or_default();
        let warming = self.admin_get("/config_dump?resource=dynamic_warming_secrets").await?;
        if let Ok(v) = warming.json()
            && let Some(cs) = v.get("configs").and_then(Value::as_array)
        {
            names.extend(
                cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).map(|n| format!("{n} (warming)")),
            );
        }
        Ok(names)
    }

    /// Every stat line (`name: value`) whose name contains `needle`.
    pub async fn stats_matching(&self, needle: &str) -> anyhow::Result<Vec<String>> {
        let r = self.admin_get("/stats").await?;
        Ok(r.body.lines().filter(|l| l.contains(needle)).map(str::to_string).collect())
    }

    /// A counter or gauge, `None` when Envoy has no such stat.
    pub async fn stat(&self, name: &str) -> anyhow::Result<Option<u64>> {
        Ok(self.stats_matching(name).await?.iter().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            if n == name { v.trim().parse().ok() } else { None }
        }))
    }

    /// A counter of cluster `cluster`, 0 when Envoy has not created it. Istio clusters carry
    /// `alt_stat_name: "<name>;"`, so their stats are `cluster.<name>;.<stat>`; both forms are tried.
    pub async fn cluster_stat(&self, cluster: &str, stat: &str) -> anyhow::Result<u64> {
        for name in [format!("cluster.{cluster};.{stat}"), format!("cluster.{cluster}.{stat}")] {
            if let Some(v) = self.stat(&name).await? {
                return Ok(v);
            }
        }
        Ok(0)
    }

    /// Waits until Envoy has a listener on 127.0.0.1:`port`.
    pub async fn wait_listener(&self, port: u16) -> anyhow::Result<()> {
        let want = format!("127.0.0.1:{port}");
        eventually(&format!("a listener on {want}"), Duration::from_secs(30), || {
            let want = want.clone();
            async move {
                let body = self.admin_get("/listeners").await?.body;
                if body.lines().any(|l| l.ends_with(&want)) { Ok(()) } else { bail!("listeners:\n{body}") }
            }
        })
        .await
    }

    /// A diagnosis of cluster `name` for failure reports: what Envoy holds for it, its TLS and
    /// connection stats, and which secrets Envoy has.
    pub async fn diagnose(&self, cluster: &str) -> String {
        let config = match self.cluster_config(cluster).await {
            Ok(Some(c)) => serde_json::to_string_pretty(&c).unwrap_or_default(),
            Ok(None) => "<no such dynamic cluster>".into(),
            Err(e) => format!("<{e:#}>"),
        };
        // Istio clusters carry `alt_stat_name: "<name>;"`, so their stats are `cluster.<name>;.<stat>`.
        let prefix = format!("cluster.{cluster}");
        let stats = self
            .stats_matching(&prefix)
            .await
            .map(|lines| {
                lines
                    .into_iter()
                    .filter(|l| {
                        (l.contains(".ssl.")
                            || l.contains("upstream_cx_connect_fail")
                            || l.contains("upstream_cx_total")
                            || l.contains("upstream_rq_")
                            || l.contains("upstream_reset"))
                            && !l.ends_with(": 0")
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|e| format!("<{e:#}>"));
        let secrets = self.secret_names().await.map(|n| format!("{n:?}")).unwrap_or_else(|e| format!("<{e:#}>"));
        // A cluster update Envoy has not finished warming (waiting for EDS or SDS) is not active yet.
        let warming = match self.cluster_config_in(cluster, "dynamic_warming_clusters").await {
            Ok(Some(c)) => {
                format!("yes, an update is warming:\n{}", serde_json::to_string_pretty(&c).unwrap_or_default())
            }
            Ok(None) => "no".into(),
            Err(e) => format!("<{e:#}>"),
        };
        format!(
            "--- Envoy cluster {cluster} (active) ---\n{config}\n--- warming? ---\n{warming}\n--- its non-zero TLS/connection stats ---\n{stats}\n--- SDS secrets Envoy holds ---\n{secrets}"
        )
    }

    /// The last lines of the agent's (and its Envoy's) log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for MeshSidecar {
    fn drop(&mut self) {
        // SIGTERM: the agent stops its Envoy; a SIGKILL would leave that Envoy running.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("--- agent {} log (last 80 lines) ---\n{}", self.node_id, log_tail(&self.log, 80));
    }
}
