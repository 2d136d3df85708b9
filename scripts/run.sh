#!/usr/bin/env bash
# Sets up, builds, and runs the control plane on the quickstart directory:
#   scripts/run.sh [extra `sailplane discovery` flags...]
# Plaintext gRPC xDS on :15010 and debug/metrics on :15014 unless flags say otherwise; pass
# `--config DIR` to serve another directory instead of examples/quickstart.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cargo build --quiet -p sailplane --bin sailplane

config=(--config "$ROOT/examples/quickstart")
for arg in "$@"; do
    case "$arg" in
        --config | --config=*) config=() ;;
    esac
done
exec "${CARGO_TARGET_DIR:-$ROOT/target}/debug/sailplane" discovery "${config[@]}" "$@"
