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

mod opt_out;
mod rollout;
mod runs;

const NODE: &str = "/api/v1/nodes/worker-1";
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
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: None,
        },
    );
    let index = PodIndex::default();
    for p in world.pods {
        index.apply(&watcher::Event::Apply(p));
    }
    let (nodes, mut writer) = reflector::store::<PartialObjectMeta<Node>>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for n in world.others.iter().chain([&world.node]) {
        writer.apply_watcher_event(&watcher::Event::InitApply(n.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let (slot_released, _slots) = futures::channel::mpsc::unbounded();
    let ctx = Arc::new(Context {
        client,
        recorder,
        metrics: Metrics::default(),
        backoff: Default::default(),
        installer_pods: index,
        nodes,
        installer: world.config,
        overlay: Default::default(),
        rollout_lock: tokio::sync::Mutex::new(()),
        slot_released,
    });
    let task = verifier.run(steps);
    let action = reconcile(Arc::new(world.node), ctx.clone())
        .await
        .expect("reconcile");
    drop(ctx);
    finish(task).await;
    action
}

/// RFC 3339 `secs` seconds ago.
fn ago(secs: i64) -> String {
    Timestamp::from_second(Timestamp::now().as_second() - secs)
        .expect("ts")
        .to_string()
}

/// What the apply must say about `runtime-since`.
#[derive(Clone, Copy)]
enum Since {
    /// A new run: a fresh timestamp.
    New,
    /// Unchanged from this value.
    Kept(&'static str),
    /// Not written.
    Absent,
}

/// The apply of the node's metadata, asserting exactly our labels and annotations (the
/// `runtime-since` annotation as `since` says).
fn apply_node(labels: serde_json::Value, annotations: serde_json::Value) -> Step {
    apply_node_since(labels, annotations, Since::Absent)
}

fn apply_node_since(
    labels: serde_json::Value,
    annotations: serde_json::Value,
    since: Since,
) -> Step {
    Step::apply(NODE)
        .body(move |b| {
            assert_eq!(b["apiVersion"], "v1");
            assert_eq!(b["kind"], "Node");
            assert_eq!(b["metadata"]["name"], "worker-1");
            assert_eq!(
                b["metadata"].get("labels").cloned().unwrap_or(json!(null)),
                labels,
                "labels in {b}"
            );
            let mut got = b["metadata"]
                .get("annotations")
                .cloned()
                .unwrap_or(json!({}));
            let written = got
                .as_object_mut()
                .and_then(|m| m.remove(RUNTIME_SINCE_ANNOTATION));
            match since {
                Since::New => {
                    let t: Timestamp = written
                        .as_ref()
                        .and_then(|v| v.as_str())
                        .expect("runtime-since written")
                        .parse()
                        .expect("RFC 3339");
                    let age = Timestamp::now().as_second() - t.as_second();
                    assert!((0..5).contains(&age), "runtime-since {t} is not now");
                }
                Since::Kept(v) => assert_eq!(written, Some(json!(v)), "runtime-since in {b}"),
                Since::Absent => assert_eq!(written, None, "runtime-since in {b}"),
            }
            let want = if annotations.is_null() {
                json!({})
            } else {
                annotations
            };
            assert_eq!(got, want, "annotations in {b}");
        })
        .reply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1"}}))
}

/// The GET of the full node before a taint change, answering with `taints`.
fn get_node(taints: serde_json::Value) -> Step {
    Step::get(NODE).reply(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "worker-1", "resourceVersion": "42"},
        "spec": {"taints": taints}
    }))
}

/// The taint change, with the read's resourceVersion as precondition.
fn patch_taints(want: serde_json::Value) -> Step {
    Step::merge_patch(NODE)
        .body(move |b| {
            assert_eq!(
                b["metadata"]["resourceVersion"], "42",
                "precondition in {b}"
            );
            assert_eq!(b["spec"]["taints"], want, "taints in {b}");
        })
        .reply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1"}}))
}

const REMOVAL_TAINT: &str = "wasmkube.dev/runtime-removing";

fn removal_taint() -> serde_json::Value {
    json!({"key": REMOVAL_TAINT, "value": "true", "effect": "NoSchedule"})
}

fn dedicated_taint() -> serde_json::Value {
    json!({"key": "dedicated", "value": "wasm", "effect": "NoSchedule"})
}

fn node_event(type_: &'static str, reason: &'static str) -> Step {
    // Events about cluster-scoped objects go to the default namespace.
    Step::event("default", type_, reason).body(|b| {
        assert_eq!(b["regarding"]["kind"], "Node");
        assert_eq!(b["regarding"]["name"], "worker-1");
    })
}

