#!/usr/bin/env bash
# The main job, on a real Kubernetes: brings up a cluster (kind where Docker and kind exist;
# otherwise a single-node cluster built from upstream Kubernetes' Go modules on this machine,
# tests/cluster/), installs wasmkube with `kubectl apply -k manifests/`, opts the node in, applies
# the example WasmApp (pushed to the cluster's registry with `wasmkube push`, pulled by the node)
# and curls it through its Service. The cluster stays up afterwards.
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
    # kind's documented local registry: a registry container on 127.0.0.1:5001 and the kind
    # network, each node's containerd told (config_path + hosts.toml) to pull localhost:5001 from
    # it, and docker.io through it first (the project's docker.io/wasmkube/* images).
    phase "local registry kind-registry on localhost:5001"
    REGISTRY=localhost:5001
    if [ "$(docker inspect -f '{{.State.Running}}' kind-registry 2>/dev/null)" != true ]; then
        docker run -d --restart=always -p 127.0.0.1:5001:5000 --network bridge --name kind-registry registry:2
    fi
    phase "kind cluster wasmkube"
    if ! kind get clusters 2>/dev/null | grep -qx wasmkube; then
        printf '%s\n' 'kind: Cluster' 'apiVersion: kind.x-k8s.io/v1alpha4' 'containerdConfigPatches:' \
            '- |-' '  [plugins."io.containerd.grpc.v1.cri".registry]' '    config_path = "/etc/containerd/certs.d"' |
            kind create cluster --name wasmkube --wait 120s --config=-
    fi
    for node in $(kind get nodes --name wasmkube); do
        for host in localhost:5001 docker.io; do
            docker exec "$node" mkdir -p "/etc/containerd/certs.d/$host"
            printf '[host."http://kind-registry:5000"]\n  capabilities = ["pull", "resolve"]\n' |
                docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/$host/hosts.toml"
        done
    done
    docker network connect kind kind-registry 2>/dev/null || true
    for image in operator node-installer; do
        name=$(tar -xOf "$IMAGES_DIR/$image.tar" index.json | jq -r '.manifests[0].annotations["io.containerd.image.name"]')
        "$BIN_DIR/wasmkube" push "$IMAGES_DIR/$image.tar" "$REGISTRY/${name#docker.io/}"
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
    # The operator and installer images go to the cluster's registry (the node pulls docker.io
    # through it); the sandbox image is imported.
    tests/cluster/up.sh "$IMAGES_DIR/pause.tar" "$IMAGES_DIR/operator.tar" "$IMAGES_DIR/node-installer.tar"
    REGISTRY=localhost:5001
    # shellcheck disable=SC1091
    source tests/cluster/versions.env
    export KUBECONFIG=${CLUSTER_DIR:-/var/tmp/wasmkube-cluster}/admin.kubeconfig
    export PATH=/var/tmp/wasmkube-k8s/$K8S_VERSION/bin:$PATH
    on_node() { "$@"; }
    down="tests/cluster/down.sh"
fi

# The example app, as a user ships one: pushed to a registry, pulled by the node. The image
# layout (a tar layer) with the node's platform, which the CRI of containerd 1.6 and 2.x unpacks;
# the WasmApp names docker.io/wasmkube/..., which the node pulls through the registry.
phase "wasmkube push the example app to $REGISTRY"
"$BIN_DIR/wasmkube" push "$GUESTS_DIR/wasm32-wasip2/release/http_hello.wasm" \
    "$REGISTRY/wasmkube/hello-http:$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)" --layout image --platform linux/amd64
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
