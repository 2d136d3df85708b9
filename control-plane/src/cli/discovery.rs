//! `sailplane discovery`: the control plane itself.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use sailplane_translator::model::MeshConfig;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::admin::{self, AdminState};
use crate::ca::server::{CaService, TokenAuthenticator};
use crate::ca::token::TokenAuthority;
use crate::ca::{Authority, CaOptions};
use crate::identity::Authenticator;
use crate::metrics::Metrics;
use crate::push::{Debounce, Pusher};
use crate::sources::files::{self, FileSource};
use crate::sources::kube::{self as kube_source, KubeArgs, KubeSource, KubeSourceOptions};
use crate::store::Store;
use crate::tls;
use crate::webhook::inject::InjectorConfig;
use crate::webhook::{WebhookArgs, WebhookServer, WebhookState};
use crate::xds::sds::KubernetesAccess;
use crate::xds::{SameNamespace, SdsConfig, SecretAuthorizer};

/// Flags of `sailplane discovery`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiscoveryArgs {
    /// Directory of YAML files (Kubernetes and Istio objects); watched for changes. Required unless
    /// --kubernetes is given (both together read both).
    #[arg(long, value_name = "DIR", required_unless_present = "kubernetes")]
    pub config: Option<PathBuf>,
    /// MeshConfig YAML (rootNamespace, trustDomain, outboundTrafficPolicy, defaultConfig.proxyMetadata,
    /// enableAutoMtls). Either the MeshConfig itself or Istio's mesh ConfigMap.
    #[arg(long, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// Address every port listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
    /// Plaintext gRPC xDS port.
    #[arg(long, default_value_t = 15010)]
    pub xds_port: u16,
    /// Metrics and debug HTTP port.
    #[arg(long, default_value_t = 15014)]
    pub monitoring_port: u16,
    /// Push once config has been quiet this long (PILOT_DEBOUNCE_AFTER).
    #[arg(long, env = "PILOT_DEBOUNCE_AFTER", default_value = "100ms", value_parser = parse_duration)]
    pub debounce_after: Duration,
    /// Push at the latest this long after the first change (PILOT_DEBOUNCE_MAX). istiod's default is
    /// 10 s; Sailplane's equals the quiet window, so the first change of a burst opens a fixed
    /// 100 ms batch and sustained churn cannot hold pushes back (a push costs what it changes).
    #[arg(long, env = "PILOT_DEBOUNCE_MAX", default_value = "100ms", value_parser = parse_duration)]
    pub debounce_max: Duration,
    /// CA state directory: the self-signed root (created on first start and kept, so a restart keeps
    /// the mesh's trust) and the key that signs `sailplane token create` tokens. Relative paths are
    /// against the working directory; use the same directory for `sailplane token create`. With
    /// --kubernetes (and no --cacerts) the root lives in the `cacerts` or `istio-ca-secret` Secret
    /// instead, shared by every replica; only the token key stays here.
    #[arg(long, env = "SAILPLANE_CA_DIR", default_value = DEFAULT_CA_DIR, value_name = "DIR")]
    pub ca_dir: PathBuf,
    /// Plug-in CA in Istio's `cacerts` layout (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem) to sign with instead of the self-signed root. The token key stays in --ca-dir.
    #[arg(long, value_name = "DIR")]
    pub cacerts: Option<PathBuf>,
    /// gRPC-over-TLS port (istiod's 15012) serving the CA API
    /// (`istio.v1.auth.IstioCertificateService`) and ADS over mTLS (proxy identity from the client
    /// certificate; `kubernetes://` secrets over SDS only here), with a server certificate from the
    /// CA for istiod.istio-system.svc, sailplane, localhost, 127.0.0.1 and --listen-address. 0
    /// disables it.
    #[arg(long, default_value_t = 15012)]
    pub secure_port: u16,
    /// Longest workload certificate lifetime a request may ask for (MAX_WORKLOAD_CERT_TTL).
    #[arg(long, env = "MAX_WORKLOAD_CERT_TTL", default_value = "90d", value_parser = parse_duration)]
    pub max_workload_cert_ttl: Duration,
    /// Workload certificate lifetime when a request names none (DEFAULT_WORKLOAD_CERT_TTL).
    #[arg(long, env = "DEFAULT_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub workload_cert_ttl: Duration,
    /// Kubernetes source.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Admission webhooks (with --kubernetes).
    #[command(flatten)]
    pub webhook: WebhookArgs,
}

