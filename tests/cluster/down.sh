#!/usr/bin/env bash
# Tear down the cluster started by tests/cluster/up.sh and restore the host:
# pods, processes, mounts, cgroups, sysctls, iptables, CNI bridge/netns/IPAM,
# /etc/containerd/config.toml (byte for byte), the restart hook, and any node
# installer leftovers. Idempotent: fine to run twice or with nothing up.
#
# Usage: tests/cluster/down.sh
# Env: CLUSTER_DIR (/var/tmp/wasmkube-cluster)
#      KEEP_STATE=1  keep everything in $CLUSTER_DIR (certs, etcd data, configs)
#                    for debugging; by default only $CLUSTER_DIR/logs is kept.
set -euo pipefail
LOG_TAG=down
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "must run as root"
problems=0
problem() { warn "$*"; problems=$((problems + 1)); }
did() { log "cleaned: $*"; }

# Processes whose executable is one of our Kubernetes binaries (for pid files lost).
our_k8s_pids() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    [[ "$exe" == "$BIN_DIR/"* ]] && echo "${p#/proc/}"
  done
  return 0
}
# Our containerd processes (marked by the supervisor's environment), pid file or not.
our_containerd_pids() {
  local p
  for p in $(default_socket_containerd_pids); do is_our_containerd "$p" && echo "$p"; done
  return 0
}
# Shims of containerd's k8s.io namespace on the default socket.
k8s_shim_pids() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null < "$p/cmdline") || continue
    [[ "$cmd" == *containerd-shim* && "$cmd" == *"-namespace k8s.io"* && "$cmd" == *"$CONTAINERD_SOCK"* ]] \
      && in_our_mount_ns "${p#/proc/}" && echo "${p#/proc/}"
  done
  return 0
}
was_created() { [[ -f "$BACKUP_DIR/created-paths" ]] && grep -qxF "$1" "$BACKUP_DIR/created-paths"; }
containerd_up() { [[ -S "$CONTAINERD_SOCK" ]] && ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; }

log "tearing down the cluster in $CLUSTER_DIR"
[[ -d "$CLUSTER_DIR" ]] || log "$CLUSTER_DIR does not exist: only checking the host for leftovers"

