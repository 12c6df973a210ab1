//! Installer failures the kubelet retries: the node stays `pending` with the attempt recorded
//! while attempts are left, turns `ready` when a retry passes, and `failed` when the attempts run
//! out or the failure is permanent.

use super::*;

const MAX: u32 = crate::install_failure::DEFAULT_MAX_INSTALL_ATTEMPTS;

/// The wasm check raced something: the installer rolled back and exits 3; a retry may pass.
const CHECK_FAILED: &str = r#"{"state":"failed","reason":"WasmCheckFailed","failure":"rolled-back","message":"wasm check: the module exited with 143, expected 42 (the wasmkube handler did not run it)"}"#;
const CHECK_REASON: &str = "WasmCheckFailed: wasm check: the module exited with 143, expected 42 (the wasmkube handler did not run it)";

/// The install pod of worker-1 after `restarts` restarts of its init container, whose newest
/// run ended with `result` (so that run was attempt `restarts + 1`).
fn attempted(restarts: i32, result: (i32, &str)) -> Pod {
    let mut p = pod(
        "inst-a",
        "worker-1",
        InstallerAction::Install,
        Some(result),
        false,
    );
    if let Some(s) = p
        .status
        .as_mut()
        .and_then(|s| s.init_container_statuses.as_mut())
        .and_then(|s| s.first_mut())
    {
        s.restart_count = restarts;
    }
    p
}

/// A `pending` node whose install failed `attempts` times so far.
fn retrying(attempts: u32) -> PartialObjectMeta<Node> {
    let n = attempts.to_string();
    let n: &'static str = Box::leak(n.into_boxed_str());
    node(
        &[("wasmkube.dev/runtime", "pending")],
        &[
            WASM_NODE,
            ("wasmkube.dev/runtime-reason", CHECK_REASON),
            ("wasmkube.dev/runtime-attempts", n),
        ],
    )
}

#[tokio::test]
async fn a_retryable_failure_keeps_the_node_pending_with_its_attempt() {
    let steps = vec![
        apply_node(
            json!({"wasmkube.dev/runtime": "pending"}),
            json!({
                "wasmkube.dev/runtime-reason": CHECK_REASON,
                "wasmkube.dev/runtime-attempts": "1"
            }),
        ),
        node_event("Warning", reasons::INSTALL_RETRYING).body(|b| {
            let note = b["note"].as_str().unwrap_or_default();
            assert!(
                note.starts_with(&format!(
                    "wasm runtime install attempt 1 of {MAX} failed; the installer will retry"
                )),
                "{note}"
            );
            assert!(note.contains("WasmCheckFailed"), "{note}");
        }),
    ];
    let action = run(pending(None), vec![attempted(0, (3, CHECK_FAILED))], steps).await;
    // The pod's next status change wakes the node; nothing to time.
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn the_same_attempt_seen_again_sends_nothing() {
    // The retry runs now; lastState still holds attempt 1.
    let mut p = attempted(1, (3, CHECK_FAILED));
    if let Some(s) = p
        .status
        .as_mut()
        .and_then(|s| s.init_container_statuses.as_mut())
        .and_then(|s| s.first_mut())
    {
        s.last_state = s.state.take();
        s.state = Some(ContainerState {
            running: Some(Default::default()),
            ..ContainerState::default()
        });
    }
    run(retrying(1), vec![p], vec![]).await;
}

#[tokio::test]
async fn a_retry_that_passes_makes_the_node_ready() {
    let ok = attempted(1, (0, INSTALLED));
    let steps = vec![
        // Reason and attempts are dropped (not applied by our manager any more).
        apply_node(
            json!({"wasmkube.dev/runtime": "ready"}),
            json!({"wasmkube.dev/shim-version": SHIM}),
        ),
        node_event("Normal", reasons::READY).body(|b| {
            assert_eq!(
                b["note"],
                format!("wasm runtime installed: shim {SHIM} (attempt 2, after 1 failed)")
            )
        }),
    ];
    run(retrying(1), vec![ok], steps).await;
}

#[tokio::test]
async fn the_last_attempt_fails_the_node() {
    let steps = vec![
        apply_node(
            json!({"wasmkube.dev/runtime": "failed"}),
            json!({
                "wasmkube.dev/runtime-reason":
                    format!("{CHECK_REASON} (gave up after {MAX} attempts)"),
                "wasmkube.dev/runtime-attempts": MAX.to_string()
            }),
        ),
        node_event("Warning", reasons::INSTALL_FAILED).body(|b| {
            let note = b["note"].as_str().unwrap_or_default();
            assert!(note.contains("needs attention"), "{note}");
            assert!(
                note.contains(&format!("gave up after {MAX} attempts")),
                "{note}"
            );
        }),
    ];
    let restarts = i32::try_from(MAX - 1).expect("small");
    run(
        retrying(MAX - 1),
        vec![attempted(restarts, (3, CHECK_FAILED))],
        steps,
    )
    .await;
}

#[tokio::test]
async fn a_broken_config_fails_the_node_at_once() {
    let parse = r#"{"state":"failed","reason":"ParseError","failure":"nothing-changed","message":"/etc/containerd/config.toml: TOML parse error at line 2, column 9"}"#;
    let steps = vec![
        apply_node(
            json!({"wasmkube.dev/runtime": "failed"}),
            json!({
                "wasmkube.dev/runtime-reason": "ParseError: /etc/containerd/config.toml: TOML parse error at line 2, column 9",
                "wasmkube.dev/runtime-attempts": "1"
            }),
        ),
        node_event("Warning", reasons::INSTALL_FAILED),
    ];
    run(pending(None), vec![attempted(0, (1, parse))], steps).await;
}

#[tokio::test]
async fn a_retrying_node_is_not_reported_missing_while_its_pod_is_replaced() {
    // An installer upgrade replaced the pod between attempts: no FailedCreate lookup, no write.
    let since = ago(3600);
    let n = node(
        &[("wasmkube.dev/runtime", "pending")],
        &[
            WASM_NODE,
            (RUNTIME_SINCE_ANNOTATION, since),
            ("wasmkube.dev/runtime-reason", CHECK_REASON),
            ("wasmkube.dev/runtime-attempts", "2"),
        ],
    );
    run(n, vec![], vec![]).await;
}
