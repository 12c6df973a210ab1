#!/usr/bin/env bash
# Build the Kubernetes server binaries, kubectl, crictl, CoreDNS and metrics-server from their Go
# modules (pinned in k8s/, crictl/, coredns/ and metrics-server/ go.mod+go.sum) into
#   /var/tmp/wasmkube-k8s/$K8S_VERSION/bin/
# Needs only a Go toolchain and the Go module proxy. Binaries already built
# from the same go.mod/go.sum, Go version and flags are skipped (stamp files).
#
# Usage: tests/cluster/build.sh [BINARY ...]     (default: all)
# Env:   K8S_BIN_DIR  output dir (default /var/tmp/wasmkube-k8s/$K8S_VERSION/bin)
#        FORCE=1      rebuild even if the stamp matches
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

BIN_DIR="${K8S_BIN_DIR:-/var/tmp/wasmkube-k8s/$K8S_VERSION/bin}"
export GOCACHE="${GOCACHE_OVERRIDE:-/var/tmp/wasmkube-go/cache}"
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-/var/tmp/wasmkube-go/mod}"
export CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"

ALL=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl crictl apiserver-forward coredns metrics-server)
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL[@]}")

log() { printf '[build %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

command -v go >/dev/null || die "go is not installed (need Go >= 1.26)"
mkdir -p "$BIN_DIR" "$GOCACHE" "$GOMODCACHE"

# Version metadata as kubernetes' hack/lib/version.sh sets it (ldflags for
# both k8s.io/component-base/version and k8s.io/client-go/pkg/version).
k8s_ver="${K8S_VERSION#v}"
k8s_major="${k8s_ver%%.*}"
k8s_minor="${k8s_ver#*.}"; k8s_minor="${k8s_minor%%.*}"
# Reproducible build date: the release's module timestamp (from the proxy).
build_date="$(cd "$HERE/k8s" && go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes 2>/dev/null || true)"
[[ -n "$build_date" ]] || build_date="1970-01-01T00:00:00Z"
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  K8S_LDFLAGS+=" -X '$pkg.gitVersion=$K8S_VERSION'"
  K8S_LDFLAGS+=" -X '$pkg.gitMajor=$k8s_major'"
  K8S_LDFLAGS+=" -X '$pkg.gitMinor=$k8s_minor'"
  K8S_LDFLAGS+=" -X '$pkg.gitTreeState=clean'"
  K8S_LDFLAGS+=" -X '$pkg.buildDate=$build_date'"
done
K8S_TAGS="selinux,notest,grpcnotrace"   # as hack/lib/golang.sh for non-debug builds
CRICTL_LDFLAGS="-s -w -X 'sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}'"

go_version="$(go env GOVERSION)"
# The binaries are stripped (-s -w), so the compiler need not generate DWARF either (-ldflags -w
# alone does not tell it): the same binaries for less compile work.
GCFLAGS="all=-dwarf=false"

build_one() {
  local name=$1 moddir pkg ldflags tags
  case "$name" in
    crictl) moddir="$HERE/crictl"; pkg="sigs.k8s.io/cri-tools/cmd/crictl"; ldflags="$CRICTL_LDFLAGS"; tags="" ;;
    apiserver-forward) # ours (k8s/cmd/apiserver-forward): relays the kubernetes Service to 127.0.0.1
      moddir="$HERE/k8s"; pkg="./cmd/apiserver-forward"; ldflags="-s -w"; tags="" ;;
    coredns) # CoreDNS with the plugins the cluster uses (coredns/main.go)
      moddir="$HERE/coredns"; pkg="./"; ldflags="-s -w"; tags="" ;;
    metrics-server) # the HPA's resource metrics (metrics.k8s.io), from the kubelets' /metrics/resource
      moddir="$HERE/metrics-server"; pkg="sigs.k8s.io/metrics-server/cmd/metrics-server"; ldflags="-s -w"; tags="" ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl)
      moddir="$HERE/k8s"; pkg="k8s.io/kubernetes/cmd/$name"; ldflags="$K8S_LDFLAGS"; tags="$K8S_TAGS" ;;
    *) die "unknown binary: $name (known: ${ALL[*]})" ;;
  esac
  local stamp_file="$BIN_DIR/.$name.stamp" stamp
  local src=()
  [[ "$pkg" != ./* ]] || mapfile -t src < <(find "$moddir/${pkg#./}" -name '*.go' | LC_ALL=C sort)
  stamp="$(printf '%s\n' "$go_version" "$pkg" "$ldflags" "$tags" "$GCFLAGS" | cat - "$moddir/go.mod" "$moddir/go.sum" "${src[@]}" | sha256sum | cut -d' ' -f1)"
  if [[ -z "${FORCE:-}" && -x "$BIN_DIR/$name" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
    log "$name: up to date (stamp $stamp_file), skipped"
    return 0
  fi
  log "$name: building $pkg ..."
  local t0=$SECONDS
  rm -f "$stamp_file"
  ( cd "$moddir" && go build -trimpath -gcflags "$GCFLAGS" -tags "$tags" -ldflags "$ldflags" -o "$BIN_DIR/.$name.tmp" "$pkg" ) \
    || die "$name: go build failed"
  mv -f "$BIN_DIR/.$name.tmp" "$BIN_DIR/$name"
  echo "$stamp" > "$stamp_file"
  log "$name: built in $((SECONDS - t0)) s ($(du -m "$BIN_DIR/$name" | cut -f1) MB)"
}

t_all=$SECONDS
log "Kubernetes $K8S_VERSION + crictl $CRICTL_VERSION with $go_version into $BIN_DIR"
log "GOCACHE=$GOCACHE GOMODCACHE=$GOMODCACHE"
t0=$SECONDS
for d in k8s crictl coredns metrics-server; do (cd "$HERE/$d" && go mod download) || die "go mod download failed in $d"; done
log "modules downloaded/verified in $((SECONDS - t0)) s"
for b in "${TARGETS[@]}"; do build_one "$b"; done
# crictl reads crictl.yaml beside its binary when /etc/crictl.yaml is absent.
printf 'runtime-endpoint: unix:///run/containerd/containerd.sock\nimage-endpoint: unix:///run/containerd/containerd.sock\ntimeout: 10\n' > "$BIN_DIR/crictl.yaml"
log "all done in $((SECONDS - t_all)) s"
"$BIN_DIR/kubectl" version --client 2>/dev/null | sed 's/^/[build] /' || true
