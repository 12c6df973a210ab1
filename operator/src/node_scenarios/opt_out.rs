//! Opt-out: eviction of wasm pods, PodDisruptionBudgets, the wait policy, re-opt-in.

use super::*;

/// A draining node looks again this often.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_secs(5);

fn draining(shim: bool) -> PartialObjectMeta<Node> {
    let mut annotations = vec![(RUNTIME_SINCE_ANNOTATION, "2026-11-25T10:00:00Z")];
    if shim {
        annotations.push(("wasmkube.dev/shim-version", SHIM));
    }
    node(&[("wasmkube.dev/runtime", "draining")], &annotations)
}

/// The list of pods on the node: a running wasm pod, a runc pod, a finished wasm pod.
fn pods_on_node(wasm_terminating: bool) -> Step {
    let deletion = wasm_terminating.then_some("2026-11-25T10:00:03Z");
    Step::get("/api/v1/pods")
        .query("fieldSelector", "spec.nodeName=worker-1")
        .reply(json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [
                {"metadata": {"name": "hello-1", "namespace": "apps", "deletionTimestamp": deletion},
                 "spec": {"runtimeClassName": "wasmkube", "containers": []},
                 "status": {"phase": "Running"}},
                {"metadata": {"name": "nginx", "namespace": "apps"},
                 "spec": {"containers": []}, "status": {"phase": "Running"}},
                {"metadata": {"name": "job-1", "namespace": "apps"},
                 "spec": {"runtimeClassName": "wasmkube", "containers": []},
                 "status": {"phase": "Succeeded"}}
            ]
        }))
}

fn no_pods_on_node() -> Step {
    Step::get("/api/v1/pods")
        .query("fieldSelector", "spec.nodeName=worker-1")
        .reply(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}))
}

fn eviction() -> Step {
    Step::post("/api/v1/namespaces/apps/pods/hello-1/eviction").body(|b| {
        assert_eq!(b["metadata"]["name"], "hello-1", "eviction of {b}");
    })
}

#[tokio::test]
async fn draining_evicts_only_the_live_wasm_pods() {
    let steps = vec![
        pods_on_node(false),
        eviction().reply(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
    ];
    let action = run(draining(true), vec![], steps).await;
    assert_eq!(action, Action::requeue(DRAIN_POLL));
}

#[tokio::test]
async fn a_terminating_wasm_pod_is_waited_for_not_evicted_again() {
    let action = run(draining(true), vec![], vec![pods_on_node(true)]).await;
    assert_eq!(action, Action::requeue(DRAIN_POLL));
}

#[tokio::test]
async fn a_disruption_budget_refusal_is_reported_and_retried() {
    let steps = vec![
        pods_on_node(false),
        eviction().fail(429, "TooManyRequests"),
        node_event("Warning", reasons::DRAIN_BLOCKED).body(|b| {
            assert!(
                b["note"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("apps/hello-1"),
                "{b}"
            );
        }),
    ];
    let action = run(draining(true), vec![], steps).await;
    assert_eq!(action, Action::requeue(DRAIN_POLL));
}

#[tokio::test]
async fn the_wait_policy_never_evicts() {
    let config = InstallerConfig {
        drain: DrainPolicy::Wait,
        ..InstallerConfig::default()
    };
    run_in(
        World::new(draining(true)).config(config),
        vec![pods_on_node(false)],
    )
    .await;
}

#[tokio::test]
async fn a_drained_node_moves_to_removing() {
    let steps = steps([
        vec![no_pods_on_node()],
        enters(
            "removing",
            json!({"wasmkube.dev/shim-version": SHIM}),
            reasons::REMOVING,
        ),
    ]);
    run(draining(true), vec![], steps).await;
}

#[tokio::test]
async fn re_opt_in_while_removing_untaints_and_installs_again() {
    let n = node(
        &[("wasmkube.dev/runtime", "removing")],
        &[
            WASM_NODE,
            ("wasmkube.dev/shim-version", SHIM),
            (RUNTIME_SINCE_ANNOTATION, "2026-11-25T10:00:00Z"),
        ],
    );
    // The uninstall pod of the abandoned run must not matter.
    let pods = vec![pod(
        "uninst-a",
        "worker-1",
        InstallerAction::Uninstall,
        Some((0, r#"{"state":"uninstalled"}"#)),
        false,
    )];
    let steps = steps([
        retaint(json!([removal_taint()]), json!([])),
        enters(
            "pending",
            json!({"wasmkube.dev/shim-version": SHIM}),
            reasons::PROVISIONING,
        ),
    ]);
    run(n, pods, steps).await;
}

#[tokio::test]
async fn opting_out_a_queued_node_that_never_installed_just_cleans_it() {
    let n = node(
        &[("wasmkube.dev/runtime", "queued")],
        &[(RUNTIME_SINCE_ANNOTATION, "2026-11-25T10:00:00Z")],
    );
    run(n, vec![], removed_steps()).await;
}
