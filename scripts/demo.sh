#!/usr/bin/env bash
# The main job, on a real Kubernetes: brings up a cluster (kind where Docker and kind exist;
# otherwise a single-node cluster built from upstream Kubernetes' Go modules on this machine,
# tests/cluster/), installs wasmkube with `kubectl apply -k manifests/`, opts the node in, applies
# the example WasmApp and curls it through its Service. The cluster stays up afterwards.
#   sudo scripts/demo.sh
#   tear down: sudo tests/cluster/down.sh   (kind: kind delete cluster --name wasmkube)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wasmkube-target}
IMAGES=$CARGO_TARGET_DIR/images
t0=$SECONDS
step() { echo; echo "== $* ($((SECONDS - t0)) s)"; }

step "images (operator, node installer + shim, example app)"
scripts/images.sh

if command -v kind >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    step "kind cluster wasmkube"
    kind get clusters 2>/dev/null | grep -qx wasmkube || kind create cluster --name wasmkube --wait 120s
    for image in operator node-installer hello-http; do
        kind load image-archive "$IMAGES/$image.tar" --name wasmkube
    done
    KUBECONFIG=/var/tmp/wasmkube-kind.kubeconfig
    kind get kubeconfig --name wasmkube >"$KUBECONFIG"
    export KUBECONFIG
    on_node() { docker exec -i wasmkube-control-plane "$@"; }
    down="kind delete cluster --name wasmkube"
else
    step "local Kubernetes (no Docker here): build from the Go module proxy, start"
    tests/cluster/build.sh
    tests/cluster/up.sh "$IMAGES/pause.tar" "$IMAGES/operator.tar" "$IMAGES/node-installer.tar" "$IMAGES/hello-http.tar"
    # shellcheck disable=SC1091
    source tests/cluster/versions.env
    export KUBECONFIG=${CLUSTER_DIR:-/var/tmp/wasmkube-cluster}/admin.kubeconfig
    export PATH=/var/tmp/wasmkube-k8s/$K8S_VERSION/bin:$PATH
    on_node() { "$@"; }
    down="sudo tests/cluster/down.sh"
fi

step "kubectl apply -k manifests/"
kubectl apply -k manifests/
kubectl wait --for=condition=Established crd/wasmapps.wasmkube.dev --timeout=60s
kubectl -n wasmkube-system rollout status deployment/wasmkube-operator --timeout=180s

NODE=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
step "kubectl annotate node $NODE wasmkube.dev/wasm-node=true"
kubectl annotate node "$NODE" wasmkube.dev/wasm-node=true --overwrite
for _ in $(seq 1 300); do
    state=$(kubectl get node "$NODE" -o jsonpath='{.metadata.labels.wasmkube\.dev/runtime}')
    [ "$state" = ready ] && break
    if [ "$state" = failed ]; then
        echo "node $NODE failed: $(kubectl get node "$NODE" -o jsonpath='{.metadata.annotations.wasmkube\.dev/runtime-reason}')" >&2
        exit 1
    fi
    sleep 1
done
[ "$state" = ready ] || { echo "node $NODE is still '$state' after 300 s" >&2; exit 1; }
kubectl get node "$NODE" -L wasmkube.dev/runtime
kubectl get node "$NODE" -o jsonpath='shim: {.metadata.annotations.wasmkube\.dev/shim-version}{"\n"}'

step "kubectl apply -f examples/hello-http/wasmapp.yaml"
kubectl apply -f examples/hello-http/wasmapp.yaml
kubectl wait --for=condition=Ready wapp/hello-http --timeout=180s
kubectl get wapp hello-http
kubectl get pods -l app.kubernetes.io/instance=hello-http -o wide

IP=$(kubectl get service hello-http -o jsonpath='{.spec.clusterIP}')
step "curl http://$IP/ (the Service's ClusterIP, from the node)"
# kube-proxy programs the new Service within a few seconds: retry until it answers.
on_node curl -sS --max-time 5 --retry 20 --retry-connrefused --retry-delay 1 "http://$IP/"
step "curl http://$IP/env"
on_node curl -sS --max-time 5 --retry 5 --retry-connrefused --retry-delay 1 "http://$IP/env"

echo
echo "demo ok in $((SECONDS - t0)) s. The cluster is still up: export KUBECONFIG=$KUBECONFIG"
echo "tear it down with: $down"
