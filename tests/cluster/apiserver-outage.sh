#!/usr/bin/env bash
# An API server outage on the local cluster: kills kube-apiserver (SIGKILL, as a crash or the
# loss of its machine would: a SIGTERM'd apiserver keeps serving its watches for up to a minute
# while it shuts down gracefully), keeps it down for SECONDS, starts it again with the
# same command line and waits until it is ready. etcd and everything else keep running.
#
# Usage (root; by the e2e suite): tests/cluster/apiserver-outage.sh SECONDS
set -euo pipefail
LOG_TAG=outage
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TIMEOUT=${TIMEOUT:-120}
seconds=${1:?usage: apiserver-outage.sh SECONDS}
[[ $seconds =~ ^[0-9]+$ ]] || die "SECONDS must be a number: $seconds"

pid=$(live_pid kube-apiserver) || die "kube-apiserver is not running (no live pid in $(pidfile kube-apiserver))"
mapfile -d '' -t argv < "/proc/$pid/cmdline"
(( ${#argv[@]} > 0 )) || die "cannot read kube-apiserver's command line"
kill -KILL "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
log "kube-apiserver (pid $pid) killed; starting it again in $seconds s"
sleep "$seconds"
setsid nohup "${argv[@]}" >> "$LOG_DIR/kube-apiserver.log" 2>&1 < /dev/null &
echo $! > "$(pidfile kube-apiserver)"
t=$SECONDS
until curl -fsS --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1; do
  kill -0 "$(cat "$(pidfile kube-apiserver)")" 2>/dev/null || { tail -20 "$LOG_DIR/kube-apiserver.log" >&2; die "kube-apiserver exited on restart"; }
  (( SECONDS - t < TIMEOUT )) || die "kube-apiserver not ready ${TIMEOUT}s after its restart"
  sleep 0.2
done
log "kube-apiserver ready again ($(( SECONDS - t )) s after its start)"
