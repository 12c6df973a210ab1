#!/usr/bin/env bash
# Installs what building and testing wasmkube needs on Debian bookworm: containerd + runc (the
# real containerd the tests drive), protoc and libseccomp (runwasi's build), static busybox
# (native-container tests), CNI plugins (pod-network CRI test), the local cluster's tools (jq,
# openssl, iptables, iproute2, dnsutils for dig), python3-venv (manifest validation), redis-server (the key-value
# tests run their own), docker-registry and apache2-utils' htpasswd (a real registry for push/pull
# and the local cluster's images), the wasm rustup targets and the clippy and rustfmt components.
# Idempotent: installs only what is missing. Needs root for apt.
set -euo pipefail
pkgs=(containerd runc protobuf-compiler libseccomp-dev busybox-static containernetworking-plugins pkg-config gcc libc6-dev curl
  jq openssl iptables iproute2 dnsutils util-linux binutils python3-venv redis-server
  docker-registry apache2-utils)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "prereqs: missing packages ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "prereqs: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
installed=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-wasip2; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
# clippy (its driver wraps the one build in scripts/test.sh) and rustfmt.
components=$(rustup component list --installed)
for c in clippy rustfmt; do
  grep -q "^$c" <<<"$components" || rustup component add "$c"
done
