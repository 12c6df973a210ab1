//! The node under test as the operator sees it (state label, annotations) and its installer pods.
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{api::ListParams, Api, ResourceExt};
use wasmkube_operator::names::{
    installer, labels, REMOVING_TAINT, RUNTIME_ATTEMPTS_ANNOTATION, RUNTIME_LABEL,
    RUNTIME_REASON_ANNOTATION, RUNTIME_SINCE_ANNOTATION, SHIM_VERSION_ANNOTATION, WASM_NODE,
};

use crate::wait::{within, Poll};
use crate::Cluster;

/// The node's `wasmkube.dev/runtime` label and its annotations.
pub async fn runtime(c: &Cluster) -> Result<(Option<String>, BTreeMap<String, String>)> {
    let node = Api::<Node>::all(c.client.clone()).get(&c.node).await?;
    Ok((
        node.labels().get(RUNTIME_LABEL).cloned(),
        node.annotations().clone(),
    ))
}

/// Waits for the node's state label to read `state`; returns its annotations.
pub async fn wait_state(
    c: &Cluster,
    state: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, String>> {
    within(
        &format!("node {} to be {RUNTIME_LABEL}={state}", c.node),
        timeout,
        || async {
            let (label, annotations) = runtime(c).await?;
            Ok(match label.as_deref() {
                Some(s) if s == state => Poll::Done(annotations),
                other => Poll::NotYet(format!("label {other:?}, annotations {annotations:?}")),
            })
        },
    )
    .await
}

/// Waits for the node to be `failed`; returns its failure reason annotation.
pub async fn wait_failed(c: &Cluster, timeout: Duration) -> Result<String> {
    let annotations = wait_state(c, "failed", timeout).await?;
    let reason = annotations
        .get(RUNTIME_REASON_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    println!("  reason: {reason}");
    Ok(reason)
}

/// The live install (`install`) or uninstall (`uninstall`) pods on the node.
pub async fn installer_pods(c: &Cluster, component: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "wasmkube-system");
    let lp = ListParams::default()
        .labels(&format!(
            "{}={},{}={component}",
            labels::NAME,
            installer::NAME,
            labels::COMPONENT
        ))
        .fields(&format!("spec.nodeName={}", c.node));
    Ok(pods
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// The installer's JSON result from the init container's termination message.
pub fn installer_result(pod: &Pod) -> Result<serde_json::Value> {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|s| s.iter().find(|s| s.name == installer::INIT_CONTAINER))
        .context("no installer init container status")?;
    let term = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("the installer has not finished")?;
    let message = term.message.as_deref().unwrap_or_default();
    serde_json::from_str(message)
        .with_context(|| format!("installer result is not JSON: {message}"))
}

/// Keys of the node's taints.
pub async fn taints(c: &Cluster) -> Result<Vec<String>> {
    let node = Api::<Node>::all(c.client.clone()).get(&c.node).await?;
    Ok(node
        .spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.key)
        .collect())
}

/// Waits until the node carries nothing of wasmkube's: no state label, no annotation of ours,
/// no removal taint.
pub async fn wait_clean(c: &Cluster, timeout: Duration) -> Result<()> {
    within(
        "the node to be clean (no wasmkube label, annotations or taint)",
        timeout,
        || async {
            let (label, annotations) = runtime(c).await?;
            let ours: Vec<&String> = annotations
                .keys()
                .filter(|k| {
                    [
                        SHIM_VERSION_ANNOTATION,
                        RUNTIME_REASON_ANNOTATION,
                        RUNTIME_ATTEMPTS_ANNOTATION,
                        RUNTIME_SINCE_ANNOTATION,
                        WASM_NODE,
                    ]
                    .contains(&k.as_str())
                })
                .collect();
            let taint = taints(c).await?.iter().any(|t| t == REMOVING_TAINT);
            Ok(if label.is_none() && ours.is_empty() && !taint {
                Poll::Done(())
            } else {
                Poll::NotYet(format!(
                    "{RUNTIME_LABEL}={label:?}, annotations {ours:?}, removal taint {taint}"
                ))
            })
        },
    )
    .await
}

/// The host lock every installer run takes (node-installer's `host_lock.rs`).
const INSTALLER_LOCK: &str = "/run/wasmkube/installer.lock";
/// Where the test's lock holder records its pid.
const LOCK_HOLDER_PID: &str = "/run/wasmkube/e2e-lock-holder.pid";

/// Takes the installer's host lock on the node in a background process (a `sleep` that holds
/// the descriptor, at most 15 minutes) and returns once it is held: every installer run on the
/// node waits for it (and gives up after its `--lock-timeout`, failing `Locked`).
pub fn hold_installer_lock(c: &Cluster) -> Result<()> {
    c.node_sh(&format!(
        "mkdir -p /run/wasmkube && \
         (exec 9>>{INSTALLER_LOCK}; flock -x 9; echo 'the e2e suite' >&9; exec sleep 900) </dev/null >/dev/null 2>&1 & \
         echo $! > {LOCK_HOLDER_PID}; \
         for i in $(seq 50); do flock -n -x {INSTALLER_LOCK} true || exit 0; sleep 0.1; done; \
         echo 'the lock holder did not take the lock' >&2; exit 1"
    ))?;
    Ok(())
}

/// Releases [`hold_installer_lock`]'s lock (nothing to do when it is not held).
pub fn release_installer_lock(c: &Cluster) -> Result<()> {
    c.node_sh(&format!(
        "if [ -f {LOCK_HOLDER_PID} ]; then kill \"$(cat {LOCK_HOLDER_PID})\" 2>/dev/null || true; \
         rm -f {LOCK_HOLDER_PID}; fi"
    ))?;
    Ok(())
}

/// What a watch on the node saw: each state label with whether the removal taint was on.
pub type Seen = Vec<(Option<String>, bool)>;

/// Records every change of the node's state label and removal taint from a watch started now,
/// so a state the operator holds for only a few milliseconds is still seen (polling can miss
/// `draining` when the wasm pods stop at once).
pub struct Recorder {
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start(c: &Cluster) -> Result<Self> {
        use futures::StreamExt as _;
        use kube::api::{WatchEvent, WatchParams};
        let api = Api::<Node>::all(c.client.clone());
        let now = api.get(&c.node).await?;
        let rv = now
            .resource_version()
            .context("node without resourceVersion")?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![observed(&now)]));
        let mut stream = api
            .watch(
                &WatchParams::default().fields(&format!("metadata.name={}", c.node)),
                &rv,
            )
            .await?
            .boxed();
        let into = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                if let WatchEvent::Added(n) | WatchEvent::Modified(n) = event {
                    let state = observed(&n);
                    let mut seen = into.lock().unwrap_or_else(|e| e.into_inner());
                    if seen.last() != Some(&state) {
                        seen.push(state);
                    }
                }
            }
        });
        Ok(Self { seen, task })
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn observed(n: &Node) -> (Option<String>, bool) {
    let tainted = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == REMOVING_TAINT));
    (n.labels().get(RUNTIME_LABEL).cloned(), tainted)
}

