//! # sailplane-tests: end-to-end harness
//!
//! Starts the control plane, real Envoy processes and echo backends, and drives real requests.
