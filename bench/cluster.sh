#!/usr/bin/env bash
# Load on a real cluster (the local 3-node cluster, tests/cluster/up.sh --nodes 3), each figure
# with a baseline measured in the same run:
#   1. N WasmApps x 2 replicas (default 200) over the three wasm nodes: seconds until every one is
#      Ready, against N plain Deployments x 2 of a runc container (the pause image: the same pod
#      count without wasmkube); the operator's CPU seconds and RSS while they roll out and in a
#      steady minute after; its API requests per app (from the API server's audit log of the
#      operator's ServiceAccount, lease renewals apart) during the rollout and in the steady
#      minute (the goal: 0).
#   2. HTTP load through a 2-replica WasmApp's Service (wrk from node 1): 30 s before a change
#      (the baseline) and 30 s during a rollout caused by an env change: requests, failed
#      requests (socket errors + non-2xx), p99 latency, and the ratio during/before.
# Usage: sudo bench/cluster.sh [N]      (brings up and tears down its own cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
source scripts/env.sh
[[ $EUID -eq 0 ]] || { echo "bench/cluster.sh: run as root" >&2; exit 1; }
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk >/dev/null
source tests/cluster/versions.env
CLUSTER_DIR=${CLUSTER_DIR:-/var/tmp/wasmkube-cluster}
export KUBECONFIG=$CLUSTER_DIR/admin.kubeconfig PATH=/var/tmp/wasmkube-k8s/$K8S_VERSION/bin:$PATH
AUDIT=$CLUSTER_DIR/logs/audit.log
OUT=$(mktemp -d /var/tmp/wk-bench-cluster-XXXXXX)
say() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

scripts/build.sh >/dev/null
scripts/images.sh >/dev/null
trap 'tests/cluster/down.sh >/dev/null 2>&1 || true' EXIT
# Room for N x 2 pods of each kind (one kind at a time) over three nodes.
KUBELET_MAX_PODS=$(( (2 * N) / 3 + 40 )) tests/cluster/up.sh --nodes 3 \
  "$IMAGES_DIR"/{pause,operator,node-installer,hello-http}.tar >/dev/null
kubectl apply -k manifests/ >/dev/null
kubectl -n wasmkube-system rollout status deploy/wasmkube-operator --timeout=180s >/dev/null
mapfile -t NODES < <(kubectl get nodes -o name | sed 's|node/||')
kubectl annotate node "${NODES[@]}" wasmkube.dev/wasm-node=true >/dev/null
for n in "${NODES[@]}"; do
  kubectl wait --for=jsonpath='{.metadata.labels.wasmkube\.dev/runtime}'=ready "node/$n" --timeout=300s >/dev/null
done
say "cluster: ${NODES[*]} ready for wasm; N=$N"

# The operator processes on the host (all nodes share its PID namespace): CPU ticks and RSS.
operator_pids() { pgrep -x wasmkube-operat || true; }
cpu_ticks() { local t=0 p; for p in $(operator_pids); do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done; echo "$t"; }
rss_kb() { local m=0 p; for p in $(operator_pids); do m=$(( m + $(awk '/^VmRSS/{print $2}' "/proc/$p/status") )); done; echo "$m"; }
HZ=$(getconf CLK_TCK)
# The operator's audited requests since line $1, lease renewals apart.
requests_since() { tail -n +"$(( $1 + 1 ))" "$AUDIT" | grep '"stage":"ResponseComplete"' | grep -vc '"resource":"leases"' || true; }
audit_lines() { wc -l < "$AUDIT"; }
# wait_all KIND NS N: until N objects of KIND in NS are available/Ready.
ready_count() {
  case $1 in
    deployments) kubectl -n "$2" get deployments -o jsonpath='{range .items[*]}{.status.availableReplicas}{"\n"}{end}' | grep -cx 2 || true ;;
    wasmapps) kubectl -n "$2" get wasmapps -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -cx True || true ;;
  esac
}
wait_all() {
  local t=$SECONDS
  until [[ $(ready_count "$1" "$2") -ge $3 ]]; do
    (( SECONDS - t < 1800 )) || { echo "bench: $1 in $2 not all ready after 30 min ($(ready_count "$1" "$2") of $3)" >&2; exit 1; }
    sleep 2
  done
}

# ---------------------------------------------------------------- 1. N apps
kubectl create namespace bench-runc >/dev/null
for ((i = 0; i < N; i++)); do
  cat <<EOF
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-$i, namespace: bench-runc}
spec:
  replicas: 2
  selector: {matchLabels: {app: app-$i}}
  template:
    metadata: {labels: {app: app-$i}}
    spec:
      containers:
      - {name: app, image: localhost/wasmkube/pause:0.1.0, imagePullPolicy: Never}
EOF
done > "$OUT/runc.yaml"
say "baseline: $N Deployments x 2 runc pods"
t0=$(now)
kubectl apply -f "$OUT/runc.yaml" >/dev/null
wait_all deployments bench-runc "$N"
t_runc=$(secs "$t0" "$(now)")
say "baseline: all $N available in $t_runc s"
kubectl delete namespace bench-runc --wait=true --timeout=900s >/dev/null

