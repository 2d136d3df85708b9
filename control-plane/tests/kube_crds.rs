//! The committed CRDs of the Helm chart are what `sailplane crds` generates from the Rust API
//! types. Regenerate with `SAILPLANE_REGENERATE=1 cargo test -p sailplane --test kube_crds`, or
//! `cargo run -p sailplane -- crds -o charts/sailplane/crds/istio-crds.yaml`.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use sailplane::cli::crds::{CHART_CRDS, render};

#[test]
fn committed_crds_are_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(CHART_CRDS);
    let generated = render().unwrap();
    if std::env::var_os("SAILPLANE_REGENERATE").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: regenerate it with `cargo run -p sailplane -- crds -o {CHART_CRDS}`",
        path.display()
    );
}

#[test]
fn the_binary_prints_the_same_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sailplane")).arg("crds").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), render().unwrap());
}
