#!/usr/bin/env bash
# Bring up a real single-node Kubernetes on this host (see README.md):
# containerd (supervised, standard paths), etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy, all on
# 127.0.0.1. Undo everything with tests/cluster/down.sh.
#
# Usage: tests/cluster/up.sh [--nodes N] [IMAGE.tar ...]
#   --nodes N: N nodes (default 1). Node 1 is this host; nodes 2..N ($NODE_NAME-2, ...) each get
#   their own mount and network namespaces, containerd, kubelet and kube-proxy (node.sh).
#   Each IMAGE.tar (OCI image archive) named docker.io/P:T is pushed (wasmkube push) to the
#   local registry $REGISTRY as P:T; the node's containerd pulls docker.io through that registry.
#   The sandbox image localhost/wasmkube/pause:0.1.0 is imported (the kubelet never pulls it)
#   from (first match): an archive among the arguments that holds it, $PAUSE_ARCHIVE, or a
#   static build of tests/harness/assets/pause.c (gcc -static) built by `wasmkube image build`.
# Env: CLUSTER_DIR (/var/tmp/wasmkube-cluster)  NODE_NAME (wasmkube-node)  KUBELET_MAX_PODS (110)
#      PAUSE_ARCHIVE  K8S_BIN_DIR  TIMEOUT (per wait, seconds; 120)
set -euo pipefail
LOG_TAG=up
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$CLUSTER_LIB_DIR/node-config.sh"
HERE=$CLUSTER_LIB_DIR
TIMEOUT=${TIMEOUT:-120}
NODES=1
if [[ ${1:-} == --nodes ]]; then
  [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--nodes needs a number >= 1"
  NODES=$2; shift 2
fi
(( NODES <= 50 )) || die "--nodes $NODES: at most 50"

[[ $EUID -eq 0 ]] || die "must run as root"
for img in "$@"; do [[ -f "$img" ]] || die "image archive not found: $img"; done
[[ -z "${PAUSE_ARCHIVE:-}" || -f "$PAUSE_ARCHIVE" ]] || die "PAUSE_ARCHIVE=$PAUSE_ARCHIVE not found"

# ---------------------------------------------------------------- prerequisites
phase=$EPOCHREALTIME
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl crictl apiserver-forward coredns metrics-server; do
  if [[ ! -x "$BIN_DIR/$b" ]]; then
    log "$BIN_DIR/$b missing: running build.sh (a cold build takes ~10 min on 2 cores)"
    "$HERE/build.sh"
    break
  fi
done
for t in containerd ctr runc docker-registry htpasswd tar openssl jq curl dig iptables ip6tables iptables-save ip findmnt nsenter setsid; do
  command -v "$t" >/dev/null || die "missing tool: $t (apt-get install containerd runc docker-registry apache2-utils openssl jq dnsutils iptables iproute2 util-linux)"
done
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] \
  || die "CNI plugins missing in /usr/lib/cni (apt-get install containernetworking-plugins)"
if ! command -v etcd >/dev/null; then
  log "installing Debian etcd-server (not as a service)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server >/dev/null
fi
# The package must not run etcd as a system service: ours runs from up.sh.
if [[ -x /etc/init.d/etcd ]]; then
  for p in $(pgrep -x etcd || true); do
    if ! tr '\0' ' ' 2>/dev/null < "/proc/$p/cmdline" | grep -q -- "--data-dir $CLUSTER_DIR/etcd"; then
      log "stopping the etcd system service (pid $p)"; invoke-rc.d etcd stop >/dev/null 2>&1 || stop_pid "$p" "system etcd"
    fi
  done
  update-rc.d etcd disable >/dev/null 2>&1 || true
fi

# An earlier cluster (or its remains): tear it down first.
ours=""
for p in $(default_socket_containerd_pids); do is_our_containerd "$p" && ours=1; done
if [[ -n "$ours" ]] || compgen -G "$RUN_DIR/*.pid" >/dev/null || compgen -G "$NODES_DIR/*" >/dev/null || [[ -e "$BACKUP_DIR/containerd-config.toml" || -e "$BACKUP_DIR/containerd-config.absent" ]]; then
  log "a cluster (or its remains) is up in $CLUSTER_DIR: running down.sh first"
  "$HERE/down.sh"
