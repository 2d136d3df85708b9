//! `sailplane bootstrap`: prints the Envoy bootstrap of one proxy (see [`crate::bootstrap`]).

use anyhow::Context;

pub use crate::bootstrap::BootstrapArgs;
use crate::bootstrap::render;

/// Runs `sailplane bootstrap`: prints the bootstrap, or writes it to `--output`.
pub fn run(args: &BootstrapArgs) -> anyhow::Result<()> {
    let yaml = render(args)?;
    match &args.output {
        Some(path) => std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{yaml}"),
    }
    Ok(())
}
