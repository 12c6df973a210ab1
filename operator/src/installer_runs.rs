//! Which installer pod speaks for a node's current run, and what it says: the newest live pod
//! of the action created since the run began (results of older pods are stale), a timeout for
//! a silent pod, and a failure when no pod appears at all (the DaemonSet controller could not
//! create it: Pod Security, a quota, a missing PriorityClass).

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Event as CoreEvent, Pod},
    jiff::Timestamp,
};
use kube::{api::ListParams, Api, Client, ResourceExt};
use tracing::warn;

use crate::{
    builders::installer::InstallerAction,
    install_failure::{operator_reasons, Failure},
    installer_result::{pod_outcome_by, Outcome, INSTALLER_TIMEOUT},
    names::{labels, runtime_state},
    node_state::NodeRuntime,
};

/// How long after a run began its pod may be missing before the node fails.
pub const POD_MISSING_TIMEOUT: Duration = Duration::from_secs(45);
/// How long after a run began a missing pod is first explained by the DaemonSet's
/// `FailedCreate` event: the DaemonSet controller tries at once, so a refusal (Pod Security, a
/// quota) is known within a second or two, and waiting out [`POD_MISSING_TIMEOUT`] would only
/// delay the user's answer. Without such an event the node waits for the full timeout.
pub const FAILED_CREATE_AFTER: Duration = Duration::from_secs(10);
/// Clock skew tolerated between the operator (which writes `runtime-since`) and the API server
/// (which stamps pod creation).
const SKEW: i64 = 2;
/// Prefix of the failure reason for a pod that never appeared.
pub const POD_MISSING: &str = operator_reasons::INSTALLER_POD_MISSING;

/// What a reconcile knows to find a node's run.
pub struct RunLookup<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
    /// The installer pods on this node.
    pub pods: Vec<Arc<Pod>>,
    pub current: &'a NodeRuntime,
    pub now: Timestamp,
}

/// The outcome of the node's current run of one action.
#[derive(Debug, Default)]
pub struct Run {
    pub outcome: Option<Outcome>,
    /// No result yet: look again after this long.
    pub recheck: Option<Duration>,
    /// The pod that timed out, to be replaced.
    pub timed_out_pod: Option<String>,
}

fn since(current: &NodeRuntime) -> Option<Timestamp> {
    current.since.as_deref().and_then(|s| s.parse().ok())
}

/// The newest live pod of `action` created since the run began.
pub fn current_pod(
    pods: &[Arc<Pod>],
    action: InstallerAction,
    since: Option<Timestamp>,
) -> Option<Arc<Pod>> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.labels().get(labels::COMPONENT).map(String::as_str) == Some(action.component())
        })
        .filter(|p| match (since, p.metadata.creation_timestamp.as_ref()) {
            (Some(since), Some(created)) => created.0.as_second() + SKEW >= since.as_second(),
            _ => true,
        })
        .max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0))
        .cloned()
}

/// The node's current run of `action`.
pub async fn current_outcome(lookup: &RunLookup<'_>, action: InstallerAction) -> Run {
    let since = since(lookup.current);
    if let Some(pod) = current_pod(&lookup.pods, action, since) {
        return match pod_outcome_by(&pod, lookup.now, INSTALLER_TIMEOUT) {
            Ok(outcome) => {
                let timed_out = matches!(&outcome, Outcome::Failed(f)
                    if f.is(operator_reasons::INSTALLER_TIMEOUT));
                Run {
                    timed_out_pod: timed_out.then(|| pod.name_any()),
                    outcome: Some(outcome),
                    recheck: None,
                }
            }
            Err(left) => Run {
                recheck: Some(left),
                ..Run::default()
            },
        };
    }
    // No pod. Only a run that has not produced any result yet (`pending`, `removing`) can be
    // missing its pod: on a `ready` or `failed` node, or a `pending` one whose installer already
    // failed and is being retried, the pod is replaced now and then (an installer upgrade rolls
    // the DaemonSet) and the node keeps its state meanwhile. Without a start time (a node
    // labelled by an older operator) there is nothing to measure against; the DaemonSet
    // controller usually creates the pod within a second.
    let starting = match lookup.current.state.as_deref() {
        Some(runtime_state::PENDING) => lookup.current.attempts.is_none(),
        Some(runtime_state::REMOVING) => true,
        _ => false,
    };
    let Some(since) = since.filter(|_| starting) else {
        return Run::default();
    };
    // Reported already: the DaemonSet controller's message changes with every retry (a new
    // generated pod name), and one report per run is enough.
    if lookup
        .current
        .reason
        .as_deref()
        .is_some_and(|r| r.starts_with(POD_MISSING))
    {
        return Run::default();
    }
    let age = Duration::try_from(lookup.now.duration_since(since)).unwrap_or_default();
    let left_until = |limit: Duration| limit.checked_sub(age).filter(|d| !d.is_zero());
    if let Some(left) = left_until(FAILED_CREATE_AFTER) {
        return Run {
            recheck: Some(left),
            ..Run::default()
        };
    }
    let why = failed_create(lookup.client, lookup.namespace, action, since).await;
    let message = match (left_until(POD_MISSING_TIMEOUT), &why) {
        // The DaemonSet controller says why it cannot create the pod: the user hears it now.
        (Some(_), Some(why)) => refused_message(action, why),
        // Nothing said yet: the pod may still come (a slow DaemonSet controller).
        (Some(left), None) => {
            return Run {
                recheck: Some(left),
                ..Run::default()
            }
        }
        (None, _) => missing_message(action, &why),
    };
    Run {
        outcome: Some(Outcome::Failed(Failure::operator(
            operator_reasons::INSTALLER_POD_MISSING,
            message,
        ))),
        ..Run::default()
    }
}

