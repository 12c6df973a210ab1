//! Bounded opt-in rollout: at most `--max-concurrent-installs` nodes install at once, and never
//! two control-plane nodes of k3s/rke2 (whose containerd restart is a restart of the server,
//! and so of that node's apiserver and etcd member).
//!
//! A node holds a slot while it is `pending`, or `failed` after its installer may have changed
//! it (a failing installer keeps retrying and may restart containerd again, like a DaemonSet
//! rolling update that stalls on an unavailable pod). A node that failed before anything was
//! changed — a config the installer refused to touch, an installer pod that never ran (see
//! [`crate::install_failure::left_node_untouched`]) — frees its slot: its retries change
//! nothing, and one broken node must not hold up the rollout to the others. Queued nodes are admitted first-come first-served by their
//! `wasmkube.dev/runtime-since`, then by name.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use kube::{core::PartialObjectMeta, ResourceExt};

use crate::names::{
    runtime_state, RUNTIME_LABEL, RUNTIME_REASON_ANNOTATION, RUNTIME_SINCE_ANNOTATION,
};

/// How long a state we wrote overrides the (possibly lagging) watch cache.
const OVERLAY_TTL: Duration = Duration::from_secs(30);

/// Whether restarting containerd on this node restarts its apiserver: a k3s or rke2 server.
pub fn restarts_apiserver(node: &PartialObjectMeta<Node>) -> bool {
    let control_plane = ["control-plane", "master", "etcd"].iter().any(|role| {
        node.labels()
            .contains_key(&format!("node-role.kubernetes.io/{role}"))
    });
    let embedded = node
        .annotations()
        .keys()
        .chain(node.labels().keys())
        .any(|k| k.starts_with("k3s.io/") || k.starts_with("rke2.io/"));
    control_plane && embedded
}

/// Whether a node in `state` whose `wasmkube.dev/runtime-reason` is `reason` holds a slot.
pub fn holds_slot(state: Option<&str>, reason: Option<&str>) -> bool {
    match state {
        Some(runtime_state::PENDING) => true,
        Some(runtime_state::FAILED) => {
            !reason.is_some_and(|r| crate::install_failure::left_node_untouched(reason_code(r)))
        }
        _ => false,
    }
}

/// The stable cause at the start of a reason annotation (`ParseError: ...` → `ParseError`).
fn reason_code(reason: &str) -> &str {
    reason.split(':').next().unwrap_or_default().trim()
}

/// A node as the rollout sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub state: Option<String>,
    pub since: Option<String>,
    pub restarts_apiserver: bool,
    /// `wasmkube.dev/runtime-reason`, if any.
    pub reason: Option<String>,
}

impl Candidate {
    pub fn of(node: &PartialObjectMeta<Node>) -> Self {
        Candidate {
            name: node.name_any(),
            state: node.labels().get(RUNTIME_LABEL).cloned(),
            since: node.annotations().get(RUNTIME_SINCE_ANNOTATION).cloned(),
            restarts_apiserver: restarts_apiserver(node),
            reason: node.annotations().get(RUNTIME_REASON_ANNOTATION).cloned(),
        }
    }

    fn holds_slot(&self) -> bool {
        holds_slot(self.state.as_deref(), self.reason.as_deref())
    }

    fn queued(&self) -> bool {
        self.state.as_deref() == Some(runtime_state::QUEUED)
    }
}

/// Whether `me` (about to start, or waiting in the queue) may start its install now.
///
/// `others` are all other nodes. The queue ahead of `me` is served in order: each node takes a
/// free slot unless it is a k3s/rke2 server and another one is busy.
pub fn admit(me: &Candidate, others: &[Candidate], max: usize) -> bool {
    let busy: Vec<&Candidate> = others.iter().filter(|c| c.holds_slot()).collect();
    let mut free = max.saturating_sub(busy.len());
    let mut server_busy = busy.iter().any(|c| c.restarts_apiserver);
    // A node not queued yet joins at the end of the queue.
    let my_key = (
        me.queued().then_some(me.since.as_deref()).flatten(),
        me.name.as_str(),
    );
    let key = |c: &'_ Candidate| (c.since.clone(), c.name.clone());
    let mut ahead: Vec<&Candidate> = others
        .iter()
        .filter(|c| c.queued())
        .filter(|c| match my_key.0 {
            Some(mine) => (c.since.as_deref().unwrap_or(""), c.name.as_str()) < (mine, my_key.1),
            None => true,
        })
        .collect();
    ahead.sort_by_key(|c| key(c));
    for c in ahead.into_iter().chain(std::iter::once(me)) {
        if free == 0 {
            return false;
        }
        let admissible = !(c.restarts_apiserver && server_busy);
        if std::ptr::eq(c, me) {
            return admissible;
        }
        if admissible {
            free -= 1;
            server_busy |= c.restarts_apiserver;
        }
    }
    false
}

/// The rollout's memory of states it wrote, so that two reconciles in a row never both take the
/// last slot while the watch cache still shows the old label.
#[derive(Debug, Default)]
pub struct Overlay {
    written: Mutex<HashMap<String, Written>>,
}

/// A state and reason we wrote, and when.
type Written = (Option<String>, Option<String>, Instant);

