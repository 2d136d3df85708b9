//! Where the binaries under test are: Envoy and `sailplane`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or_else(|| manifest.to_path_buf())
}

/// The Envoy binary: `ENVOY_BIN`, else the one `scripts/setup.sh` installs in `.venv`, else `envoy`
/// on `PATH`. A missing Envoy is an error with instructions, never a reason to skip.
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    let Some(p) = sailplane::agent::envoy::locate(&workspace_root()) else {
        bail!(
            "Envoy not found: end-to-end tests need a real Envoy 1.40. Run scripts/setup.sh (installs it \
             into .venv) or set ENVOY_BIN to an Envoy binary"
        )
    };
    if !p.is_file() {
        bail!("ENVOY_BIN={} does not exist", p.display());
    }
    Ok(p)
}

/// The `sailplane` binary: `SAILPLANE_BIN`, else `<target>/debug/sailplane`, built (or brought up to
/// date) once per test process with `cargo build -p sailplane --bin sailplane`, because this crate
/// does not depend on the binary and `cargo test -p sailplane-tests` alone would run a stale one.
pub fn sailplane_bin() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    if let Some(p) = std::env::var_os("SAILPLANE_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("SAILPLANE_BIN={} does not exist", p.display());
        }
        return Ok(p);
    }
    let built = BUILT.get_or_init(|| build_sailplane().map_err(|e| format!("{e:#}")));
    match built {
        Ok(p) => Ok(p.clone()),
        Err(e) => bail!("{e}"),
    }
}

fn build_sailplane() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "sailplane", "--bin", "sailplane"])
        .current_dir(&root)
        .output()
        .with_context(|| format!("running {} build -p sailplane", Path::new(&cargo).display()))?;
    if !out.status.success() {
        bail!("cargo build -p sailplane --bin sailplane failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let bin = target.join("debug/sailplane");
    if !bin.is_file() {
        bail!("cargo build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}
