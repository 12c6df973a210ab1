//! The node lifecycle as a pure decision table (operator/README.md draws it):
//!
//! ```text
//! opt in:  (none) → queued → pending → ready | failed        (install DaemonSet on pending/ready/failed)
//! opt out: pending|ready|failed|queued* → draining → removing → (none)
//!          (taint wasmkube.dev/runtime-removing:NoSchedule on draining/removing;
//!           uninstall DaemonSet on removing; *queued only if a shim may be on the node)
//! ```
//!
//! Re-opting in from `draining` or `removing` goes back to `queued`/`pending`.

use kube::{core::PartialObjectMeta, runtime::events::EventType, ResourceExt};

use k8s_openapi::api::core::v1::Node;

use crate::{
    installer_result::Outcome,
    names::{
        runtime_state::*, RUNTIME_LABEL, RUNTIME_REASON_ANNOTATION, RUNTIME_SINCE_ANNOTATION,
        SHIM_VERSION_ANNOTATION, WASM_NODE,
    },
};

/// Event reasons on Nodes.
pub mod reasons {
    pub const QUEUED: &str = "WasmRuntimeQueued";
    pub const PROVISIONING: &str = "WasmRuntimeProvisioning";
    pub const READY: &str = "WasmRuntimeReady";
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
    /// [`RUNTIME_SINCE_ANNOTATION`].
    pub since: Option<String>,
}

impl NodeRuntime {
    pub fn of(node: &PartialObjectMeta<Node>) -> Self {
        NodeRuntime {
            state: node.labels().get(RUNTIME_LABEL).cloned(),
            shim_version: node.annotations().get(SHIM_VERSION_ANNOTATION).cloned(),
            reason: node.annotations().get(RUNTIME_REASON_ANNOTATION).cloned(),
            since: node.annotations().get(RUNTIME_SINCE_ANNOTATION).cloned(),
        }
    }

