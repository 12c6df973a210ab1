#!/usr/bin/env bash
# The e2e suite (tests/e2e, the same one CI runs on the local cluster) against kind, for machines
# with Docker: builds the images, starts the two registries the suite expects (kind's documented
# local-registry pattern: registry:2 containers on localhost:5001, anonymous and the node's mirror
# of docker.io, and localhost:5002 with basic auth), creates a kind cluster whose containerd pulls
# from them, pushes the images with `wasmkube push`, runs the suite with the kind node as "the
# node" (a shell on it through `docker exec`), deletes the cluster. (Written for Docker hosts; the
# CI machine has no Docker, so this script is not run there.)
#
# Usage: tests/e2e/kind.sh
#   KIND_CLUSTER=wasmkube-e2e   KEEP_CLUSTER=1 (keep it afterwards)
# Exits 1 with a message when docker or kind is missing (they are not on the CI machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER=${KIND_CLUSTER:-wasmkube-e2e}
source scripts/env.sh
IMAGES=$IMAGES_DIR

# Docker first: it is what machines without kind support lack (a docker client alone is not enough).
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "FAIL kind e2e: no reachable Docker engine (\`docker info\` fails); without Docker use the" \
         "local cluster: sudo scripts/test.sh" >&2
    exit 1
fi
for tool in kind kubectl cargo; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "FAIL kind e2e: '$tool' is not installed (this script needs docker, kind, kubectl and cargo)" >&2
        exit 1
    fi
done

echo "== images"
scripts/images.sh

echo "== registries kind-registry (localhost:5001) and kind-registry-auth (localhost:5002)"
CLUSTER_DIR=$(mktemp -d)
export CLUSTER_DIR # the suite reads the private registry's password here, as on the local cluster
head -c 18 /dev/urandom | base64 | tr '+/' 'xy' >"$CLUSTER_DIR/registry-auth.password"
mkdir -p "$CLUSTER_DIR/auth"
htpasswd -Bbn wasmkube "$(<"$CLUSTER_DIR/registry-auth.password")" >"$CLUSTER_DIR/auth/htpasswd"
for r in kind-registry kind-registry-auth; do docker rm -f "$r" >/dev/null 2>&1 || true; done
docker run -d -p 127.0.0.1:5001:5000 --network bridge --name kind-registry registry:2
docker run -d -p 127.0.0.1:5002:5000 --network bridge --name kind-registry-auth \
    -v "$CLUSTER_DIR/auth:/auth:ro" -e REGISTRY_AUTH=htpasswd -e REGISTRY_AUTH_HTPASSWD_REALM=wasmkube \
    -e REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd registry:2

echo "== kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
# Three nodes, as the many-node scenarios need (the local cluster: up.sh --nodes 3).
printf '%s\n' 'kind: Cluster' 'apiVersion: kind.x-k8s.io/v1alpha4' 'nodes:' '- role: control-plane' \
    '- role: worker' '- role: worker' 'containerdConfigPatches:' \
    '- |-' '  [plugins."io.containerd.grpc.v1.cri".registry]' '    config_path = "/etc/containerd/certs.d"' |
    kind create cluster --name "$CLUSTER" --wait 120s --config=-
# Every node takes pods, the control plane too (the suite's node under test is the control plane).
kubectl --context "kind-$CLUSTER" taint nodes --all node-role.kubernetes.io/control-plane- || true
cleanup() {
    if [ -z "${KEEP_CLUSTER:-}" ]; then
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
        docker rm -f kind-registry kind-registry-auth >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
for node in $(kind get nodes --name "$CLUSTER"); do
    for host in localhost:5001=kind-registry docker.io=kind-registry localhost:5002=kind-registry-auth; do
        docker exec "$node" mkdir -p "/etc/containerd/certs.d/${host%%=*}"
        printf '[host."http://%s:5000"]\n  capabilities = ["pull", "resolve"]\n' "${host#*=}" |
            docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/${host%%=*}/hosts.toml"
    done
done
for r in kind-registry kind-registry-auth; do docker network connect kind "$r" 2>/dev/null || true; done
for image in operator node-installer hello-http http-outbound http-grants redis late-fail; do
    name=$(tar -xOf "$IMAGES/$image.tar" index.json | jq -r '.manifests[0].annotations["io.containerd.image.name"]')
    "$BIN_DIR/wasmkube" push "$IMAGES/$image.tar" "localhost:5001/${name#docker.io/}"
done
# metrics-server, as kind's users install it (its release manifest; kind's kubelets serve
# self-signed certificates, hence --kubelet-insecure-tls): the HPA scenario needs it.
METRICS_SERVER_VERSION=v0.8.0 # tests/cluster/metrics-server/go.mod builds the same release
kubectl --context "kind-$CLUSTER" apply -f \
    "https://github.com/kubernetes-sigs/metrics-server/releases/download/$METRICS_SERVER_VERSION/components.yaml"
kubectl --context "kind-$CLUSTER" -n kube-system patch deployment metrics-server --type=json \
    -p '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--kubelet-insecure-tls"}]'
kubectl --context "kind-$CLUSTER" -n kube-system rollout status deployment metrics-server --timeout=180s
WASMKUBE_WKG=$(scripts/wkg.sh)
export WASMKUBE_WKG

KUBECONFIG=$(mktemp)
export KUBECONFIG
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"
export WASMKUBE_E2E_NODE="$CLUSTER-control-plane"
export WASMKUBE_E2E_NODE_EXEC="docker exec -i {node}"
export WASMKUBE_E2E_NODE_REMOVE="docker rm -f {node}"
# The API server outage: its static pod's manifest moved away and back (the kubelet stops and
# starts it), then wait for /readyz.
export WASMKUBE_E2E_APISERVER_OUTAGE="docker exec $CLUSTER-control-plane sh -c 'mv /etc/kubernetes/manifests/kube-apiserver.yaml /root/ && sleep {seconds} && mv /root/kube-apiserver.yaml /etc/kubernetes/manifests/ && until curl -fsk https://127.0.0.1:6443/readyz >/dev/null 2>&1; do sleep 1; done'"
export WASMKUBE_REQUIRE_CLUSTER=1
echo "== e2e suite (tests/e2e) on kind"
# --workspace (not -p): the same feature resolution as the build, so nothing is rebuilt.
cargo test --release --workspace --locked --test e2e
