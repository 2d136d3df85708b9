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
use crate::metrics::Metrics;
use crate::push::{Debounce, Pusher};
use crate::sources::files::{self, FileSource};
use crate::store::Store;

/// Flags of `sailplane discovery`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiscoveryArgs {
    /// Directory of YAML files (Kubernetes and Istio objects); watched for changes.
    #[arg(long, value_name = "DIR")]
    pub config: PathBuf,
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
    /// Push at the latest this long after the first change (PILOT_DEBOUNCE_MAX).
    #[arg(long, env = "PILOT_DEBOUNCE_MAX", default_value = "10s", value_parser = parse_duration)]
    pub debounce_max: Duration,
}

/// Parses `100ms`, `10s`, `2m`, `1h` or a bare number of seconds.
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
        _ => return Err(format!("invalid duration unit in {s:?} (use ms, s, m or h)")),
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

/// Runs the control plane until interrupted.
pub async fn run(args: DiscoveryArgs) -> anyhow::Result<()> {
    let mesh = match &args.mesh_config {
        Some(p) => load_mesh_config(p)?,
        None => MeshConfig::default(),
    };
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let store = Arc::new(Store::new([files::SOURCE_NAME]));
    let pusher = Arc::new(Pusher::new(
        Arc::clone(&store),
        mesh,
        Debounce { after: args.debounce_after, max: args.debounce_max },
        Arc::clone(&metrics),
    ));

    let xds_addr = SocketAddr::new(args.listen_address, args.xds_port);
    let xds_listener = TcpListener::bind(xds_addr).await.with_context(|| format!("binding xDS port {xds_addr}"))?;
    let mon_addr = SocketAddr::new(args.listen_address, args.monitoring_port);
    let mon_listener =
        TcpListener::bind(mon_addr).await.with_context(|| format!("binding monitoring port {mon_addr}"))?;

    let xds = crate::xds::XdsServer::new(Arc::clone(&pusher) as Arc<dyn crate::xds::SnapshotSource>, &mut registry);
    let status = xds.status();
    let admin_state = AdminState { store: Arc::clone(&store), pusher: Arc::clone(&pusher), status, registry: Arc::new(registry) };

    let source = FileSource::new(&args.config, Arc::clone(&store));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { source.run().await.context("file source") });
    tasks.spawn({
        let pusher = Arc::clone(&pusher);
        async move {
            pusher.run().await;
            Ok(())
        }
    });
    tasks.spawn(async move { xds.serve(xds_listener).await.context("xDS server") });
    tasks.spawn(async move { admin::serve(mon_listener, admin_state).await.context("monitoring server") });
    info!(xds = %xds_addr, monitoring = %mon_addr, config = %args.config.display(), "sailplane discovery started");

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
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }
}
