//! The committed CRDs of the Helm chart are what `sailplane crds` generates from the Rust API
//! types (that `sailplane crds` prints the same is in `tests/tests/e2e/kube_crds.rs`). Regenerate with `SAILPLANE_REGENERATE=1 cargo test -p sailplane --test component kube_crds`, or
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
