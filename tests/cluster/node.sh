#!/usr/bin/env bash
# The extra worker nodes of the local cluster (`up.sh --nodes N`: nodes 2..N). Node 1 is the
# host itself, as in the single-node cluster. Every extra node has:
#   - its own mount namespace, where /run is a fresh tmpfs and /var/lib, /var/log, /opt,
#     /usr/local/bin, /etc/containerd and /etc/wasmkube are the node's own directories
#     ($CLUSTER_DIR/nodes/NAME/root/...): its containerd config, state, images and sockets, its
#     kubelet's pods, its installed shim, cache and restart hook are at the standard paths, and
#     the node installer patches that node's own files (hostPath / of a pod on the node is the
#     node's view, since the kubelet, containerd and runc all run in that namespace);
#   - its own network namespace: eth0 = $NODE_NET_PREFIX.I (a veth on the host bridge
#     $NODE_BRIDGE), its own pod bridge and subnet (10.244.(I-1).0/24, routed by the host), its
#     own iptables (its kube-proxy's);
#   - its own containerd (under containerd-supervise.sh), kubelet (cgroupRoot /NAME) and
#     kube-proxy.
# They share with the host: the PID namespace, the kernel, /usr (the same Debian binaries) and
# /var/tmp (the Kubernetes binaries, the cluster's certificates). See README.md "Many nodes".
#
# Usage (by up.sh and down.sh; root):
#   node.sh up I        start node I (2..) — certificates and kubeconfigs already in $PKI_DIR
#   node.sh down NAME   stop node NAME and remove all it had (idempotent)
#   node.sh exec NAME CMD...   run CMD in NAME's namespaces (node 1: on the host)
set -euo pipefail
LOG_TAG=node
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$CLUSTER_LIB_DIR/node-config.sh"
HERE=$CLUSTER_LIB_DIR
TIMEOUT=${TIMEOUT:-120}

# Directories a node keeps to itself (bind-mounted over the host's in its mount namespace).
PRIVATE_DIRS=(/var/lib /var/log /opt /usr/local/bin /etc/containerd /etc/wasmkube)

