# Sourced by the scripts: where the one Rust build puts things, and phase timing.
# Every cargo command in the workspace builds for one target with one profile (--release) and
# the flags in .cargo/config.toml, so each crate is compiled once per run and the tests run the
# very binaries the images ship.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wasmkube-target}
TRIPLE=x86_64-unknown-linux-gnu
BIN_DIR=$CARGO_TARGET_DIR/$TRIPLE/release # static binaries: shim, installer, operator, wasmkube
GUESTS_DIR=$CARGO_TARGET_DIR/guests       # <wasm target>/release/<guest>.wasm
IMAGES_DIR=$CARGO_TARGET_DIR/images       # OCI archives (scripts/images.sh)

# phase NAME: starts a phase (ending the one before) and prints when; phases_report prints a
# table of every phase's duration. Durations are wall-clock seconds.
_phase_names=() _phase_secs=() _phase_start=$SECONDS _phase_t0=$SECONDS
phase() {
  _phase_end
  _phase_names+=("$*")
  _phase_start=$SECONDS
  printf '\n== %s (at %s s)\n' "$*" $((SECONDS - _phase_t0))
}
_phase_end() {
  if ((${#_phase_names[@]} > ${#_phase_secs[@]})); then
    _phase_secs+=($((SECONDS - _phase_start)))
  fi
}
phases_report() {
  _phase_end
  printf '\n%-64s %8s\n' PHASE SECONDS
  local i
  for i in "${!_phase_names[@]}"; do
    printf '%-64s %8s\n' "${_phase_names[$i]}" "${_phase_secs[$i]:-?}"
  done
  printf '%-64s %8s\n' total $((SECONDS - _phase_t0))
}
