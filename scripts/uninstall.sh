#!/usr/bin/env bash
# Removes wasmkube from a cluster and leaves every node as it was:
#   1. opts every node out (the annotation and the label form), so the operator drains each
#      node's wasm pods and runs the uninstaller there (containerd config restored, shim removed);
#   2. waits until no node carries wasmkube.dev/runtime (or the timeout);
#   3. kubectl delete -k manifests/ (operator, CRD and with it every WasmApp, RBAC, namespace,
#      PriorityClass) and the RuntimeClass the operator created.
# `kubectl delete -k manifests/` alone would leave opted-in nodes provisioned: the operator that
# would uninstall them is gone. Usage: scripts/uninstall.sh [--timeout SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
KUBECTL=${KUBECTL:-kubectl}
timeout=600
if [[ ${1:-} == --timeout ]]; then timeout=${2:?--timeout needs seconds}; fi

k() { "$KUBECTL" "$@"; }

if ! k get namespace wasmkube-system >/dev/null 2>&1; then
  echo "wasmkube-system is gone: the operator cannot uninstall nodes any more" >&2
  if [[ -n $(k get nodes -l wasmkube.dev/runtime -o name) ]]; then
    echo "nodes still provisioned: reinstall (kubectl apply -k manifests/) and run this again" >&2
    exit 1
  fi
fi

echo "opting every node out"
k annotate nodes --all wasmkube.dev/wasm-node- >/dev/null
k label nodes --all wasmkube.dev/wasm-node- >/dev/null

deadline=$((SECONDS + timeout))
while :; do
  left=$(k get nodes -l wasmkube.dev/runtime \
    -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.labels.wasmkube\.dev/runtime} {end}')
  [[ -z $left ]] && break
  if ((SECONDS >= deadline)); then
    echo "timed out after ${timeout}s; nodes not clean yet: $left" >&2
    echo "see: kubectl describe node …; kubectl -n wasmkube-system logs -l app.kubernetes.io/component=uninstall -c installer" >&2
    exit 1
  fi
  echo "waiting for: $left"
  sleep 2
done
echo "every node is clean"

k delete -k manifests/ --ignore-not-found --wait=false
k delete runtimeclass wasmkube --ignore-not-found
echo "wasmkube removed"
