//! Copies the Envoy `FileDescriptorSet` shipped inside the envoy-types crate into `OUT_DIR`, and
//! compiles the Istio .proto files under `istio/` (the CA API) into Rust with tonic clients and servers.
//!
//! envoy-types carries `src/generated/types.bin` (every .proto it was generated from, with their
//! dependencies) but does not export it, so the build script finds it in the cargo registry.
//!
//! The Istio protos are parsed by `protox` (pure Rust), so building needs no system `protoc`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The envoy-types release whose descriptors we load; must match the workspace dependency.
const ENVOY_TYPES_VERSION: &str = "0.7.7";

fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_HOME");
    println!("cargo:rerun-if-env-changed=HOME");
    println!("cargo:rerun-if-changed=build.rs");

    let out_dir = match env::var_os("OUT_DIR") {
        Some(d) => PathBuf::from(d),
        None => fail("OUT_DIR is not set (this script must run under cargo)"),
    };
    let source = match find_descriptor_set() {
        Some(p) => p,
        None => fail(&format!(
            "could not find envoy-types-{ENVOY_TYPES_VERSION}/src/generated/types.bin under \
             $CARGO_HOME/registry/src/*/ (or $HOME/.cargo/registry/src/*/); run `cargo fetch` so the \
             envoy-types {ENVOY_TYPES_VERSION} sources are in the registry, or update \
             ENVOY_TYPES_VERSION in proto/build.rs to the version in Cargo.lock"
        )),
    };
    println!("cargo:rerun-if-changed={}", source.display());
    let dest = out_dir.join("envoy_types.bin");
    if let Err(e) = fs::copy(&source, &dest) {
        fail(&format!("copying {} to {}: {e}", source.display(), dest.display()));
    }
    compile_istio_protos();
}

/// The Istio .proto files compiled into Rust (paths relative to this crate).
const ISTIO_PROTOS: &[&str] = &["istio/ca.proto"];

fn compile_istio_protos() {
    for p in ISTIO_PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    // protox bundles google/protobuf/*.proto, so `import "google/protobuf/struct.proto"` resolves
    // without any include path of ours.
    let fds = match protox::compile(ISTIO_PROTOS, ["."]) {
        Ok(fds) => fds,
        Err(e) => fail(&format!("parsing {ISTIO_PROTOS:?}: {e:?}")),
    };
    // google.protobuf.* map to prost-types (prost-build's default for well-known types).
    if let Err(e) = tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds) {
        fail(&format!("generating Rust for {ISTIO_PROTOS:?}: {e}"));
    }
}

fn find_descriptor_set() -> Option<PathBuf> {
    let mut homes = Vec::new();
    if let Some(h) = env::var_os("CARGO_HOME") {
        homes.push(PathBuf::from(h));
    }
    if let Some(h) = env::var_os("HOME") {
        homes.push(Path::new(&h).join(".cargo"));
    }
    for home in homes {
        let src = home.join("registry").join("src");
        let Ok(entries) = fs::read_dir(&src) else { continue };
        let mut candidates: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| {
                e.path()
                    .join(format!("envoy-types-{ENVOY_TYPES_VERSION}"))
                    .join("src")
                    .join("generated")
                    .join("types.bin")
            })
            .filter(|p| p.is_file())
            .collect();
        // Several registry mirrors can hold the same crate; any copy is identical, pick one stably.
        candidates.sort();
        if let Some(p) = candidates.into_iter().next() {
            return Some(p);
        }
    }
    None
}

fn fail(msg: &str) -> ! {
    eprintln!("error: sailplane-proto build: {msg}");
    std::process::exit(1);
}
