//! Node controller scenarios against the mock API server: opt-in → pending → installer result →
//! ready / failed; opt-out → removing → uninstaller result → clean; DaemonSets and RuntimeClass.

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
    runtime::{
        controller::Action,
        events::{Recorder, Reporter},
        reflector::{self, Store},
        watcher,
    },
};
use serde_json::json;

use crate::{
    builders::installer::{pod_labels, InstallerAction, InstallerConfig},
    fixtures::{finish, mock_client, Step},
    metrics::Metrics,
    names::{installer, FIELD_MANAGER},
    node_controller::{ensure_cluster_objects, reasons, reconcile, Context},
};

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

fn store(pods: Vec<Pod>) -> Store<Pod> {
    let (reader, mut writer) = reflector::store::<Pod>();
    for p in pods {
        writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    reader
}

async fn run(node: PartialObjectMeta<Node>, pods: Vec<Pod>, steps: Vec<Step>) -> Action {
    let (client, verifier) = mock_client();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: None,
        },
    );
    let ctx = Arc::new(Context {
        client,
        recorder,
        metrics: Metrics::default(),
        backoff: Default::default(),
        installer_pods: store(pods),
        installer: InstallerConfig::default(),
    });
    let task = verifier.run(steps);
    let action = reconcile(Arc::new(node), ctx.clone())
        .await
        .expect("reconcile");
    drop(ctx);
    finish(task).await;
    action
}

/// The apply of the node's metadata, asserting exactly our labels and annotations.
fn apply_node(labels: serde_json::Value, annotations: serde_json::Value) -> Step {
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
            assert_eq!(
                b["metadata"]
                    .get("annotations")
                    .cloned()
                    .unwrap_or(json!(null)),
                annotations,
                "annotations in {b}"
            );
        })
        .reply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1"}}))
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
        apply_node(json!({"wasmkube.dev/runtime": "pending"}), json!(null)),
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
        apply_node(json!({"wasmkube.dev/runtime": "pending"}), json!(null)),
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
async fn opt_out_marks_removing_and_keeps_the_version_until_uninstalled() {
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
        apply_node(
            json!({"wasmkube.dev/runtime": "removing"}),
            json!({"wasmkube.dev/shim-version": "0.1.0@sha256:9f86d081"}),
        ),
        node_event("Normal", reasons::REMOVING),
    ];
    run(n, pods, steps).await;
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
    // Applying no labels or annotations drops every field our manager owned.
    let steps = vec![
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
