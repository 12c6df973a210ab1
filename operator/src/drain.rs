//! Opt-out safety: the removal taint, and the wasm pods that must leave a node before its
//! runtime is uninstalled.

use std::str::FromStr;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::{
    api::{EvictParams, ListParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use serde_json::json;

use crate::{
    names::{REMOVING_TAINT, RUNTIME_CLASS},
    Error, Result,
};

/// What the operator does with wasm pods on a node being opted out (`--drain`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DrainPolicy {
    /// Evict them through the Eviction API (PodDisruptionBudgets are honoured), then uninstall.
    #[default]
    Evict,
    /// Wait until they are gone (moved, scaled down or deleted by their owners).
    Wait,
}

impl FromStr for DrainPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "evict" => Ok(DrainPolicy::Evict),
            "wait" => Ok(DrainPolicy::Wait),
            other => Err(format!("unknown drain policy {other:?} (evict, wait)")),
        }
    }
}

/// The removal taint.
pub fn removal_taint() -> Taint {
    Taint {
        key: REMOVING_TAINT.to_string(),
        value: Some("true".to_string()),
        effect: "NoSchedule".to_string(),
        time_added: None,
    }
}

/// `taints` with our taint present (`on`) or absent; `None` when nothing changes.
pub fn taints_with(taints: &[Taint], on: bool) -> Option<Vec<Taint>> {
    let ours = |t: &Taint| t.key == REMOVING_TAINT;
    let has = taints.iter().any(ours);
    match (on, has) {
        (true, false) => {
            let mut out = taints.to_vec();
            out.push(removal_taint());
            Some(out)
        }
        (false, true) => Some(taints.iter().filter(|t| !ours(t)).cloned().collect()),
        _ => None,
    }
}

/// Puts our taint on `node` or takes it off, leaving every other taint alone.
///
/// `spec.taints` is an atomic list (a server-side apply would take all of it over), so this is
/// a read-modify-write with the read's resourceVersion as precondition: a concurrent change by
/// someone else makes it fail with a conflict and the reconcile retries.
pub async fn set_taint(client: &Client, node: &str, on: bool) -> Result<bool> {
    let nodes: Api<Node> = Api::all(client.clone());
    let current = nodes.get(node).await?;
    let taints = current
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let Some(next) = taints_with(&taints, on) else {
        return Ok(false);
    };
    let body = json!({
        "metadata": {"resourceVersion": current.resource_version()},
        "spec": {"taints": next},
    });
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(true)
}

/// Whether `pod` is a wasm pod (our RuntimeClass) that still runs or may still run.
pub fn is_live_wasm_pod(pod: &Pod) -> bool {
    let wasm = pod
        .spec
        .as_ref()
        .and_then(|s| s.runtime_class_name.as_deref())
        == Some(RUNTIME_CLASS);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    wasm && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Where the drain of a node stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainProgress {
    /// Wasm pods still on the node (`namespace/name`).
    pub remaining: Vec<String>,
    /// Evictions refused (a PodDisruptionBudget, usually): `namespace/name: message`.
    pub blocked: Vec<String>,
}

/// Lists the node's wasm pods and, under [`DrainPolicy::Evict`], evicts those not already
/// terminating.
pub async fn drain(client: &Client, node: &str, policy: DrainPolicy) -> Result<DrainProgress> {
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let mut progress = DrainProgress::default();
    for pod in on_node.items.iter().filter(|p| is_live_wasm_pod(p)) {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        progress.remaining.push(format!("{ns}/{name}"));
        if policy == DrainPolicy::Wait || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api.evict(&name, &EvictParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            // 429: a PodDisruptionBudget does not allow it now; try again on the next round.
            Err(kube::Error::Api(e)) if e.code == 429 => {
                progress.blocked.push(format!("{ns}/{name}: {}", e.message));
            }
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};

    use super::*;

    #[test]
    fn taint_added_and_removed_without_touching_others() {
        let theirs = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let on = taints_with(std::slice::from_ref(&theirs), true).expect("change");
        assert_eq!(on, vec![theirs.clone(), removal_taint()]);
        assert_eq!(taints_with(&on, true), None, "already there");
        assert_eq!(taints_with(&on, false), Some(vec![theirs.clone()]));
        assert_eq!(taints_with(&[theirs], false), None, "already gone");
        assert_eq!(removal_taint().effect, "NoSchedule");
    }

    #[test]
    fn policy_parses() {
        assert_eq!("evict".parse(), Ok(DrainPolicy::Evict));
        assert_eq!("wait".parse(), Ok(DrainPolicy::Wait));
        assert!("force".parse::<DrainPolicy>().is_err());
    }

    #[test]
    fn only_live_wasm_pods_count() {
        let pod = |class: Option<&str>, phase: &str| Pod {
            spec: Some(PodSpec {
                runtime_class_name: class.map(String::from),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        assert!(is_live_wasm_pod(&pod(Some("wasmkube"), "Running")));
        assert!(is_live_wasm_pod(&pod(Some("wasmkube"), "Pending")));
        assert!(!is_live_wasm_pod(&pod(Some("wasmkube"), "Succeeded")));
        assert!(!is_live_wasm_pod(&pod(None, "Running")));
        assert!(!is_live_wasm_pod(&pod(Some("kata"), "Running")));
    }
}
