//! Subcommands of the `sailplane` binary.

pub mod bootstrap;
pub mod discovery;
