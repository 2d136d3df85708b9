//! Kubernetes clients that are not config sources: what the control plane asks of or writes to the
//! API server besides watching objects (the watchers are in `sources::kube`).
//!
//! - `leader`: the Lease that decides which replica writes;
//! - `review`: TokenReview (workload authentication for the CA) and SubjectAccessReview (may a proxy
//!   read a Secret over SDS);
//! - `ca_secret`: the CA root kept in the `cacerts` or `istio-ca-secret` Secret;
//! - `rootcert`: the `istio-ca-root-cert` ConfigMap in every namespace.

pub mod ca_secret;
pub mod leader;
pub mod review;
pub mod rootcert;
