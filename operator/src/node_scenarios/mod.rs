//! Node controller scenarios against the mock API server: opt-in → queued / pending → installer
//! result → ready / failed (stale results ignored, missing pods reported); opt-out → taint →
//! draining (evictions) → removing → uninstaller result → clean; DaemonSets and RuntimeClass.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, Node, Pod, PodSpec, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    api::ObjectMeta,
    core::PartialObjectMeta,
    runtime::{controller::Action, events::Reporter, reflector, watcher},
    Client,
};
use serde_json::json;

use crate::{
    builders::installer::{pod_labels, InstallerAction, InstallerConfig},
    drain::DrainPolicy,
    events::Recorder,
    fixtures::{finish, mock_client, Step},
    metrics::Metrics,
    names::{installer, FIELD_MANAGER, RUNTIME_SINCE_ANNOTATION},
    node_controller::{ensure_cluster_objects, reconcile, Context},
    node_state::reasons,
    pod_index::PodIndex,
};

mod concurrent;
mod opt_out;
mod retries;
mod rollout;
mod runs;
mod steps;

use steps::*;

const NODE: &str = "/api/v1/nodes/worker-1";
/// The opt-in annotation (or label).
const WASM_NODE: (&str, &str) = ("wasmkube.dev/wasm-node", "true");
/// The installed version `INSTALLED` reports.
const SHIM: &str = "0.1.0@sha256:9f86d081";
const INSTALLED: &str = r#"{"state":"installed","flavour":"kind","configPath":"/etc/containerd/config.toml","containerdVersion":"2.1.1","shimVersion":"0.1.0","shimSha256":"9f86d081","restarted":true,"message":"installed; containerd restarted; handler wasmkube verified"}"#;

fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PartialObjectMeta<Node> {
    let map = |kv: &[(&str, &str)]| {
        (!kv.is_empty()).then(|| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        })
    };
    PartialObjectMeta::<Node> {
        metadata: ObjectMeta {
            name: Some("worker-1".to_string()),
            uid: Some("node-uid".to_string()),
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        },
        ..PartialObjectMeta::default()
    }
}

