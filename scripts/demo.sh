#!/usr/bin/env bash
# The main job, on a real Kubernetes: brings up a cluster (kind where Docker and kind exist;
# otherwise a single-node cluster built from upstream Kubernetes' Go modules on this machine,
# tests/cluster/), installs wasmkube with `kubectl apply -k manifests/`, opts the node in, applies
# the example WasmApp and curls it through its Service. The cluster stays up afterwards.
# Run as root (or with sudo; a fresh Debian has no sudo: run it as root):
#   scripts/demo.sh
#   tear down: tests/cluster/down.sh   (kind: kind delete cluster --name wasmkube)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
trap 'status=$?; phases_report; exit $status' EXIT
phase "prerequisites (scripts/prereqs.sh)"
scripts/prereqs.sh

if command -v kind >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    phase "images (operator, node installer + shim, example app)"
    scripts/images.sh
    phase "kind cluster wasmkube"
    kind get clusters 2>/dev/null | grep -qx wasmkube || kind create cluster --name wasmkube --wait 120s
    for image in operator node-installer hello-http; do
        kind load image-archive "$IMAGES_DIR/$image.tar" --name wasmkube
    done
    KUBECONFIG=/var/tmp/wasmkube-kind.kubeconfig
    kind get kubeconfig --name wasmkube >"$KUBECONFIG"
    export KUBECONFIG
    on_node() { docker exec -i wasmkube-control-plane "$@"; }
    down="kind delete cluster --name wasmkube"
else
    # No Docker here: Kubernetes from the Go module proxy. Its Go build runs beside the Rust
    # build (both are cached; a second run rebuilds nothing).
    phase "images (Rust, one build) beside Kubernetes (Go, tests/cluster/build.sh)"
    k8s_log=$CARGO_TARGET_DIR/k8s-build.log
    mkdir -p "$CARGO_TARGET_DIR"
    tests/cluster/build.sh >"$k8s_log" 2>&1 &
    k8s_build=$!
    scripts/images.sh
    if ! wait "$k8s_build"; then
        cat "$k8s_log" >&2
        echo "tests/cluster/build.sh failed" >&2
        exit 1
    fi
    tail -n 2 "$k8s_log"
    phase "local Kubernetes: start (tests/cluster/up.sh)"
    tests/cluster/up.sh "$IMAGES_DIR/pause.tar" "$IMAGES_DIR/operator.tar" "$IMAGES_DIR/node-installer.tar" "$IMAGES_DIR/hello-http.tar"
    # shellcheck disable=SC1091
    source tests/cluster/versions.env
    export KUBECONFIG=${CLUSTER_DIR:-/var/tmp/wasmkube-cluster}/admin.kubeconfig
    export PATH=/var/tmp/wasmkube-k8s/$K8S_VERSION/bin:$PATH
    on_node() { "$@"; }
    down="tests/cluster/down.sh"
fi

phase "kubectl apply -k manifests/"
kubectl apply -k manifests/
kubectl wait --for=condition=Established crd/wasmapps.wasmkube.dev --timeout=60s
kubectl -n wasmkube-system rollout status deployment/wasmkube-operator --timeout=180s

NODE=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
phase "kubectl annotate node $NODE wasmkube.dev/wasm-node=true"
kubectl annotate node "$NODE" wasmkube.dev/wasm-node=true --overwrite
# Wait for `ready`. `queued` and `pending` are states the operator is still working on (a failed
# attempt that it retries stays `pending`, with the reason and the attempt count); `failed` is
# final: it needs a person, and its reason says why.
node_field() { kubectl get node "$NODE" -o jsonpath="{.metadata.$1}"; }
seen=
for _ in $(seq 1 600); do
    state=$(node_field 'labels.wasmkube\.dev/runtime')
    reason=$(node_field 'annotations.wasmkube\.dev/runtime-reason')
    attempts=$(node_field 'annotations.wasmkube\.dev/runtime-attempts')
    now="${state:-?} ${attempts:+attempt $attempts }${reason:+($reason)}"
    if [ "$now" != "$seen" ]; then
        echo "node $NODE: $now"
        seen=$now
    fi
    case $state in
        ready) break ;;
        failed)
            echo "node $NODE failed: $reason" >&2
            kubectl get events --field-selector "involvedObject.name=$NODE" --sort-by=.lastTimestamp >&2 || true
            exit 1
            ;;
    esac
    sleep 1
done
[ "$state" = ready ] || { echo "node $NODE is still '$state' after 600 s: $reason" >&2; exit 1; }
kubectl get node "$NODE" -L wasmkube.dev/runtime
kubectl get node "$NODE" -o jsonpath='shim: {.metadata.annotations.wasmkube\.dev/shim-version}{"\n"}'

phase "kubectl apply -f examples/hello-http/wasmapp.yaml"
kubectl apply -f examples/hello-http/wasmapp.yaml
# Ready means the pods answer on their port (a readiness probe on it), not merely Running.
kubectl wait --for=condition=Ready wapp/hello-http --timeout=300s
kubectl get wapp hello-http
kubectl get pods -l app.kubernetes.io/instance=hello-http -o wide

IP=$(kubectl get service hello-http -o jsonpath='{.spec.clusterIP}')
phase "curl http://$IP/ (the Service's ClusterIP, from the node)"
# kube-proxy programs a new Service's rules within a second or two: retry only a refused connect.
echo "(a refused first connect is kube-proxy still programming the new Service: curl retries)"
on_node curl -sS --max-time 5 --retry 10 --retry-connrefused --retry-delay 1 "http://$IP/"
phase "curl http://$IP/env"
on_node curl -sS --max-time 5 "http://$IP/env"

phase "done"
echo "demo ok. The cluster is still up: export KUBECONFIG=$KUBECONFIG"
echo "tear it down with: $down"
