# The files of one node (containerd, CNI, registry hosts, restart hook, kubelet, kube-proxy),
# written the same way for node 1 (the host, by up.sh) and the extra nodes (node.sh).
# Sourced after lib.sh.
# shellcheck shell=bash

# Extra nodes (2..N of `up.sh --nodes N`): names, addresses, pod subnets.
NODES_DIR=$CLUSTER_DIR/nodes
NODE_BRIDGE=wk-nodes          # on the host; every extra node's eth0 is a veth on it
NODE_NET_HOST=10.250.0.1      # the host's address on $NODE_BRIDGE
extra_node_name() { echo "$NODE_NAME-$1"; }
extra_node_ip() { echo "10.250.0.$1"; }
extra_node_pod_subnet() { echo "10.244.$(($1 - 1)).0/24"; }

# write_containerd_config FILE CERTS_D CNI_CONF_DIR OPT_PATH
write_containerd_config() {
  cat > "$1.wasmkube-cluster.tmp" <<EOF
# Written by wasmkube tests/cluster/up.sh for the local test node; down.sh puts the
# host's original back (saved in $BACKUP_DIR).
version = 2

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$2"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$3"
      max_conf_num = 1
  [plugins."io.containerd.internal.v1.opt"]
    path = "$4"
EOF
  mv -f "$1.wasmkube-cluster.tmp" "$1"
}

# write_cni_conflist CONF_DIR SUBNET IPAM_DIR
write_cni_conflist() {
  cat > "$1/10-$CNI_NETWORK.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$3",
        "ranges": [[{"subnet": "$2"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

# write_hosts_toml CERTS_D DIR SERVER MIRROR: containerd's registry host entry (config_path).
write_hosts_toml() {
  mkdir -p "$1/$2"
  printf 'server = "%s"\n\n[host."%s"]\n  capabilities = ["pull", "resolve"]\n' "$3" "$4" > "$1/$2/hosts.toml"
}

# write_restart_hook FILE CONTAINERD_PIDFILE: the host restart hook for the node installer
# (hosts without systemd).
write_restart_hook() {
  mkdir -p "$(dirname "$1")"
  cat > "$1.tmp" <<EOF
#!/bin/sh
# Host restart hook (wasmkube contract for hosts without systemd): stop the running
# containerd and return once it has exited; its supervisor starts a fresh one.
# Never starts containerd itself (the caller may live in another cgroup).
# Installed by wasmkube tests/cluster/up.sh; removed by down.sh.
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
pidfile=$2
pid=\$(cat "\$pidfile" 2>/dev/null || true)
case "\$pid" in ''|*[!0-9]*) echo "restart-containerd: no containerd pid in \$pidfile" >&2; exit 1 ;; esac
if ! kill -0 "\$pid" 2>/dev/null || [ "\$(cat /proc/\$pid/comm 2>/dev/null)" != containerd ]; then
  echo "restart-containerd: containerd (pid \$pid) is not running" >&2; exit 1
fi
kill -TERM "\$pid"
i=0
while kill -0 "\$pid" 2>/dev/null && [ "\$(cat /proc/\$pid/comm 2>/dev/null)" = containerd ]; do
  i=\$((i + 1))
  if [ \$i -ge 300 ]; then echo "restart-containerd: containerd (pid \$pid) still running after 30 s" >&2; exit 1; fi
  sleep 0.1
done
echo "restart-containerd: containerd (pid \$pid) stopped; its supervisor starts a new one"
EOF
  chmod 755 "$1.tmp"
  mv -f "$1.tmp" "$1"
}

# write_kubelet_config FILE ADDRESS CERT_NAME CGROUP_ROOT("" = the default)
write_kubelet_config() {
  cat > "$1" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $2
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI_DIR/$3-serving.crt
tlsPrivateKeyFile: $PKI_DIR/$3-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
${4:+cgroupRoot: $4
}failSwapOn: false
failCgroupV1: false
maxPods: ${KUBELET_MAX_PODS:-110}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
staticPodPath: ""
clusterDomain: cluster.local
clusterDNS: [$DNS_SVC_IP]
volumePluginDir: /var/lib/kubelet/volume-plugins
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
rotateCertificates: false
serverTLSBootstrap: false
EOF
}

# write_kube_proxy_config FILE NODE KUBECONFIG
write_kube_proxy_config() {
  cat > "$1" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $3
mode: iptables
hostnameOverride: $2
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
clusterCIDR: $CLUSTER_CIDR
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
EOF
}