/// Default CA state directory (relative to the working directory, so a local run needs no root
/// permissions; in a container, pass a volume path).
pub const DEFAULT_CA_DIR: &str = ".sailplane/ca";

/// DNS names always in the secure port's server certificate: the name Istio's proxies and agents
/// use for istiod (so an Istio sidecar can talk to Sailplane unchanged), and local names.
const SECURE_PORT_NAMES: [&str; 4] = ["istiod.istio-system.svc", "sailplane", "localhost", "127.0.0.1"];

/// Parses `100ms`, `10s`, `2m`, `1h`, `90d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s, m, h or d)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Reads the mesh config file: a MeshConfig document, or a ConfigMap whose `data.mesh` holds one.
pub fn load_mesh_config(path: &PathBuf) -> anyhow::Result<MeshConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading mesh config {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing mesh config {}", path.display()))?;
    if value.get("kind").and_then(|k| k.as_str()) == Some("ConfigMap") {
        let inner = value
            .pointer("/data/mesh")
            .and_then(|m| m.as_str())
            .with_context(|| format!("mesh config {}: ConfigMap has no data.mesh", path.display()))?;
        value = serde_yaml_ng::from_str(inner).with_context(|| format!("parsing data.mesh of {}", path.display()))?;
    }
    if value.is_null() {
        return Ok(MeshConfig::default());
    }
    MeshConfig::from_yaml_value(&value).map_err(|d| anyhow::anyhow!("mesh config {}: {d}", path.display()))
}

/// The CA as the flags configure it.
pub struct LoadedCa {
    /// Signs workload certificates and the secure port's certificate.
    pub authority: Arc<Authority>,
    /// Who may ask, in order of trial.
    pub authenticators: Vec<Arc<dyn Authenticator>>,
}

/// Lifetimes and trust domain of the CA, from the flags.
fn ca_options(args: &DiscoveryArgs, trust_domain: &str) -> anyhow::Result<CaOptions> {
    anyhow::ensure!(
        args.workload_cert_ttl <= args.max_workload_cert_ttl,
        "--workload-cert-ttl {:?} is longer than --max-workload-cert-ttl {:?}",
        args.workload_cert_ttl,
        args.max_workload_cert_ttl
    );
    Ok(CaOptions {
        trust_domain: trust_domain.to_string(),
        default_ttl: args.workload_cert_ttl,
        max_ttl: args.max_workload_cert_ttl,
        ..CaOptions::default()
    })
}

/// The CA's signing authority and the authenticators of its callers, from the CA flags.
pub fn load_ca(args: &DiscoveryArgs, trust_domain: &str) -> anyhow::Result<LoadedCa> {
    let options = ca_options(args, trust_domain)?;
    let authority = match &args.cacerts {
        Some(dir) => Authority::load_plugin(dir, options).with_context(|| format!("plug-in CA {}", dir.display()))?,
        None => Authority::load_or_create_self_signed(&args.ca_dir, options)
            .with_context(|| format!("self-signed CA in {}", args.ca_dir.display()))?,
    };
    Ok(LoadedCa { authority: Arc::new(authority), authenticators: token_authenticators(args)? })
}

/// Callers with a `sailplane token create` token (key in --ca-dir). Kubernetes mode adds a
/// TokenReview authenticator after it.
fn token_authenticators(args: &DiscoveryArgs) -> anyhow::Result<Vec<Arc<dyn Authenticator>>> {
    let tokens = TokenAuthority::load_or_create(&args.ca_dir)
        .with_context(|| format!("token key in {}", args.ca_dir.display()))?;
    Ok(vec![Arc::new(TokenAuthenticator::new(Arc::new(tokens)))])
}

