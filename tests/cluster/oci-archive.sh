#!/usr/bin/env bash
# Pack a root filesystem directory into a single-layer OCI image archive that
# `ctr -n k8s.io images import` accepts (oci-layout + index.json + blobs).
# Used by up.sh for the fallback pause image and for throwaway test images;
# the project's images come from the wasmkube CLI / image tooling instead.
#
# Usage: tests/cluster/oci-archive.sh ROOTFS_DIR IMAGE_REF OUT.tar [ENTRYPOINT_ARG ...]
#   e.g. oci-archive.sh /tmp/pause-root localhost/wasmkube/pause:0.1.0 pause.tar /pause
set -euo pipefail

[[ $# -ge 3 ]] || { echo "usage: $0 ROOTFS_DIR IMAGE_REF OUT.tar [ENTRYPOINT_ARG ...]" >&2; exit 2; }
rootfs=$1 ref=$2 out=$3; shift 3
[[ -d "$rootfs" ]] || { echo "$0: $rootfs is not a directory" >&2; exit 1; }
command -v jq >/dev/null || { echo "$0: needs jq" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/blobs/sha256"

blob() { # FILE MEDIATYPE -> prints a descriptor, moves FILE into blobs/
  local f=$1 mt=$2 d s
  d=$(sha256sum "$f" | cut -d' ' -f1); s=$(stat -c %s "$f")
  mv "$f" "$work/blobs/sha256/$d"
  jq -cn --arg mt "$mt" --arg d "sha256:$d" --argjson s "$s" '{mediaType:$mt,digest:$d,size:$s}'
}

# Reproducible, uncompressed layer (diff_id == layer digest).
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$rootfs" -cf "$work/layer" .
layer=$(blob "$work/layer" application/vnd.oci.image.layer.v1.tar)
entry=$(jq -cn '$ARGS.positional' --args "$@")
jq -cn --argjson l "$layer" --argjson e "$entry" '{
    architecture: "amd64", os: "linux",
    config: ({Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
             + (if ($e | length) > 0 then {Entrypoint: $e} else {} end)),
    rootfs: {type: "layers", diff_ids: [$l.digest]}
  }' > "$work/config"
config=$(blob "$work/config" application/vnd.oci.image.config.v1+json)
jq -cn --argjson c "$config" --argjson l "$layer" '{
    schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: $c, layers: [$l]
  }' > "$work/manifest"
manifest=$(blob "$work/manifest" application/vnd.oci.image.manifest.v1+json)
tag=${ref##*:}
jq -cn --argjson m "$manifest" --arg ref "$ref" --arg tag "$tag" '{
    schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
    manifests: [$m + {platform: {architecture: "amd64", os: "linux"},
                      annotations: {"io.containerd.image.name": $ref,
                                    "org.opencontainers.image.ref.name": $tag}}]
  }' > "$work/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
mkdir -p "$(dirname "$out")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" -cf "$out.tmp" oci-layout index.json blobs
mv -f "$out.tmp" "$out"
echo "$out: $ref ($(stat -c %s "$out") bytes)"