impl Overlay {
    /// Records that `node` now has `state` and `reason`.
    pub fn wrote(&self, node: &str, state: Option<&str>, reason: Option<&str>) {
        let mut map = self.written.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (_, _, at)| at.elapsed() < OVERLAY_TTL);
        map.insert(
            node.to_string(),
            (
                state.map(String::from),
                reason.map(String::from),
                Instant::now(),
            ),
        );
    }

    /// `candidate` with the state and reason we last wrote for it, if that is recent.
    pub fn apply(&self, mut candidate: Candidate) -> Candidate {
        let map = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((state, reason, at)) = map.get(&candidate.name) {
            if at.elapsed() < OVERLAY_TTL {
                candidate.state = state.clone();
                candidate.reason = reason.clone();
            }
        }
        candidate
    }

    /// Forgets a deleted node.
    pub fn forget(&self, node: &str) {
        let mut map = self.written.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(node);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;

    use super::*;
    use runtime_state::*;

    fn c(name: &str, state: Option<&str>, since: Option<&str>, server: bool) -> Candidate {
        Candidate {
            name: name.to_string(),
            state: state.map(String::from),
            since: since.map(String::from),
            restarts_apiserver: server,
            reason: None,
        }
    }

    #[test]
    fn one_at_a_time_by_default() {
        let me = c("b", None, None, false);
        assert!(admit(&me, &[], 1));
        assert!(admit(&me, &[c("a", Some(READY), None, false)], 1));
        assert!(!admit(&me, &[c("a", Some(PENDING), None, false)], 1));
        assert!(
            !admit(&me, &[c("a", Some(FAILED), None, false)], 1),
            "a failed node keeps its slot"
        );
        let failed_because = |reason: &str| Candidate {
            reason: Some(reason.to_string()),
            ..c("a", Some(FAILED), None, false)
        };
        assert!(
            !admit(&me, &[failed_because("WasmCheckFailed")], 1),
            "a node that failed after changing things keeps its slot"
        );
        for untouched in ["ParseError", "InstallerPodMissing", "InstallerCannotStart"] {
            assert!(
                admit(&me, &[failed_because(untouched)], 1),
                "a node that failed with {untouched} changed nothing: its slot is free"
            );
        }
        assert!(admit(&me, &[c("a", Some(PENDING), None, false)], 2));
    }

    #[test]
    fn the_queue_is_served_in_order() {
        let t1 = Some("2026-01-01T00:00:01Z");
        let t2 = Some("2026-01-01T00:00:02Z");
        let early = c("z", Some(QUEUED), t1, false);
        let late = c("a", Some(QUEUED), t2, false);
        // One slot: the earlier one gets it, the later one waits.
        assert!(admit(&early, std::slice::from_ref(&late), 1));
        assert!(!admit(&late, std::slice::from_ref(&early), 1));
        // A newcomer waits behind both.
        let newcomer = c("m", None, None, false);
        assert!(!admit(&newcomer, &[early.clone(), late.clone()], 2));
        assert!(admit(&newcomer, &[early, late], 3));
        // Same second: by name.
        let x = c("x", Some(QUEUED), t1, false);
        let y = c("y", Some(QUEUED), t1, false);
        assert!(admit(&x, std::slice::from_ref(&y), 1));
        assert!(!admit(&y, std::slice::from_ref(&x), 1));
    }

    #[test]
    fn never_two_k3s_servers_at_once() {
        let me = c("cp-2", Some(QUEUED), Some("2026-01-01T00:00:02Z"), true);
        let other = c("cp-1", Some(PENDING), None, true);
        assert!(!admit(&me, &[other], 5));
        // A busy agent (not a server) does not block a server.
        let agent = c("agent", Some(PENDING), None, false);
        assert!(admit(&me, &[agent], 5));
        // A server ahead in the queue takes the server turn even with slots to spare; an agent
        // behind it still goes.
        let ahead = c("cp-1", Some(QUEUED), Some("2026-01-01T00:00:01Z"), true);
        assert!(!admit(&me, std::slice::from_ref(&ahead), 5));
        let agent = c("agent", Some(QUEUED), Some("2026-01-01T00:00:03Z"), false);
        assert!(admit(&agent, &[ahead, me], 2));
    }

    fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> PartialObjectMeta<Node> {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        }
    }

    #[test]
    fn k3s_and_rke2_servers_are_recognised() {
        let k3s_server = node(
            &[("node-role.kubernetes.io/control-plane", "true")],
            &[("k3s.io/node-args", "[\"server\"]")],
        );
        assert!(restarts_apiserver(&k3s_server));
        let rke2_server = node(
            &[("node-role.kubernetes.io/etcd", "true")],
            &[("rke2.io/hostname", "cp")],
        );
        assert!(restarts_apiserver(&rke2_server));
        let k3s_agent = node(&[], &[("k3s.io/node-args", "[\"agent\"]")]);
        assert!(!restarts_apiserver(&k3s_agent));
        // kubeadm's control plane: containerd restarts leave the static pods running.
        let kubeadm = node(&[("node-role.kubernetes.io/control-plane", "")], &[]);
        assert!(!restarts_apiserver(&kubeadm));
    }

    #[test]
    fn the_overlay_hides_a_lagging_cache() {
        let o = Overlay::default();
        let stale = c("a", Some(QUEUED), None, false);
        assert_eq!(o.apply(stale.clone()), stale);
        o.wrote("a", Some(PENDING), None);
        assert_eq!(o.apply(stale.clone()).state.as_deref(), Some(PENDING));
        o.forget("a");
        assert_eq!(o.apply(stale.clone()), stale);
    }
}
