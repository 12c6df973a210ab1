#!/usr/bin/env bash
# Builds containerd 2.x (`containerd`, `ctr`) from its Go module through the Go module proxy into
#   /var/tmp/wasmkube-containerd2/$VERSION/bin
# for the installer's live tests against containerd 2.x (node-installer/tests/live_containerd2.rs,
# which finds it there or in WASMKUBE_CONTAINERD2_BIN). Skips the build when the binaries are
# there. Takes about 2.5 min cold on 2 cores.
# Usage: scripts/containerd2.sh
set -euo pipefail
VERSION=v2.4.2
out=/var/tmp/wasmkube-containerd2/$VERSION/bin
if [[ -x $out/containerd && -x $out/ctr ]] && "$out/containerd" --version | grep -q " ${VERSION#v}"; then
  echo "containerd $VERSION already built in $out"
  exit 0
fi
command -v go >/dev/null || { echo "containerd2.sh: go is not installed" >&2; exit 1; }
export GOCACHE=/var/tmp/wasmkube-go/cache GOMODCACHE=/var/tmp/wasmkube-go/mod GOBIN=$out
export CGO_ENABLED=1 GOFLAGS=-buildvcs=false
mkdir -p "$out"
# The tags containerd's own release builds use without btrfs/devmapper/zfs headers.
# Stripped, and no DWARF generated for it (less compile work; a test binary).
go install -trimpath -gcflags "all=-dwarf=false" -ldflags "-s -w" -tags "no_btrfs no_devmapper no_zfs" \
  "github.com/containerd/containerd/v2/cmd/containerd@$VERSION" \
  "github.com/containerd/containerd/v2/cmd/ctr@$VERSION"
"$out/containerd" --version
