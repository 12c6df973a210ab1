//! Which installer pod speaks for the current run: stale results, pods that never appear.

use super::*;

#[tokio::test]
async fn a_result_from_before_the_run_is_never_used() {
    // The node re-entered pending five seconds ago; the only install pod is from 2023 and
    // reports a failure (a terminating pod the cache still shows, say).
    let stale = pod(
        "inst-old",
        "worker-1",
        InstallerAction::Install,
        Some((1, r#"{"state":"failed","message":"stale"}"#)),
        false,
    );
    let action = run(pending(Some(ago(5))), vec![stale], vec![]).await;
    // Waiting for the new pod, with a timer for the case it never comes.
    assert!(
        format!("{action:?}").contains("requeue_after: Some("),
        "{action:?}"
    );
}

#[tokio::test]
async fn a_result_of_the_current_run_is_used() {
    let since = "2023-11-14T22:13:00Z"; // just before the fixture pods' creation
    let steps = ready_steps(Since::Kept(since));
    run(pending(Some(since)), vec![installed_pod()], steps).await;
}

const FORBIDDEN: &str = "Error creating: pods \"wasmkube-node-installer-x7k2p\" is forbidden: \
    violates PodSecurity \"baseline:latest\": host namespaces (hostPID=true), privileged \
    (container \"installer\" must not set securityContext.privileged=true)";

fn failed_create_events() -> Step {
    Step::get("/api/v1/namespaces/wasmkube-system/events")
        .query(
            "fieldSelector",
            "involvedObject.kind=DaemonSet,involvedObject.name=wasmkube-node-installer,reason=FailedCreate",
        )
        .reply(json!({
            "apiVersion": "v1", "kind": "EventList", "metadata": {},
            "items": [
                {"metadata": {"name": "old", "namespace": "wasmkube-system"},
                 "involvedObject": {"kind": "DaemonSet", "name": "wasmkube-node-installer"},
                 "reason": "FailedCreate", "message": "from an earlier run",
                 "lastTimestamp": "2023-01-01T00:00:00Z"},
                {"metadata": {"name": "new", "namespace": "wasmkube-system"},
                 "involvedObject": {"kind": "DaemonSet", "name": "wasmkube-node-installer"},
                 "reason": "FailedCreate", "message": FORBIDDEN,
                 "lastTimestamp": Timestamp::now().to_string()}
            ]
        }))
}

/// The calls of a reconcile that finds the Pod Security refusal and fails the node with `reason`.
fn refused(since: &'static str, reason: String) -> Vec<Step> {
    vec![
        failed_create_events(),
        apply_node_since(
            json!({"wasmkube.dev/runtime": "failed"}),
            json!({"wasmkube.dev/runtime-reason": reason}),
            Since::Kept(since),
        ),
        node_event("Warning", reasons::INSTALL_FAILED).body(|b| {
            let note = b["note"].as_str().unwrap_or_default();
            assert!(note.contains("PodSecurity"), "{note}");
        }),
    ]
}

#[tokio::test]
async fn an_install_pod_that_never_appears_fails_the_node_with_the_daemonsets_reason() {
    let since = ago(60);
    let reason = format!(
        "InstallerPodMissing: no install pod appeared on the node within 45 s; \
         DaemonSet wasmkube-node-installer: {FORBIDDEN}"
    );
    run(pending(Some(since)), vec![], refused(since, reason)).await;
}

#[tokio::test]
async fn a_refused_install_pod_is_reported_as_soon_as_the_daemonset_says_why() {
    // 15 s into the run: past FAILED_CREATE_AFTER, well before POD_MISSING_TIMEOUT.
    let since = ago(15);
    let reason = format!(
        "InstallerPodMissing: the DaemonSet controller cannot create the install pod; \
         DaemonSet wasmkube-node-installer: {FORBIDDEN}"
    );
    run(pending(Some(since)), vec![], refused(since, reason)).await;
}

#[tokio::test]
async fn a_missing_pod_without_a_failed_create_waits_for_the_timeout() {
    // 20 s into the run, the DaemonSet has said nothing: look again at 45 s.
    let steps = vec![Step::get("/api/v1/namespaces/wasmkube-system/events")
        .query(
            "fieldSelector",
            "involvedObject.kind=DaemonSet,involvedObject.name=wasmkube-node-installer,reason=FailedCreate",
        )
        .reply(json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []}))];
    let action = run(pending(Some(ago(20))), vec![], steps).await;
    let debug = format!("{action:?}");
    assert!(
        debug.contains("requeue_after: Some(26") || debug.contains("requeue_after: Some(25"),
        "{debug}"
    );
}

#[tokio::test]
async fn a_missing_pod_is_reported_once_per_run() {
    let since = ago(120);
    let n = node(
        &[("wasmkube.dev/runtime", "failed")],
        &[
            WASM_NODE,
            (RUNTIME_SINCE_ANNOTATION, since),
            (
                "wasmkube.dev/runtime-reason",
                "InstallerPodMissing: no install pod appeared on the node within 45 s; …",
            ),
        ],
    );
    // No event list, no write: the DaemonSet controller retries on its own.
    run(n, vec![], vec![]).await;
}

#[tokio::test]
async fn a_pod_still_expected_sets_a_timer() {
    let action = run(pending(Some(ago(5))), vec![], vec![]).await;
    let debug = format!("{action:?}");
    // FAILED_CREATE_AFTER (10 s) after the run began, minus the 5 s gone, plus a second; no
    // event read before then.
    assert!(
        debug.contains("requeue_after: Some(6") || debug.contains("requeue_after: Some(5"),
        "{debug}"
    );
}

#[tokio::test]
async fn a_ready_node_whose_pod_is_being_replaced_is_not_failed() {
    // An installer upgrade: the DaemonSet deleted the old pod and has not made the new one.
    let n = node(
        &[("wasmkube.dev/runtime", "ready")],
        &[
            WASM_NODE,
            ("wasmkube.dev/shim-version", SHIM),
            (RUNTIME_SINCE_ANNOTATION, ago(3600)),
        ],
    );
    let action = run(n, vec![], vec![]).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn an_uninstall_pod_that_never_appears_is_reported() {
    let since = ago(60);
    let n = node(
        &[("wasmkube.dev/runtime", "removing")],
        &[(RUNTIME_SINCE_ANNOTATION, since)],
    );
    let steps = vec![
        Step::get("/api/v1/namespaces/wasmkube-system/events")
            .query(
                "fieldSelector",
                "involvedObject.kind=DaemonSet,involvedObject.name=wasmkube-node-uninstaller,reason=FailedCreate",
            )
            .reply(json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []})),
        apply_node_since(
            json!({"wasmkube.dev/runtime": "removing"}),
            json!({"wasmkube.dev/runtime-reason": "InstallerPodMissing: no uninstall pod appeared on the node within 45 s; DaemonSet wasmkube-node-uninstaller reported no FailedCreate (is the DaemonSet controller running?)"}),
            Since::Kept(since),
        ),
        node_event("Warning", reasons::UNINSTALL_FAILED),
    ];
    run(n, vec![], steps).await;
}
