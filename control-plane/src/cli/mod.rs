//! Subcommands of the `sailplane` binary.

pub mod analyze;
pub mod bootstrap;
pub mod discovery;
pub mod translate;
