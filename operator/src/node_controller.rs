//! The node controller: opt-in → `runtime=pending` → installer result → `ready` / `failed`;
//! opt-out → `removing` → uninstaller result → labels and annotations removed.
//!
//! The node's `wasmkube.dev/runtime` label is what the two installer DaemonSets select on, so
//! moving the label is how this controller runs `install` or `uninstall` on a node; it learns the
//! outcome from the installer pod's init-container termination message on that node.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{Future, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        controller::{Action, Controller},
        events::{Event, EventType, Recorder},
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher, Predicate, PredicateConfig, WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    backoff::ErrorBackoff,
    builders::installer::{self as build, InstallerAction, InstallerConfig},
    installer_result::{pod_outcome_by, Outcome, INSTALLER_TIMEOUT},
    metrics::Metrics,
    names::{
        labels, runtime_state, FIELD_MANAGER, RUNTIME_LABEL, RUNTIME_REASON_ANNOTATION,
        SHIM_VERSION_ANNOTATION, WASM_NODE,
    },
    Error, Result,
};

const CONTROLLER: &str = "node";

/// Event reasons on Nodes.
pub mod reasons {
    pub const PROVISIONING: &str = "WasmRuntimeProvisioning";
    pub const READY: &str = "WasmRuntimeReady";
    pub const INSTALL_FAILED: &str = "WasmRuntimeInstallFailed";
    pub const REMOVING: &str = "WasmRuntimeRemoving";
    pub const REMOVED: &str = "WasmRuntimeRemoved";
    pub const UNINSTALL_FAILED: &str = "WasmRuntimeUninstallFailed";
}

/// What the node reconciler needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub backoff: ErrorBackoff<String>,
    /// Pods of both installer DaemonSets (kept by a reflector).
    pub installer_pods: Store<Pod>,
    pub installer: InstallerConfig,
}

/// The three node fields this controller owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRuntime {
    pub state: Option<String>,
    pub shim_version: Option<String>,
    pub reason: Option<String>,
}

impl NodeRuntime {
    pub fn of(node: &PartialObjectMeta<Node>) -> Self {
        NodeRuntime {
            state: node.labels().get(RUNTIME_LABEL).cloned(),
            shim_version: node.annotations().get(SHIM_VERSION_ANNOTATION).cloned(),
            reason: node.annotations().get(RUNTIME_REASON_ANNOTATION).cloned(),
        }
    }

    fn state(state: &str) -> Self {
        NodeRuntime {
            state: Some(state.to_string()),
            ..NodeRuntime::default()
        }
    }
}

/// Whether a node asked for the wasm runtime (annotation, or a label for clouds that drop
/// annotations when they re-create nodes).
pub fn opted_in(node: &PartialObjectMeta<Node>) -> bool {
    node.annotations().get(WASM_NODE).map(String::as_str) == Some("true")
        || node.labels().get(WASM_NODE).map(String::as_str) == Some("true")
}

/// An Event to record with a transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEvent {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

fn event(type_: EventType, reason: &'static str, note: String) -> Option<NodeEvent> {
    Some(NodeEvent {
        type_,
        reason,
        note,
    })
}

