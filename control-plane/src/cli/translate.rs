//! `sailplane translate`: what one proxy would receive, as an Envoy static bootstrap.
//!
//! The same world building and translation as `sailplane discovery`, run once, offline. RDS is inlined
//! into the HTTP connection managers and EDS into `load_assignment`, so the output is a complete
//! bootstrap that `envoy --mode validate` (or a real Envoy) accepts.

use std::path::PathBuf;

use anyhow::{Context, bail};
use envoy_types::pb::envoy::config::core::v3::Node;
use prost::Message;
use sailplane_translator::model::{Labels, MeshConfig, build_world};
use sailplane_translator::{build, static_bootstrap};

use crate::cli::discovery::load_mesh_config;
use crate::proxy::{ProxyInfo, node_metadata};
use crate::sources::files::read_tree;
use crate::sources::yaml::parse_documents;

/// Flags of `sailplane translate`.
#[derive(Debug, Clone, clap::Args)]
pub struct TranslateArgs {
    /// Directory of YAML files, as for `sailplane discovery --config`.
    #[arg(long, value_name = "DIR")]
    pub config: PathBuf,
    /// The proxy's node id, `sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local` (or `router~...`).
    #[arg(long, value_name = "NODE_ID")]
    pub proxy: String,
    /// Overrides the node type of the id.
    #[arg(long, value_parser = ["sidecar", "router"])]
    pub r#type: Option<String>,
    /// Workload labels, `k=v,k2=v2`.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Service account of the workload.
    #[arg(long, default_value = "default")]
    pub service_account: String,
    /// `REDIRECT` (iptables) or `NONE` (outbound listeners bind 127.0.0.1).
    #[arg(long, default_value = "REDIRECT", value_parser = ["REDIRECT", "NONE"])]
    pub interception_mode: String,
    /// MeshConfig file, as for `sailplane discovery --mesh-config`.
    #[arg(long, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// Print problems found in the config to stderr (they are skipped in the output either way).
    #[arg(long)]
    pub show_diagnostics: bool,
}

/// Parses `k=v,k2=v2`.
pub fn parse_labels(s: &str) -> anyhow::Result<Labels> {
    let mut labels = Labels::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("label {pair:?} is not of the form key=value");
        };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

/// Renders the bootstrap YAML.
pub fn render(args: &TranslateArgs) -> anyhow::Result<String> {
    let mesh = match &args.mesh_config {
        Some(p) => load_mesh_config(p)?,
        None => MeshConfig::default(),
    };
    if !args.config.is_dir() {
        bail!("config directory {} does not exist", args.config.display());
    }
    let mut objects = Vec::new();
    let mut diagnostics = Vec::new();
    for (path, text) in read_tree(&args.config) {
        let (o, d) = parse_documents(&path.display().to_string(), &text);
        objects.extend(o);
        diagnostics.extend(d);
    }
    let (world, world_diags) = build_world(objects.iter(), &mesh);
    diagnostics.extend(world_diags);
    if args.show_diagnostics {
        for d in &diagnostics {
            eprintln!("{d}");
        }
    }

    let mut id = args.proxy.clone();
    if let (Some(t), Some((_, rest))) = (&args.r#type, args.proxy.split_once('~')) {
        id = format!("{t}~{rest}");
    }
    let labels = parse_labels(&args.labels)?;
    let node = Node {
        id: id.clone(),
        metadata: Some(node_metadata(
            &[("SERVICE_ACCOUNT", args.service_account.clone()), ("INTERCEPTION_MODE", args.interception_mode.clone())],
            &labels,
        )),
        ..Default::default()
    };
    let proxy = ProxyInfo::from_node(Some(&node))?;
    let cluster =
        format!("{}.{}", labels.get("app").cloned().unwrap_or_else(|| proxy.pod.clone()), proxy.profile.namespace);
    let resources = build(&world, &proxy.profile);
    let bootstrap = static_bootstrap(&resources, &id, &cluster).map_err(|e| anyhow::anyhow!("{e}"))?;
    let json = sailplane_proto::message_to_json("envoy.config.bootstrap.v3.Bootstrap", &bootstrap.encode_to_vec())
        .context("rendering the bootstrap")?;
    let yaml = serde_yaml_ng::to_string(&json).context("writing yaml")?;
    Ok(format!("# sailplane translate --proxy {id}\n{yaml}"))
}

/// Prints the bootstrap.
pub fn run(args: &TranslateArgs) -> anyhow::Result<()> {
    print!("{}", render(args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let l = parse_labels("app=web, version=v1").unwrap();
        assert_eq!(l.get("app").map(String::as_str), Some("web"));
        assert_eq!(l.get("version").map(String::as_str), Some("v1"));
        assert!(parse_labels("nokey").is_err());
        assert!(parse_labels("").unwrap().is_empty());
    }

    #[test]
    fn quickstart_renders_a_bootstrap_with_inlined_routes() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart");
        let args = TranslateArgs {
            config: dir,
            proxy: "sidecar~127.0.0.1~client.demo~demo.svc.cluster.local".into(),
            r#type: None,
            labels: "app=client".into(),
            service_account: "default".into(),
            interception_mode: "NONE".into(),
            mesh_config: None,
            show_diagnostics: false,
        };
        let yaml = render(&args).unwrap();
        assert!(yaml.contains("outbound|8080||hello.demo.svc.cluster.local"), "{yaml}");
        assert!(yaml.contains("route_config"), "RDS is inlined");
        assert!(!yaml.contains("\nrds:") && !yaml.contains(" rds:"), "no RDS reference left");
    }
}
