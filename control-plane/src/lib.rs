//! # sailplane: the control plane
//!
//! Stages: `sources` (a directory of YAML, Kubernetes watchers) emit objects into the `store`; `push`
//! debounces changes, rebuilds the [`sailplane_translator::World`] once and translates each distinct
//! proxy profile once; `xds` streams the encoded snapshots to Envoy (SotW and Delta) and tracks
//! ACK/NACK; `admin` serves readiness, debug and metrics.
//!
//! Beside the pipeline: `ca` (the mesh CA and its gRPC API), `identity` (SPIFFE identities and how
//! callers authenticate), `tls` (the secure port's TLS), `kubernetes` (API clients that are not
//! sources: Lease, TokenReview, SubjectAccessReview, the CA root Secret, root-cert ConfigMaps),
//! `webhook` (injection and validation), `agent` (the node agent), `bootstrap` (Envoy bootstraps),
//! `proxy` (what a node id and metadata say), `metrics`, and `cli` (one module per subcommand).

pub mod admin;
pub mod agent;
pub mod bootstrap;
pub mod ca;
pub mod cli;
pub mod identity;
pub mod kubernetes;
pub mod metrics;
pub mod proxy;
pub mod push;
pub mod sources;
pub mod store;
pub mod tls;
pub mod webhook;
pub mod xds;
