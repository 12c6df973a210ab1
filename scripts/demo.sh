#!/usr/bin/env bash
# The main job on this machine, no Kubernetes needed: runs the example WasmApp's module (the
# wasi:http component in tests/guests/http-hello) through the wasmkube shim on a private local
# containerd, exactly as a wasm node runs it, and calls it over HTTP.
#   sudo scripts/demo.sh            # PORT=8080 by default; KEEP=1 leaves it running
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
scripts/prereqs.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/wasmkube-target}
port=${PORT:-8080}
image=docker.io/wasmkube/hello-http:latest

echo "== building the shim, the wasmkube CLI and the example module"
cargo build --release --quiet -p wasmkube-shim -p wasmkube-cli
(cd tests/guests && CARGO_TARGET_DIR=$CARGO_TARGET_DIR/guests cargo build --release --quiet --target wasm32-wasip2 -p http-hello)
module=$CARGO_TARGET_DIR/guests/wasm32-wasip2/release/http_hello.wasm

demo=/var/tmp/wasmkube-demo
if [[ -f $demo/containerd.pid ]]; then kill "$(cat "$demo/containerd.pid")" 2>/dev/null || true; sleep 1; fi
rm -rf "$demo" && mkdir -p "$demo/bin"
cp "$CARGO_TARGET_DIR/release/containerd-shim-wasmkube-v1" "$demo/bin/"
cat >"$demo/config.toml" <<TOML
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmkube]
    runtime_type = "io.containerd.wasmkube.v1"
TOML
echo "== starting a private containerd in $demo (shim on its PATH)"
PATH="$demo/bin:$PATH" WASMKUBE_CACHE_DIR="$demo/cache" containerd --config "$demo/config.toml" \
  --address "$demo/containerd.sock" --root "$demo/root" --state "$demo/state" >"$demo/containerd.log" 2>&1 &
echo $! >"$demo/containerd.pid"
ctr() { command ctr --address "$demo/containerd.sock" "$@"; }
cleanup() {
  ctr tasks kill -s SIGKILL hello-http >/dev/null 2>&1 || true
  sleep 0.5; ctr containers rm hello-http >/dev/null 2>&1 || true
  kill "$(cat "$demo/containerd.pid")" 2>/dev/null || true
}
[[ ${KEEP:-0} == 1 ]] || trap cleanup EXIT
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done

echo "== wasmkube pack + ctr images import"
"$CARGO_TARGET_DIR/release/wasmkube" pack "$module" --name "$image" -o "$demo/hello-http.tar"
ctr images import --all-platforms "$demo/hello-http.tar"

echo "== ctr run (runtime io.containerd.wasmkube.v1)"
ctr run -d --net-host --runtime io.containerd.wasmkube.v1 \
  --env WASMKUBE_HTTP_ADDR=127.0.0.1:$port --env WK_GREETING="hello from the wasmkube demo" \
  "$image" hello-http >/dev/null
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
ctr tasks ls
echo "== curl http://127.0.0.1:$port/demo?x=1"
curl -sS "http://127.0.0.1:$port/demo?x=1"
echo "== curl http://127.0.0.1:$port/env"
curl -sS "http://127.0.0.1:$port/env"
if [[ ${KEEP:-0} == 1 ]]; then
  echo "left running: ctr --address $demo/containerd.sock tasks ls; stop with: kill \$(cat $demo/containerd.pid)"
  exit 0
fi
echo "== ctr tasks kill (SIGTERM: graceful stop)"
ctr tasks kill hello-http
for _ in $(seq 50); do ctr tasks ls | grep -q "hello-http.*STOPPED" && break; sleep 0.1; done
ctr tasks ls
echo "demo ok"
