#!/usr/bin/env bash
# Runs every test: formatting, clippy, unit and real-containerd tests, the images, then the e2e
# suite against a real single-node Kubernetes built from upstream's Go modules (tests/cluster/),
# and the manifest validation. Needs root (containerd, kubelet).
# Usage: sudo scripts/test.sh
#   WASMKUBE_REQUIRE_CONTAINERD=1  the containerd tests fail instead of skipping (CI)
#   WASMKUBE_REQUIRE_CLUSTER=1     the e2e suite fails instead of skipping (CI)
#   WASMKUBE_SKIP_E2E=1            stop before the cluster (a quick local run)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wasmkube-target}
t0=$SECONDS
phase() { echo; echo "== $* (at $((SECONDS - t0)) s)"; }

# The Kubernetes build is independent of cargo: start it now, collect it before the e2e run.
k8s_log=$CARGO_TARGET_DIR/k8s-build.log
mkdir -p "$CARGO_TARGET_DIR"
tests/cluster/build.sh >"$k8s_log" 2>&1 &
k8s_build=$!
# containerd 2.x for the installer's live tests, from its Go module (cached in /var/tmp).
ctd2_log=$CARGO_TARGET_DIR/containerd2-build.log
scripts/containerd2.sh >"$ctd2_log" 2>&1 &
ctd2_build=$!

phase "cargo fmt --check"
cargo fmt --all -- --check
phase "cargo clippy"
cargo clippy --release --workspace --all-targets --locked -- -D warnings
phase "images (static binaries, OCI archives)"
scripts/images.sh
phase "containerd 2.x (scripts/containerd2.sh)"
if ! wait "$ctd2_build"; then
    cat "$ctd2_log" >&2
    echo "scripts/containerd2.sh failed" >&2
    exit 1
fi
tail -n 2 "$ctd2_log"
phase "cargo test"
cargo test --release --workspace --locked --exclude wasmkube-e2e -- --test-threads="${TEST_THREADS:-4}"
phase "manifests: kubernetes-validate --strict (1.30, 1.37) and the WasmApp schema"
scripts/validate-manifests.sh

phase "Kubernetes components (tests/cluster/build.sh)"
if ! wait "$k8s_build"; then
    cat "$k8s_log" >&2
    echo "tests/cluster/build.sh failed" >&2
    exit 1
fi
tail -n 12 "$k8s_log"
if [ -n "${WASMKUBE_SKIP_E2E:-}" ]; then
    echo "SKIP e2e: WASMKUBE_SKIP_E2E is set"
    exit 0
fi

phase "e2e: local cluster up"
images=$CARGO_TARGET_DIR/images
trap 'tests/cluster/down.sh' EXIT
tests/cluster/up.sh "$images/pause.tar" "$images/operator.tar" "$images/node-installer.tar" "$images/hello-http.tar"
# shellcheck disable=SC1091
source tests/cluster/versions.env
export KUBECONFIG=${CLUSTER_DIR:-/var/tmp/wasmkube-cluster}/admin.kubeconfig
export PATH=/var/tmp/wasmkube-k8s/$K8S_VERSION/bin:$PATH
phase "e2e suite (tests/e2e)"
cargo test --release --locked -p wasmkube-e2e --test e2e
phase "done"