/// Kubernetes mode without --cacerts: the CA from the `cacerts` Secret, else the self-signed root in
/// `istio-ca-secret` (created by the Lease holder), so every replica and restart signs with one root.
async fn load_ca_from_cluster(
    args: &DiscoveryArgs,
    trust_domain: &str,
    client: &kube::Client,
    leading: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<LoadedCa> {
    let options = ca_options(args, trust_domain)?;
    let (authority, origin) =
        crate::kubernetes::ca_secret::load_authority(client, &args.kube.istio_namespace, &options, leading).await?;
    info!(?origin, "CA loaded from the cluster");
    Ok(LoadedCa { authority: Arc::new(authority), authenticators: token_authenticators(args)? })
}

/// The secure port's TLS configuration: a CA-issued server certificate for the usual names plus the
/// listen address (unless it is the unspecified address).
pub fn secure_tls_config(authority: &Arc<Authority>, listen: IpAddr) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut names: Vec<String> = SECURE_PORT_NAMES.iter().map(|n| (*n).to_string()).collect();
    if !listen.is_unspecified() && !names.contains(&listen.to_string()) {
        names.push(listen.to_string());
    }
    let ttl = authority.options().default_ttl;
    Ok(Arc::new(tls::server_config(Arc::clone(authority), names, ttl).context("secure port TLS")?))
}