/// An installer pod on `node_name`; `result` is the init container's termination.
fn pod(
    name: &str,
    node_name: &str,
    action: InstallerAction,
    result: Option<(i32, &str)>,
    terminating: bool,
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("wasmkube-system".to_string()),
            labels: Some(pod_labels(action)),
            creation_timestamp: Some(Time(Timestamp::from_second(1_700_000_000).expect("ts"))),
            deletion_timestamp: terminating
                .then(|| Time(Timestamp::from_second(1_700_000_100).expect("ts"))),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node_name.to_string()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            init_container_statuses: Some(vec![ContainerStatus {
                name: installer::INIT_CONTAINER.to_string(),
                state: Some(match result {
                    Some((code, message)) => ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: code,
                            message: Some(message.to_string()),
                            reason: Some(if code == 0 { "Completed" } else { "Error" }.to_string()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    },
                    None => ContainerState::default(),
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// A node named `name` (the others in the cluster).
fn named(
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> PartialObjectMeta<Node> {
    let mut n = node(labels, annotations);
    n.metadata.name = Some(name.to_string());
    n
}

/// An opted-in node with no runtime state yet.
fn opted_in() -> PartialObjectMeta<Node> {
    node(&[], &[WASM_NODE])
}

/// An opted-in node `pending` since `since` (no `runtime-since` annotation for `None`).
fn pending(since: Option<&str>) -> PartialObjectMeta<Node> {
    let mut annotations = vec![WASM_NODE];
    annotations.extend(since.map(|s| (RUNTIME_SINCE_ANNOTATION, s)));
    node(&[("wasmkube.dev/runtime", "pending")], &annotations)
}

/// An installer pod of worker-1 that reported a successful install.
fn installed_pod() -> Pod {
    pod(
        "inst-a",
        "worker-1",
        InstallerAction::Install,
        Some((0, INSTALLED)),
        false,
    )
}

/// The scenario's world: the node under test, the other nodes, the installer pods.
struct World {
    node: PartialObjectMeta<Node>,
    others: Vec<PartialObjectMeta<Node>>,
    pods: Vec<Pod>,
    config: InstallerConfig,
}

impl World {
    fn new(node: PartialObjectMeta<Node>) -> Self {
        World {
            node,
            others: vec![],
            pods: vec![],
            config: InstallerConfig::default(),
        }
    }
    fn pods(mut self, pods: Vec<Pod>) -> Self {
        self.pods = pods;
        self
    }
    fn others(mut self, others: Vec<PartialObjectMeta<Node>>) -> Self {
        self.others = others;
        self
    }
    fn config(mut self, config: InstallerConfig) -> Self {
        self.config = config;
        self
    }
}

async fn run(node: PartialObjectMeta<Node>, pods: Vec<Pod>, steps: Vec<Step>) -> Action {
    run_in(World::new(node).pods(pods), steps).await
}

async fn run_in(world: World, steps: Vec<Step>) -> Action {
    let (client, verifier) = mock_client();
    let ctx = context(client, &world);
    let task = verifier.run(steps);
    let action = reconcile(Arc::new(world.node), ctx.clone())
        .await
        .expect("reconcile");
    drop(ctx);
    finish(task).await;
    action
}

/// The reconciler's context over `world` (its nodes listed, its pods indexed), on `client`.
fn context(client: Client, world: &World) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: None,
        },
    );
    let index = PodIndex::default();
    for p in &world.pods {
        index.apply(&watcher::Event::Apply(p.clone()));
    }
    let (nodes, mut writer) = reflector::store::<PartialObjectMeta<Node>>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for n in world.others.iter().chain([&world.node]) {
        writer.apply_watcher_event(&watcher::Event::InitApply(n.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    // Nobody listens for freed slots here: a send just fails.
    let (slot_released, _) = futures::channel::mpsc::unbounded();
    Arc::new(Context {
        client,
        recorder,
        metrics: Metrics::default(),
        backoff: Default::default(),
        installer_pods: index,
        nodes,
        installer: world.config.clone(),
        max_install_attempts: crate::install_failure::DEFAULT_MAX_INSTALL_ATTEMPTS,
        overlay: Default::default(),
        rollout_lock: tokio::sync::Mutex::new(()),
        slot_released,
    })
}

/// RFC 3339 `secs` seconds ago (`'static`, for [`Since::Kept`]).
fn ago(secs: i64) -> &'static str {
    let t = Timestamp::from_second(Timestamp::now().as_second() - secs).expect("ts");
    Box::leak(t.to_string().into_boxed_str())
}

#[tokio::test]
async fn opt_in_by_annotation_marks_pending() {
    let action = run(opted_in(), vec![], pending_steps()).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn opt_in_by_label_marks_pending() {
    run(node(&[WASM_NODE], &[]), vec![], pending_steps()).await;
}

#[tokio::test]
async fn pending_waits_for_a_running_installer() {
    let mut running = pod("inst-a", "worker-1", InstallerAction::Install, None, false);
    running.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    // No write yet, but a timer: nothing else would wake us if the installer hangs.
    let action = run(pending(None), vec![running], vec![]).await;
    assert_ne!(action, Action::await_change());
    let debug = format!("{action:?}");
    assert!(debug.contains("requeue_after: Some("), "{debug}");
}

#[tokio::test]
async fn an_installer_silent_past_the_timeout_fails_the_node() {
    // Created long ago (the fixture's 2023 timestamp), never reported.
    let pods = vec![pod(
        "inst-a",
        "worker-1",
        InstallerAction::Install,
        None,
        false,
    )];
    let steps = vec![
        apply_node(
            json!({"wasmkube.dev/runtime": "failed"}),
            json!({"wasmkube.dev/runtime-reason": "InstallerTimeout: installer pod inst-a has not reported after 600 s"}),
        ),
        node_event("Warning", reasons::INSTALL_FAILED),
        // kubelet does not retry a hung init container: a fresh pod from the DaemonSet does.
        Step::delete("/api/v1/namespaces/wasmkube-system/pods/inst-a"),
    ];
    run(pending(None), pods, steps).await;
}

#[tokio::test]
async fn installer_success_in_termination_message_marks_ready() {
    let pods = vec![
        installed_pod(),
        // Another node's result does not count.
        pod(
            "inst-b",
            "worker-2",
            InstallerAction::Install,
            Some((1, r#"{"state":"failed"}"#)),
            false,
        ),
    ];
    run(pending(None), pods, ready_steps(Since::Absent)).await;
}

#[tokio::test]
async fn a_permanent_installer_failure_marks_failed_at_once_with_reason_and_warning() {
    // A config the installer refuses: no restart of the init container will change it.
    let msg = r#"{"state":"failed","flavour":"containerd","configPath":"/etc/containerd/config.toml","reason":"SchemaV1","failure":"nothing-changed","message":"config.toml: version 1 schema is not supported; upgrade containerd to 1.6+"}"#;
    let pods = vec![pod(
        "inst-a",
        "worker-1",
        InstallerAction::Install,
        Some((1, msg)),
        false,
    )];
    let steps = vec![
        apply_node(
            json!({"wasmkube.dev/runtime": "failed"}),
            json!({
                "wasmkube.dev/runtime-reason": "SchemaV1: config.toml: version 1 schema is not supported; upgrade containerd to 1.6+",
                "wasmkube.dev/runtime-attempts": "1"
            }),
        ),
        node_event("Warning", reasons::INSTALL_FAILED),
    ];
    run(pending(None), pods, steps).await;
}

#[tokio::test]
async fn ready_node_with_same_result_sends_nothing() {
    let n = node(
        &[("wasmkube.dev/runtime", "ready")],
        &[WASM_NODE, ("wasmkube.dev/shim-version", SHIM)],
    );
    run(n, vec![installed_pod()], vec![]).await;
}

#[tokio::test]
async fn opt_out_taints_then_drains_keeping_the_version() {
    let n = node(
        &[("wasmkube.dev/runtime", "ready")],
        &[("wasmkube.dev/shim-version", SHIM)],
    );
    let steps = steps([
        // The taint first, beside the node's own taints, under a resourceVersion precondition.
        retaint(
            json!([dedicated_taint()]),
            json!([dedicated_taint(), removal_taint()]),
        ),
        enters(
            "draining",
            json!({"wasmkube.dev/shim-version": SHIM}),
            reasons::DRAINING,
        ),
    ]);
    let action = run(n, vec![installed_pod()], steps).await;
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
}

#[tokio::test]
async fn removing_waits_while_only_the_old_install_pod_terminates() {
    let n = node(&[("wasmkube.dev/runtime", "removing")], &[]);
    let mut old = installed_pod();
    old.metadata.deletion_timestamp =
        Some(Time(Timestamp::from_second(1_700_000_100).expect("ts")));
    run(n, vec![old], vec![]).await;
}

#[tokio::test]
async fn uninstall_result_cleans_the_node() {
    let n = node(
        &[("wasmkube.dev/runtime", "removing")],
        &[("wasmkube.dev/shim-version", SHIM)],
    );
    let pods = vec![pod(
        "uninst-a",
        "worker-1",
        InstallerAction::Uninstall,
        Some((
            0,
            r#"{"state":"uninstalled","flavour":"kind","restarted":true,"message":"removed"}"#,
        )),
        false,
    )];
    // The taint comes off; applying no labels or annotations drops every field our manager
    // owned.
    let steps = steps([
        retaint(
            json!([removal_taint(), dedicated_taint()]),
            json!([dedicated_taint()]),
        ),
        removed_steps(),
    ]);
    run(n, pods, steps).await;
}

#[tokio::test]
async fn uninstall_failure_stays_removing_so_it_retries() {
    let n = node(&[("wasmkube.dev/runtime", "removing")], &[]);
    let pods = vec![pod(
        "uninst-a",
        "worker-1",
        InstallerAction::Uninstall,
        Some((
            1,
            r#"{"state":"failed","message":"containerd did not come back"}"#,
        )),
        false,
    )];
    let steps = vec![
        apply_node(
            json!({"wasmkube.dev/runtime": "removing"}),
            json!({"wasmkube.dev/runtime-reason": "containerd did not come back"}),
        ),
        node_event("Warning", reasons::UNINSTALL_FAILED),
    ];
    run(n, pods, steps).await;
}

#[tokio::test]
async fn untouched_node_sends_nothing() {
    run(node(&[("kubernetes.io/os", "linux")], &[]), vec![], vec![]).await;
}

#[tokio::test]
async fn daemonsets_and_runtime_class_are_ensured() {
    let (client, verifier) = mock_client();
    let steps = vec![
        Step::apply(
            "/apis/apps/v1/namespaces/wasmkube-system/daemonsets/wasmkube-node-uninstaller",
        )
        .body(|b| {
            assert_eq!(b["kind"], "DaemonSet");
            assert_eq!(
                b["spec"]["template"]["spec"]["initContainers"][0]["command"][1],
                "uninstall"
            );
        }),
        Step::apply("/apis/apps/v1/namespaces/wasmkube-system/daemonsets/wasmkube-node-installer")
            .body(|b| {
                let pod = &b["spec"]["template"]["spec"];
                assert_eq!(pod["hostPID"], true);
                assert_eq!(pod["automountServiceAccountToken"], false);
                assert_eq!(
                    pod["initContainers"][0]["securityContext"]["privileged"],
                    true
                );
                assert_eq!(
                    b["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
                    1
                );
                assert_eq!(pod["priorityClassName"], "wasmkube-node-critical");
            }),
        Step::apply("/apis/node.k8s.io/v1/runtimeclasses/wasmkube").body(|b| {
            assert_eq!(b["handler"], "wasmkube");
            assert_eq!(
                b["scheduling"]["nodeSelector"],
                json!({"wasmkube.dev/runtime": "ready"})
            );
        }),
    ];
    let task = verifier.run(steps);
    ensure_cluster_objects(&client, &InstallerConfig::default())
        .await
        .expect("ensure");
    drop(client);
    finish(task).await;
}
