#!/usr/bin/env bash
# Builds every Rust binary once, for one target and one profile (see scripts/env.sh and
# .cargo/config.toml): fully static, release.
#   scripts/build.sh          what the images and the demo need: the shim, the node installer,
#                             the operator, the `wasmkube` CLI, and the wasm guests
#   scripts/build.sh --tests  also every test, bench and example of the workspace (what
#                             `cargo test --release --workspace` runs; scripts/test.sh)
# The outputs are in $BIN_DIR and $GUESTS_DIR (scripts/env.sh). A second run rebuilds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
tests=
case ${1:-} in
  --tests) tests=1 ;;
  "") ;;
  *) echo "usage: scripts/build.sh [--tests]" >&2; exit 2 ;;
esac

timed() { # timed LABEL CMD...
  local label=$1 start=$SECONDS
  shift
  "$@"
  printf '   %s: %s s\n' "$label" $((SECONDS - start))
}

if [[ -n $tests ]]; then
  # Every target (integration tests use the binaries). Under scripts/test.sh this compile is
  # also clippy's run (RUSTC_WORKSPACE_WRAPPER, see there).
  timed "workspace (binaries, libraries, tests, benches, examples)" \
    cargo test --release --workspace --locked --all-targets --no-run
else
  # --workspace (not -p): the features the whole workspace unifies, as `--tests` builds them,
  # so a later `--tests` build reuses every dependency. The workspace's bins are these four.
  timed "binaries" cargo build --release --locked --workspace --bins
fi

# The wasm guests (tests/guests/targets): the installer's check module and the example app
# among them. Their own workspace, their own --target, no host RUSTFLAGS.
while read -r target packages; do
  [[ -z $target || $target == \#* ]] && continue
  args=()
  for p in $packages; do args+=(-p "$p"); done
  (cd tests/guests && timed "guests $target" env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS \
    -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
    CARGO_TARGET_DIR="$GUESTS_DIR" cargo build --release --locked --target "$target" "${args[@]}")
done <tests/guests/targets
