//! The `sailplane` binary.

fn main() -> anyhow::Result<()> {
    Ok(())
}
