# Shared settings and helpers for tests/cluster/{up,down}.sh (sourced, not run).
# shellcheck shell=bash

CLUSTER_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$CLUSTER_LIB_DIR/versions.env"

CLUSTER_DIR=${CLUSTER_DIR:-/var/tmp/wasmkube-cluster}
NODE_NAME=${NODE_NAME:-wasmkube-node}
BIN_DIR=${K8S_BIN_DIR:-/var/tmp/wasmkube-k8s/$K8S_VERSION/bin}

RUN_DIR=$CLUSTER_DIR/run
LOG_DIR=$CLUSTER_DIR/logs
PKI_DIR=$CLUSTER_DIR/pki
CFG_DIR=$CLUSTER_DIR/config
BACKUP_DIR=$CLUSTER_DIR/host-backup
CNI_CONF_DIR=$CLUSTER_DIR/cni/net.d
CNI_IPAM_DIR=$CLUSTER_DIR/cni/ipam
ADMIN_KUBECONFIG=$CLUSTER_DIR/admin.kubeconfig

# The node's containerd, at the standard paths a node installer expects.
CONTAINERD_CONFIG=/etc/containerd/config.toml
CONTAINERD_SOCK=/run/containerd/containerd.sock
RESTART_HOOK=/etc/wasmkube/restart-containerd
PAUSE_IMAGE=${PAUSE_IMAGE:-localhost/wasmkube/pause:0.1.0}

# Networking.
CNI_NETWORK=wasmkube-cluster
CNI_BRIDGE=wk-cni0
POD_SUBNET=10.244.0.0/24
POD_GATEWAY=10.244.0.1   # on $CNI_BRIDGE; the kubernetes Service's endpoint (apiserver-forward)
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10   # kube-system/kube-dns (as kubeadm); its endpoint is CoreDNS on $POD_GATEWAY:53

# Ports: all on 127.0.0.1, all away from the defaults.
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
APISERVER_PORT=16443
CONTROLLER_MANAGER_PORT=16257
SCHEDULER_PORT=16259
KUBELET_PORT=16250
KUBELET_HEALTHZ_PORT=16248
KUBE_PROXY_HEALTHZ_PORT=16256
KUBE_PROXY_METRICS_PORT=16249
COREDNS_READY_PORT=16181
METRICS_SERVER_PORT=14443
# Registries (Debian's docker-registry, distribution v2), plain HTTP on loopback as kind's
# local-registry pattern has it: REGISTRY serves anyone and is the node's mirror of docker.io
# (the project's docker.io/wasmkube/* images are pushed there, the node pulls them through it);
# REGISTRY_AUTH requires basic auth ($REGISTRY_AUTH_USER, password in $REGISTRY_AUTH_PASSWORD_FILE).
REGISTRY=localhost:5001
REGISTRY_AUTH=localhost:5002
REGISTRY_AUTH_USER=wasmkube
REGISTRY_AUTH_PASSWORD_FILE=$CLUSTER_DIR/registry-auth.password
# `wasmkube` (push), from the one cargo build.
WASMKUBE_CLI=${WASMKUBE_CLI:-${CARGO_TARGET_DIR:-/var/tmp/wasmkube-target}/x86_64-unknown-linux-gnu/release/wasmkube}

# Components in start order (down.sh stops them in reverse; containerd separately).
COMPONENTS=(registry registry-auth registry-forward registry-auth-forward etcd kube-apiserver apiserver-forward coredns kube-controller-manager kube-scheduler kubelet kube-proxy metrics-server)

# Host paths a node's Kubernetes creates; down.sh removes those that did not exist before up.
HOST_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/containerd
            /etc/containerd /etc/wasmkube)

# Sysctls kubelet/kube-proxy/CNI are known to set; up.sh adds any other it sees change.
KNOWN_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
               kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
               net.ipv4.conf.all.forwarding net.ipv4.conf.all.route_localnet
               net.ipv6.conf.all.forwarding net.bridge.bridge-nf-call-iptables
               net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max
               net.netfilter.nf_conntrack_tcp_timeout_established
               net.netfilter.nf_conntrack_tcp_timeout_close_wait
               net.netfilter.nf_conntrack_tcp_be_liberal)
# Keys whose value changes by itself (excluded from before/after diffs).
VOLATILE_SYSCTLS='^(kernel\.random\.|fs\.(dentry-state|inode-nr|inode-state|file-nr|aio-nr|quota\.)|kernel\.(ns_last_pid|pty\.nr|sched_|perf_)|net\.netfilter\.nf_conntrack_count|net\.ipv4\.(neigh|conf)\.(veth|wk-)|net\.ipv6\.(neigh|conf)\.(veth|wk-)|net\.ipv4\.route\.|net\.ipv6\.route\.|dev\.)'

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

