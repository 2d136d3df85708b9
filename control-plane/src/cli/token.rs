//! `sailplane token create`: mints a bearer token the CA accepts in file mode (for VMs and local
//! proxies, which have no Kubernetes service-account token).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::ca::token::TokenAuthority;
use crate::cli::discovery::{DEFAULT_CA_DIR, parse_duration};

/// `sailplane token ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// Token subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a token for a namespace and service account, signed with the key in --ca-dir (the
    /// directory `sailplane discovery --ca-dir` uses; the key is created there if missing).
    Create(CreateArgs),
}

/// Flags of `sailplane token create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Namespace of the identity.
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// Service account of the identity.
    #[arg(long)]
    pub service_account: String,
    /// Lifetime of the token (`90s`, `30m`, `24h`, `7d`).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// The control plane's CA state directory (holds `token-key.pem`).
    #[arg(long, env = "SAILPLANE_CA_DIR", default_value = DEFAULT_CA_DIR, value_name = "DIR")]
    pub ca_dir: PathBuf,
    /// Write the token to this file (mode 0600) instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

fn valid_name(what: &str, s: &str) -> anyhow::Result<()> {
    // A DNS label, as Kubernetes requires for namespaces and service accounts; ':' would also make
    // the token's `system:serviceaccount:<ns>:<sa>` subject ambiguous.
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with('-')
        && !s.ends_with('-');
    anyhow::ensure!(ok, "--{what} {s:?} is not a valid Kubernetes name (lowercase letters, digits, '-', '.')");
    Ok(())
}

/// Mints the token described by `args`.
pub fn create(args: &CreateArgs) -> anyhow::Result<String> {
    valid_name("namespace", &args.namespace)?;
    valid_name("service-account", &args.service_account)?;
    anyhow::ensure!(!args.ttl.is_zero(), "--ttl must be positive");
    let tokens = TokenAuthority::load_or_create(&args.ca_dir)
        .with_context(|| format!("token key in {}", args.ca_dir.display()))?;
    Ok(tokens.mint(&args.namespace, &args.service_account, args.ttl)?)
}

/// Runs `sailplane token`.
pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    match &args.command {
        TokenCommand::Create(c) => {
            let token = create(c)?;
            match &c.output {
                Some(path) => crate::agent::output::write_atomic(path, format!("{token}\n").as_bytes(), 0o600)?,
                None => println!("{token}"),
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TokenArgs,
    }

    #[test]
    fn created_tokens_verify_with_the_same_dir() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().to_str().unwrap();
        let cli = Cli::try_parse_from([
            "token",
            "create",
            "-n",
            "bookinfo",
            "--service-account",
            "reviews",
            "--ttl",
            "1h",
            "--ca-dir",
            ca_dir,
        ])
        .unwrap();
        let TokenCommand::Create(c) = &cli.args.command;
        let token = create(c).unwrap();
        let subject = TokenAuthority::load_or_create(dir.path()).unwrap().verify(&token).unwrap();
        assert_eq!((subject.namespace.as_str(), subject.service_account.as_str()), ("bookinfo", "reviews"));
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (ns, sa) in [("a:b", "sa"), ("ns", ""), ("NS", "sa"), ("ns", "-sa")] {
            let c = CreateArgs {
                namespace: ns.into(),
                service_account: sa.into(),
                ttl: Duration::from_secs(60),
                ca_dir: dir.path().to_path_buf(),
                output: None,
            };
            assert!(create(&c).is_err(), "{ns}/{sa} should be refused");
        }
    }
}
