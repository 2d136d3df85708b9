//! The `sailplane` binary: one executable, one subcommand per role.

use clap::{Parser, Subcommand};
use sailplane::cli;
use tracing_subscriber::EnvFilter;

/// Sailplane: an istiod-compatible service-mesh control plane.
#[derive(Debug, Parser)]
#[command(name = "sailplane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane: read config, serve xDS to Envoy, serve metrics and debug.
    Discovery(cli::discovery::DiscoveryArgs),
    /// Print an Envoy bootstrap for one proxy.
    Bootstrap(cli::bootstrap::BootstrapArgs),
    /// Validate Istio and Kubernetes YAML files or directories; exits non-zero on errors.
    Analyze(cli::analyze::AnalyzeArgs),
    /// Print the full configuration one proxy would receive, as an Envoy static bootstrap.
    Translate(cli::translate::TranslateArgs),
    /// Run the node agent next to an Envoy (like pilot-agent): workload certificate from the CA,
    /// SDS on a Unix socket, rotation, Envoy bootstrap, and optionally Envoy itself (--run-envoy).
    // Boxed: the agent's flags make this variant much larger than the others.
    Agent(Box<cli::agent::AgentArgs>),
    /// Bearer tokens for the CA in file mode (VMs and local proxies).
    Token(cli::token::TokenArgs),
    /// Print the CustomResourceDefinitions of the Istio kinds (for the Helm chart).
    #[command(hide = true)]
    Crds(cli::crds::CrdsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Discovery(args) => {
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cli::discovery::run(args))
        }
        Command::Bootstrap(args) => cli::bootstrap::run(&args),
        Command::Agent(args) => {
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(cli::agent::run(*args))
        }
        Command::Token(args) => cli::token::run(&args),
        Command::Crds(args) => cli::crds::run(&args),
        Command::Translate(args) => cli::translate::run(&args),
        Command::Analyze(args) => {
            let code = cli::analyze::run(&args)?;
            std::process::exit(code)
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("SAILPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
