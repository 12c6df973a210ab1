#!/usr/bin/env bash
# Runs every test: formatting, clippy, unit tests, and the real-containerd tests (as root).
# Usage: scripts/test.sh            (sets up prerequisites first, then runs everything)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wasmkube-target}
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --release --workspace --locked -- --test-threads="${TEST_THREADS:-4}"
echo "== manifests: kubernetes-validate --strict (1.30, 1.37) and the WasmApp schema"
scripts/validate-manifests.sh
