//! Subcommands of the `sailplane` binary.

pub mod agent;
pub mod analyze;
pub mod bootstrap;
pub mod crds;
pub mod discovery;
pub mod token;
pub mod translate;
