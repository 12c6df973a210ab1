#!/usr/bin/env bash
# wasmkube end to end on kind: create a cluster, load the images, install the operator, opt a node
# in, run a WasmApp, reach it through its Service, delete it, opt the node out (uninstall).
#
# Usage: tests/e2e/kind.sh
#   OPERATOR_ARCHIVE / INSTALLER_ARCHIVE / APP_ARCHIVE  image archives to `kind load image-archive`
#       (defaults: target/images/{operator,node-installer,hello-http}.tar)
#   KIND_CLUSTER=wasmkube-e2e   KEEP_CLUSTER=1 (keep it afterwards)   TIMEOUT=180s
# Skips (exit 0, with a message) when kind, docker or kubectl are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${KIND_CLUSTER:-wasmkube-e2e}
TIMEOUT=${TIMEOUT:-180s}
IMAGES_DIR=${IMAGES_DIR:-target/images}
OPERATOR_ARCHIVE=${OPERATOR_ARCHIVE:-$IMAGES_DIR/operator.tar}
INSTALLER_ARCHIVE=${INSTALLER_ARCHIVE:-$IMAGES_DIR/node-installer.tar}
APP_ARCHIVE=${APP_ARCHIVE:-$IMAGES_DIR/hello-http.tar}
APP=examples/hello-http/wasmapp.yaml
APP_NAME=hello-http
KCTX="kind-$CLUSTER"

for tool in kind docker kubectl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "SKIP e2e: '$tool' is not installed (needs kind, docker and kubectl)"
        exit 0
    fi
done
if ! docker info >/dev/null 2>&1; then
    echo "SKIP e2e: the docker daemon is not reachable"
    exit 0
fi
for archive in "$OPERATOR_ARCHIVE" "$INSTALLER_ARCHIVE" "$APP_ARCHIVE"; do
    if [ ! -f "$archive" ]; then
        echo "FAIL e2e: image archive $archive is missing (build the images first)" >&2
        exit 1
    fi
done

k() { kubectl --context "$KCTX" "$@"; }
step() { echo; echo "== $*"; }

dump() {
    echo
    echo "== e2e failed; cluster state follows"
    k get nodes --show-labels || true
    k get wapp -A -o wide || true
    k -n wasmkube-system get all -o wide || true
    k -n wasmkube-system describe daemonsets,pods || true
    k -n wasmkube-system logs -l app.kubernetes.io/name=wasmkube-operator --tail=200 --all-containers || true
    k -n wasmkube-system logs -l app.kubernetes.io/name=wasmkube-node-installer --tail=200 --all-containers || true
    k describe wapp "$APP_NAME" || true
    k describe deployment,pods -l "app.kubernetes.io/instance=$APP_NAME" || true
    k get events -A --sort-by=.lastTimestamp | tail -50 || true
}

cleanup() {
    status=$?
    if [ "$status" -ne 0 ]; then dump; fi
    if [ -z "${KEEP_CLUSTER:-}" ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
    exit "$status"
}
trap cleanup EXIT

step "create kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER" --wait 120s

step "load images"
for archive in "$OPERATOR_ARCHIVE" "$INSTALLER_ARCHIVE" "$APP_ARCHIVE"; do
    kind load image-archive "$archive" --name "$CLUSTER"
done

step "install the operator (kubectl apply -k manifests/)"
k apply -k manifests/
k wait --for=condition=Established crd/wasmapps.wasmkube.dev --timeout="$TIMEOUT"
# Single node, no need for the standby; keeps the test quick.
k -n wasmkube-system scale deployment/wasmkube-operator --replicas=1
k -n wasmkube-system rollout status deployment/wasmkube-operator --timeout="$TIMEOUT"
k get runtimeclass wasmkube -o jsonpath='{.handler}{"\n"}'

NODE=$(k get nodes -o jsonpath='{.items[0].metadata.name}')
step "opt node $NODE in; wait for wasmkube.dev/runtime=ready"
k annotate node "$NODE" wasmkube.dev/wasm-node=true --overwrite
k wait --for=jsonpath='{.metadata.labels.wasmkube\.dev/runtime}'=ready node/"$NODE" --timeout="$TIMEOUT"
k get node "$NODE" -o jsonpath='shim: {.metadata.annotations.wasmkube\.dev/shim-version}{"\n"}'

step "apply the WasmApp; wait for Ready"
k apply -f "$APP"
k wait --for=condition=Ready wapp/"$APP_NAME" --timeout="$TIMEOUT"
k get wapp "$APP_NAME"

step "curl through the Service"
k run curl-e2e --rm -i --restart=Never --image=curlimages/curl:8.11.1 --timeout="$TIMEOUT" -- \
    curl -fsS --retry 10 --retry-all-errors --retry-delay 1 "http://$APP_NAME.default.svc/" | tee /dev/stderr | grep -q .

step "delete the WasmApp; children are garbage-collected"
k delete -f "$APP" --wait
k wait --for=delete deployment/"$APP_NAME" --timeout="$TIMEOUT" 2>/dev/null || true
if k get deployment "$APP_NAME" >/dev/null 2>&1; then echo "deployment not collected" >&2; exit 1; fi

step "opt node $NODE out; wait for uninstall to clean the labels"
k annotate node "$NODE" wasmkube.dev/wasm-node-
k wait --for=jsonpath='{.metadata.labels.wasmkube\.dev/runtime}'=removing node/"$NODE" --timeout=30s || true
for _ in $(seq 1 90); do
    if [ -z "$(k get node "$NODE" -o jsonpath='{.metadata.labels.wasmkube\.dev/runtime}')" ]; then
        echo "node $NODE clean"
        echo; echo "PASS e2e"
        exit 0
    fi
    sleep 2
done
echo "node $NODE still labelled after uninstall" >&2
exit 1