    /// A new run in `state` from now, keeping the installed version.
    fn enter(&self, state: &str, now: &str) -> Self {
        NodeRuntime {
            state: Some(state.to_string()),
            shim_version: self.shim_version.clone(),
            reason: None,
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
#[derive(Clone, Debug, Default)]
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
                    since: current.since.clone(),
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
                    reason: Some(message.clone()),
                    ..current.clone()
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
mod tests {
    use super::*;

    const NOW: &str = "2026-11-25T10:00:00Z";
    const EARLIER: &str = "2026-11-25T09:00:00Z";

    fn rt(state: Option<&str>, shim: Option<&str>, reason: Option<&str>) -> NodeRuntime {
        NodeRuntime {
            state: state.map(String::from),
            shim_version: shim.map(String::from),
            reason: reason.map(String::from),
            since: Some(EARLIER.to_string()),
        }
    }

    fn since(mut r: NodeRuntime, s: Option<&str>) -> NodeRuntime {
        r.since = s.map(String::from);
        r
    }

    fn seen(opted_in: bool) -> Observed {
        Observed {
            opted_in,
            slot_free: true,
            now: NOW.to_string(),
            ..Observed::default()
        }
    }

    fn installed(v: &str) -> Option<Outcome> {
        Some(Outcome::Installed {
            shim_version: v.to_string(),
        })
    }

    fn failed(m: &str) -> Option<Outcome> {
        Some(Outcome::Failed {
            message: m.to_string(),
        })
    }

    fn reason(e: Option<NodeEvent>) -> Option<&'static str> {
        e.map(|e| e.reason)
    }

    #[test]
    fn opt_in_waits_for_a_slot_then_installs() {
        let clean = NodeRuntime::default();
        // A free slot: straight to pending, since = now.
        let (n, e) = decide(&clean, &seen(true));
        assert_eq!(n, since(rt(Some(PENDING), None, None), Some(NOW)));
        assert_eq!(reason(e), Some(reasons::PROVISIONING));
        // No slot: queued (since = now, the queue's order), and it stays queued quietly.
        let busy = Observed {
            slot_free: false,
            ..seen(true)
        };
        let (q, e) = decide(&clean, &busy);
        assert_eq!(q, since(rt(Some(QUEUED), None, None), Some(NOW)));
        assert_eq!(reason(e), Some(reasons::QUEUED));
        assert_eq!(decide(&q, &busy), (q.clone(), None));
        // A slot frees: pending.
        assert_eq!(decide(&q, &seen(true)).0.state.as_deref(), Some(PENDING));
    }

    #[test]
    fn installer_results_move_pending_ready_failed() {
        let cur = rt(Some(PENDING), None, None);
        assert_eq!(decide(&cur, &seen(true)), (cur.clone(), None));
        let ok = Observed {
            install: installed("0.1.0@sha256:ab"),
            ..seen(true)
        };
        let (n, e) = decide(&cur, &ok);
        assert_eq!(n, rt(Some(READY), Some("0.1.0@sha256:ab"), None));
        assert_eq!(reason(e), Some(reasons::READY));
        assert_eq!(decide(&n, &ok), (n.clone(), None), "ready + same result");
        let bad = Observed {
            install: failed("no config"),
            ..seen(true)
        };
        let (f, e) = decide(&cur, &bad);
        assert_eq!(f, rt(Some(FAILED), None, Some("no config")));
        assert_eq!(
            e.map(|e| (e.type_, e.reason)),
            Some((EventType::Warning, reasons::INSTALL_FAILED))
        );
        assert_eq!(
            decide(&f, &bad).1,
            None,
            "the same failure is reported once"
        );
        // A retry's success clears the reason and keeps the run's since.
        assert_eq!(
            decide(&f, &ok).0,
            rt(Some(READY), Some("0.1.0@sha256:ab"), None)
        );
    }

    #[test]
    fn opt_out_drains_then_removes_then_cleans() {
        let ready = rt(Some(READY), Some("v"), None);
        let (d, e) = decide(&ready, &seen(false));
        assert_eq!(d, since(rt(Some(DRAINING), Some("v"), None), Some(NOW)));
        assert!(d.tainted());
        assert_eq!(reason(e), Some(reasons::DRAINING));
        // Wasm pods left: stay draining.
        assert_eq!(decide(&d, &seen(false)), (d.clone(), None));
        let drained = Observed {
            drained: true,
            ..seen(false)
        };
        let (r, e) = decide(&d, &drained);
        assert_eq!(r.state.as_deref(), Some(REMOVING));
        assert!(r.tainted());
        assert_eq!(reason(e), Some(reasons::REMOVING));
        // removing + failed → stays removing (so it retries), reason recorded once.
        let bad = Observed {
            uninstall: failed("busy"),
            ..seen(false)
        };
        let (rf, e) = decide(&r, &bad);
        assert_eq!(rf.reason.as_deref(), Some("busy"));
        assert_eq!(rf.state.as_deref(), Some(REMOVING));
        assert!(e.is_some());
        assert_eq!(decide(&rf, &bad).1, None);
        let done = Observed {
            uninstall: Some(Outcome::Uninstalled),
            ..seen(false)
        };
        let (clean, e) = decide(&rf, &done);
        assert_eq!(clean, NodeRuntime::default());
        assert!(!clean.tainted());
        assert_eq!(reason(e), Some(reasons::REMOVED));
    }

    #[test]
    fn re_opt_in_while_draining_or_removing_installs_again() {
        for s in [DRAINING, REMOVING] {
            let cur = rt(Some(s), Some("v"), Some("busy"));
            let (n, e) = decide(&cur, &seen(true));
            assert_eq!(n, since(rt(Some(PENDING), Some("v"), None), Some(NOW)));
            assert!(!n.tainted());
            assert_eq!(reason(e), Some(reasons::PROVISIONING));
        }
    }

    #[test]
    fn queued_opt_out_only_drains_when_a_shim_may_be_there() {
        let q = rt(Some(QUEUED), None, None);
        let (n, _) = decide(&q, &seen(false));
        assert_eq!(n, NodeRuntime::default());
        // Queued after a re-opt-in from draining: the old shim is still on the node.
        let q = rt(Some(QUEUED), Some("v"), None);
        assert_eq!(decide(&q, &seen(false)).0.state.as_deref(), Some(DRAINING));
    }

    #[test]
    fn untouched_and_unknown() {
        assert_eq!(
            decide(&NodeRuntime::default(), &seen(false)),
            (NodeRuntime::default(), None)
        );
        // Someone wrote a value we do not know: treat as installed, drain and uninstall.
        let odd = rt(Some("weird"), None, None);
        assert_eq!(
            decide(&odd, &seen(false)).0.state.as_deref(),
            Some(DRAINING)
        );
    }
}