fi
# A containerd we did not start on the standard socket would be clobbered.
for p in $(default_socket_containerd_pids); do
  die "a containerd not started by up.sh serves the default socket (pid $p): stop it first"
done
log "prerequisites ok in $(elapsed "$phase") s"

mkdir -p "$RUN_DIR" "$LOG_DIR" "$PKI_DIR" "$CFG_DIR" "$BACKUP_DIR" "$CNI_CONF_DIR" "$CNI_IPAM_DIR" "$CLUSTER_DIR/images"
rm -f "$RUN_DIR"/*
for f in "$LOG_DIR"/*.log; do [[ -e "$f" ]] && mv -f "$f" "$f.prev"; done

# start NAME CMD...: detached (own session), output to logs/NAME.log, pid in run/NAME.pid.
start() {
  local name=$1; shift
  setsid nohup "$@" >> "$LOG_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$(pidfile "$name")"
}
# wait_for NAME WHAT CMD...: until CMD succeeds; fail early if NAME's process died.
wait_for() {
  local name=$1 what=$2 t=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    if ! live_pid "$name" >/dev/null; then tail -25 "$LOG_DIR/$name.log" >&2; die "$name exited while waiting for $what"; fi
    if (( SECONDS - t >= TIMEOUT )); then tail -25 "$LOG_DIR/$name.log" >&2; die "timed out after ${TIMEOUT}s waiting for $what"; fi
    sleep 0.2
  done
}

# ------------------------------------------------------------ host state record
phase=$EPOCHREALTIME
for p in "${HOST_PATHS[@]}" /var/lib/cni /var/lib/cni/results /var/lib/cni/networks /run/containerd /run/netns; do
  [[ -e "$p" ]] || echo "$p"
done > "$BACKUP_DIR/created-paths"
sysctl_snapshot > "$BACKUP_DIR/sysctl.before"
: > "$BACKUP_DIR/sysctl.restore"
for k in "${KNOWN_SYSCTLS[@]}"; do grep -m1 "^$k=" "$BACKUP_DIR/sysctl.before" >> "$BACKUP_DIR/sysctl.restore" || true; done
iptables-save > "$BACKUP_DIR/iptables.before" 2>/dev/null || true
ip6tables-save > "$BACKUP_DIR/ip6tables.before" 2>/dev/null || true
nft list tables > "$BACKUP_DIR/nft-tables.before" 2>/dev/null || true
if [[ -e "$CONTAINERD_CONFIG" ]]; then
  cp -p "$CONTAINERD_CONFIG" "$BACKUP_DIR/containerd-config.toml"
  sha256sum < "$CONTAINERD_CONFIG" | cut -d' ' -f1 > "$BACKUP_DIR/containerd-config.sha256"
else
  : > "$BACKUP_DIR/containerd-config.absent"
fi
log "host state recorded in $BACKUP_DIR ($(elapsed "$phase") s)"

# ------------------------------------------------------------------ certificates
phase=$EPOCHREALTIME
ossl() { openssl "$@" 2>>"$LOG_DIR/openssl.log"; }
ossl ecparam -name prime256v1 -genkey -noout -out "$PKI_DIR/ca.key"
ossl req -x509 -new -key "$PKI_DIR/ca.key" -days 3650 -subj "/CN=wasmkube-test-ca" -out "$PKI_DIR/ca.crt"
# The aggregation layer's own CA (as kubeadm's front-proxy-ca): only the apiserver's proxy client
# holds a certificate from it, so no other client can assert X-Remote-User to an extension server.
ossl ecparam -name prime256v1 -genkey -noout -out "$PKI_DIR/front-proxy-ca.key"
ossl req -x509 -new -key "$PKI_DIR/front-proxy-ca.key" -days 3650 -subj "/CN=wasmkube-test-front-proxy-ca" \
  -out "$PKI_DIR/front-proxy-ca.crt"
# [CA=NAME] cert NAME SUBJECT USAGE(client|server|both) [SAN]   (CA defaults to ca)
cert() {
  local name=$1 subj=$2 usage=$3 san=${4:-} eku ext="$PKI_DIR/$1.ext" ca=${CA:-ca}
  case $usage in client) eku=clientAuth ;; server) eku=serverAuth ;; both) eku=serverAuth,clientAuth ;; esac
  { echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [[ -z "$san" ]] || echo "subjectAltName=$san"; } > "$ext"
  ossl ecparam -name prime256v1 -genkey -noout -out "$PKI_DIR/$name.key"
  ossl req -new -key "$PKI_DIR/$name.key" -subj "$subj" -out "$PKI_DIR/$name.csr"
  ossl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/$ca.crt" -CAkey "$PKI_DIR/$ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$PKI_DIR/$name.crt"
  rm -f "$PKI_DIR/$name.csr" "$ext"
}
cert apiserver "/CN=kube-apiserver" server \
  "IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,IP:$POD_GATEWAY,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" client
cert admin "/O=system:masters/CN=wasmkube-admin" client
cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" client
cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" server "IP:127.0.0.1,DNS:$NODE_NAME,DNS:localhost"
cert controller-manager "/CN=system:kube-controller-manager" client
cert scheduler "/CN=system:kube-scheduler" client
cert kube-proxy "/CN=system:kube-proxy" client
for ((i = 2; i <= NODES; i++)); do
  n=$(extra_node_name "$i")
  cert "kubelet-$n" "/O=system:nodes/CN=system:node:$n" client
  cert "kubelet-$n-serving" "/O=system:nodes/CN=system:node:$n" server "IP:$(extra_node_ip "$i"),DNS:$n"
done
CA=front-proxy-ca cert front-proxy-client "/CN=front-proxy-client" client
cert metrics-server "/CN=metrics-server" server "DNS:metrics-server.kube-system.svc,IP:$POD_GATEWAY"
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI_DIR/sa.key"
ossl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub"
chmod 600 "$PKI_DIR"/*.key

# kubeconfig NAME CERT [SERVER_IP]: SERVER_IP for the extra nodes, which reach the apiserver
# through apiserver-forward on the pod gateway.
kubeconfig() {
  cat > "$CLUSTER_DIR/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: wasmkube
  cluster:
    server: https://${3:-127.0.0.1}:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$PKI_DIR/ca.crt")
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$PKI_DIR/$2.crt")
    client-key-data: $(base64 -w0 "$PKI_DIR/$2.key")
contexts:
- name: wasmkube
  context: {cluster: wasmkube, user: $1}
current-context: wasmkube
EOF
  chmod 600 "$CLUSTER_DIR/$1.kubeconfig"
}
kubeconfig admin admin
kubeconfig kubelet kubelet
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler
kubeconfig kube-proxy kube-proxy
for ((i = 2; i <= NODES; i++)); do
  n=$(extra_node_name "$i")
  kubeconfig "kubelet-$n" "kubelet-$n" "$POD_GATEWAY"
done
(( NODES == 1 )) || kubeconfig kube-proxy-nodes kube-proxy "$POD_GATEWAY"
T_CERTS=$(elapsed "$phase")
log "certificates and kubeconfigs in $T_CERTS s"

# -------------------------------------------------------------------- containerd
phase=$EPOCHREALTIME
mkdir -p "$(dirname "$CONTAINERD_CONFIG")"
write_containerd_config "$CONTAINERD_CONFIG" "$CFG_DIR/certs.d" "$CNI_CONF_DIR" /var/lib/containerd/opt
write_cni_conflist "$CNI_CONF_DIR" "$POD_SUBNET" "$CNI_IPAM_DIR"
# The bridge and its gateway address exist before the first pod (the CNI bridge
# plugin adopts both): the kubernetes Service's endpoint is $POD_GATEWAY:$APISERVER_PORT,
# relayed to the apiserver on 127.0.0.1 by apiserver-forward (Endpoints may not be loopback).
ip link show "$CNI_BRIDGE" >/dev/null 2>&1 || ip link add "$CNI_BRIDGE" type bridge
ip addr replace "$POD_GATEWAY/${POD_SUBNET#*/}" dev "$CNI_BRIDGE"
ip link set "$CNI_BRIDGE" up

