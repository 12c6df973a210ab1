//! The node lifecycle as a pure decision table (operator/README.md draws it):
//!
//! ```text
//! opt in:  (none) → queued → pending → ready | failed        (install DaemonSet on pending/ready/failed)
//!          pending stays pending while a retryable failure has attempts left (install_failure.rs)
//! opt out: pending|ready|failed|queued* → draining → removing → (none)
//!          (taint wasmkube.dev/runtime-removing:NoSchedule on draining/removing;
//!           uninstall DaemonSet on removing; *queued only if a shim may be on the node)
//! ```
//!
//! Re-opting in from `draining` or `removing` goes back to `queued`/`pending`.

use kube::{core::PartialObjectMeta, runtime::events::EventType, ResourceExt};

use k8s_openapi::api::core::v1::Node;

use crate::{
    install_failure::{Failure, Retry, DEFAULT_MAX_INSTALL_ATTEMPTS},
    installer_result::Outcome,
    names::{
        runtime_state::*, RUNTIME_ATTEMPTS_ANNOTATION, RUNTIME_LABEL, RUNTIME_REASON_ANNOTATION,
        RUNTIME_SINCE_ANNOTATION, SHIM_VERSION_ANNOTATION, WASM_NODE,
    },
};

/// Event reasons on Nodes.
pub mod reasons {
    pub const QUEUED: &str = "WasmRuntimeQueued";
    pub const PROVISIONING: &str = "WasmRuntimeProvisioning";
    pub const READY: &str = "WasmRuntimeReady";
    /// An install attempt failed and the installer will try again (the node stays `pending`).
    pub const INSTALL_RETRYING: &str = "WasmRuntimeInstallRetrying";
    /// The install failed for good: permanent, or out of attempts (the node is `failed`).
    pub const INSTALL_FAILED: &str = "WasmRuntimeInstallFailed";
    pub const DRAINING: &str = "WasmRuntimeDraining";
    pub const DRAIN_BLOCKED: &str = "WasmRuntimeDrainBlocked";
    pub const REMOVING: &str = "WasmRuntimeRemoving";
    pub const REMOVED: &str = "WasmRuntimeRemoved";
    pub const UNINSTALL_FAILED: &str = "WasmRuntimeUninstallFailed";
}

/// The node fields this controller owns (label, annotations; the taint follows the state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRuntime {
    pub state: Option<String>,
    pub shim_version: Option<String>,
    pub reason: Option<String>,
    /// [`RUNTIME_ATTEMPTS_ANNOTATION`].
    pub attempts: Option<u32>,
    /// [`RUNTIME_SINCE_ANNOTATION`].
    pub since: Option<String>,
}

impl NodeRuntime {
    pub fn of(node: &PartialObjectMeta<Node>) -> Self {
        NodeRuntime {
            state: node.labels().get(RUNTIME_LABEL).cloned(),
            shim_version: node.annotations().get(SHIM_VERSION_ANNOTATION).cloned(),
            reason: node.annotations().get(RUNTIME_REASON_ANNOTATION).cloned(),
            attempts: node
                .annotations()
                .get(RUNTIME_ATTEMPTS_ANNOTATION)
                .and_then(|a| a.parse().ok()),
            since: node.annotations().get(RUNTIME_SINCE_ANNOTATION).cloned(),
        }
    }

    /// A new run in `state` from now, keeping the installed version.
    fn enter(&self, state: &str, now: &str) -> Self {
        NodeRuntime {
            state: Some(state.to_string()),
            shim_version: self.shim_version.clone(),
            reason: None,
            attempts: None,
            since: Some(now.to_string()),
        }
    }

