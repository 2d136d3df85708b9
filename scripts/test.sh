#!/usr/bin/env bash
# Sets up, then builds everything, runs every test (unit, golden, component, and end-to-end with
# real Envoy), and runs clippy with warnings as errors. This is what CI runs (.ci/run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/common.sh
. "$ROOT/scripts/common.sh"

bash scripts/setup.sh
ENVOY_BIN="$(venv_envoy)" || die "setup did not leave an Envoy binary in .venv"
export ENVOY_BIN
# The end-to-end tests spawn the binary this build produces.
export SAILPLANE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/sailplane"

log "cargo fmt --check"
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >/dev/null 2>&1 \
    || die "rustfmt is not installed and 'rustup component add rustfmt' failed"
cargo fmt --all --check || die "formatting differs from rustfmt.toml: run 'cargo fmt' and commit the result"

log "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

# helm lint/template of charts/sailplane and the checks of what it renders (installs helm itself).
bash scripts/check-chart.sh

log "cargo test --workspace"
cargo test --workspace

if cargo clippy --version >/dev/null 2>&1 || rustup component add clippy >/dev/null 2>&1; then
    log "cargo clippy --workspace --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
else
    log "**************************************************************"
    log "SKIPPING CLIPPY: the clippy component is not installed and"
    log "'rustup component add clippy' failed (offline?). Lints NOT checked."
    log "**************************************************************"
fi

log "all checks passed"
