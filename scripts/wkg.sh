#!/usr/bin/env bash
# Installs `wkg` (the Bytecode Alliance's wasm package tool, which pushes Wasm OCI artifacts with
# `wkg oci push`) from crates.io into /var/tmp/wasmkube-tools, outside the clone, once. The e2e
# suite pushes an artifact with it (WASMKUBE_WKG). Prints the binary's path.
set -euo pipefail
WKG_VERSION=0.16.1
root=${WASMKUBE_TOOLS_DIR:-/var/tmp/wasmkube-tools}
bin=$root/bin/wkg
if [[ ! -x $bin ]] || [[ $("$bin" --version 2>/dev/null) != "wkg $WKG_VERSION" ]]; then
  echo "wkg.sh: cargo install wkg $WKG_VERSION (--locked) into $root" >&2
  # Its own target dir: the workspace's build flags (static, clippy) are not wkg's. Unoptimised
  # and without debug info (--debug, CARGO_PROFILE_DEV_DEBUG=0): the tests only push one small
  # artifact with it, and a release build cost about 8.5 CPU-minutes of a cold CI run.
  env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS -u RUSTFLAGS CARGO_PROFILE_DEV_DEBUG=0 \
    cargo install wkg --version "$WKG_VERSION" --locked --debug --root "$root" --target-dir "$root/target" >&2
  rm -rf "$root/target"
fi
echo "$bin"
