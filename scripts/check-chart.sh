#!/usr/bin/env bash
# Checks the Helm chart: installs helm if needed (scripts/install-helm.sh), runs `helm lint --strict`
# and `helm template`, then the Rust checks of the rendered objects (kinds, ports, flags, RBAC verbs,
# webhook certificate; control-plane/tests/component/kube_chart.rs) and of the generated CRDs being
# current (control-plane/tests/component/kube_crds.rs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/common.sh
. "$ROOT/scripts/common.sh"

HELM_BIN="$(bash scripts/install-helm.sh)"
export HELM_BIN

log "helm lint --strict charts/sailplane"
"$HELM_BIN" lint --strict charts/sailplane
log "helm template charts/sailplane"
"$HELM_BIN" template sailplane charts/sailplane --namespace istio-system --include-crds >/dev/null
log "checking the rendered chart and the generated CRDs"
cargo test -p sailplane --test component -- kube_chart:: kube_crds::
log "chart OK"