# Host restart hook for the node installer (hosts without systemd).
write_restart_hook "$RESTART_HOOK" "$RUN_DIR/containerd.pid"

rm -f "$RUN_DIR/containerd.stop"
setsid nohup "$HERE/containerd-supervise.sh" "$CLUSTER_DIR" >/dev/null 2>&1 < /dev/null &
t=$SECONDS
until [[ -S "$CONTAINERD_SOCK" ]] && ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1; do
  (( SECONDS - t < TIMEOUT )) || { tail -20 "$LOG_DIR/containerd.log" >&2; die "containerd did not come up"; }
  sleep 0.2
done
log "containerd $(ctr --address "$CONTAINERD_SOCK" version 2>/dev/null | awk '/Server:/{s=1} s&&/Version:/{print $2; exit}') up (pid $(cat "$RUN_DIR/containerd.pid"), supervisor pid $(cat "$RUN_DIR/containerd-supervise.pid")) in $(elapsed "$phase") s"

phase=$EPOCHREALTIME
has_image() { ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -qxF "$1"; }
# The registries, and the images pushed to them: the node pulls every image but the sandbox
# image from a registry, as real nodes do.
rm -rf "$CLUSTER_DIR/registry"
mkdir -p "$CLUSTER_DIR/registry"
head -c 18 /dev/urandom | base64 | tr '+/' 'xy' > "$REGISTRY_AUTH_PASSWORD_FILE"
chmod 600 "$REGISTRY_AUTH_PASSWORD_FILE"
htpasswd -Bbn "$REGISTRY_AUTH_USER" "$(<"$REGISTRY_AUTH_PASSWORD_FILE")" > "$CLUSTER_DIR/registry/htpasswd"
# registry_config NAME PORT [htpasswd]
registry_config() {
  cat <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $CLUSTER_DIR/registry/$1
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$2
  secret: wasmkube-local-cluster
EOF
  [[ -z "${3:-}" ]] || printf 'auth:\n  htpasswd:\n    realm: wasmkube-local\n    path: %s\n' "$CLUSTER_DIR/registry/htpasswd"
}
registry_config registry "${REGISTRY##*:}" > "$CFG_DIR/registry.yml"
registry_config registry-auth "${REGISTRY_AUTH##*:}" htpasswd > "$CFG_DIR/registry-auth.yml"
start registry docker-registry serve "$CFG_DIR/registry.yml"
start registry-auth docker-registry serve "$CFG_DIR/registry-auth.yml"
wait_for registry "the registry on $REGISTRY" curl -fsS "http://$REGISTRY/v2/"
wait_for registry-auth "the registry on $REGISTRY_AUTH" \
  curl -fsS -u "$REGISTRY_AUTH_USER:$(<"$REGISTRY_AUTH_PASSWORD_FILE")" "http://$REGISTRY_AUTH/v2/"
