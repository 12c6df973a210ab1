#!/usr/bin/env bash
# Builds wasmkube's container images without Docker, reproducibly, into
# $IMAGES_DIR (scripts/env.sh; default /var/tmp/wasmkube-target/images):
#   operator.tar        docker.io/wasmkube/operator:VERSION        (images/operator.Dockerfile)
#   node-installer.tar  docker.io/wasmkube/node-installer:VERSION  (images/node-installer.Dockerfile)
#   pause.tar           localhost/wasmkube/pause:VERSION           (images/pause.Dockerfile)
#   redis.tar           docker.io/wasmkube/redis:VERSION           (images/redis.Dockerfile: Debian's redis-server)
#   hello-http.tar      docker.io/wasmkube/hello-http:VERSION      (wasmkube pack, tests/guests/http-hello)
#   http-outbound.tar   docker.io/wasmkube/http-outbound:VERSION   (wasmkube pack, tests/guests/http-outbound)
#   http-grants.tar     docker.io/wasmkube/http-grants:VERSION     (wasmkube pack, tests/guests/http-grants)
#   late-fail.tar       docker.io/wasmkube/late-fail:VERSION       (wasmkube pack of a module that
#                                                 fails to compile, tests/guests/assets/late_fail.py)
# The native images come from the Dockerfiles through `wasmkube image build`, which interprets
# their subset (FROM scratch, COPY, config) exactly; so does `docker build` over the same context.
#
# Usage: scripts/images.sh                 build everything, print a table of the images
#        scripts/images.sh --context DIR   only lay out the build context in DIR, for Docker:
#            docker build -f images/operator.Dockerfile -t docker.io/wasmkube/operator:VERSION DIR
# Idempotent: a second run rebuilds nothing that is fresh and gives the same digests.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
context_only=
while (($#)); do
  case $1 in
    --context) context_only=${2:?--context needs a directory}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "images.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

scripts/prereqs.sh
source scripts/env.sh
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
static_dir=$BIN_DIR
out=$IMAGES_DIR
busybox=/bin/busybox # from busybox-static (scripts/prereqs.sh)

step() { printf '== %s\n' "$*"; }
timed() { # timed LABEL CMD...: run, then print how long it took
  local label=$1 start=$SECONDS
  shift
  "$@"
  printf '   %s: %ss\n' "$label" $((SECONDS - start))
}

# Fails unless $1 is an ELF with no program interpreter and no shared-library dependency.
check_static() {
  if readelf -lW "$1" | grep -q 'Requesting program interpreter' ||
    readelf -dW "$1" | grep -q '(NEEDED)'; then
    echo "images.sh: $1 is not static:" >&2
    readelf -lW "$1" | grep -i interpreter >&2 || true
    readelf -dW "$1" | grep NEEDED >&2 || true
    exit 1
  fi
}

step "binaries and guests (scripts/build.sh: one target, one profile; a no-op when built)"
scripts/build.sh
for bin in containerd-shim-wasmkube-v1 wasmkube-node-installer wasmkube-operator wasmkube; do
  check_static "$static_dir/$bin"
done
check_static "$busybox"

mkdir -p "$out"
work=$out/.work
mkdir -p "$work"
step "pause (gcc -static -O2 tests/harness/assets/pause.c)"
gcc -static -O2 -o "$work/pause" tests/harness/assets/pause.c
check_static "$work/pause"

guest=$GUESTS_DIR/wasm32-wasip2/release/http_hello.wasm
check_module=$GUESTS_DIR/wasm32-wasip1/release/hello.wasm

# The build context every Dockerfile in images/ reads: stripped static binaries at its top,
# the installer's wasm check module, busybox with relative symlinks under bin/.
lay_out_context() {
  local ctx=$1
  mkdir -p "$ctx"
  for bin in containerd-shim-wasmkube-v1 wasmkube-node-installer wasmkube-operator; do
    strip --strip-all -o "$ctx/$bin.tmp" "$static_dir/$bin"
    chmod 0755 "$ctx/$bin.tmp"
    mv -f "$ctx/$bin.tmp" "$ctx/$bin"
  done
  install -m 0755 "$work/pause" "$ctx/pause"
  install -m 0644 "$check_module" "$ctx/check.wasm"
  rm -rf "$ctx/bin"
  mkdir -p "$ctx/bin"
  chmod 0755 "$ctx/bin"
  install -m 0755 "$busybox" "$ctx/bin/busybox"
  ln -s busybox "$ctx/bin/sh"
  ln -s busybox "$ctx/bin/nsenter"
  ln -s busybox "$ctx/bin/chroot"
  # Debian's redis-server and every library it loads, at their paths (for images/redis.Dockerfile).
  rm -rf "$ctx/redis"
  mkdir -p "$ctx/redis/tmp"
  chmod 1777 "$ctx/redis/tmp"
  local f
  for f in /usr/bin/redis-server $(ldd /usr/bin/redis-server | grep -o '/[^ ]*'); do
    mkdir -p "$ctx/redis$(dirname "$f")"
    cp -L "$f" "$ctx/redis$f"
  done
}

if [[ -n $context_only ]]; then
  lay_out_context "$context_only"
  step "build context in $context_only"
  ls -l "$context_only" "$context_only/bin"
  cat <<EOF
Build with Docker (same files as scripts/images.sh; Docker adds mtimes and per-COPY layers):
  docker build -f images/operator.Dockerfile       -t docker.io/wasmkube/operator:$version $context_only
  docker build -f images/node-installer.Dockerfile -t docker.io/wasmkube/node-installer:$version $context_only
  docker build -f images/pause.Dockerfile          -t localhost/wasmkube/pause:$version $context_only
EOF
  exit 0
fi

wasmkube=$static_dir/wasmkube

step "images"
lay_out_context "$work/context"
build() { # build NAME REFERENCE
  timed "$1" "$wasmkube" image build -f "images/$1.Dockerfile" --context "$work/context" \
    --name "$2" -o "$out/$1.tar" --platform linux/amd64
}
build operator "docker.io/wasmkube/operator:$version"
build node-installer "docker.io/wasmkube/node-installer:$version"
build pause "localhost/wasmkube/pause:$version"
build redis "docker.io/wasmkube/redis:$version"
# The wasm app images carry the node's platform, not wasip1/wasm: containerd 2.x's CRI unpacks
# a tar layer only for the node's platform (README, "Registries"); the shim ignores it.
app_platform=(--platform linux/amd64)
timed hello-http "$wasmkube" pack "$guest" "${app_platform[@]}" --name "docker.io/wasmkube/hello-http:$version" \
  -o "$out/hello-http.tar"
timed http-outbound "$wasmkube" pack "$GUESTS_DIR/wasm32-wasip2/release/http_outbound.wasm" "${app_platform[@]}" \
  --name "docker.io/wasmkube/http-outbound:$version" -o "$out/http-outbound.tar"
timed http-grants "$wasmkube" pack "$GUESTS_DIR/wasm32-wasip2/release/http_grants.wasm" "${app_platform[@]}" \
  --name "docker.io/wasmkube/http-grants:$version" -o "$out/http-grants.tar"
python3 tests/guests/assets/late_fail.py >"$work/late-fail.wasm"
timed late-fail "$wasmkube" pack "$work/late-fail.wasm" "${app_platform[@]}" \
  --name "docker.io/wasmkube/late-fail:$version" -o "$out/late-fail.tar"

step "images in $out"
human() { numfmt --to=iec-i --suffix=B --round=nearest --format='%.1f' "$1"; }
printf '%-20s %-42s %-73s %10s %10s\n' ARCHIVE REFERENCE "MANIFEST DIGEST" COMPRESSED UNPACKED
for name in operator node-installer pause redis hello-http http-outbound http-grants late-fail; do
  # "<ref> manifest <digest> platform <p> archive <n> bytes content <n> bytes"
  read -r ref _ digest _ _ _ archive _ _ content _ < <("$wasmkube" image inspect "$out/$name.tar")
  printf '%-20s %-42s %-73s %10s %10s\n' "$name.tar" "$ref" "$digest" "$(human "$archive")" "$(human "$content")"
done
