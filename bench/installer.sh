#!/usr/bin/env bash
# Node-installer benchmark on this machine (root, containerd + runc installed):
#   - first install (copy + patch + restart + verify), split by step from the result's `timings`;
#   - re-install on an already provisioned node (no write, no restart), wall time of the process;
#   - uninstall.
# A private containerd runs on a temp host root with `containerd config default`; the installer
# restarts it through a restart script (stop by pid file, start again), as systemd would.
# Usage: bench/installer.sh [N]   (N rounds, default 5; medians reported)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
N=${1:-5}
scripts/build.sh >/dev/null
BIN=$BIN_DIR/wasmkube-node-installer
SHIM=$BIN_DIR/containerd-shim-wasmkube-v1

H=$(mktemp -d /var/tmp/wk-bench-XXXXXX)
cleanup() {
  [ -f "$H/ctd.pid" ] && kill "$(cat "$H/ctd.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$H"
}
trap cleanup EXIT
mkdir -p "$H/etc/containerd" "$H/ctd"
containerd config default | sed 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
  > "$H/etc/containerd/config.toml"

cat > "$H/restart.sh" <<SCRIPT
#!/bin/sh
set -eu
if [ -f "$H/ctd.pid" ]; then
  pid=\$(cat "$H/ctd.pid"); kill -TERM "\$pid" 2>/dev/null || true
  while [ -e "/proc/\$pid" ] && [ "\$(cut -d' ' -f3 /proc/\$pid/stat 2>/dev/null)" != Z ]; do sleep 0.01; done
fi
PATH="$H/usr/local/bin:$PATH" setsid containerd --config "$H/etc/containerd/config.toml" --address "$H/ctd.sock" \
  --root "$H/ctd/root" --state "$H/ctd/state" </dev/null >>"$H/ctd.log" 2>&1 &
echo \$! > "$H/ctd.pid"
until ctr --address "$H/ctd.sock" version >/dev/null 2>&1; do sleep 0.01; done
SCRIPT
chmod +x "$H/restart.sh"
"$H/restart.sh"

run() {
  "$BIN" "$1" --host-root "$H" --shim "$SHIM" --restart-cmd "$H/restart.sh" \
    --containerd-address "$H/ctd.sock" --runtime-path "$H/opt/wasmkube/bin/containerd-shim-wasmkube-v1" \
    --result-file "$H/result.json"
}

: > "$H/results"
for i in $(seq "$N"); do
  first=$(run install)
  t0=$(date +%s%N); again=$(run install); t1=$(date +%s%N)
  uninst=$(run uninstall)
  printf '%s\t%s\t%s\t%s\n' "$first" "$again" "$(( (t1 - t0) / 1000000 ))" "$uninst" >> "$H/results"
done

python3 - "$H/results" <<'PY'
import json, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
first = [json.loads(r[0]) for r in rows]
again = [json.loads(r[1]) for r in rows]
wall = [int(r[2]) for r in rows]
un = [json.loads(r[3]) for r in rows]
assert all(f["state"] == "installed" for f in first), first
assert all(a["state"] == "unchanged" and not a["restarted"] for a in again), again
assert all(u["state"] == "uninstalled" for u in un), un
med = lambda xs: statistics.median(xs)
print(f"containerd {first[0]['containerdVersion']}, shim {first[0]['shimVersion']}, N={len(rows)} (median ms)")
print("| run | detect | copy | patch | restart | verify | total |")
print("|---|---|---|---|---|---|---|")
for name, rs in (("first install", first), ("re-install (in-process)", again), ("uninstall", un)):
    cells = [str(med([r["timings"].get(k, 0) for r in rs])) for k in ("detect", "copy", "patch", "restart", "verify", "total")]
    print(f"| {name} | " + " | ".join(cells) + " |")
print(f"re-install, whole process wall time: median {med(wall)} ms, max {max(wall)} ms (target < 200 ms)")
PY
