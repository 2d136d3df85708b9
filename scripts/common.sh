# Shared helpers for the scripts in this directory; sourced, not run. Expects ROOT to be set.

log() { printf '[sailplane] %s\n' "$*" >&2; }
die() { printf '[sailplane] error: %s\n' "$*" >&2; exit 1; }

# Prints the real Envoy binary inside the venv (the .venv/bin/envoy wrapper only execs it), or fails.
venv_envoy() {
    local candidate
    for candidate in "$ROOT"/.venv/lib/python3*/site-packages/envoy/_bin/envoy; do
        if [ -x "$candidate" ]; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}