#[tokio::test]
async fn opt_in_by_annotation_marks_pending() {
    let steps = vec![
        apply_node_since(
            json!({"wasmkube.dev/runtime": "pending"}),
            json!(null),
            Since::New,
        ),
        node_event("Normal", reasons::PROVISIONING),
    ];
    let action = run(
        node(&[], &[("wasmkube.dev/wasm-node", "true")]),
        vec![],
        steps,
    )
    .await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn opt_in_by_label_marks_pending() {
    let steps = vec![
        apply_node_since(
            json!({"wasmkube.dev/runtime": "pending"}),
            json!(null),
            Since::New,
        ),
        node_event("Normal", reasons::PROVISIONING),
    ];
    run(
        node(&[("wasmkube.dev/wasm-node", "true")], &[]),
        vec![],
        steps,
    )
    .await;
}

#[tokio::test]
async fn pending_waits_for_a_running_installer() {
    let n = node(
        &[("wasmkube.dev/runtime", "pending")],
        &[("wasmkube.dev/wasm-node", "true")],
    );
    let mut running = pod("inst-a", "worker-1", InstallerAction::Install, None, false);
    running.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    // No write yet, but a timer: nothing else would wake us if the installer hangs.
    let action = run(n, vec![running], vec![]).await;
    assert_ne!(action, Action::await_change());
    let debug = format!("{action:?}");
    assert!(debug.contains("requeue_after: Some("), "{debug}");
}

#[tokio::test]
async fn an_installer_silent_past_the_timeout_fails_the_node() {
    let n = node(
        &[("wasmkube.dev/runtime", "pending")],
        &[("wasmkube.dev/wasm-node", "true")],
    );
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
    run(n, pods, steps).await;
}

#[tokio::test]
async fn installer_success_in_termination_message_marks_ready() {
    let n = node(
        &[("wasmkube.dev/runtime", "pending")],
        &[("wasmkube.dev/wasm-node", "true")],
    );
    let pods = vec![
        pod(
            "inst-a",
            "worker-1",
            InstallerAction::Install,
            Some((0, INSTALLED)),
            false,
        ),
        // Another node's result does not count.
        pod(
            "inst-b",
            "worker-2",
            InstallerAction::Install,
            Some((1, r#"{"state":"failed"}"#)),
            false,
        ),
    ];
    let steps = vec![
        apply_node(
            json!({"wasmkube.dev/runtime": "ready"}),
            json!({"wasmkube.dev/shim-version": "0.1.0@sha256:9f86d081"}),
        ),
        node_event("Normal", reasons::READY).body(|b| {
            assert_eq!(
                b["note"],
                "wasm runtime installed: shim 0.1.0@sha256:9f86d081"
            )
        }),
    ];
    run(n, pods, steps).await;
}

#[tokio::test]
async fn installer_failure_marks_failed_with_reason_and_warning() {
    let n = node(
        &[("wasmkube.dev/runtime", "pending")],
        &[("wasmkube.dev/wasm-node", "true")],
    );
    let msg = r#"{"state":"failed","flavour":"containerd","configPath":"/etc/containerd/config.toml","message":"config.toml: version 1 schema is not supported; upgrade containerd to 1.6+"}"#;
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
            json!({"wasmkube.dev/runtime-reason": "config.toml: version 1 schema is not supported; upgrade containerd to 1.6+"}),
        ),
        node_event("Warning", reasons::INSTALL_FAILED),
    ];
    run(n, pods, steps).await;
}

#[tokio::test]
async fn ready_node_with_same_result_sends_nothing() {
    let n = node(
        &[("wasmkube.dev/runtime", "ready")],
        &[
            ("wasmkube.dev/wasm-node", "true"),
            ("wasmkube.dev/shim-version", "0.1.0@sha256:9f86d081"),
        ],
    );
    let pods = vec![pod(
        "inst-a",
        "worker-1",
        InstallerAction::Install,
        Some((0, INSTALLED)),
        false,
    )];
    run(n, pods, vec![]).await;
}

#[tokio::test]
async fn opt_out_taints_then_drains_keeping_the_version() {
    let n = node(
        &[("wasmkube.dev/runtime", "ready")],
        &[("wasmkube.dev/shim-version", "0.1.0@sha256:9f86d081")],
    );
    let pods = vec![pod(
        "inst-a",
        "worker-1",
        InstallerAction::Install,
        Some((0, INSTALLED)),
        false,
    )];
    let steps = vec![
        // The taint first, beside the node's own taints, under a resourceVersion precondition.
        get_node(json!([dedicated_taint()])),
        patch_taints(json!([dedicated_taint(), removal_taint()])),
        apply_node_since(
            json!({"wasmkube.dev/runtime": "draining"}),
            json!({"wasmkube.dev/shim-version": "0.1.0@sha256:9f86d081"}),
            Since::New,
        ),
        node_event("Normal", reasons::DRAINING),
    ];
    let action = run(n, pods, steps).await;
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(5)));
}

#[tokio::test]
async fn removing_waits_while_only_the_old_install_pod_terminates() {
    let n = node(&[("wasmkube.dev/runtime", "removing")], &[]);
    let pods = vec![pod(
        "inst-a",
        "worker-1",
        InstallerAction::Install,
        Some((0, INSTALLED)),
        true,
    )];
    run(n, pods, vec![]).await;
}

#[tokio::test]
async fn uninstall_result_cleans_the_node() {
    let n = node(
        &[("wasmkube.dev/runtime", "removing")],
        &[("wasmkube.dev/shim-version", "0.1.0@sha256:9f86d081")],
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
    let steps = vec![
        get_node(json!([removal_taint(), dedicated_taint()])),
        patch_taints(json!([dedicated_taint()])),
        apply_node(json!(null), json!(null)),
        node_event("Normal", reasons::REMOVED),
    ];
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
