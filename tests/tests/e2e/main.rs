//! The end-to-end tier: the real `sailplane` binary (`SAILPLANE_BIN`) and real Envoy (`ENVOY_BIN`)
//! on loopback, one test binary (one link instead of one per file). Each module is one former test
//! file. Helpers come from this crate's library (`sailplane_tests`).
//!
//! Everything here tolerates running in parallel with the rest of the binary: ports come from the
//! one allocator (unique within the process), every control plane and Envoy has its own scratch
//! directory, and no test sets environment variables. The mesh-lab tests (root, network
//! namespaces) stay separate binaries (`tests/tests/lab_*.rs`).

mod agent_envoy;
mod bad_input;
mod ca_discovery;
mod discovery;
mod kube_ca;
mod kube_crds;
mod kube_envoy;
mod mtls_origination;
mod mtls_rotation;
mod quickstart;
mod sds_ads;
mod sds_kubernetes;
mod traffic_edge;
mod traffic_resilience;
mod traffic_routing;
mod xds_mtls;
