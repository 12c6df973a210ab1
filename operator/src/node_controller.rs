//! The node controller: runs the lifecycle of [`crate::node_state`] on every node.
//!
//! The node's `wasmkube.dev/runtime` label is what the two installer DaemonSets select on, so
//! moving the label is how this controller runs `install` or `uninstall` on a node; it learns the
//! outcome from the installer pod's init-container termination message on that node. Opt-in is
//! rate-limited by [`crate::rollout`]; opt-out taints and drains first ([`crate::drain`]).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{channel::mpsc, Future, StreamExt};
use k8s_openapi::{
    api::core::v1::{Node, Pod},
    jiff::Timestamp,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        controller::{Action, Controller},
        events::{Event, EventType},
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
    builders::installer::{self as build, InstallerConfig},
    drain,
    events::Recorder,
    installer_runs::{current_outcome, RunLookup},
    metrics::Metrics,
    names::{
        runtime_state::*, FIELD_MANAGER, RUNTIME_ATTEMPTS_ANNOTATION, RUNTIME_LABEL,
        RUNTIME_REASON_ANNOTATION, RUNTIME_SINCE_ANNOTATION, SHIM_VERSION_ANNOTATION,
    },
    node_state::{decide, opted_in, reasons, NodeEvent, NodeRuntime, Observed},
    pod_index::PodIndex,
    rollout::{admit, holds_slot, Candidate, Overlay},
    Error, Result,
};

pub use crate::cluster_objects::{ensure_cluster_objects, keep_cluster_objects};

const CONTROLLER: &str = "node";
/// How often a draining node looks at its wasm pods again.
const DRAIN_POLL: Duration = Duration::from_secs(5);
/// A queued node's fallback re-check (slot releases trigger it at once).
const QUEUE_POLL: Duration = Duration::from_secs(30);

/// What the node reconciler needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub backoff: ErrorBackoff<String>,
    /// Pods of both installer DaemonSets, by node.
    pub installer_pods: PodIndex,
    /// Every node's metadata (the rollout counts slots over it).
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub installer: InstallerConfig,
    /// `--max-install-attempts`: attempts of one installer pod before a retryable failure is
    /// `failed` ([`crate::install_failure`]).
    pub max_install_attempts: u32,
    /// States we wrote that the watch may not show yet.
    pub overlay: Overlay,
    /// Serialises taking a rollout slot: see [`reconcile`].
    pub rollout_lock: tokio::sync::Mutex<()>,
    /// Wakes the queued nodes when a slot frees.
    pub slot_released: mpsc::UnboundedSender<()>,
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
        annotations.insert(SHIM_VERSION_ANNOTATION, v.clone());
    }
    if let Some(r) = &runtime.reason {
        annotations.insert(RUNTIME_REASON_ANNOTATION, r.clone());
    }
    if let Some(n) = runtime.attempts {
        annotations.insert(RUNTIME_ATTEMPTS_ANNOTATION, n.to_string());
    }
    if let Some(s) = &runtime.since {
        annotations.insert(RUNTIME_SINCE_ANNOTATION, s.clone());
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), json!(annotations));
    }
    json!({ "apiVersion": "v1", "kind": "Node", "metadata": metadata })
}

/// Whether a rollout slot is free for `node` now.
fn slot_free(ctx: &Context, node: &PartialObjectMeta<Node>) -> bool {
    let me = ctx.overlay.apply(Candidate::of(node));
    let others: Vec<Candidate> = ctx
        .nodes
        .state()
        .iter()
        .filter(|n| n.name_any() != me.name)
        .map(|n| ctx.overlay.apply(Candidate::of(n)))
        .collect();
    admit(
        &me,
        &others,
        usize::from(ctx.installer.max_concurrent_installs.max(1)),
    )
}

async fn publish(ctx: &Context, node: &PartialObjectMeta<Node>, ev: NodeEvent) {
    let event = Event {
        type_: ev.type_,
        reason: ev.reason.to_string(),
        note: Some(crate::events::note(ev.note)),
        action: "ProvisionRuntime".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &node.object_ref(&())).await {
        warn!(error = %e, node = %node.name_any(), "cannot publish event");
    }
}

