//! # sailplane-translator: the translation stage
//!
//! Inputs: typed Kubernetes and Istio objects ([`api`]), assembled into an immutable
//! [`model::World`], and the description of one proxy ([`model::ProxyProfile`]).
//! Output: a [`resources::ResourceSet`]: every Envoy xDS resource that proxy should hold, already
//! encoded as `google.protobuf.Any` bytes with a content-hash version.
//!
//! The translator is pure: no async runtime, no network, no clock, no environment, no file I/O.
//! Everything it reads arrives in its arguments, so a cache keyed on `(World, ProxyProfile)` is
//! complete by construction.
//!
//! Invalid user input never panics and never aborts translation: it becomes a
//! [`diag::Diagnostic`] naming the object and field, and the object is skipped.
//!
//! Modules: [`api`] (input types), [`validate`] (the webhook's checks), [`model`] (the world,
//! host and gateway-reference rules, the proxy profile), [`envoy`] (one builder per Envoy
//! resource type, entered through [`build`]), [`names`] (Envoy resource names), [`resources`]
//! (the encoded output).

pub mod api;
pub mod diag;
pub mod envoy;
pub mod incremental;
pub mod model;
pub mod names;
pub mod resources;
pub mod validate;

pub use diag::Diagnostic;
pub use envoy::{Part, Translation, build, build_part, static_bootstrap};
pub use model::{ProxyProfile, World};
pub use resources::{Resource, ResourceSet, TypeUrl};
