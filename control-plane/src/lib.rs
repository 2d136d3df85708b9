//! # sailplane: the control plane
//!
//! Stages: `sources` (files; Kubernetes later) emit objects into the `store`; `push` debounces
//! changes, rebuilds the [`sailplane_translator::World`] once and translates each distinct proxy
//! profile once; `xds` streams the encoded snapshots to Envoy (SotW and Delta) and tracks ACK/NACK;
//! `admin` serves readiness, debug and metrics.

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
