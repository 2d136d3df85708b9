//! `sailplane crds` (the real binary) prints the CRDs generated from the Rust API types (which
//! `control-plane/tests/component/kube_crds.rs` checks against the chart).

#![allow(clippy::unwrap_used)]

use sailplane::cli::crds::render;
use sailplane_tests::paths::sailplane_bin;

#[test]
fn the_binary_prints_the_same_crds() {
    let out = std::process::Command::new(sailplane_bin().unwrap()).arg("crds").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), render().unwrap());
}