/// Runs the control plane until interrupted.
pub async fn run(args: DiscoveryArgs) -> anyhow::Result<()> {
    let kube_client = if args.kube.kubernetes { Some(kube_source::client_from_env().await?) } else { None };
    // In Kubernetes the mesh config is the `istio` ConfigMap of the system namespace, unless a file
    // is given; its text is kept to report later edits (it is read once, at start).
    let (mesh, initial_mesh) = match (&args.mesh_config, &kube_client) {
        (Some(p), _) => (load_mesh_config(p)?, None),
        (None, Some(client)) => {
            match kube_source::read_mesh_config(client, &args.kube.istio_namespace, kube_source::MESH_CONFIGMAP).await?
            {
                Some((mesh, text)) => (mesh, Some(text)),
                None => (MeshConfig::default(), None),
            }
        }
        (None, None) => (MeshConfig::default(), None),
    };
    // In Kubernetes the Lease comes first: only its holder creates the CA root (and writes ConfigMaps);
    // every replica serves.
    let leading = kube_client.as_ref().map(|client| {
        let identity = args.kube.pod_name.clone().unwrap_or_else(crate::kubernetes::leader::default_identity);
        let election = crate::kubernetes::leader::LeaderElection::new(
            client.clone(),
            &args.kube.istio_namespace,
            crate::kubernetes::leader::DEFAULT_LEASE,
            &identity,
        );
        election.spawn().0
    });
    let LoadedCa { authority, mut authenticators } = match (&kube_client, &leading) {
        (Some(client), Some(leading)) if args.cacerts.is_none() => {
            load_ca_from_cluster(&args, &mesh.trust_domain, client, leading.clone()).await?
        }
        _ => load_ca(&args, &mesh.trust_domain)?,
    };
    if let Some(client) = &kube_client {
        // Pods authenticate with their projected service-account token (audience istio-ca).
        authenticators.push(Arc::new(crate::kubernetes::review::TokenReviewAuthenticator::new(client.clone())));
    }
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let mut source_names = Vec::new();
    if args.config.is_some() {
        source_names.push(files::SOURCE_NAME);
    }
    if kube_client.is_some() {
        source_names.push(kube_source::SOURCE_NAME);
    }
    let store = Arc::new(Store::new(source_names));
    let pusher = Arc::new(Pusher::new(
        Arc::clone(&store),
        mesh.clone(),
        Debounce { after: args.debounce_after, max: args.debounce_max },
        Arc::clone(&metrics),
    ));

    let xds_addr = SocketAddr::new(args.listen_address, args.xds_port);
    let xds_listener = crate::xds::listen(xds_addr).with_context(|| format!("binding xDS port {xds_addr}"))?;
    let mon_addr = SocketAddr::new(args.listen_address, args.monitoring_port);
    let mon_listener =
        TcpListener::bind(mon_addr).await.with_context(|| format!("binding monitoring port {mon_addr}"))?;
    let secure_addr = SocketAddr::new(args.listen_address, args.secure_port);
    let secure_listener = if args.secure_port == 0 {
        None
    } else {
        Some(TcpListener::bind(secure_addr).await.with_context(|| format!("binding secure port {secure_addr}"))?)
    };

    let xds = crate::xds::XdsServer::new(Arc::clone(&pusher) as Arc<dyn crate::xds::SnapshotSource>, &mut registry);
    // SDS over ADS (`kubernetes://` secrets) to proxies verified on the secure port. Who may read a
    // namespace's Secrets: the same namespace in file mode; in Kubernetes also a
    // SubjectAccessReview (`list secrets`), as istiod asks.
    let authorizer: Arc<dyn SecretAuthorizer> = match &kube_client {
        Some(client) => Arc::new(KubernetesAccess::new(Arc::new(
            crate::kubernetes::review::SubjectAccessReviewer::new(client.clone()),
        ))),
        None => Arc::new(SameNamespace),
    };
    xds.serve_secrets(SdsConfig { secrets: pusher.secrets(), authorizer });
    let status = xds.status();
    let admin_state =
        AdminState { store: Arc::clone(&store), pusher: Arc::clone(&pusher), status, registry: Arc::new(registry) };

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(dir) = &args.config {
        let source = FileSource::new(dir, Arc::clone(&store));
        tasks.spawn(async move { source.run().await.context("file source") });
    }
    if let Some(client) = kube_client {
        let webhook_state = WebhookState {
            injector: InjectorConfig::from_args(&args.webhook, &args.kube.istio_namespace, &mesh),
            namespaces: Arc::clone(&store) as Arc<dyn crate::webhook::NamespaceLabels>,
        };
        let webhook =
            WebhookServer::bind(&args.webhook, args.listen_address, &args.kube.istio_namespace, webhook_state).await?;
        if let Some(webhook) = webhook {
            info!(webhook = ?webhook.local_addr(), "admission webhooks serving /inject and /validate");
            tasks.spawn(async move { webhook.run().await.context("webhook server") });
        }
        // Root cert ConfigMaps are written by the Lease holder only.
        let leading = leading.clone().context("the Lease election runs in Kubernetes mode")?;
        let publisher = crate::kubernetes::rootcert::RootCertPublisher::new(
            client.clone(),
            Arc::clone(&store),
            authority.root_pem().to_string(),
            leading,
        );
        tasks.spawn(async move {
            publisher.run().await;
            Ok(())
        });
        let options = KubeSourceOptions { istio_namespace: args.kube.istio_namespace.clone(), initial_mesh };
        let source = KubeSource::new(client, Arc::clone(&store), options);
        tasks.spawn(async move { source.run().await.context("kubernetes source") });
    }
    tasks.spawn({
        let pusher = Arc::clone(&pusher);
        async move {
            pusher.run().await;
            Ok(())
        }
    });
    // The same ADS server (one status registry, one body cache) also on the secure port, below.
    let secure_ads = xds.clone().into_service();
    tasks.spawn(async move { xds.serve(xds_listener).await.context("xDS server") });
    tasks.spawn(async move { admin::serve(mon_listener, admin_state).await.context("monitoring server") });
    if let Some(listener) = secure_listener {
        let tls_config = secure_tls_config(&authority, args.listen_address)?;
        // One tonic server for everything on the secure port: the CA (bearer token, no client
        // certificate yet) and ADS over mTLS, whose proxy identity is the client certificate's
        // SPIFFE URI (from `TlsConnectInfo`; see `xds/server.rs`).
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(CaService::new(Arc::clone(&authority), authenticators).into_server())
            .add_service(secure_ads);
        tasks.spawn(async move {
            router.serve_with_incoming(tls::incoming(listener, tls_config)).await.context("secure gRPC server")
        });
        info!(secure = %secure_addr, trust_domain = %authority.options().trust_domain, "CA and ADS over mTLS serving on the secure port");
    }
    info!(xds = %xds_addr, monitoring = %mon_addr, config = ?args.config, kubernetes = args.kube.kubernetes, "sailplane discovery started");

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            info!("interrupted, shutting down");
            Ok(())
        }
        Some(done) = tasks.join_next() => {
            let result = done.context("task panicked")?;
            if let Err(e) = &result {
                error!(error = %format!("{e:#}"), "a server task failed");
            }
            result.and(Err(anyhow::anyhow!("a server task ended unexpectedly")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }
}