/// Collects the results of the node's installer pods of `component` (`install`, `uninstall`)
/// from a watch started now: the operator acts on an uninstall pod's result and the pod goes
/// with the node's label, so only a watch is sure to see it.
pub struct Results {
    seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    killed: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Results {
    pub async fn start(c: &Cluster, component: &str) -> Result<Self> {
        use futures::StreamExt as _;
        use kube::api::{WatchEvent, WatchParams};
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), "wasmkube-system");
        let labels = format!(
            "{}={},{}={component}",
            labels::NAME,
            installer::NAME,
            labels::COMPONENT
        );
        let list = pods.list(&ListParams::default().labels(&labels)).await?;
        let rv = list
            .metadata
            .resource_version
            .context("pod list without resourceVersion")?;
        let mut stream = pods
            .watch(&WatchParams::default().labels(&labels), &rv)
            .await?
            .boxed();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = seen.clone();
        let killed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kills_into = killed.clone();
        let node = c.node.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                if let WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p) =
                    event
                {
                    let on_node =
                        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str());
                    if let (true, Ok(result)) = (on_node, installer_result(&p)) {
                        let mut seen = into.lock().unwrap_or_else(|e| e.into_inner());
                        if !seen.contains(&result) {
                            seen.push(result);
                        }
                    }
                    if on_node {
                        let mut killed = kills_into.lock().unwrap_or_else(|e| e.into_inner());
                        for kill in sigkills(&p) {
                            if !killed.contains(&kill) {
                                killed.push(kill);
                            }
                        }
                    }
                }
            }
        });
        Ok(Self { seen, killed, task })
    }

    pub fn seen(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The installer runs that died by SIGKILL, each as `pod#attempt: last log lines` (the
    /// container's termination message falls back to its log).
    pub fn killed(&self) -> Vec<String> {
        self.killed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The installer container's terminations by SIGKILL (exit code 137) in `pod`'s status.
fn sigkills(pod: &Pod) -> Vec<String> {
    let Some(status) = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|s| s.iter().find(|s| s.name == installer::INIT_CONTAINER))
    else {
        return Vec::new();
    };
    // `lastState` is the run before `restartCount`'s; `state` the current one.
    let runs = [
        (status.last_state.as_ref(), status.restart_count),
        (status.state.as_ref(), status.restart_count + 1),
    ];
    runs.into_iter()
        .filter_map(|(state, attempt)| {
            let t = state?.terminated.as_ref()?;
            (t.exit_code == 137).then(|| {
                format!(
                    "{}#{attempt}: {}",
                    pod.name_any(),
                    t.message.as_deref().unwrap_or_default().trim()
                )
            })
        })
        .collect()
}

impl Drop for Results {
    fn drop(&mut self) {
        self.task.abort();
    }
}
