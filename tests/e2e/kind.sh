#!/usr/bin/env bash
# The e2e suite (tests/e2e, the same one CI runs on the local cluster) against kind, for machines
# with Docker: builds the images, creates a kind cluster, `kind load`s them, runs the suite with
# the kind node as "the node" (a shell on it through `docker exec`), deletes the cluster.
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

echo "== kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER" --wait 120s
cleanup() {
    if [ -z "${KEEP_CLUSTER:-}" ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
for image in operator node-installer hello-http http-outbound http-grants redis late-fail; do
    kind load image-archive "$IMAGES/$image.tar" --name "$CLUSTER"
done

KUBECONFIG=$(mktemp)
export KUBECONFIG
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"
export WASMKUBE_E2E_NODE="$CLUSTER-control-plane"
export WASMKUBE_E2E_NODE_EXEC="docker exec -i $CLUSTER-control-plane"
export WASMKUBE_REQUIRE_CLUSTER=1
echo "== e2e suite (tests/e2e) on kind"
# --workspace (not -p): the same feature resolution as the build, so nothing is rebuilt.
cargo test --release --workspace --locked --test e2e