# ---------------------------------------------------------------- extra nodes
# (up.sh --nodes N): each in its own namespaces, removed whole by node.sh.
if [[ -d "$CLUSTER_DIR/nodes" ]]; then
  for d in "$CLUSTER_DIR"/nodes/*/; do
    [[ -d "$d" ]] || continue
    "$CLUSTER_LIB_DIR/node.sh" down "$(basename "$d")" || problem "node.sh down $(basename "$d") failed"
  done
  rmdir "$CLUSTER_DIR/nodes" 2>/dev/null || problem "$CLUSTER_DIR/nodes is not empty after removing the extra nodes"
fi
! ip link show wk-nodes >/dev/null 2>&1 || { ip link del wk-nodes && did "bridge wk-nodes"; }

# ---------------------------------------------------------------------- pods
phase=$EPOCHREALTIME
remove_pods() {
  local n
  n=$(crictl_node pods -q 2>/dev/null | wc -l)
  if (( n > 0 )); then
    crictl_node rmp -fa >/dev/null 2>&1 || crictl_node rmp -fa >/dev/null 2>&1 || true
    did "$n pod sandbox(es) removed through CRI"
  fi
}
if [[ -x "$BIN_DIR/crictl" ]] && [[ -n "$(our_containerd_pids)" ]] && containerd_up; then
  remove_pods
  if pid=$(live_pid kubelet); then stop_pid "$pid" kubelet 20; fi
  remove_pods   # whatever the kubelet started meanwhile
  left=$(crictl_node pods -q 2>/dev/null | wc -l)
  (( left == 0 )) || problem "$left pod sandbox(es) remain in containerd"
fi
log "pods removed in $(elapsed "$phase") s"

# ----------------------------------------------------------------- processes
phase=$EPOCHREALTIME
# Control plane and kube-proxy together, etcd last.
pids=() names=()
for c in "${COMPONENTS[@]}"; do
  [[ $c != etcd ]] || continue
  if pid=$(live_pid "$c"); then pids+=("$pid"); names+=("$c($pid)"); fi
done
if (( ${#pids[@]} > 0 )); then stop_pids 20 "${pids[@]}"; log "stopped ${names[*]}"; fi
if pid=$(live_pid etcd); then stop_pid "$pid" etcd 15; fi
for c in "${COMPONENTS[@]}"; do rm -f "$(pidfile "$c")"; done
for pid in $(our_k8s_pids); do
  stop_pid "$pid" "leftover $(readlink "/proc/$pid/exe" 2>/dev/null || echo process)" 10
done
for pid in $(pgrep -x etcd || true); do
  if tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -qF -- "--data-dir $CLUSTER_DIR/etcd"; then
    stop_pid "$pid" "leftover etcd" 10
  fi
done

# containerd: the supervisor first (so it does not restart it), then containerd itself.
if [[ -d "$RUN_DIR" ]]; then touch "$RUN_DIR/containerd.stop"; fi
if pid=$(live_pid containerd-supervise); then stop_pid "$pid" "containerd supervisor" 20; fi
if pid=$(live_pid containerd); then stop_pid "$pid" containerd 15; fi
for pid in $(our_containerd_pids); do stop_pid "$pid" "leftover containerd of $CLUSTER_DIR" 15; done
rm -f "$RUN_DIR/containerd.pid" "$RUN_DIR/containerd-supervise.pid" "$RUN_DIR/containerd.stop" 2>/dev/null || true

shims=$(k8s_shim_pids | tr '\n' ' ')
if [[ -n "$shims" ]]; then
  # shellcheck disable=SC2086
  kill -KILL $shims 2>/dev/null || true
  did "killed leftover k8s.io containerd shims: $shims"
fi
# Anything still in the pods' cgroups (containers whose shim is gone).
procs=$(kill_cgroup_tree kubepods | tr '\n' ' ')
[[ -z "${procs// /}" ]] || did "killed leftover pod processes in the kubepods cgroups: $procs"
log "processes stopped in $(elapsed "$phase") s"

# -------------------------------------------------------------------- mounts
phase=$EPOCHREALTIME
mount_targets() {
  findmnt -rn -o TARGET | sed 's/\\x20/ /g' | awk -v c="$CLUSTER_DIR" '
    index($0, "/var/lib/kubelet/") == 1 || $0 == "/var/lib/kubelet" ||
    index($0, c "/") == 1 ||
    index($0, "/var/lib/containerd/") == 1 ||
    index($0, "/run/containerd/io.containerd.") == 1 ||
    index($0, "/run/containerd/") == 1 && index($0, "/k8s.io/") > 0' | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-
}
n=0
for round in 1 2 3; do
  mapfile -t targets < <(mount_targets)
  (( ${#targets[@]} > 0 )) || break
  for t in "${targets[@]}"; do
    if umount "$t" 2>/dev/null || umount -l "$t" 2>/dev/null; then n=$((n + 1)); fi
  done
done
(( n == 0 )) || did "$n mount(s) under /var/lib/kubelet, /run/containerd, /var/lib/containerd, $CLUSTER_DIR"
left=$(mount_targets | wc -l); (( left == 0 )) || problem "$left mount(s) remain: $(mount_targets | tr '\n' ' ')"

# ------------------------------------------------------------------- network
# Network namespaces of our pods (holding an address of the pod subnet).
prefix=${POD_SUBNET%.*}.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
  if nsenter --net="/run/netns/$ns" ip -4 -o addr show 2>/dev/null | grep -qF " $prefix"; then
    ip netns delete "$ns" 2>/dev/null && did "netns $ns" || problem "cannot delete netns $ns"
  fi
done
if ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
  for v in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link delete "$v" 2>/dev/null && did "veth $v"
  done
  ip link delete "$CNI_BRIDGE" && did "bridge $CNI_BRIDGE"
fi
if [[ -d "$CNI_IPAM_DIR" ]]; then rm -rf "$CNI_IPAM_DIR"; did "CNI host-local IPAM state $CNI_IPAM_DIR"; fi
shopt -s nullglob
cache=(/var/lib/cni/results/"$CNI_NETWORK"-* /var/lib/cni/networks/"$CNI_NETWORK"*)
# The loopback entries of the same sandboxes (cni-loopback-<sandbox id>-lo).
for f in /var/lib/cni/results/"$CNI_NETWORK"-*; do
  id=${f#/var/lib/cni/results/"$CNI_NETWORK"-}; id=${id%-*}
  [[ -e /var/lib/cni/results/cni-loopback-$id-lo ]] && cache+=("/var/lib/cni/results/cni-loopback-$id-lo")
done
shopt -u nullglob
if (( ${#cache[@]} > 0 )); then rm -rf "${cache[@]}"; did "${#cache[@]} libcni cache entr(y/ies) of $CNI_NETWORK in /var/lib/cni"; fi
for d in /var/lib/cni/results /var/lib/cni/networks /var/lib/cni /run/netns; do
  if was_created "$d" && [[ -d "$d" ]]; then rmdir "$d" 2>/dev/null && did "$d (created by up)" || true; fi
done

# -------------------------------------------------------------------- cgroups
left=$(remove_cgroup_tree kubepods | tr '\n' ' ')
[[ -z "$left" ]] || problem "cannot remove $left"
log "mounts, network, cgroups cleaned in $(elapsed "$phase") s"

# ------------------------------------------------------------------- sysctls
phase=$EPOCHREALTIME
if [[ -s "$BACKUP_DIR/sysctl.restore" ]]; then
  restored=()
  while IFS= read -r line; do
    k=${line%%=*} v=${line#*=}
    f=/proc/sys/${k//.//}
    [[ -e "$f" ]] || continue
    cur=$(sysctl -n "$k" 2>/dev/null | tr '\t' ' ') || continue
    if [[ "$cur" != "$(tr '\t' ' ' <<<"$v")" ]]; then
      if printf '%s\n' "$v" > "$f" 2>/dev/null; then restored+=("$k=$v (was $cur)"); else problem "cannot restore $k=$v (is $cur)"; fi
    fi
  done < "$BACKUP_DIR/sysctl.restore"
  (( ${#restored[@]} == 0 )) || did "sysctls: ${restored[*]}"
  other=$(LC_ALL=C comm -13 "$BACKUP_DIR/sysctl.before" <(sysctl_snapshot) \
          | grep -F -f <(cut -d= -f1 "$BACKUP_DIR/sysctl.before" | sed 's/^/^/; s/$/=/') | tr '\n' ' ' || true)
  [[ -z "$other" ]] || warn "sysctls differing from before up (not touched by down.sh): $other"
else
  log "no sysctl record ($BACKUP_DIR/sysctl.restore): sysctls left as they are"
fi

# ------------------------------------------------------------------ iptables
# Same binaries (iptables 1.8.9, nf_tables backend) as kubelet and kube-proxy used.
clean_iptables() {
  local save=$1 restore=$2 family=$3 nft_family=$4 dump t tbl rules chains script n=0
  # A plain dump lists the tables that exist (`-t TABLE` would print an absent one).
  dump=$("$save" 2>/dev/null || true)
  for t in filter nat mangle; do
    tbl=$(awk -v t="*$t" '$0 == t { on = 1; next } on && /^COMMIT/ { on = 0 } on' <<<"$dump")
    rules=$(grep -E '^-A ' <<<"$tbl" | grep -E -- '(-j|-g) KUBE-' | grep -v '^-A KUBE-' || true)
    chains=$(grep -E '^:KUBE-' <<<"$tbl" | cut -d' ' -f1 | cut -c2- || true)
    [[ -n "$rules$chains" ]] || continue
    script="*$t"$'\n'
    # Jumps into KUBE-* from the other chains, then the KUBE-* chains themselves.
    while IFS= read -r r; do [[ -z "$r" ]] || script+="-D ${r#-A }"$'\n'; done <<<"$rules"
    while IFS= read -r c; do [[ -z "$c" ]] || script+="-F $c"$'\n'; done <<<"$chains"
    while IFS= read -r c; do [[ -z "$c" ]] || script+="-X $c"$'\n'; done <<<"$chains"
    script+="COMMIT"$'\n'
    if "$restore" --noflush <<<"$script"; then
      n=$((n + $(grep -c . <<<"$chains")))
    else
      problem "$restore failed for table $t"
    fi
  done
  (( n == 0 )) || did "$family: $n KUBE-* chains (and the rules jumping to them)"
  # Tables the nf_tables backend created for them that were absent before up and are
  # empty again (only built-in chains, policy ACCEPT, no rules).
  local before=$BACKUP_DIR/${family}.before
  [[ -f "$before" ]] || return 0
  dump=$("$save" 2>/dev/null || true)
  for t in filter nat mangle; do
    grep -qx "\*$t" "$before" && continue
    nft list table "$nft_family" "$t" >/dev/null 2>&1 || continue
    tbl=$(awk -v t="*$t" '$0 == t { on = 1; next } on && /^COMMIT/ { on = 0 } on' <<<"$dump")
    if ! grep -qE '^-A |^:[^ ]+ (DROP|REJECT) |^:[^ ]+ - ' <<<"$tbl"; then
      if nft delete table "$nft_family" "$t" 2>/dev/null; then did "$family: empty table $t (absent before up)"; fi
    fi
  done
  return 0
}
clean_iptables iptables-save iptables-restore iptables ip
clean_iptables ip6tables-save ip6tables-restore ip6tables ip6
log "sysctls and iptables restored in $(elapsed "$phase") s"

# ------------------------------------------------------- files on the host
phase=$EPOCHREALTIME
if [[ -f "$BACKUP_DIR/containerd-config.toml" ]]; then
  cp -p "$BACKUP_DIR/containerd-config.toml" "$CONTAINERD_CONFIG.wasmkube-cluster.tmp"
  mv -f "$CONTAINERD_CONFIG.wasmkube-cluster.tmp" "$CONTAINERD_CONFIG"
  want=$(cat "$BACKUP_DIR/containerd-config.sha256" 2>/dev/null || true)
  got=$(sha256sum < "$CONTAINERD_CONFIG" | cut -d' ' -f1)
  if [[ -n "$want" && "$want" != "$got" ]]; then
    problem "$CONTAINERD_CONFIG restored but its sha256 $got differs from the recorded $want"
  else
    rm -f "$BACKUP_DIR/containerd-config.toml" "$BACKUP_DIR/containerd-config.sha256"
    did "$CONTAINERD_CONFIG restored from the backup (sha256 $got)"
  fi
elif [[ -f "$BACKUP_DIR/containerd-config.absent" ]]; then
  rm -f "$CONTAINERD_CONFIG" "$BACKUP_DIR/containerd-config.absent"
  did "$CONTAINERD_CONFIG removed (there was none before up)"
elif grep -q 'wasmkube tests/cluster/up.sh' "$CONTAINERD_CONFIG" 2>/dev/null; then
  problem "$CONTAINERD_CONFIG is still ours but no backup exists in $BACKUP_DIR: restore it by hand"
fi
if [[ -e "$RESTART_HOOK" ]]; then rm -f "$RESTART_HOOK"; did "$RESTART_HOOK"; fi
rmdir "$(dirname "$RESTART_HOOK")" 2>/dev/null && did "$(dirname "$RESTART_HOOK") (empty)" || true

# The node installer's files, should an install not have been undone
# (node-installer/src/shim_install.rs, atomic_write.rs).
shim_link=/usr/local/bin/containerd-shim-wasmkube-v1
if [[ -L "$shim_link" ]]; then rm -f "$shim_link"; did "installer leftover $shim_link (symlink)"
elif [[ -e "$shim_link" ]]; then warn "$shim_link exists and is not a symlink: left alone"; fi
for p in /opt/wasmkube /var/lib/wasmkube "$CONTAINERD_CONFIG.wasmkube.orig" "$CONTAINERD_CONFIG.wasmkube.absent"; do
  if [[ -e "$p" ]]; then rm -rf "$p"; did "installer leftover $p"; fi
done
shopt -s nullglob
for p in "$(dirname "$CONTAINERD_CONFIG")"/.config.toml.wasmkube-tmp-*; do rm -f "$p"; did "installer leftover $p"; done
shopt -u nullglob

# containerd's state under /run/containerd: ours only (other containerds' shims may use it).
if [[ -d /run/containerd ]]; then
  if was_created /run/containerd && ! pgrep -x containerd >/dev/null && [[ -z "$(pgrep -f 'containerd-shim' || true)" ]]; then
    rm -rf /run/containerd && did "/run/containerd (created by up)"
  else
    rm -rf /run/containerd/containerd.sock /run/containerd/containerd.sock.ttrpc \
      /run/containerd/io.containerd.runtime.v2.task/k8s.io /run/containerd/io.containerd.grpc.v1.cri \
      /run/containerd/io.containerd.runtime.v1.linux/k8s.io /run/containerd/runc/k8s.io 2>/dev/null || true
    find /run/containerd -mindepth 1 -depth -type d -empty -delete 2>/dev/null || true
  fi
fi
# Directories the node created that did not exist before up.
for p in "${HOST_PATHS[@]}"; do
  if was_created "$p" && [[ -e "$p" ]]; then
    if findmnt -rn -o TARGET | grep -q "^$p\(/\|$\)"; then problem "$p still has mounts: not removed"; continue; fi
    rm -rf --one-file-system "$p" && did "$p (created by up)"
  fi
done
log "host files restored in $(elapsed "$phase") s"

# ------------------------------------------------------------ cluster state
if [[ -d "$CLUSTER_DIR" ]]; then
  if [[ -n "${KEEP_STATE:-}" && "${KEEP_STATE}" != 0 ]]; then
    log "KEEP_STATE=1: keeping $CLUSTER_DIR (certs, etcd data, configs, logs)"
  else
    if [[ -d "$BACKUP_DIR" ]]; then
      mkdir -p "$LOG_DIR/host-records"
      find "$BACKUP_DIR" -maxdepth 1 -type f -exec mv -f {} "$LOG_DIR/host-records/" \;
    fi
    find "$CLUSTER_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf --one-file-system {} +
    did "$CLUSTER_DIR state (kept: logs/)"
  fi
  # Records are used up either way: a later down.sh must not restore them again.
  rm -f "$BACKUP_DIR/sysctl.restore" "$BACKUP_DIR/created-paths" 2>/dev/null || true
fi

# -------------------------------------------------------------- verification
[[ -z "$(our_k8s_pids)" ]] || problem "Kubernetes processes still running: $(our_k8s_pids | tr '\n' ' ')"
[[ -z "$(our_containerd_pids)" ]] || problem "our containerd still running on $CONTAINERD_SOCK"
[[ -z "$(default_socket_containerd_pids)" ]] || warn "a containerd not started by up.sh serves $CONTAINERD_SOCK: left alone"
[[ -z "$(k8s_shim_pids)" ]] || problem "k8s.io shims still running"
n=$( { iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } | grep -c KUBE || true)
(( n == 0 )) || problem "$n iptables lines still mention KUBE"
! ip link show "$CNI_BRIDGE" >/dev/null 2>&1 || problem "bridge $CNI_BRIDGE still exists"
if (( problems > 0 )); then
  log "down finished with $problems problem(s) in $(elapsed) s"
  exit 1
fi
log "down: host restored in $(elapsed) s"