# containerd's registry hosts (config_path): both registries over plain HTTP, and $REGISTRY as
# the mirror of docker.io (containerd asks the mirror first, docker.io itself after).
hosts_toml() { write_hosts_toml "$CFG_DIR/certs.d" "$@"; }
# (The host entries name 127.0.0.1, where the registries listen, not localhost, which may
# resolve to ::1 first.)
hosts_toml "$REGISTRY" "http://$REGISTRY" "http://127.0.0.1:${REGISTRY##*:}"
hosts_toml "$REGISTRY_AUTH" "http://$REGISTRY_AUTH" "http://127.0.0.1:${REGISTRY_AUTH##*:}"
hosts_toml docker.io https://registry-1.docker.io "http://127.0.0.1:${REGISTRY##*:}"
log "registries up: $REGISTRY (docker.io mirror), $REGISTRY_AUTH (basic auth) in $(elapsed "$phase") s"

phase=$EPOCHREALTIME
for img in "$@"; do
  name=$(tar -xOf "$img" index.json | jq -r '.manifests[0].annotations["io.containerd.image.name"] // empty')
  [[ -n "$name" ]] || die "$img names no image (io.containerd.image.name in its index.json)"
  if [[ $name == "$PAUSE_IMAGE" ]]; then
    # The sandbox image is the one import: the kubelet never pulls it.
    log "importing the sandbox image $name"
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --all-platforms "$img" 2>&1 | sed 's/^/    /' \
      || die "ctr images import failed for $img"
    continue
  fi
  [[ $name == docker.io/* ]] || die "$img is $name: only docker.io/ images are served through the mirror $REGISTRY"
  [[ -x "$WASMKUBE_CLI" ]] || die "wasmkube (WASMKUBE_CLI=$WASMKUBE_CLI) is not built: scripts/build.sh"
  "$WASMKUBE_CLI" push "$img" "$REGISTRY/${name#docker.io/}" | sed 's/^/    /' \
    || die "wasmkube push of $img to $REGISTRY failed"
done
if ! has_image "$PAUSE_IMAGE"; then
  pause_archive=${PAUSE_ARCHIVE:-}
  if [[ -z "$pause_archive" ]]; then
    log "no archive with $PAUSE_IMAGE given: building it from tests/harness/assets/pause.c"
    command -v gcc >/dev/null || die "gcc missing: pass a pause archive (PAUSE_ARCHIVE=... or as an argument)"
    [[ -x "$WASMKUBE_CLI" ]] || die "wasmkube (WASMKUBE_CLI=$WASMKUBE_CLI) is not built: scripts/build.sh"
    root=$(mktemp -d)
    gcc -static -O2 -o "$root/pause" "$HERE/../harness/assets/pause.c"
    strip "$root/pause" 2>/dev/null || true
    printf 'FROM scratch\nCOPY --chmod=755 pause /pause\nENTRYPOINT ["/pause"]\n' > "$root/Dockerfile"
    pause_archive=$CLUSTER_DIR/images/pause.tar
    "$WASMKUBE_CLI" image build -f "$root/Dockerfile" --context "$root" --name "$PAUSE_IMAGE" -o "$pause_archive" >/dev/null
    rm -rf "$root"
  fi
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --all-platforms "$pause_archive" 2>&1 | sed 's/^/    /' \
    || die "ctr images import failed for $pause_archive"
  has_image "$PAUSE_IMAGE" || die "sandbox image $PAUSE_IMAGE is still missing after the import"
fi
if (( NODES > 1 )); then
  # The extra nodes import the sandbox image from here; they reach the registries through
  # relays on the pod gateway (the registries listen on loopback).
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images export "$CLUSTER_DIR/images/pause.tar" "$PAUSE_IMAGE" \
    || die "cannot export $PAUSE_IMAGE for the extra nodes"
  start registry-forward "$BIN_DIR/apiserver-forward" "$POD_GATEWAY:${REGISTRY##*:}" "127.0.0.1:${REGISTRY##*:}"
  start registry-auth-forward "$BIN_DIR/apiserver-forward" "$POD_GATEWAY:${REGISTRY_AUTH##*:}" "127.0.0.1:${REGISTRY_AUTH##*:}"
fi
T_IMAGES=$(elapsed "$phase")
log "images pushed in $T_IMAGES s"

# ---------------------------------------------------------------- components
phase=$EPOCHREALTIME
rm -rf "$CLUSTER_DIR/etcd"
start etcd etcd --name "$NODE_NAME" --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
  --logger zap --log-outputs stderr --log-level warn
wait_for etcd "etcd health" curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health"
T_ETCD=$(elapsed "$phase")
log "etcd $(etcd --version | awk '/etcd Version/{print $3}') healthy in $T_ETCD s"

phase=$EPOCHREALTIME
# An audit log of the wasmkube operator's requests only (its ServiceAccount): what bench/cluster.sh
# counts as the operator's API requests; every other client is not logged.
cat > "$CFG_DIR/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["system:serviceaccount:wasmkube-system:wasmkube-operator"]
- level: None
EOF
start kube-apiserver "$BIN_DIR/kube-apiserver" \
  --audit-policy-file="$CFG_DIR/audit-policy.yaml" --audit-log-path="$LOG_DIR/audit.log" \
  --audit-log-maxsize=200 --audit-log-maxbackup=1 \
  --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --advertise-address="$POD_GATEWAY" \
  --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --client-ca-file="$PKI_DIR/ca.crt" \
  --tls-cert-file="$PKI_DIR/apiserver.crt" --tls-private-key-file="$PKI_DIR/apiserver.key" \
  --kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI_DIR/ca.crt" \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI_DIR/sa.pub" --service-account-signing-key-file="$PKI_DIR/sa.key" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --requestheader-client-ca-file="$PKI_DIR/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="$PKI_DIR/front-proxy-client.crt" \
  --proxy-client-key-file="$PKI_DIR/front-proxy-client.key" \
  --allow-privileged=true --service-cluster-ip-range="$SERVICE_CIDR" \
  --profiling=false --v=1
wait_for kube-apiserver "apiserver /readyz" \
  curl -fsS --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" \
  "https://127.0.0.1:$APISERVER_PORT/readyz"
T_APISERVER=$(elapsed "$phase")
start apiserver-forward "$BIN_DIR/apiserver-forward" "$POD_GATEWAY:$APISERVER_PORT" "127.0.0.1:$APISERVER_PORT"
AT_APISERVER=$(elapsed)
log "kube-apiserver ready in $T_APISERVER s (at $AT_APISERVER s)"

# A kube-system Service served by a host process on the bridge's gateway (CoreDNS,
# metrics-server), as YAML: the Service and an EndpointSlice pointing at $POD_GATEWAY.
# host_service NAME LABELS CLUSTER_IP("" = allocated) SERVICE_PORTS SLICE_PORTS
host_service() {
  local name=$1 labels=$2 cluster_ip=$3 service_ports=$4 slice_ports=$5
  cat <<EOF
apiVersion: v1
kind: Service
metadata:
  name: $name
  namespace: kube-system
  labels: $labels
spec:
${cluster_ip:+  clusterIP: $cluster_ip
}  ports:
$(sed 's/^/  /' <<<"$service_ports")
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $name-host
  namespace: kube-system
  labels:
    kubernetes.io/service-name: $name
    endpointslice.kubernetes.io/managed-by: up.sh.wasmkube.local
addressType: IPv4
endpoints:
- addresses: ["$POD_GATEWAY"]
  conditions: {ready: true}
ports:
$slice_ports
EOF
}

# Cluster DNS, as kubeadm sets it up: the kube-dns Service ($DNS_SVC_IP) in kube-system,
# served by CoreDNS's kubernetes plugin. CoreDNS runs as a host process on the bridge's
# gateway (like apiserver-forward) and the Service's EndpointSlice points there. It answers
# for cluster.local only: this host has no upstream resolver to forward to.
cat > "$CFG_DIR/Corefile" <<EOF
.:53 {
    bind $POD_GATEWAY
    errors
    ready 127.0.0.1:$COREDNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $ADMIN_KUBECONFIG
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    cache 30
    loadbalance
}
EOF
start coredns "$BIN_DIR/coredns" -conf "$CFG_DIR/Corefile"
kube_system() { kubectl_admin get namespace kube-system; }
wait_for kube-apiserver "namespace kube-system" kube_system
host_service kube-dns "{k8s-app: kube-dns, kubernetes.io/name: CoreDNS}" "$DNS_SVC_IP" \
  "- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}" \
  "- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}" | kubectl_admin apply -f - >/dev/null

phase=$EPOCHREALTIME
start kube-controller-manager "$BIN_DIR/kube-controller-manager" \
  --kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$CONTROLLER_MANAGER_PORT" \
  --cluster-signing-cert-file="$PKI_DIR/ca.crt" --cluster-signing-key-file="$PKI_DIR/ca.key" \
  --root-ca-file="$PKI_DIR/ca.crt" --service-account-private-key-file="$PKI_DIR/sa.key" \
  --use-service-account-credentials=true --controllers='*' \
  --allocate-node-cidrs=false --leader-elect=false --profiling=false --v=1 \
  --horizontal-pod-autoscaler-sync-period=5s
start kube-scheduler "$BIN_DIR/kube-scheduler" \
  --kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" --leader-elect=false --profiling=false --v=1

write_kubelet_config "$CFG_DIR/kubelet.yaml" 127.0.0.1 kubelet ""
# --cloud-provider=external: the kubelet then leaves node addresses alone once set (it
# would otherwise resolve the node name by DNS and pick eth0's address); up.sh sets
# InternalIP 127.0.0.1 and removes the "uninitialized" taint a cloud controller would.
start kubelet "$BIN_DIR/kubelet" --config="$CFG_DIR/kubelet.yaml" \
  --kubeconfig="$CLUSTER_DIR/kubelet.kubeconfig" --hostname-override="$NODE_NAME" \
  --cloud-provider=external --v=1

write_kube_proxy_config "$CFG_DIR/kube-proxy.yaml" "$NODE_NAME" "$CLUSTER_DIR/kube-proxy.kubeconfig"
start kube-proxy "$BIN_DIR/kube-proxy" --config="$CFG_DIR/kube-proxy.yaml" --v=1

node_exists() { kubectl_admin get node "$NODE_NAME"; }
wait_for kubelet "node $NODE_NAME to register" node_exists
log "node $NODE_NAME registered after $(elapsed "$phase") s"
# Address and taint, as a cloud controller manager would set them.
set_node_address() {
  kubectl_admin patch node "$NODE_NAME" --subresource=status --type=merge \
    -p "{\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"127.0.0.1\"},{\"type\":\"Hostname\",\"address\":\"$NODE_NAME\"}]}}" >/dev/null
}
set_node_address
kubectl_admin taint node "$NODE_NAME" node.cloudprovider.kubernetes.io/uninitialized:NoSchedule- >/dev/null 2>&1 || true
node_ready() { [[ "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]; }
wait_for kubelet "node $NODE_NAME Ready" node_ready
T_NODE=$(elapsed "$phase")
AT_NODE=$(elapsed)
log "node $NODE_NAME Ready $T_NODE s after the apiserver (at $AT_NODE s)"
default_sa() { kubectl_admin -n default get serviceaccount default; }
wait_for kube-controller-manager "the default ServiceAccount" default_sa
kube_proxy_synced() { iptables -t nat -S KUBE-SERVICES | grep -q -- "$KUBERNETES_SVC_IP/32"; }
wait_for kube-proxy "kube-proxy's iptables rules" kube_proxy_synced
# The apiserver through its ClusterIP (kube-proxy DNAT -> bridge gateway -> apiserver-forward).
svc_ready() { curl -fsS --max-time 3 --cacert "$PKI_DIR/ca.crt" --cert "$PKI_DIR/admin.crt" --key "$PKI_DIR/admin.key" "https://$KUBERNETES_SVC_IP/readyz"; }
wait_for apiserver-forward "https://$KUBERNETES_SVC_IP/readyz (the kubernetes Service)" svc_ready
coredns_ready() { curl -fsS --max-time 3 "http://127.0.0.1:$COREDNS_READY_PORT/ready"; }
wait_for coredns "CoreDNS /ready (its kubernetes plugin synced)" coredns_ready
# A name through the Service address, as a pod asks it (kube-proxy DNAT -> CoreDNS).
dns_answers() { [[ "$(dig +short +time=2 +tries=1 "@$DNS_SVC_IP" kubernetes.default.svc.cluster.local A)" == "$KUBERNETES_SVC_IP" ]]; }
wait_for coredns "kubernetes.default.svc.cluster.local from $DNS_SVC_IP" dns_answers
# metrics-server (resource metrics for the HPA): a host process like CoreDNS, behind an
# APIService whose Service points at the pod gateway; it scrapes the kubelet's /metrics/resource
# and checks the kubelet's serving certificate against the cluster CA.
start metrics-server "$BIN_DIR/metrics-server" \
  --kubeconfig="$ADMIN_KUBECONFIG" --authentication-kubeconfig="$ADMIN_KUBECONFIG" \
  --authorization-kubeconfig="$ADMIN_KUBECONFIG" \
  --bind-address="$POD_GATEWAY" --secure-port="$METRICS_SERVER_PORT" \
  --tls-cert-file="$PKI_DIR/metrics-server.crt" --tls-private-key-file="$PKI_DIR/metrics-server.key" \
  --kubelet-preferred-address-types=InternalIP --kubelet-use-node-status-port \
  --kubelet-certificate-authority="$PKI_DIR/ca.crt" --metric-resolution=15s
{
  host_service metrics-server "{k8s-app: metrics-server}" "" \
    "- {name: https, port: 443, protocol: TCP, targetPort: $METRICS_SERVER_PORT}" \
    "- {name: https, port: $METRICS_SERVER_PORT, protocol: TCP}"
  cat <<EOF
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
  labels: {k8s-app: metrics-server}
spec:
  service: {name: metrics-server, namespace: kube-system, port: 443}
  group: metrics.k8s.io
  version: v1beta1
  caBundle: $(base64 -w0 "$PKI_DIR/ca.crt")
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
} | kubectl_admin apply -f - >/dev/null
metrics_available() { [[ "$(kubectl_admin get apiservice v1beta1.metrics.k8s.io -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" == True ]]; }
wait_for metrics-server "APIService v1beta1.metrics.k8s.io Available" metrics_available
# The extra nodes (node.sh), now that the control plane, DNS and the registries serve.
for ((i = 2; i <= NODES; i++)); do
  "$HERE/node.sh" up "$i" || die "node $(extra_node_name "$i") did not come up (logs in $NODES_DIR/$(extra_node_name "$i")/logs)"
done
# The address must survive the kubelet's status updates.
addr() { kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}'; }
[[ "$(addr)" == 127.0.0.1 ]] || { warn "node InternalIP lost: setting it again"; set_node_address; }
for c in "${COMPONENTS[@]}"; do
  [[ $NODES -gt 1 || $c != *-forward || $c == apiserver-forward ]] || continue
  live_pid "$c" >/dev/null || die "$c is not running (see $LOG_DIR/$c.log)"
done

# ------------------------------------------------------------ host state after up
sysctl_snapshot > "$BACKUP_DIR/sysctl.after-up"
while IFS= read -r line; do
  k=${line%%=*}
  grep -q "^$k=" "$BACKUP_DIR/sysctl.restore" || echo "$line" >> "$BACKUP_DIR/sysctl.restore"
done < <(LC_ALL=C comm -23 "$BACKUP_DIR/sysctl.before" "$BACKUP_DIR/sysctl.after-up" \
         | grep -F -f <(cut -d= -f1 "$BACKUP_DIR/sysctl.after-up" | sed 's/$/=/') || true)
changed=$(LC_ALL=C comm -13 "$BACKUP_DIR/sysctl.before" "$BACKUP_DIR/sysctl.after-up" | grep -v "^net\.ipv[46]\.conf\.$CNI_BRIDGE\." | tr '\n' ' ' || true)
iptables-save > "$BACKUP_DIR/iptables.after-up" 2>/dev/null || true
ip6tables-save > "$BACKUP_DIR/ip6tables.after-up" 2>/dev/null || true
[[ -z "$changed" ]] || log "sysctls changed by the node (restored by down.sh): $changed"

cat > "$CLUSTER_DIR/env.sh" <<EOF
# source $CLUSTER_DIR/env.sh
export KUBECONFIG=$ADMIN_KUBECONFIG
export CONTAINER_RUNTIME_ENDPOINT=unix://$CONTAINERD_SOCK
export PATH=$BIN_DIR:\$PATH
EOF
log "timings: certs ${T_CERTS}s, images ${T_IMAGES}s, etcd ${T_ETCD}s, apiserver ready ${T_APISERVER}s (at ${AT_APISERVER}s), node Ready +${T_NODE}s (at ${AT_NODE}s), total $(elapsed) s"
log "cluster up: node $NODE_NAME ($K8S_VERSION), apiserver https://127.0.0.1:$APISERVER_PORT, logs in $LOG_DIR"
echo
echo "export KUBECONFIG=$ADMIN_KUBECONFIG    # or: source $CLUSTER_DIR/env.sh (kubectl/crictl on PATH)"