_T0=$EPOCHREALTIME
log()  { printf '[%s %(%H:%M:%S)T] %s\n' "${LOG_TAG:-cluster}" -1 "$*"; }
warn() { log "WARNING: $*" >&2; }
die()  { log "ERROR: $*" >&2; exit 1; }
# Seconds (with ms) since the script started / since a saved $EPOCHREALTIME.
elapsed() { awk -v a="${1:-$_T0}" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

pidfile() { echo "$RUN_DIR/$1.pid"; }
# The pid from NAME's pid file if that process is alive, else nothing.
live_pid() {
  local f pid
  f=$(pidfile "$1")
  [[ -s "$f" ]] || return 1
  pid=$(<"$f")
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# stop_pids TIMEOUT_S PID...: SIGTERM to all, wait for all, SIGKILL whoever is left.
stop_pids() {
  local timeout=$1 i p alive; shift
  (( $# > 0 )) || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    alive=()
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
    (( ${#alive[@]} > 0 )) || return 0
    sleep 0.1
  done
  warn "pid(s) ${alive[*]} ignored SIGTERM for ${timeout}s: SIGKILL"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  sleep 0.5
}

# stop_pid PID LABEL [TIMEOUT_S]: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pid=$1 label=$2 timeout=${3:-15} i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { log "stopped $label (pid $pid)"; return 0; }
    sleep 0.1
  done
  warn "$label (pid $pid) ignored SIGTERM for ${timeout}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  warn "$label (pid $pid) still exists after SIGKILL"
}

# Is PID a containerd started by our supervisor (for this CLUSTER_DIR)?
is_our_containerd() {
  tr '\0' '\n' 2>/dev/null < "/proc/$1/environ" | grep -qxF "WASMKUBE_CLUSTER_DIR=$CLUSTER_DIR"
}
# Whether PID lives in this process's mount namespace (the extra nodes' containerds, shims and
# containers live in their own: node.sh).
in_our_mount_ns() { [[ "$(stat -L -c %i "/proc/$1/ns/mnt" 2>/dev/null)" == "$(stat -L -c %i /proc/self/ns/mnt)" ]]; }
# containerd processes serving the default socket (no --address flag) of this mount namespace.
default_socket_containerd_pids() {
  local p args
  for p in $(pgrep -x containerd || true); do
    in_our_mount_ns "$p" || continue
    args=$(tr '\0' '\n' 2>/dev/null < "/proc/$p/cmdline") || continue   # gone meanwhile
    grep -qx -- '--address' <<<"$args" || echo "$p"
  done
  return 0
}

# Mount points of the cgroup hierarchies (v1 controllers and the v2 unified one).
cgroup_mounts() { awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts; }
# kill_cgroup_tree NAME: SIGKILLs every process in cgroup /NAME and below, in every hierarchy;
# prints their pids.
kill_cgroup_tree() {
  local mp procs
  for mp in $(cgroup_mounts); do
    [[ -d "$mp/$1" ]] || continue
    procs=$(find "$mp/$1" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | tr '\n' ' ')
    # shellcheck disable=SC2086
    [[ -z "${procs// /}" ]] || { kill -KILL $procs 2>/dev/null || true; echo "$procs"; }
  done
}
# remove_cgroup_tree NAME: removes cgroup /NAME and its children in every hierarchy (retrying
# while killed processes leave); prints the directories that could not be removed.
remove_cgroup_tree() {
  local mp
  for mp in $(cgroup_mounts); do
    [[ -d "$mp/$1" ]] || continue
    for _ in 1 2 3 4 5; do
      find "$mp/$1" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [[ -d "$mp/$1" ]] || break
      sleep 0.5
    done
    [[ ! -d "$mp/$1" ]] || echo "$mp/$1"
  done
}

kubectl_admin() { "$BIN_DIR/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }
crictl_node() {
  local cfg=(); [[ ! -f "$BIN_DIR/crictl.yaml" ]] || cfg=(--config "$BIN_DIR/crictl.yaml")
  "$BIN_DIR/crictl" "${cfg[@]}" --runtime-endpoint "unix://$CONTAINERD_SOCK" --image-endpoint "unix://$CONTAINERD_SOCK" --timeout 10s "$@"
}

# All sysctls as key=value lines, volatile ones excluded.
sysctl_snapshot() {
  sysctl -a 2>/dev/null | sed 's/ = /=/' | grep -Ev "$VOLATILE_SYSCTLS" | LC_ALL=C sort
}