node_dir() { echo "$NODES_DIR/$1"; }
private_name() { local p=${1#/}; echo "${p//\//-}"; }
# in_node NAME CMD...: CMD in the node's mount and network namespaces.
in_node() {
  local dir; dir=$(node_dir "$1"); shift
  nsenter --mount="$dir/ns/mnt" --net="$dir/ns/net" -- "$@"
}

node_up() {
  local i=$1 name dir ip subnet gateway
  name=$(extra_node_name "$i"); dir=$(node_dir "$name"); ip=$(extra_node_ip "$i")
  subnet=$(extra_node_pod_subnet "$i"); gateway=${subnet%.0/*}.1
  [[ ! -e "$dir/ns/mnt" ]] || die "node $name exists ($dir): node.sh down $name first"
  local phase=$EPOCHREALTIME
  mkdir -p "$dir"/{ns,run,logs,config,cni/net.d,cni/ipam}
  for p in "${PRIVATE_DIRS[@]}"; do mkdir -p "$dir/root/$(private_name "$p")"; done

  # Namespaces, kept alive by bind mounts of their nsfs files (on a private mount, so the
  # mount namespace does not hold a reference to itself).
  mount --bind "$dir/ns" "$dir/ns"
  mount --make-private "$dir/ns"
  touch "$dir/ns/mnt" "$dir/ns/net"
  unshare --mount="$dir/ns/mnt" --net="$dir/ns/net" --propagation private true
  # The copy of the host's mount table: drop whatever the host had under the private paths
  # (node 1's pods, containerd's state), then mount the node's own.
  in_node "$name" sh -euc '
    findmnt -rno TARGET | grep -E "^/(run|var/lib|var/log)(/|$)" | sort -r | while read -r t; do
      umount -l "$t" 2>/dev/null || true
    done
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
    mkdir -p /run/lock
  '
  for p in "${PRIVATE_DIRS[@]}"; do
    [[ -d "$p" ]] || die "$p does not exist on the host: it cannot be a node's private directory"
    in_node "$name" mount --bind "$dir/root/$(private_name "$p")" "$p"
  done

  # Network: eth0 on the host's node bridge, the pod bridge, routes both ways.
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
    ip addr add "$NODE_NET_HOST/24" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
  fi
  local veth=wk-n$i
  ip link add "$veth" type veth peer name eth0 netns "$dir/ns/net"
  ip link set "$veth" master "$NODE_BRIDGE" up
  in_node "$name" sh -euc "
    ip link set lo up
    ip addr add $ip/24 dev eth0
    ip link set eth0 up
    ip route add default via $NODE_NET_HOST
    sysctl -qw net.ipv4.ip_forward=1
    ip link add $CNI_BRIDGE type bridge
    ip addr add $gateway/24 dev $CNI_BRIDGE
    ip link set $CNI_BRIDGE up
  "
  ip route replace "$subnet" via "$ip" dev "$NODE_BRIDGE"

  # cgroups: the node's kubelet puts its pods under /NAME in every v1 hierarchy.
  local mp
  for mp in $(awk '$3 == "cgroup" { print $2 }' /proc/mounts); do mkdir -p "$mp/$name"; done
  if [[ -d /sys/fs/cgroup/cpuset/$name ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus > "/sys/fs/cgroup/cpuset/$name/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems > "/sys/fs/cgroup/cpuset/$name/cpuset.mems"
  fi

  # containerd: the node's own config (the same as node 1's but its own CNI subnet and the
  # registries through the pod gateway), the restart hook, the supervisor.
  write_containerd_config "$dir/root/etc-containerd/config.toml" "$dir/config/certs.d" "$dir/cni/net.d" /var/lib/containerd/opt
  write_cni_conflist "$dir/cni/net.d" "$subnet" "$dir/cni/ipam"
  local r
  for r in "$REGISTRY" "$REGISTRY_AUTH"; do
    write_hosts_toml "$dir/config/certs.d" "$r" "http://$r" "http://$POD_GATEWAY:${r##*:}"
  done
  write_hosts_toml "$dir/config/certs.d" docker.io https://registry-1.docker.io "http://$POD_GATEWAY:${REGISTRY##*:}"
  write_restart_hook "$dir/root/etc-wasmkube/restart-containerd" "$dir/run/containerd.pid"
  mkdir -p "$dir/logs"
  in_node "$name" setsid nohup "$HERE/containerd-supervise.sh" "$dir" >/dev/null 2>&1 < /dev/null &
  local t=$SECONDS
  until in_node "$name" ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; do
    (( SECONDS - t < TIMEOUT )) || { tail -20 "$dir/logs/containerd.log" >&2; die "containerd of node $name did not come up"; }
    sleep 0.2
  done
  in_node "$name" ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --all-platforms "$CLUSTER_DIR/images/pause.tar" >/dev/null \
    || die "ctr images import of the sandbox image failed on node $name"

  # kubelet and kube-proxy, in the node's namespaces, talking to the apiserver through the
  # pod gateway (apiserver-forward).
  write_kubelet_config "$dir/config/kubelet.yaml" "$ip" "kubelet-$name" "/$name"
  start_in_node "$name" kubelet "$BIN_DIR/kubelet" --config="$dir/config/kubelet.yaml" \
    --kubeconfig="$CLUSTER_DIR/kubelet-$name.kubeconfig" --hostname-override="$name" \
    --node-ip="$ip" --v=1
  write_kube_proxy_config "$dir/config/kube-proxy.yaml" "$name" "$CLUSTER_DIR/kube-proxy-nodes.kubeconfig"
  start_in_node "$name" kube-proxy "$BIN_DIR/kube-proxy" --config="$dir/config/kube-proxy.yaml" --v=1
  local ready t=$SECONDS
  until [[ "$(kubectl_admin get node "$name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]; do
    for c in kubelet kube-proxy; do
      if ! kill -0 "$(cat "$dir/run/$c.pid")" 2>/dev/null; then tail -25 "$dir/logs/$c.log" >&2; die "$c of node $name exited"; fi
    done
    (( SECONDS - t < TIMEOUT )) || { tail -25 "$dir/logs/kubelet.log" >&2; die "node $name not Ready after ${TIMEOUT}s"; }
    sleep 0.2
  done
  until in_node "$name" iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -q -- "$KUBERNETES_SVC_IP/32"; do
    (( SECONDS - t < TIMEOUT )) || die "kube-proxy of node $name did not sync"
    sleep 0.2
  done
  log "node $name Ready (eth0 $ip, pods $subnet) in $(elapsed "$phase") s"
}

# start_in_node NAME COMPONENT CMD...: detached in the node's namespaces; pid in its run dir.
start_in_node() {
  local name=$1 c=$2 dir; shift 2; dir=$(node_dir "$name")
  # nsenter (no --fork) and setsid (not a group leader here) exec: $! is the component's pid.
  nsenter --mount="$dir/ns/mnt" --net="$dir/ns/net" -- setsid nohup "$@" >> "$dir/logs/$c.log" 2>&1 < /dev/null &
  echo $! > "$dir/run/$c.pid"
}

node_down() {
  local name=$1 dir pid
  dir=$(node_dir "$name")
  [[ -d "$dir" ]] || return 0
  local phase=$EPOCHREALTIME
  if [[ -e "$dir/ns/mnt" ]] && mountpoint -q "$dir/ns" 2>/dev/null; then
    # Pods through CRI while containerd and the kubelet still run, then the kubelet.
    if in_node "$name" ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
      in_node "$name" "$BIN_DIR/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 10s rmp -fa >/dev/null 2>&1 || true
    fi
  fi
  for c in kubelet kube-proxy; do
    pid=$(cat "$dir/run/$c.pid" 2>/dev/null || true)
    [[ -z "$pid" ]] || stop_pid "$pid" "$c of $name" 20
  done
  if [[ -e "$dir/ns/mnt" ]] && mountpoint -q "$dir/ns" 2>/dev/null \
     && in_node "$name" ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
    in_node "$name" "$BIN_DIR/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 10s rmp -fa >/dev/null 2>&1 || true
  fi
  touch "$dir/run/containerd.stop"
  pid=$(cat "$dir/run/containerd-supervise.pid" 2>/dev/null || true)
  [[ -z "$pid" ]] || stop_pid "$pid" "containerd supervisor of $name" 20
  pid=$(cat "$dir/run/containerd.pid" 2>/dev/null || true)
  [[ -z "$pid" ]] || stop_pid "$pid" "containerd of $name" 15
  # Whatever still runs in the node's mount namespace (shims, containers, a hook).
  if [[ -e "$dir/ns/mnt" ]] && mountpoint -q "$dir/ns" 2>/dev/null; then
    local ns left=()
    ns=$(stat -L -c %i "$dir/ns/mnt" 2>/dev/null || true)
    for p in /proc/[0-9]*; do
      [[ "$(stat -L -c %i "$p/ns/mnt" 2>/dev/null)" == "$ns" ]] && left+=("${p#/proc/}")
    done
    if (( ${#left[@]} > 0 )); then
      log "killing what is left in $name's mount namespace: $(for p in "${left[@]}"; do printf "%s(%s) " "$(cat "/proc/$p/comm" 2>/dev/null)" "$p"; done)"
      kill -KILL "${left[@]}" 2>/dev/null || true; sleep 0.5
    fi
  fi
  # Processes left in the node's cgroups (containers whose shim is gone), then the cgroups.
  kill_cgroup_tree "$name" >/dev/null
  local left
  left=$(remove_cgroup_tree "$name" | tr '\n' ' ')
  [[ -z "$left" ]] || warn "cannot remove cgroup(s) $left"
  # The namespaces go with their last reference: the nsfs bind mounts.
  if mountpoint -q "$dir/ns" 2>/dev/null; then
    umount "$dir/ns/mnt" 2>/dev/null || umount -l "$dir/ns/mnt" 2>/dev/null || true
    umount "$dir/ns/net" 2>/dev/null || umount -l "$dir/ns/net" 2>/dev/null || true
    umount "$dir/ns" 2>/dev/null || umount -l "$dir/ns" || true
  fi
  local i=${name##*-}
  ip route del "$(extra_node_pod_subnet "$i")" 2>/dev/null || true
  ip link del "wk-n$i" 2>/dev/null || true
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && [[ -z "$(ip -o link show master "$NODE_BRIDGE" 2>/dev/null)" ]]; then
    ip link del "$NODE_BRIDGE"
  fi
  kubectl_admin delete node "$name" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  mkdir -p "$LOG_DIR/nodes"
  rm -rf "${LOG_DIR:?}/nodes/$name"
  [[ ! -d "$dir/logs" ]] || mv "$dir/logs" "$LOG_DIR/nodes/$name"
  rm -rf --one-file-system "$dir"
  log "node $name removed in $(elapsed "$phase") s (logs in $LOG_DIR/nodes/$name)"
}

node_exec() {
  local name=$1; shift
  # The node's tools (crictl, kubectl) are the cluster's binaries; crictl asks the node's
  # containerd.
  export PATH=$BIN_DIR:$PATH CONTAINER_RUNTIME_ENDPOINT=unix://$CONTAINERD_SOCK
  if [[ $name == "$NODE_NAME" ]]; then exec "$@"; fi
  [[ -e "$(node_dir "$name")/ns/mnt" ]] || die "no node $name in $NODES_DIR"
  in_node "$name" "$@"
}

case ${1:-} in
  up) [[ $# -eq 2 && $2 =~ ^[0-9]+$ && $2 -ge 2 ]] || die "usage: node.sh up I (I >= 2)"; node_up "$2" ;;
  down) [[ $# -eq 2 ]] || die "usage: node.sh down NAME"; node_down "$2" ;;
  exec) [[ $# -ge 3 ]] || die "usage: node.sh exec NAME CMD..."; shift; node_exec "$@" ;;
  *) die "usage: node.sh up I | down NAME | exec NAME CMD..." ;;
esac