/// The decision table. `install` / `uninstall` are the outcomes of this node's installer pods.
pub fn decide(
    opted_in: bool,
    current: &NodeRuntime,
    install: Option<&Outcome>,
    uninstall: Option<&Outcome>,
) -> (NodeRuntime, Option<NodeEvent>) {
    use runtime_state::*;
    let state = current.state.as_deref();
    match (opted_in, state) {
        (true, Some(PENDING | READY | FAILED)) => match install {
            Some(Outcome::Installed { shim_version }) => {
                let next = NodeRuntime {
                    state: Some(READY.to_string()),
                    shim_version: Some(shim_version.clone()),
                    reason: None,
                };
                let ev = (state != Some(READY)
                    || current.shim_version.as_ref() != Some(shim_version))
                .then(|| NodeEvent {
                    type_: EventType::Normal,
                    reason: reasons::READY,
                    note: format!("wasm runtime installed: shim {shim_version}"),
                });
                (next, ev)
            }
            Some(Outcome::Failed { message }) => {
                let next = NodeRuntime {
                    state: Some(FAILED.to_string()),
                    shim_version: current.shim_version.clone(),
                    reason: Some(message.clone()),
                };
                let ev = (state != Some(FAILED) || current.reason.as_ref() != Some(message)).then(
                    || NodeEvent {
                        type_: EventType::Warning,
                        reason: reasons::INSTALL_FAILED,
                        note: format!("wasm runtime install failed (retrying): {message}"),
                    },
                );
                (next, ev)
            }
            // An install pod never reports "uninstalled"; nothing finished yet otherwise.
            Some(Outcome::Uninstalled) | None => (current.clone(), None),
        },
        (true, _) => (
            NodeRuntime::state(PENDING),
            event(
                EventType::Normal,
                reasons::PROVISIONING,
                "node opted in to wasm workloads; installing the wasmkube runtime".to_string(),
            ),
        ),
        (false, None) => (current.clone(), None),
        (false, Some(REMOVING)) => match uninstall {
            Some(Outcome::Uninstalled) => (
                NodeRuntime::default(),
                event(
                    EventType::Normal,
                    reasons::REMOVED,
                    "wasmkube runtime uninstalled".to_string(),
                ),
            ),
            Some(Outcome::Failed { message }) => {
                let next = NodeRuntime {
                    reason: Some(message.clone()),
                    ..current.clone()
                };
                let ev = (current.reason.as_ref() != Some(message)).then(|| NodeEvent {
                    type_: EventType::Warning,
                    reason: reasons::UNINSTALL_FAILED,
                    note: format!("wasm runtime uninstall failed (retrying): {message}"),
                });
                (next, ev)
            }
            Some(Outcome::Installed { .. }) | None => (current.clone(), None),
        },
        (false, Some(_)) => (
            NodeRuntime {
                state: Some(REMOVING.to_string()),
                shim_version: current.shim_version.clone(),
                reason: None,
            },
            event(
                EventType::Normal,
                reasons::REMOVING,
                "node opted out of wasm workloads; uninstalling the wasmkube runtime".to_string(),
            ),
        ),
    }
}

/// The newest live installer pod of `action` on `node`.
pub fn installer_pod(pods: &[Arc<Pod>], node: &str, action: InstallerAction) -> Option<Arc<Pod>> {
    pods.iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.labels().get(labels::COMPONENT).map(String::as_str) == Some(action.component())
        })
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
        .cloned()
}

/// The server-side apply body that makes the node carry exactly `runtime`.
pub fn node_patch(name: &str, runtime: &NodeRuntime) -> serde_json::Value {
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), json!(name));
    if let Some(state) = &runtime.state {
        metadata.insert("labels".into(), json!({ RUNTIME_LABEL: state }));
    }
    let mut annotations = BTreeMap::new();
    if let Some(v) = &runtime.shim_version {
        annotations.insert(SHIM_VERSION_ANNOTATION, v);
    }
    if let Some(r) = &runtime.reason {
        annotations.insert(RUNTIME_REASON_ANNOTATION, r);
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), json!(annotations));
    }
    json!({ "apiVersion": "v1", "kind": "Node", "metadata": metadata })
}

/// One reconciliation of one Node.
pub async fn reconcile(node: Arc<PartialObjectMeta<Node>>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = node
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let current = NodeRuntime::of(&node);
    let pods = ctx.installer_pods.state();
    let now = k8s_openapi::jiff::Timestamp::now();
    // Pods without a result yet: look again when they would time out (no event will tell us).
    let mut recheck: Option<Duration> = None;
    let mut outcome = |action| {
        installer_pod(&pods, &name, action).and_then(|p| {
            pod_outcome_by(&p, now, INSTALLER_TIMEOUT)
                .map_err(|left| recheck = Some(recheck.map_or(left, |r| r.min(left))))
                .ok()
        })
    };
    let install = outcome(InstallerAction::Install);
    let uninstall = outcome(InstallerAction::Uninstall);

    let (next, ev) = decide(
        opted_in(&node),
        &current,
        install.as_ref(),
        uninstall.as_ref(),
    );
    if next != current {
        info!(node = %name, from = ?current.state, to = ?next.state, "node runtime state");
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        nodes
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(node_patch(&name, &next)),
            )
            .await?;
    }
    if let Some(ev) = ev {
        let event = Event {
            type_: ev.type_,
            reason: ev.reason.to_string(),
            note: Some(crate::events::note(ev.note)),
            action: "ProvisionRuntime".to_string(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &node.object_ref(&())).await {
            warn!(error = %e, node = %name, "cannot publish event");
        }
    }
    ctx.backoff.reset(&name);
    // Pod and node changes trigger us; only a silent installer needs a timer.
    Ok(match recheck {
        Some(left) => Action::requeue(left + Duration::from_secs(1)),
        None => Action::await_change(),
    })
}

