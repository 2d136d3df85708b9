//! # sailplane-proto: protocol descriptors
//!
//! Reflection over Envoy's messages (for JSON config dumps in Envoy's own shape) and the .proto
//! definitions envoy-types lacks (the Istio CA API).
