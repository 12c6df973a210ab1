#!/usr/bin/env bash
# Keeps the test node's containerd running: starts `containerd` (default config
# /etc/containerd/config.toml, socket /run/containerd/containerd.sock) and starts
# it again whenever it exits, until asked to stop. This is what systemd does on
# a normal node; the host restart hook /etc/wasmkube/restart-containerd only
# stops containerd and relies on this loop to start the new one.
#
# Usage (by up.sh): setsid nohup containerd-supervise.sh CLUSTER_DIR &
#   $CLUSTER_DIR/run/containerd-supervise.pid  this script's pid
#   $CLUSTER_DIR/run/containerd.pid            the current containerd's pid
#   $CLUSTER_DIR/logs/containerd.log           containerd's output (appended)
# Stop: touch $CLUSTER_DIR/run/containerd.stop, then SIGTERM this script (it
# forwards SIGTERM to containerd, waits for it, and exits).
set -uo pipefail

CLUSTER_DIR=${1:?usage: $0 CLUSTER_DIR}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Marks our containerd (down.sh/up.sh tell it from any other containerd by this).
export WASMKUBE_CLUSTER_DIR=$CLUSTER_DIR
RUN=$CLUSTER_DIR/run
LOG=$CLUSTER_DIR/logs/containerd.log
PIDF=$RUN/containerd.pid
STOPF=$RUN/containerd.stop
mkdir -p "$RUN" "$CLUSTER_DIR/logs"
echo $$ > "$RUN/containerd-supervise.pid"

say() { printf '%(%Y-%m-%dT%H:%M:%S)T [supervisor %d] %s\n' -1 $$ "$*" >> "$LOG"; }

child=""
stopping=0
on_term() {
  stopping=1
  if [[ -n "$child" ]]; then kill -TERM "$child" 2>/dev/null || true; fi
}
trap on_term TERM INT
trap '' HUP

restarts=0
while [[ $stopping -eq 0 && ! -e "$STOPF" ]]; do
  started=$SECONDS
  containerd --config /etc/containerd/config.toml >> "$LOG" 2>&1 &
  child=$!
  echo "$child" > "$PIDF"
  say "started containerd pid $child (restart #$restarts)"
  # `wait` returns early when a trapped signal arrives: wait until the child is gone.
  rc=0
  while :; do
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  say "containerd pid $child exited (status $rc)"
  child=""
  rm -f "$PIDF"
  [[ $stopping -eq 0 && ! -e "$STOPF" ]] || break
  restarts=$((restarts + 1))
  # Crash loop guard: a containerd that dies within 2 s is restarted after 2 s.
  if (( SECONDS - started < 2 )); then sleep 2; fi
done
say "stopping (asked to); not restarting containerd"
rm -f "$RUN/containerd-supervise.pid"
exit 0