    /// Whether the node carries the removal taint in this state.
    pub fn tainted(&self) -> bool {
        matches!(self.state.as_deref(), Some(DRAINING | REMOVING))
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

fn normal(reason: &'static str, note: impl Into<String>) -> Option<NodeEvent> {
    Some(NodeEvent {
        type_: EventType::Normal,
        reason,
        note: note.into(),
    })
}

/// What the reconcile observed about the node, beyond its own fields.
#[derive(Clone, Debug)]
pub struct Observed {
    pub opted_in: bool,
    /// The outcome of this node's current install pod (stale pods already filtered out).
    pub install: Option<Outcome>,
    /// The outcome of this node's current uninstall pod.
    pub uninstall: Option<Outcome>,
    /// A rollout slot is free for this node.
    pub slot_free: bool,
    /// No wasm pods are left on the node (only looked at while `draining`).
    pub drained: bool,
    /// The time to record in [`RUNTIME_SINCE_ANNOTATION`] if a new run starts.
    pub now: String,
    /// `--max-install-attempts`: a retryable failure of this attempt (or a later one) is final.
    pub max_install_attempts: u32,
}

impl Default for Observed {
    fn default() -> Self {
        Observed {
            opted_in: false,
            install: None,
            uninstall: None,
            slot_free: false,
            drained: false,
            now: String::new(),
            max_install_attempts: DEFAULT_MAX_INSTALL_ATTEMPTS,
        }
    }
}

/// An install failure on an opted-in node: `pending` while the kubelet's next attempt may pass
/// and attempts are left (a Warning per new failure), `failed` otherwise (a Warning when the
/// reason changes).
fn install_failed(
    current: &NodeRuntime,
    f: &Failure,
    max: u32,
) -> (NodeRuntime, Option<NodeEvent>) {
    let max = max.max(1);
    let attempt = f.attempt.unwrap_or(1);
    if f.retry == Retry::Retryable && attempt < max {
        let next = NodeRuntime {
            state: Some(PENDING.to_string()),
            reason: Some(f.message.clone()),
            attempts: Some(attempt),
            ..current.clone()
        };
        let ev = (next != *current).then(|| NodeEvent {
            type_: EventType::Warning,
            reason: reasons::INSTALL_RETRYING,
            note: format!(
                "wasm runtime install attempt {attempt} of {max} failed; the installer will \
                 retry: {}",
                f.message
            ),
        });
        return (next, ev);
    }
    let message = match f.retry {
        Retry::Retryable => format!("{} (gave up after {max} attempts)", f.message),
        Retry::Permanent => f.message.clone(),
    };
    let ev = (current.state.as_deref() != Some(FAILED)
        || current.reason.as_ref() != Some(&message))
    .then(|| NodeEvent {
        type_: EventType::Warning,
        reason: reasons::INSTALL_FAILED,
        note: format!("wasm runtime install failed and needs attention: {message}"),
    });
    let next = NodeRuntime {
        state: Some(FAILED.to_string()),
        reason: Some(message),
        attempts: f.attempt,
        ..current.clone()
    };
    (next, ev)
}

/// The decision table.
pub fn decide(current: &NodeRuntime, seen: &Observed) -> (NodeRuntime, Option<NodeEvent>) {
    let state = current.state.as_deref();
    match (seen.opted_in, state) {
        (true, Some(PENDING | READY | FAILED)) => match &seen.install {
            Some(Outcome::Installed { shim_version }) => {
                let next = NodeRuntime {
                    state: Some(READY.to_string()),
                    shim_version: Some(shim_version.clone()),
                    reason: None,
                    attempts: None,
                    since: current.since.clone(),
                };
                // A success after retried failures says how many there were.
                let retried = match (state, current.attempts) {
                    (Some(PENDING), Some(n)) => format!(" (attempt {}, after {n} failed)", n + 1),
                    _ => String::new(),
                };
                let ev = (state != Some(READY)
                    || current.shim_version.as_ref() != Some(shim_version))
                .then(|| NodeEvent {
                    type_: EventType::Normal,
                    reason: reasons::READY,
                    note: format!("wasm runtime installed: shim {shim_version}{retried}"),
                });
                (next, ev)
            }
            Some(Outcome::Failed(f)) => install_failed(current, f, seen.max_install_attempts),
            // An install pod never reports "uninstalled"; nothing finished yet otherwise.
            Some(Outcome::Uninstalled) | None => (current.clone(), None),
        },
        (true, Some(QUEUED)) if !seen.slot_free => (current.clone(), None),
        // Not opted in yet, or coming back from draining / removing.
        (true, _) if seen.slot_free => (
            current.enter(PENDING, &seen.now),
            normal(
                reasons::PROVISIONING,
                "node opted in to wasm workloads; installing the wasmkube runtime",
            ),
        ),
        (true, _) => (
            current.enter(QUEUED, &seen.now),
            normal(
                reasons::QUEUED,
                "node opted in to wasm workloads; waiting for a rollout slot \
                 (--max-concurrent-installs)",
            ),
        ),
        (false, None) => (current.clone(), None),
        // Never installed: nothing to drain or uninstall.
        (false, Some(QUEUED)) if current.shim_version.is_none() => (
            NodeRuntime::default(),
            normal(
                reasons::REMOVED,
                "node opted out before its install started",
            ),
        ),
        (false, Some(DRAINING)) if seen.drained => (
            current.enter(REMOVING, &seen.now),
            normal(
                reasons::REMOVING,
                "no wasm pods left on the node; uninstalling the wasmkube runtime",
            ),
        ),
        (false, Some(DRAINING)) => (current.clone(), None),
        (false, Some(REMOVING)) => match &seen.uninstall {
            Some(Outcome::Uninstalled) => (
                NodeRuntime::default(),
                normal(reasons::REMOVED, "wasmkube runtime uninstalled"),
            ),
            Some(Outcome::Failed(Failure { message, .. })) => {
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
        // pending / ready / failed / a queued node that may hold a shim / an unknown value.
        (false, Some(_)) => (
            current.enter(DRAINING, &seen.now),
            normal(
                reasons::DRAINING,
                "node opted out of wasm workloads; tainted, draining its wasm pods before \
                 uninstalling the wasmkube runtime",
            ),
        ),
    }
}

#[cfg(test)]
mod tests;