kubectl create namespace bench-wasm >/dev/null
for ((i = 0; i < N; i++)); do
  printf -- '---\napiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata: {name: app-%d, namespace: bench-wasm}\nspec:\n  image: docker.io/wasmkube/hello-http:0.1.0\n  replicas: 2\n' "$i"
done > "$OUT/wasm.yaml"
rss0=$(rss_kb); cpu0=$(cpu_ticks); a0=$(audit_lines)
say "wasmkube: $N WasmApps x 2 (operator RSS $((rss0 / 1024)) MiB before)"
t0=$(now)
kubectl apply -f "$OUT/wasm.yaml" >/dev/null
wait_all wasmapps bench-wasm "$N"
t_wasm=$(secs "$t0" "$(now)")
cpu1=$(cpu_ticks); rss1=$(rss_kb); a1=$(audit_lines)
rollout_requests=$(requests_since "$a0")
say "wasmkube: all $N Ready in $t_wasm s"
sleep 60
cpu2=$(cpu_ticks); rss2=$(rss_kb)
steady_requests=$(requests_since "$a1")
kubectl delete namespace bench-wasm --wait=true --timeout=900s >/dev/null

# ----------------------------------------------------- 2. HTTP through a rollout
kubectl create namespace bench-http >/dev/null
printf 'apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata: {name: web, namespace: bench-http}\nspec:\n  image: docker.io/wasmkube/hello-http:0.1.0\n  replicas: 2\n' \
  | kubectl apply -f - >/dev/null
kubectl -n bench-http wait --for=condition=Ready wasmapp/web --timeout=300s >/dev/null
ip=$(kubectl -n bench-http get service web -o jsonpath='{.spec.clusterIP}')
wrk -t2 -c8 -d30s --latency "http://$ip/" > "$OUT/before.txt" 2>&1
wrk -t2 -c8 -d30s --latency "http://$ip/" > "$OUT/during.txt" 2>&1 &
wrk_pid=$!
sleep 5
before_pods=$(kubectl -n bench-http get pods -o name | sort | tr '\n' ' ')
kubectl -n bench-http patch wasmapp web --type merge -p '{"spec":{"env":[{"name":"ROLLOUT","value":"1"}]}}' >/dev/null
wait "$wrk_pid"
kubectl -n bench-http wait --for=condition=Ready wasmapp/web --timeout=300s >/dev/null
after_pods=$(kubectl -n bench-http get pods -o name | sort | tr '\n' ' ')
[[ "$before_pods" != "$after_pods" ]] || { echo "bench: the env change rolled out no new pod" >&2; exit 1; }
# wrk's figures: requests, failures (socket errors + non-2xx), p99.
wrk_requests() { awk '/requests in/ {print $1}' "$1"; }
wrk_failed() { awk '/Socket errors/ {gsub(",", ""); s += $4 + $6 + $8 + $10} /Non-2xx/ {s += $5} END {print s + 0}' "$1"; }
wrk_p99_ms() { awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub("us", "", v); v /= 1000 } else if (v ~ /ms$/) { sub("ms", "", v) } else if (v ~ /s$/) { sub("s", "", v); v *= 1000 } print v }' "$1"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
  echo
  echo "bench/cluster.sh, N=$N, 3 nodes (1 host + 2 namespaced), $(nproc) cores"
  printf '%-58s %12s %12s %8s\n' "figure" "wasmkube" "baseline" "ratio"
  printf '%-58s %12s %12s %8s\n' "seconds until $N apps x 2 replicas are Ready" "$t_wasm" "$t_runc" "$(ratio "$t_wasm" "$t_runc")"
  printf '%-58s %12s\n' "operator CPU seconds during that rollout (all replicas)" "$(awk -v t=$((cpu1 - cpu0)) -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz }')"
  printf '%-58s %12s\n' "operator CPU seconds in the steady minute after" "$(awk -v t=$((cpu2 - cpu1)) -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }')"
  printf '%-58s %12s %12s %8s\n' "operator RSS MiB (all replicas) with $N apps / before" "$((rss2 / 1024))" "$((rss0 / 1024))" "$(ratio "$rss2" "$rss0")"
  printf '%-58s %12s\n' "operator API requests per app during the rollout" "$(ratio "$rollout_requests" "$N")"
  printf '%-58s %12s\n' "operator API requests per app in the steady minute" "$(ratio "$steady_requests" "$N")"
  printf '%-58s %12s %12s\n' "HTTP requests through the Service (30 s): during/before" "$(wrk_requests "$OUT/during.txt")" "$(wrk_requests "$OUT/before.txt")"
  printf '%-58s %12s %12s\n' "failed requests (socket errors + non-2xx)" "$(wrk_failed "$OUT/during.txt")" "$(wrk_failed "$OUT/before.txt")"
  printf '%-58s %12s %12s %8s\n' "p99 latency ms: during the rollout / before" "$(wrk_p99_ms "$OUT/during.txt")" "$(wrk_p99_ms "$OUT/before.txt")" "$(ratio "$(wrk_p99_ms "$OUT/during.txt")" "$(wrk_p99_ms "$OUT/before.txt")")"
} | tee "$OUT/report.txt"
echo "(raw wrk output and the manifests in $OUT)"