/// The failure reason for a run whose pod the DaemonSet controller reported it cannot create.
pub fn refused_message(action: InstallerAction, why: &str) -> String {
    crate::events::note(format!(
        "{POD_MISSING}: the DaemonSet controller cannot create the {} pod; DaemonSet {}: {why}",
        action.component(),
        action.daemonset_name()
    ))
}

/// The failure reason for a run whose pod never appeared.
pub fn missing_message(action: InstallerAction, why: &Option<String>) -> String {
    let head = format!(
        "{POD_MISSING}: no {} pod appeared on the node within {} s",
        action.component(),
        POD_MISSING_TIMEOUT.as_secs()
    );
    let text = match why {
        Some(why) => format!("{head}; DaemonSet {}: {why}", action.daemonset_name()),
        None => format!(
            "{head}; DaemonSet {} reported no FailedCreate (is the DaemonSet controller running?)",
            action.daemonset_name()
        ),
    };
    crate::events::note(text)
}

/// The DaemonSet's newest `FailedCreate` event since the run began.
async fn failed_create(
    client: &Client,
    namespace: &str,
    action: InstallerAction,
    since: Timestamp,
) -> Option<String> {
    let events: Api<CoreEvent> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=DaemonSet,involvedObject.name={},reason=FailedCreate",
        action.daemonset_name()
    ));
    let list = match events.list(&lp).await {
        Ok(list) => list,
        Err(e) => {
            warn!(error = %e, "cannot read the installer DaemonSet's events");
            return None;
        }
    };
    let at = |e: &CoreEvent| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    list.items
        .into_iter()
        .filter(|e| at(e).is_some_and(|t| t.as_second() + SKEW >= since.as_second()))
        .max_by_key(|e| at(e))
        .and_then(|e| e.message)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::builders::installer::pod_labels;

    fn pod(name: &str, action: InstallerAction, created: i64, deleting: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(pod_labels(action)),
                creation_timestamp: Some(Time(Timestamp::from_second(created).expect("ts"))),
                deletion_timestamp: deleting
                    .then(|| Time(Timestamp::from_second(created + 1).expect("ts"))),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
    }

    #[test]
    fn only_pods_of_the_current_run_count() {
        let since = Timestamp::from_second(1_000).ok();
        let old = pod("old", InstallerAction::Install, 500, false);
        let new = pod("new", InstallerAction::Install, 1_001, false);
        let gone = pod("gone", InstallerAction::Install, 1_005, true);
        let other = pod("un", InstallerAction::Uninstall, 1_010, false);
        let all = [old.clone(), new, gone, other];
        let pick = current_pod(&all, InstallerAction::Install, since).map(|p| p.name_any());
        assert_eq!(pick.as_deref(), Some("new"));
        assert_eq!(
            current_pod(std::slice::from_ref(&old), InstallerAction::Install, since),
            None,
            "a pod from before the run is stale"
        );
        // Within the clock-skew allowance.
        let skewed = pod("skewed", InstallerAction::Install, 999, false);
        assert!(current_pod(&[skewed], InstallerAction::Install, since).is_some());
        // No start time recorded: any live pod.
        assert!(current_pod(&[old], InstallerAction::Install, None).is_some());
    }

    #[test]
    fn missing_message_names_the_daemonset_and_cause() {
        let m = missing_message(
            InstallerAction::Install,
            &Some("Error creating: pods \"x\" is forbidden: violates PodSecurity".into()),
        );
        assert!(
            m.starts_with("InstallerPodMissing: no install pod appeared"),
            "{m}"
        );
        assert!(
            m.contains("DaemonSet wasmkube-node-installer: Error creating"),
            "{m}"
        );
        let m = refused_message(InstallerAction::Install, "Error creating: quota");
        assert!(
            m.starts_with(
                "InstallerPodMissing: the DaemonSet controller cannot create the install pod; \
                 DaemonSet wasmkube-node-installer: Error creating: quota"
            ),
            "{m}"
        );
        let m = missing_message(InstallerAction::Uninstall, &None);
        assert!(
            m.contains("wasmkube-node-uninstaller reported no FailedCreate"),
            "{m}"
        );
    }
}
