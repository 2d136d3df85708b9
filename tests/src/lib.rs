//! # sailplane-tests: end-to-end harness
//!
//! Starts the real `sailplane` binary, real Envoy processes and echo backends on loopback, and drives
//! real requests through Envoy, so the cases in `tests/` assert what a user would see: which backend
//! answered, which status came back, what `/debug/syncz` says.
//!
//! - [`ControlPlane`]: `sailplane discovery` as a child process on free ports, with helpers for its
//!   debug endpoints.
//! - [`Envoy`]: an Envoy child process bootstrapped by `sailplane bootstrap`, with helpers for its
//!   admin interface.
//! - [`EchoServer`]: an HTTP backend answering with its own name, so a test can tell who answered.
//! - [`ConfigDir`]: the directory the control plane watches, with atomic writes and removals.
//! - [`fixtures`]: Kubernetes and Istio objects as YAML.
//! - [`lab`]: pods in network namespaces with Istio-style sidecars and iptables interception, on a
//!   bridge, with service VIPs (the mesh lab; needs root).
//! - [`traffic`]: backends as Services, requests with headers and full replies, waiting for a
//!   virtual host in Envoy's config (the traffic-management cases).
//!
//! Everything spawned is killed when its handle is dropped, and its log tail is printed then (test
//! output is captured, so it shows only for failing tests). A missing Envoy or control plane binary is
//! an error, never a skip: a skipped end-to-end test would read as a pass.

pub mod config_dir;
pub mod control_plane;
pub mod echo;
pub mod envoy;
pub mod fixtures;
pub mod http;
pub mod lab;
pub mod paths;
pub mod ports;
pub mod tls_echo;
pub mod traffic;
pub mod wait;

pub use config_dir::ConfigDir;
pub use control_plane::ControlPlane;
pub use echo::EchoServer;
pub use envoy::{Envoy, EnvoyOptions, XdsApi};
pub use wait::eventually;

/// The last `lines` lines of a log file, or a note that it could not be read.
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