/// One reconciliation of one Node.
///
/// # The rollout lock
///
/// Only a reconcile that may take a rollout slot holds [`Context::rollout_lock`], and only from
/// the admission decision ([`admit`] over the node cache with the [`Overlay`] laid on it) until
/// the label/annotation write that takes the slot is done and recorded in the overlay. Two
/// opt-ins therefore never both take the last slot: the second decides after the first's write
/// is in the overlay, even while the watch cache still shows the old label. (A node opted in
/// again while draining or removing also takes its taint off in between: that read and patch of
/// its own Node are the only other calls made under the lock.) A write that takes a slot without
/// an admission (a `ready` node whose installer now fails) takes the lock around the write alone.
///
/// Everything else runs unlocked, so nodes do not queue behind one another's API calls: the
/// installer-run lookups, the drain's pod list and evictions, writes that keep or give up a
/// slot (an install result, `draining`, `removing`), and Events. Those never make a slot
/// busier, so an admission deciding beside them errs only towards waiting. A queued node that
/// decided just before a slot was freed is not stranded: its own label change, or the
/// slot-released signal that follows the freeing write, reconciles it again (with
/// `QUEUE_POLL` as the fallback).
pub async fn reconcile(node: Arc<PartialObjectMeta<Node>>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = node
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    // Slots are counted over every node: never decide on a half-listed cache.
    ctx.nodes
        .wait_until_ready()
        .await
        .map_err(|_| Error::Cache("the node cache closed before its first list"))?;
    let current = NodeRuntime::of(&node);
    let now = Timestamp::now();
    let state = current.state.as_deref();
    let opted = opted_in(&node);

    let lookup = RunLookup {
        client: &ctx.client,
        namespace: &ctx.installer.namespace,
        pods: ctx.installer_pods.on_node(&name),
        current: &current,
        now,
    };
    let mut seen = Observed {
        opted_in: opted,
        now: Timestamp::from_second(now.as_second())
            .unwrap_or(now)
            .to_string(),
        max_install_attempts: ctx.max_install_attempts,
        ..Observed::default()
    };
    let mut recheck: Option<Duration> = None;
    let mut stuck_pod: Option<String> = None;
    if opted && matches!(state, Some(PENDING | READY | FAILED)) {
        let run = current_outcome(&lookup, build::InstallerAction::Install).await;
        recheck = run.recheck;
        stuck_pod = run.timed_out_pod;
        seen.install = run.outcome;
    }
    if !opted && state == Some(REMOVING) {
        let run = current_outcome(&lookup, build::InstallerAction::Uninstall).await;
        recheck = run.recheck;
        seen.uninstall = run.outcome;
    }
    // An opted-in node without a slot asks for one: decide and write under the lock.
    let mut rollout = None;
    if opted && !matches!(state, Some(PENDING | READY | FAILED)) {
        rollout = Some(ctx.rollout_lock.lock().await);
        seen.slot_free = slot_free(&ctx, &node);
    }
    let mut drain_blocked = Vec::new();
    if !opted && state == Some(DRAINING) {
        let progress = drain::drain(&ctx.client, &name, ctx.installer.drain).await?;
        seen.drained = progress.remaining.is_empty();
        if !seen.drained {
            info!(node = %name, remaining = ?progress.remaining, "waiting for wasm pods to leave");
        }
        drain_blocked = progress.blocked;
    }

    let (next, ev) = decide(&current, &seen);
    if next.tainted() != current.tainted() {
        // The taint goes on before the label says draining, and comes off before the label
        // leaves removing: a failure in between is retried from the old state.
        drain::set_taint(&ctx.client, &name, next.tainted()).await?;
    }
    if next != current {
        info!(node = %name, from = ?current.state, to = ?next.state, "node runtime state");
        let held = holds_slot(state, current.reason.as_deref());
        let holds = holds_slot(next.state.as_deref(), next.reason.as_deref());
        if rollout.is_none() && !held && holds {
            rollout = Some(ctx.rollout_lock.lock().await);
        }
        let nodes: Api<Node> = Api::all(ctx.client.clone());
        nodes
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(node_patch(&name, &next)),
            )
            .await?;
        ctx.overlay
            .wrote(&name, next.state.as_deref(), next.reason.as_deref());
        if held && !holds {
            let _ = ctx.slot_released.unbounded_send(());
        }
    }
    drop(rollout);
    if let Some(ev) = ev {
        let timed_out = ev.reason == reasons::INSTALL_FAILED;
        publish(&ctx, &node, ev).await;
        // A hung installer is not retried by kubelet: a fresh pod from the DaemonSet is.
        if let (true, Some(pod)) = (timed_out, stuck_pod) {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.installer.namespace);
            match pods.delete(&pod, &DeleteParams::background()).await {
                Ok(_) => info!(node = %name, %pod, "deleted the hung installer pod for a retry"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => warn!(node = %name, %pod, error = %e, "cannot delete hung installer pod"),
            }
        }
    }
    if !drain_blocked.is_empty() {
        let ev = NodeEvent {
            type_: EventType::Warning,
            reason: reasons::DRAIN_BLOCKED,
            note: format!("eviction refused: {}", drain_blocked.join("; ")),
        };
        publish(&ctx, &node, ev).await;
    }
    ctx.backoff.reset(&name);
    Ok(match (next.state.as_deref(), recheck) {
        (Some(DRAINING), _) => Action::requeue(DRAIN_POLL),
        (_, Some(left)) => Action::requeue(left + Duration::from_secs(1)),
        (Some(QUEUED), None) => Action::requeue(QUEUE_POLL),
        // Pod and node changes trigger us otherwise.
        _ => Action::await_change(),
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

/// Runs the node controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    installer: InstallerConfig,
    max_install_attempts: u32,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (node_reader, node_writer) = reflector::store();
    let (slot_tx, slot_rx) = mpsc::unbounded();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        metrics,
        backoff: ErrorBackoff::default(),
        installer_pods: PodIndex::default(),
        nodes: node_reader.clone(),
        installer,
        max_install_attempts,
        overlay: Overlay::default(),
        rollout_lock: tokio::sync::Mutex::new(()),
        slot_released: slot_tx.clone(),
    });

    // Metadata only: a node's labels and annotations are all we read, and full Node objects
    // (image lists, status) are large.
    let nodes: Api<PartialObjectMeta<Node>> = Api::all(client.clone());
    let health = ctx.metrics.watches.clone();
    let node_stream = crate::watch_health::observe(
        watcher(nodes, watcher::Config::default().any_semantic()),
        health.clone(),
        "nodes",
    )
    .backoff(crate::watch_health::WatchBackoff::default())
    .reflect(node_writer)
    .inspect({
        let ctx = ctx.clone();
        move |event| {
            if let Ok(watcher::Event::Delete(node)) = event {
                let name = node.name_any();
                ctx.overlay.forget(&name);
                ctx.backoff.forget(&name);
                let runtime = NodeRuntime::of(node);
                if holds_slot(runtime.state.as_deref(), runtime.reason.as_deref()) {
                    let _ = slot_tx.unbounded_send(());
                }
            }
        }
    })
    .applied_objects()
    .predicate_filter(
        predicates::labels.combine(predicates::annotations),
        PredicateConfig::default(),
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ctx.installer.namespace);
    let index = ctx.installer_pods.clone();
    let pod_stream = crate::watch_health::observe(
        watcher(
            pods,
            watcher::Config::default().labels(&build::all_pods_selector()),
        ),
        health,
        "installer-pods",
    )
    .backoff(crate::watch_health::WatchBackoff::default())
    .inspect(move |event| {
        if let Ok(event) = event {
            index.apply(event);
        }
    })
    .touched_objects();

    // A freed slot wakes every queued node (each checks its place in the queue).
    let queued = slot_rx.flat_map(move |()| {
        futures::stream::iter(
            node_reader
                .state()
                .iter()
                .filter(|n| n.labels().get(RUNTIME_LABEL).map(String::as_str) == Some(QUEUED))
                .map(|n| ObjectRef::from_obj(n.as_ref()))
                .collect::<Vec<_>>(),
        )
    });

    use crate::watch_health::without_errors;
    Controller::for_stream(without_errors(node_stream), ctx.nodes.clone())
        .watches_stream(without_errors(pod_stream), |pod: Pod| {
            pod.spec
                .and_then(|s| s.node_name)
                .map(|n| ObjectRef::<PartialObjectMeta<Node>>::new(&n))
        })
        .reconcile_on(queued)
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

    #[test]
    fn patch_bodies() {
        let rt = NodeRuntime {
            state: Some(READY.into()),
            shim_version: Some("v".into()),
            reason: None,
            attempts: None,
            since: Some("2026-11-25T10:00:00Z".into()),
        };
        assert_eq!(
            node_patch("n1", &rt),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": "n1",
                "labels": {"wasmkube.dev/runtime": "ready"},
                "annotations": {
                    "wasmkube.dev/shim-version": "v",
                    "wasmkube.dev/runtime-since": "2026-11-25T10:00:00Z"
                }
            }})
        );
        assert_eq!(
            node_patch("n1", &NodeRuntime::default()),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
        );
    }
}
