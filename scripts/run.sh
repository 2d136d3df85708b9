#!/usr/bin/env bash
# Sets up, builds, and runs the control plane on the quickstart directory:
#   scripts/run.sh [extra `sailplane discovery` flags...]
# xDS (plaintext gRPC) on 127.0.0.1:15010 is the default; debug and metrics on :15014.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cargo build --quiet -p sailplane --bin sailplane
exec "$ROOT/target/debug/sailplane" discovery --config "$ROOT/examples/quickstart" "$@"
