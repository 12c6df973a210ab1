#!/usr/bin/env bash
# Smoke test of a running tests/cluster (after up.sh): a pod behind a ClusterIP
# Service answers the host by pod IP and by ClusterIP; a pod reaches the
# apiserver through the kubernetes Service with its ServiceAccount; containerd
# restarted through the host hook (from a hostPID pod) keeps the pod running and
# the node Ready. Leaves nothing behind in the cluster.
#
# Usage: tests/cluster/smoke.sh      (needs busybox-static for the test image)
set -euo pipefail
LOG_TAG=smoke
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HERE=$CLUSTER_LIB_DIR
k() { kubectl_admin "$@"; }
NS=wasmkube-smoke
BUSYBOX_IMAGE=$REGISTRY/wasmkube-test/busybox:1.35
KUBECTL_IMAGE=$REGISTRY/wasmkube-test/kubectl:$K8S_VERSION

[[ -f "$ADMIN_KUBECONFIG" ]] || die "no cluster in $CLUSTER_DIR (run up.sh)"
bb=$(command -v busybox) || die "busybox missing (apt-get install busybox-static)"
file -L "$bb" 2>/dev/null | grep -q 'statically linked' || warn "$bb may not be static"

# Test images: static busybox and our static kubectl, built by `wasmkube image build` and pushed
# to the cluster's registry, which the node pulls from.
[[ -x "$WASMKUBE_CLI" ]] || die "wasmkube (WASMKUBE_CLI=$WASMKUBE_CLI) is not built: scripts/build.sh"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bb/bin" "$work/kc/bin"
cp "$bb" "$work/bb/bin/busybox"
for a in sh nc echo sleep cat nsenter chroot; do ln -s busybox "$work/bb/bin/$a"; done
cp "$BIN_DIR/kubectl" "$work/kc/bin/kubectl"
printf 'FROM scratch\nCOPY bin /bin\n' > "$work/bb/Dockerfile"
printf 'FROM scratch\nCOPY bin /bin\nWORKDIR /tmp\nENTRYPOINT ["/bin/kubectl"]\n' > "$work/kc/Dockerfile"
for t in bb:"$BUSYBOX_IMAGE" kc:"$KUBECTL_IMAGE"; do
  dir=$work/${t%%:*} ref=${t#*:}
  "$WASMKUBE_CLI" image build -f "$dir/Dockerfile" --context "$dir" --name "$ref" -o "$work/${t%%:*}.tar" >/dev/null
  "$WASMKUBE_CLI" push "$work/${t%%:*}.tar" "$ref" >/dev/null
done

k delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
k create namespace "$NS" >/dev/null
k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: $BUSYBOX_IMAGE
    imagePullPolicy: IfNotPresent
    command: ["/bin/nc", "-ll", "-p", "8080", "-e", "/bin/echo", "hi"]
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-view}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: ServiceAccount, name: reader, namespace: $NS}]
EOF
t0=$EPOCHREALTIME
k -n "$NS" wait --for=condition=Ready pod/echo --timeout=60s >/dev/null
log "pod echo Running in $(elapsed "$t0") s"
pod_ip=$(k -n "$NS" get pod echo -o jsonpath='{.status.podIP}')
svc_ip=$(k -n "$NS" get svc echo -o jsonpath='{.spec.clusterIP}')
answer() { local i out; for i in $(seq 50); do out=$("$bb" nc -w 2 "$1" "$2" </dev/null 2>/dev/null || true); [[ "$out" == hi ]] && return 0; sleep 0.2; done; return 1; }
answer "$pod_ip" 8080 || die "no answer from pod IP $pod_ip:8080"
log "pod IP $pod_ip:8080 answers the host"
answer "$svc_ip" 80 || die "no answer from ClusterIP $svc_ip:80"
log "ClusterIP $svc_ip:80 answers the host (kube-proxy iptables)"
k -n "$NS" exec echo -- /bin/echo exec-ok | grep -qx exec-ok || die "kubectl exec failed"
log "kubectl exec works (apiserver -> kubelet on 127.0.0.1:$KUBELET_PORT)"

k -n "$NS" run api --image="$KUBECTL_IMAGE" --image-pull-policy=IfNotPresent --restart=Never \
  --overrides='{"spec":{"serviceAccountName":"reader"}}' --command -- /bin/kubectl get pod echo -o name >/dev/null
for i in $(seq 60); do
  phase=$(k -n "$NS" get pod api -o jsonpath='{.status.phase}')
  [[ $phase == Succeeded || $phase == Failed ]] && break; sleep 0.5
done
[[ "$(k -n "$NS" logs api)" == pod/echo ]] || { k -n "$NS" logs api >&2; die "in-cluster API access failed ($phase)"; }
log "a pod reads the API through https://$KUBERNETES_SVC_IP (ServiceAccount token)"

# Restart containerd through the host hook from a hostPID pod (another cgroup),
# in the host's namespaces (those of the supervisor: PID 1 of this VM refuses nsenter).
old=$(cat "$RUN_DIR/containerd.pid")
echo_id=$(crictl_node ps --name echo -q 2>/dev/null)
sup=$(cat "$RUN_DIR/containerd-supervise.pid")
k -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: restart}
spec:
  terminationGracePeriodSeconds: 1
  hostPID: true
  restartPolicy: Never
  containers:
  - name: restart
    image: $BUSYBOX_IMAGE
    imagePullPolicy: IfNotPresent
    securityContext: {privileged: true}
    command: ["/bin/nsenter", "-t", "$sup", "-m", "-u", "-i", "-n", "-p", "--", "$RESTART_HOOK"]
EOF
for i in $(seq 120); do
  phase=$(k -n "$NS" get pod restart -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [[ $phase == Succeeded || $phase == Failed ]] && break; sleep 0.5
done
[[ $phase == Succeeded ]] || { k -n "$NS" logs restart >&2 || true; die "restart hook pod: $phase"; }
new=$(cat "$RUN_DIR/containerd.pid")
[[ "$new" != "$old" ]] || die "containerd pid unchanged ($old)"
log "restart hook: containerd $old -> $new ($(k -n "$NS" logs restart))"
for i in $(seq 50); do containerd_ok=$(crictl_node ps --name echo -q 2>/dev/null || true); [[ -n "$containerd_ok" ]] && break; sleep 0.2; done
[[ "$containerd_ok" == "$echo_id" ]] || die "echo container changed across the restart ($echo_id -> $containerd_ok)"
answer "$svc_ip" 80 || die "ClusterIP stopped answering after the restart"
[[ "$(k -n "$NS" get pod echo -o jsonpath='{.status.containerStatuses[0].restartCount}')" == 0 ]] || die "echo restarted"
sleep 2
[[ "$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]] || die "node not Ready"
[[ "$(k get node "$NODE_NAME" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')" == 127.0.0.1 ]] || die "node InternalIP lost"
log "after the restart: same echo container, ClusterIP answers, node Ready, InternalIP 127.0.0.1"

k delete namespace "$NS" --wait=true --timeout=60s >/dev/null
log "smoke test passed in $(elapsed) s"