pub fn error_policy(
    node: Arc<PartialObjectMeta<Node>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.error(CONTROLLER, error);
    let delay = ctx.backoff.next_delay(node.name_any());
    warn!(node = %node.name_any(), %error, ?delay, "node reconcile failed");
    Action::requeue(delay)
}

/// Applies the installer DaemonSets and the RuntimeClass (server-side apply, idempotent).
pub async fn ensure_cluster_objects(client: &Client, cfg: &InstallerConfig) -> Result<()> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), &cfg.namespace);
    for action in [InstallerAction::Uninstall, InstallerAction::Install] {
        let ds = build::daemonset(cfg, action);
        daemonsets
            .patch(action.daemonset_name(), &pp, &Patch::Apply(&ds))
            .await?;
    }
    let classes: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(client.clone());
    classes
        .patch(
            crate::names::RUNTIME_CLASS,
            &pp,
            &Patch::Apply(&build::runtime_class()),
        )
        .await?;
    Ok(())
}

/// Keeps the DaemonSets and the RuntimeClass as built: applies them now and again whenever
/// someone changes or deletes them, until `shutdown` resolves.
pub async fn keep_cluster_objects(
    client: Client,
    cfg: InstallerConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::select! {
        () = shutdown => {}
        () = keep_cluster_objects_loop(client, cfg, metrics) => {}
    }
}

