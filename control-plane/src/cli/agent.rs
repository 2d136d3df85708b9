//! `sailplane agent`: the node agent next to one Envoy, like Istio's pilot-agent. It obtains the
//! workload certificate from the control plane's CA with a bearer token, serves it to Envoy over SDS
//! on a Unix socket, rotates it, optionally writes it to files, writes Envoy's bootstrap, and with
//! `--run-envoy` runs and supervises Envoy.
//!
//! Settings come from flags or from the environment variables pilot-agent reads (`CA_ADDR`,
//! `CA_ROOT_CA`, `XDS_ROOT_CA`, `SECRET_TTL`, `OUTPUT_CERTS`, `POD_NAME`, `POD_NAMESPACE`,
//! `SERVICE_ACCOUNT`, `INSTANCE_IP`, `TRUST_DOMAIN`), so an Istio-style pod spec or VM environment
//! file works unchanged.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tracing::info;

use crate::agent::ca_client::CaClient;
use crate::agent::envoy::{self, AgentBootstrap, EnvoyCommand, XdsTls};
use crate::agent::keys::KeyType;
use crate::agent::secrets::{FILE_ROOT_PREFIX, ROOT_SECRET, SecretCache};
use crate::agent::{Agent, CertManager, CertOptions, DEFAULT_GRACE_JITTER, DEFAULT_GRACE_RATIO};
use crate::bootstrap::BootstrapArgs;
use crate::cli::discovery::parse_duration;
use crate::identity::Identity;

/// Where the bootstrap goes by default (next to the SDS socket, as pilot-agent's envoy-rev file).
pub const DEFAULT_BOOTSTRAP: &str = "./etc/istio/proxy/envoy-rev.yaml";

/// Flags of `sailplane agent`: the proxy's identity and control plane address (the same flags as
/// `sailplane bootstrap`), plus the CA, certificate and Envoy settings.
#[derive(Debug, Clone, clap::Args)]
#[command(
    mut_arg("namespace", |a| a.env("POD_NAMESPACE")),
    mut_arg("service_account", |a| a.env("SERVICE_ACCOUNT")),
    mut_arg("pod", |a| a.env("POD_NAME")),
    mut_arg("ip", |a| a.env("INSTANCE_IP")),
    mut_arg("xds_address", |a| a.help(
        "Address of Sailplane's xDS port, `host:port`: the plaintext port (15010), or the secure port \
         (15012: mTLS with the workload certificate, see --xds-tls)"
    )),
    mut_arg("output", |a| a.default_value(DEFAULT_BOOTSTRAP).help("Where to write the Envoy bootstrap")),
)]
pub struct AgentArgs {
    /// Proxy identity and xDS address.
    #[command(flatten)]
    pub proxy: BootstrapArgs,

    /// The CA's address, `host:port` (the control plane's secure port).
    #[arg(long, env = "CA_ADDR", default_value = "127.0.0.1:15012")]
    pub ca_addr: String,

    /// PEM file with the root that the CA's TLS certificate must chain to (the mesh root:
    /// `<discovery --ca-dir>/root-cert.pem`, or Istio's mounted `istio-ca-root-cert`).
    #[arg(long, env = "CA_ROOT_CA", default_value = "./var/run/secrets/istio/root-cert.pem", value_name = "FILE")]
    pub ca_root: PathBuf,

    /// Name the CA's certificate must be valid for. Default: the host of --ca-addr (a DNS name or an
    /// IP address); Sailplane's certificate also carries istiod.istio-system.svc and sailplane.
    #[arg(long)]
    pub ca_server_name: Option<String>,

    /// File holding the bearer token for the CA (`sailplane token create`, or a Kubernetes projected
    /// service-account token with audience istio-ca). Read before every request.
    #[arg(long, default_value = "./var/run/secrets/tokens/istio-token", value_name = "FILE")]
    pub token_file: PathBuf,

    /// Trust domain of the workload identity (must match the control plane's mesh config).
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Requested certificate lifetime; the certificate is renewed at half of it (±1%).
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    pub secret_ttl: Duration,

    /// Also write key.pem (mode 0600), cert-chain.pem and root-cert.pem into this directory on every
    /// fetch and rotation.
    #[arg(long, env = "OUTPUT_CERTS", value_name = "DIR")]
    pub output_certs: Option<PathBuf>,

    /// Private key type: `ec` (ECDSA P-256) or `rsa` (RSA 2048).
    #[arg(long, value_enum, default_value_t = KeyType::Ec)]
    pub key_type: KeyType,

    /// Unix socket on which SDS is served to Envoy.
    #[arg(long, default_value = "./etc/istio/proxy/SDS", value_name = "PATH")]
    pub sds_socket: PathBuf,

    /// Connect to xDS over mTLS, presenting the workload certificate (SDS `default`) and verifying
    /// the control plane against ROOTCA (or --xds-root-ca). Default: on when the port of
    /// --xds-address is 15012 (the secure port, as pilot-agent), off otherwise; `--xds-tls` or
    /// `--xds-tls=true|false` decides explicitly (a secure port on another number needs `--xds-tls`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub xds_tls: Option<bool>,

    /// Name the control plane's xDS certificate must carry (DNS SAN), also sent as SNI.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    pub xds_server_name: String,

    /// PEM file with the CAs that verify the control plane's xDS certificate (default: the mesh root
    /// from the CA, served as ROOTCA).
    #[arg(long, env = "XDS_ROOT_CA", value_name = "FILE")]
    pub xds_root_ca: Option<PathBuf>,

    /// Start Envoy with the bootstrap, restart it when it exits, stop it when the agent stops.
    #[arg(long)]
    pub run_envoy: bool,

