//! # sailplane-tests: the test-support library, and the end-to-end tier
//!
//! The one place test helpers live, for every integration-test tier (see `tests/README.md`):
//! `control-plane/tests` (component tests, in process) uses it as a dev-dependency, and the
//! end-to-end cases in `tests/tests` use it to start the real `sailplane` binary, real Envoy
//! processes and echo backends on loopback.
//!
//! Shared by every tier:
//! - [`wait`]: the one [`eventually`] (async, with a timeout and a message).
//! - [`ports`]: the one port allocator, [`ports::free_port`].
//! - [`ads_client`]: the SotW and Delta ADS test clients, sidecar nodes, decoding of responses.
//! - [`grpc`]: gRPC channels: plaintext, TLS with or without a client certificate, Unix sockets.
//! - [`ca`]: an in-process CA ([`ca::TestCa`]) and certificate inspection and verification.
//! - [`fixtures`]: Kubernetes and Istio objects as YAML.
//! - [`http`]: HTTP/1.1 GETs on loopback (reqwest or bare).
//!
//! Component tier (in process):
//! - [`ads_server`]: the control plane's ADS server in process ([`ads_server::TestServer`]) with a
//!   hand-fed snapshot source, and resource sets to serve.
//! - [`fake_apiserver`]: a fake Kubernetes API server on loopback.
//! - [`webhook`]: an HTTPS client for admission reviews.
//!
//! End-to-end tier (real processes):
//! - [`ControlPlane`]: `sailplane discovery` as a child process on free ports, started by
//!   [`control_plane::Launch`], with helpers for its debug endpoints and its CA.
//! - [`Envoy`]: an Envoy child process bootstrapped by `sailplane bootstrap`, with helpers for its
//!   admin interface; [`paths`] finds Envoy and the `sailplane` binary.
//! - [`process::Proc`]: any other child process (hand-bootstrapped Envoy, `sailplane agent`).
//! - [`EchoServer`]: an HTTP backend answering with its own name, so a test can tell who answered;
//!   [`tls_echo`]: TLS backends, a test PKI and mesh sidecars with workload certificates.
//! - [`ConfigDir`]: the directory the control plane watches, with atomic writes and removals.
//! - [`traffic`]: backends as Services, requests with headers and full replies, waiting for a
//!   virtual host in Envoy's config (the traffic-management cases).
//! - [`lab`]: pods in network namespaces with Istio-style sidecars and iptables interception, on a
//!   bridge, with service VIPs (the mesh lab; needs root).
//!
//! Everything spawned is killed when its handle is dropped, and its log tail is printed then (test
//! output is captured, so it shows only for failing tests). A missing Envoy or control plane binary is
//! an error, never a skip: a skipped end-to-end test would read as a pass.

pub mod ads_client;
pub mod ads_server;
pub mod ca;
pub mod config_dir;
pub mod control_plane;
pub mod echo;
pub mod envoy;
pub mod fake_apiserver;
pub mod fixtures;
pub mod grpc;
pub mod http;
pub mod lab;
pub mod paths;
pub mod ports;
pub mod process;
pub mod tls_echo;
pub mod traffic;
pub mod wait;
pub mod webhook;

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