async fn keep_cluster_objects_loop(client: Client, cfg: InstallerConfig, metrics: Metrics) {
    let ds_api: Api<PartialObjectMeta<k8s_openapi::api::apps::v1::DaemonSet>> =
        Api::namespaced(client.clone(), &cfg.namespace);
    let rc_api: Api<PartialObjectMeta<k8s_openapi::api::node::v1::RuntimeClass>> =
        Api::all(client.clone());
    let ds_events = watcher(
        ds_api,
        watcher::Config::default().labels(&build::all_pods_selector()),
    )
    .default_backoff()
    .map(|_| ());
    let rc_events = watcher(
        rc_api,
        watcher::Config::default()
            .fields(&format!("metadata.name={}", crate::names::RUNTIME_CLASS)),
    )
    .default_backoff()
    .map(|_| ());
    let mut triggers = Box::pin(futures::stream::select(ds_events, rc_events));
    let backoff = ErrorBackoff::default();
    loop {
        match ensure_cluster_objects(&client, &cfg).await {
            Ok(()) => backoff.reset(&()),
            Err(e) => {
                metrics.error("cluster", &e);
                let delay = backoff.next_delay(());
                warn!(error = %e, ?delay, "cannot apply installer DaemonSets / RuntimeClass");
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        // Wait for a change (our own no-op applies do not produce one), then coalesce a burst.
        if triggers.next().await.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Some(Some(())) = futures::FutureExt::now_or_never(triggers.next()) {}
    }
}

/// Runs the node controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    installer: InstallerConfig,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // Metadata only: a node's labels and annotations are all we read, and full Node objects
    // (image lists, status) are large.
    let nodes: Api<PartialObjectMeta<Node>> = Api::all(client.clone());
    let (node_reader, node_writer) = reflector::store();
    let node_stream = watcher(nodes, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(node_writer)
        .applied_objects()
        .predicate_filter(
            predicates::labels.combine(predicates::annotations),
            PredicateConfig::default(),
        );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &installer.namespace);
    let (pod_reader, pod_writer) = reflector::store();
    let pod_stream = watcher(
        pods,
        watcher::Config::default().labels(&build::all_pods_selector()),
    )
    .default_backoff()
    .reflect(pod_writer)
    .touched_objects();

    let ctx = Arc::new(Context {
        client,
        recorder,
        metrics,
        backoff: ErrorBackoff::default(),
        installer_pods: pod_reader,
        installer,
    });
    Controller::for_stream(node_stream, node_reader)
        .watches_stream(pod_stream, |pod: Pod| {
            pod.spec
                .and_then(|s| s.node_name)
                .map(|n| ObjectRef::<PartialObjectMeta<Node>>::new(&n))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "node controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_state::*;

    fn rt(state: Option<&str>, shim: Option<&str>, reason: Option<&str>) -> NodeRuntime {
        NodeRuntime {
            state: state.map(String::from),
            shim_version: shim.map(String::from),
            reason: reason.map(String::from),
        }
    }

    fn installed(v: &str) -> Outcome {
        Outcome::Installed {
            shim_version: v.to_string(),
        }
    }

    fn failed(m: &str) -> Outcome {
        Outcome::Failed {
            message: m.to_string(),
        }
    }

    #[test]
    fn decision_table() {
        // opt-in → pending
        let (n, e) = decide(true, &rt(None, None, None), None, None);
        assert_eq!(n, rt(Some(PENDING), None, None));
        assert_eq!(e.map(|e| e.reason), Some(reasons::PROVISIONING));
        // pending, installer still running → unchanged
        let cur = rt(Some(PENDING), None, None);
        assert_eq!(decide(true, &cur, None, None), (cur.clone(), None));
        // pending + installed → ready with version
        let (n, e) = decide(true, &cur, Some(&installed("0.1.0@sha256:ab")), None);
        assert_eq!(n, rt(Some(READY), Some("0.1.0@sha256:ab"), None));
        assert_eq!(e.map(|e| e.reason), Some(reasons::READY));
        // ready + same result → nothing
        let (n2, e) = decide(true, &n, Some(&installed("0.1.0@sha256:ab")), None);
        assert_eq!((n2, e), (n.clone(), None));
        // pending + failed → failed with reason, then a retry's success → ready without reason
        let (f, e) = decide(true, &cur, Some(&failed("no config")), None);
        assert_eq!(f, rt(Some(FAILED), None, Some("no config")));
        assert_eq!(
            e.map(|e| (e.type_, e.reason)),
            Some((EventType::Warning, reasons::INSTALL_FAILED))
        );
        let (r, _) = decide(true, &f, Some(&installed("v")), None);
        assert_eq!(r, rt(Some(READY), Some("v"), None));
        // opt-out from ready → removing, keeping the version
        let (rm, e) = decide(false, &n, Some(&installed("0.1.0@sha256:ab")), None);
        assert_eq!(rm, rt(Some(REMOVING), Some("0.1.0@sha256:ab"), None));
        assert_eq!(e.map(|e| e.reason), Some(reasons::REMOVING));
        // removing + uninstalled → clean
        let (clean, e) = decide(false, &rm, None, Some(&Outcome::Uninstalled));
        assert_eq!(clean, NodeRuntime::default());
        assert_eq!(e.map(|e| e.reason), Some(reasons::REMOVED));
        // removing + failed → stays removing (so it retries), reason recorded once
        let (rf, e) = decide(false, &rm, None, Some(&failed("busy")));
        assert_eq!(
            rf,
            rt(Some(REMOVING), Some("0.1.0@sha256:ab"), Some("busy"))
        );
        assert!(e.is_some());
        assert_eq!(decide(false, &rf, None, Some(&failed("busy"))).1, None);
        // re-opt-in while removing → pending again
        assert_eq!(
            decide(true, &rm, None, None).0,
            rt(Some(PENDING), None, None)
        );
        // never opted in → untouched
        assert_eq!(
            decide(false, &NodeRuntime::default(), None, None),
            (NodeRuntime::default(), None)
        );
    }

    #[test]
    fn patch_bodies() {
        assert_eq!(
            node_patch("n1", &rt(Some(READY), Some("v"), None)),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": "n1",
                "labels": {"wasmkube.dev/runtime": "ready"},
                "annotations": {"wasmkube.dev/shim-version": "v"}
            }})
        );
        assert_eq!(
            node_patch("n1", &NodeRuntime::default()),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
        );
    }
}
