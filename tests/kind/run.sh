#!/usr/bin/env bash
# Cluster conformance run: installs the Sailplane chart into a kind cluster and replays the seed-002
# scenario (nginx in front-end calling hello-world-rest-api in back-end), asserting what the
# scenario's author saw with Istio at each step. Needs docker, kind, kubectl and helm; see README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/kind"
CLUSTER="${KIND_CLUSTER:-sailplane-conformance}"
IMAGE="${SAILPLANE_IMAGE:-sailplane:dev}"
BACKEND_IMAGE="${BACKEND_IMAGE:-in28min/hello-world-rest-api:0.0.1.RELEASE}"
NS=istio-system
TIMEOUT="${TIMEOUT:-300s}"
HELM="${HELM_BIN:-helm}"

log() { printf '\n[kind] %s\n' "$*" >&2; }
pass() { printf '[kind] PASS: %s\n' "$*" >&2; }
fail() {
    printf '[kind] FAIL: %s\n' "$*" >&2
    kubectl -n "$NS" logs deploy/sailplane --tail=100 >&2 || true
    exit 1
}

for tool in docker kind kubectl "$HELM"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool (see tests/kind/README.md)" >&2; exit 2; }
done

cleanup() {
    if [ "${KEEP:-0}" != "1" ] && [ "${CREATED_CLUSTER:-0}" = "1" ]; then
        log "deleting kind cluster $CLUSTER (KEEP=1 keeps it)"
        kind delete cluster --name "$CLUSTER" || true
    fi
}
trap cleanup EXIT

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    log "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --wait 120s
    CREATED_CLUSTER=1
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

if [ "${SKIP_BUILD:-0}" != "1" ]; then
    log "building $IMAGE"
    docker build -f "$HERE/Dockerfile" -t "$IMAGE" "$ROOT"
fi
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "installing the chart"
"$HELM" upgrade --install sailplane "$ROOT/charts/sailplane" --namespace "$NS" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=Never \
    --set proxy.pullPolicy=Never --wait --timeout "$TIMEOUT"
kubectl -n "$NS" rollout status deploy/sailplane --timeout "$TIMEOUT"
pass "control plane ready"

# kubectl exec curl from the nginx pod, as in the scenario; prints the HTTP code (000 on failure).
call_backend() {
    local pod
    pod="$(kubectl get pod -l app=nginx -n front-end -o jsonpath='{.items[0].metadata.name}')"
    kubectl exec "$pod" -c nginx -n front-end -- \
        curl -s -o /dev/null -m 10 -w '%{http_code}' http://hello-world-rest-api.back-end:8080 || true
}

# Retries the call until it returns the expected code (config takes a moment to reach the proxies).
expect_code() {
    local want="$1" what="$2" got=""
    for _ in $(seq 1 30); do
        got="$(call_backend)"
        [ "$got" = "$want" ] && { pass "$what: HTTP $got"; return 0; }
        sleep 2
    done
    fail "$what: expected HTTP $want, got $got"
}

containers_of() {
    kubectl get pod -l "app=$2" -n "$1" -o jsonpath='{.items[0].spec.containers[*].name}'
}

restart() {
    kubectl -n "$1" delete pod -l "app=$2" --wait=true
    kubectl -n "$1" rollout status "deploy/$3" --timeout "$TIMEOUT"
    kubectl -n "$1" wait pod -l "app=$2" --for=condition=Ready --timeout "$TIMEOUT"
}

log "step 1: plain pods, plain text"
kubectl delete namespace front-end back-end --ignore-not-found --wait=true
sed "s#BACKEND_IMAGE#$BACKEND_IMAGE#" "$HERE/scenario.yaml" | kubectl apply -f -
kubectl -n front-end rollout status deploy/nginx --timeout "$TIMEOUT"
kubectl -n back-end rollout status deploy/hello-world-rest-api --timeout "$TIMEOUT"
expect_code 200 "front-end -> back-end without sidecars"

log "step 2: back-end injected (PERMISSIVE by default)"
kubectl label namespace back-end istio-injection=enabled --overwrite
restart back-end hello-world-rest-api hello-world-rest-api
containers_of back-end hello-world-rest-api | grep -qw istio-proxy || fail "back-end pod has no istio-proxy: $(containers_of back-end hello-world-rest-api)"
pass "back-end pod injected: $(containers_of back-end hello-world-rest-api)"
expect_code 200 "plain-text client to a PERMISSIVE sidecar"

log "step 3: STRICT mTLS on back-end"
kubectl apply -f "$HERE/peer-authentication-strict.yaml"
expect_code 000 "plain-text client refused by STRICT"

log "step 4: front-end injected: mTLS end to end"
kubectl label namespace front-end istio-injection=enabled --overwrite
restart front-end nginx nginx
containers_of front-end nginx | grep -qw istio-proxy || fail "front-end pod has no istio-proxy"
expect_code 200 "sidecar to sidecar over mTLS"

log "step 5: invalid Istio config is refused by the validating webhook"
if out="$(kubectl apply -f "$HERE/peer-authentication-invalid.yaml" 2>&1)"; then
    fail "invalid PeerAuthentication was accepted: $out"
fi
echo "$out" | grep -q "configuration is invalid" || fail "unexpected refusal: $out"
pass "invalid PeerAuthentication refused: $out"

log "cleaning up the scenario"
kubectl delete -f "$HERE/peer-authentication-strict.yaml" --ignore-not-found
kubectl delete namespace front-end back-end --wait=true
pass "seed-002 conformance run complete"
