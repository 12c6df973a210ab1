//! What the node reconcile must send: the node apply, the taint read-modify-write, node Events,
//! and the step sequences of the lifecycle's transitions.

use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::{NODE, SHIM};
use crate::{fixtures::Step, names::RUNTIME_SINCE_ANNOTATION, node_state::reasons};

/// What the apply must say about `runtime-since`.
#[derive(Clone, Copy)]
pub(super) enum Since {
    /// A new run: a fresh timestamp.
    New,
    /// Unchanged from this value.
    Kept(&'static str),
    /// Not written.
    Absent,
}

/// The apply of the node's metadata, asserting exactly our labels and annotations (the
/// `runtime-since` annotation as `since` says).
pub(super) fn apply_node(labels: serde_json::Value, annotations: serde_json::Value) -> Step {
    apply_node_since(labels, annotations, Since::Absent)
}

pub(super) fn apply_node_since(
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
pub(super) fn get_node(taints: serde_json::Value) -> Step {
    Step::get(NODE).reply(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "worker-1", "resourceVersion": "42"},
        "spec": {"taints": taints}
    }))
}

/// The taint change, with the read's resourceVersion as precondition.
pub(super) fn patch_taints(want: serde_json::Value) -> Step {
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

pub(super) const REMOVAL_TAINT: &str = "wasmkube.dev/runtime-removing";

pub(super) fn removal_taint() -> serde_json::Value {
    json!({"key": REMOVAL_TAINT, "value": "true", "effect": "NoSchedule"})
}

pub(super) fn dedicated_taint() -> serde_json::Value {
    json!({"key": "dedicated", "value": "wasm", "effect": "NoSchedule"})
}

pub(super) fn node_event(type_: &'static str, reason: &'static str) -> Step {
    // Events about cluster-scoped objects go to the default namespace.
    Step::event("default", type_, reason).body(|b| {
        assert_eq!(b["regarding"]["kind"], "Node");
        assert_eq!(b["regarding"]["name"], "worker-1");
    })
}

/// Steps in the order given.
pub(super) fn steps<const N: usize>(parts: [Vec<Step>; N]) -> Vec<Step> {
    parts.into_iter().flatten().collect()
}

/// A new run in `state`: the apply (exactly that label, `annotations` kept, a fresh
/// `runtime-since`), then the Normal event `reason`.
pub(super) fn enters(
    state: &str,
    annotations: serde_json::Value,
    reason: &'static str,
) -> Vec<Step> {
    vec![
        apply_node_since(
            json!({"wasmkube.dev/runtime": state}),
            annotations,
            Since::New,
        ),
        node_event("Normal", reason),
    ]
}

/// The node starts installing: `pending`, "provisioning".
pub(super) fn pending_steps() -> Vec<Step> {
    enters("pending", json!(null), reasons::PROVISIONING)
}

/// The node waits for a rollout slot: `queued`, "queued".
pub(super) fn queued_steps() -> Vec<Step> {
    enters("queued", json!(null), reasons::QUEUED)
}

/// The install reported `INSTALLED`: `ready` with its version (`runtime-since` as `since`
/// says), and the event naming the version.
pub(super) fn ready_steps(since: Since) -> Vec<Step> {
    vec![
        apply_node_since(
            json!({"wasmkube.dev/runtime": "ready"}),
            json!({"wasmkube.dev/shim-version": SHIM}),
            since,
        ),
        node_event("Normal", reasons::READY)
            .body(|b| assert_eq!(b["note"], format!("wasm runtime installed: shim {SHIM}"))),
    ]
}

/// Every field of ours dropped from the node (an apply of no labels or annotations), and
/// "removed".
pub(super) fn removed_steps() -> Vec<Step> {
    vec![
        apply_node(json!(null), json!(null)),
        node_event("Normal", reasons::REMOVED),
    ]
}

/// The taint read-modify-write: the node has `taints`, we write `want`.
pub(super) fn retaint(taints: serde_json::Value, want: serde_json::Value) -> Vec<Step> {
    vec![get_node(taints), patch_taints(want)]
}