    /// Envoy binary for --run-envoy (default: `envoy` on PATH).
    #[arg(long, env = "ENVOY_BIN", default_value = "envoy")]
    pub envoy_bin: PathBuf,

    /// How long Envoy may take to exit after SIGTERM before it is killed.
    #[arg(long, env = "TERMINATION_DRAIN_DURATION_SECONDS", default_value = "5s", value_parser = parse_duration)]
    pub termination_drain_duration: Duration,

    /// Extra Envoy arguments, after `--` (for example `-- --concurrency 2 -l debug`).
    #[arg(last = true)]
    pub envoy_args: Vec<OsString>,
}

/// Completes on SIGTERM or Ctrl-C.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = sigterm => {}
    }
}

/// The secure port: xDS there is mTLS.
const SECURE_PORT: u16 = 15012;

/// Whether xDS goes over mTLS: as `--xds-tls` says, else when the xDS port is the secure port.
pub fn xds_tls_enabled(args: &AgentArgs) -> bool {
    args.xds_tls.unwrap_or_else(|| {
        let port = args.proxy.xds_address.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
        port == Some(SECURE_PORT)
    })
}

/// The bootstrap the agent writes for `args`.
pub fn bootstrap_options(args: &AgentArgs) -> AgentBootstrap {
    let xds_tls = xds_tls_enabled(args).then(|| XdsTls {
        server_name: args.xds_server_name.clone(),
        root_secret: match &args.xds_root_ca {
            Some(path) => format!("{FILE_ROOT_PREFIX}{}", envoy::absolute(path).display()),
            None => ROOT_SECRET.to_string(),
        },
    });
    AgentBootstrap { base: args.proxy.clone(), sds_socket: args.sds_socket.clone(), xds_tls }
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.secret_ttl.is_zero(), "SECRET_TTL must be positive");
    let identity = Identity {
        trust_domain: args.trust_domain.clone(),
        namespace: args.proxy.namespace.clone(),
        service_account: args.proxy.service_account.clone(),
    };
    let ca_root_pem = std::fs::read_to_string(&args.ca_root)
        .with_context(|| format!("reading the CA root {} (--ca-root / CA_ROOT_CA)", args.ca_root.display()))?;
    let client = CaClient::new(&args.ca_addr, &ca_root_pem, args.ca_server_name.as_deref())?;
    let options = CertOptions {
        identity: identity.clone(),
        token_file: args.token_file.clone(),
        secret_ttl: args.secret_ttl,
        key_type: args.key_type,
        output_certs: args.output_certs.clone(),
        grace_ratio: DEFAULT_GRACE_RATIO,
        grace_jitter: DEFAULT_GRACE_JITTER,
    };
    let manager = CertManager::new(options, client, ca_root_pem, SecretCache::new());

    let bootstrap_path = args.proxy.output.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_BOOTSTRAP));
    envoy::write(&bootstrap_options(&args), &bootstrap_path)?;
    info!(
        identity = %identity.spiffe_uri(),
        ca = %args.ca_addr,
        bootstrap = %bootstrap_path.display(),
        sds = %args.sds_socket.display(),
        "sailplane agent starting"
    );

    let mut agent = Agent::start(manager, &args.sds_socket)?;
    if args.run_envoy {
        let command =
            EnvoyCommand { bin: args.envoy_bin.clone(), config: bootstrap_path, args: args.envoy_args.clone() };
        tokio::select! {
            r = envoy::supervise(command, args.termination_drain_duration, terminated()) => r?,
            r = agent.failed() => r?,
        }
    } else {
        tokio::select! {
            () = terminated() => {}
            r = agent.failed() => r?,
        }
    }
    info!("sailplane agent stopping");
    agent.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AgentArgs,
    }

    #[test]
    fn command_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_passthrough() {
        let cli = Cli::try_parse_from(["agent", "--pod", "p", "--xds-tls", "--", "--concurrency", "1"]).unwrap();
        let a = cli.args;
        assert_eq!(a.ca_addr, "127.0.0.1:15012");
        assert_eq!(a.secret_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(a.key_type, KeyType::Ec);
        assert_eq!(a.proxy.output, Some(PathBuf::from(DEFAULT_BOOTSTRAP)));
        assert_eq!(a.envoy_args, vec![OsString::from("--concurrency"), OsString::from("1")]);
        let b = bootstrap_options(&a);
        assert_eq!(b.xds_tls.map(|t| t.root_secret), Some("ROOTCA".to_string()));

        let a = Cli::try_parse_from(["agent", "--xds-tls", "--xds-root-ca", "/etc/x.pem"]).unwrap().args;
        assert_eq!(bootstrap_options(&a).xds_tls.map(|t| t.root_secret), Some("file-root:/etc/x.pem".to_string()));
    }

    #[test]
    fn xds_tls_follows_the_secure_port_unless_told() {
        let tls = |argv: &[&str]| {
            let mut all = vec!["agent"];
            all.extend_from_slice(argv);
            bootstrap_options(&Cli::try_parse_from(all).unwrap().args).xds_tls.is_some()
        };
        assert!(!tls(&[]), "default address is the plaintext port");
        assert!(tls(&["--xds-address", "istiod.istio-system.svc:15012"]));
        assert!(tls(&["--xds-address", "127.0.0.1:15012"]));
        assert!(!tls(&["--xds-address", "127.0.0.1:15010"]));
        assert!(!tls(&["--xds-address", "127.0.0.1:15012", "--xds-tls=false"]));
        assert!(tls(&["--xds-address", "127.0.0.1:41234", "--xds-tls"]));
        assert!(tls(&["--xds-address", "127.0.0.1:41234", "--xds-tls=true"]));
    }
}
