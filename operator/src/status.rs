//! WasmApp status from its Deployment (pure: the controller passes the clock in).

use k8s_openapi::{
    api::apps::v1::{Deployment, DeploymentCondition},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};
use kube::ResourceExt;

use crate::crd::{conditions, reasons, WasmApp, WasmAppStatus};

const TRUE: &str = "True";
const FALSE: &str = "False";

/// What the app controller knows besides the Deployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Children {
    pub service_name: Option<String>,
    pub autoscaler_name: Option<String>,
    pub url: Option<String>,
    pub selector: Option<String>,
}

fn deployment_condition<'a>(d: &'a Deployment, type_: &str) -> Option<&'a DeploymentCondition> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_.as_deref() == Some(type_))
}

/// A condition, keeping `lastTransitionTime` from `old` when the status did not change.
fn condition(
    old: Option<&WasmAppStatus>,
    generation: Option<i64>,
    now: &Time,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> Condition {
    let since = old
        .and_then(|o| o.condition(type_))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// Status of an app whose children were applied; `deployment` is the API server's answer.
pub fn from_deployment(
    app: &WasmApp,
    deployment: &Deployment,
    children: Children,
    now: &Time,
) -> WasmAppStatus {
    let old = app.status.as_ref();
    let generation = app.metadata.generation;
    let ds = deployment.status.clone().unwrap_or_default();
    let observed = match (deployment.metadata.generation, ds.observed_generation) {
        (Some(g), Some(o)) => o >= g,
        (None, _) => true,
        (Some(_), None) => false,
    };
    let desired = deployment.spec.replicas.unwrap_or(1);
    let total = ds.replicas.unwrap_or(0);
    let ready = ds.ready_replicas.unwrap_or(0);
    let updated = ds.updated_replicas.unwrap_or(0);
    let available = ds.available_replicas.unwrap_or(0);

    let progressing = deployment_condition(deployment, "Progressing");
    let deadline_exceeded = progressing.is_some_and(|c| {
        c.status.as_deref() == Some(FALSE)
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    let replica_failure = deployment_condition(deployment, "ReplicaFailure")
        .filter(|c| c.status.as_deref() == Some(TRUE));
    let rollout_done = observed && updated >= desired && total == updated && available >= desired;

    let cond = |type_: &str, status: &str, reason: &str, message: String| {
        condition(old, generation, now, type_, status, reason, message)
    };

    let ready_cond = if !observed {
        cond(
            conditions::READY,
            FALSE,
            reasons::WAITING_FOR_DEPLOYMENT,
            "the Deployment controller has not yet observed the latest spec".to_string(),
        )
    } else if desired == 0 {
        cond(
            conditions::READY,
            TRUE,
            reasons::SCALED_TO_ZERO,
            "scaled to zero replicas".to_string(),
        )
    } else if ready >= desired && rollout_done {
        cond(
            conditions::READY,
            TRUE,
            reasons::ALL_REPLICAS_READY,
            format!("{ready}/{desired} replicas ready"),
        )
    } else if ready >= desired && available < desired {
        // Ready pods the Deployment does not yet count available: within `minReadySeconds`,
        // the time the Service's routing gets to catch up with them.
        cond(
            conditions::READY,
            FALSE,
            reasons::REPLICAS_NOT_READY,
            format!("{ready}/{desired} replicas ready, {available}/{desired} available"),
        )
    } else {
        cond(
            conditions::READY,
            FALSE,
            reasons::REPLICAS_NOT_READY,
            format!("{ready}/{desired} replicas ready"),
        )
    };

    let progressing_cond = if !observed {
        cond(
            conditions::PROGRESSING,
            TRUE,
            reasons::WAITING_FOR_DEPLOYMENT,
            "waiting for the Deployment controller".to_string(),
        )
    } else if deadline_exceeded {
        cond(
            conditions::PROGRESSING,
            FALSE,
            reasons::PROGRESS_DEADLINE_EXCEEDED,
            progressing
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| "the rollout exceeded its progress deadline".to_string()),
        )
    } else if rollout_done {
        cond(
            conditions::PROGRESSING,
            FALSE,
            reasons::ROLLOUT_COMPLETE,
            format!("{updated}/{desired} replicas up to date"),
        )
    } else {
        cond(
            conditions::PROGRESSING,
            TRUE,
            reasons::ROLLING_OUT,
            format!("{updated}/{desired} replicas updated, {available} available"),
        )
    };

    let degraded_cond = if deadline_exceeded {
        cond(
            conditions::DEGRADED,
            TRUE,
            reasons::PROGRESS_DEADLINE_EXCEEDED,
            progressing
                .and_then(|c| c.message.clone())
                .unwrap_or_else(|| "the rollout exceeded its progress deadline".to_string()),
        )
    } else if let Some(failure) = replica_failure {
        cond(
            conditions::DEGRADED,
            TRUE,
            reasons::REPLICA_FAILURE,
            failure
                .message
                .clone()
                .unwrap_or_else(|| "the Deployment cannot create pods".to_string()),
        )
    } else {
        cond(
            conditions::DEGRADED,
            FALSE,
            reasons::AS_EXPECTED,
            "no problems".to_string(),
        )
    };

    WasmAppStatus {
        observed_generation: generation,
        replicas: total,
        ready_replicas: ready,
        conditions: vec![ready_cond, progressing_cond, degraded_cond],
        service_name: children.service_name,
        autoscaler_name: children.autoscaler_name,
        url: children.url,
        selector: children.selector,
    }
}

/// Status of an app whose spec cannot be acted on: children untouched, `Degraded` says why.
pub fn invalid_spec(app: &WasmApp, message: &str, now: &Time) -> WasmAppStatus {
    not_applied(
        app,
        reasons::INVALID_SPEC,
        message,
        "the spec is invalid; fix it to continue",
        now,
    )
}

/// Status of an app whose children the API server refused (admission, an immutable field, a
/// port in use): `Ready=False` and `Degraded=True` with the API's message, instead of a stale
/// `Ready=True` from the last apply that worked.
pub fn apply_failed(app: &WasmApp, message: &str, now: &Time) -> WasmAppStatus {
    not_applied(
        app,
        reasons::APPLY_FAILED,
        message,
        "the API server refused a child object; retrying with back-off",
        now,
    )
}

/// Status of an app one of whose children's names is taken by an object it does not control
/// (created by hand, by another controller, or left by an earlier WasmApp of the same name):
/// nothing is applied or deleted, `Ready=False` and `Degraded=True` name the object and its
/// owner until someone resolves it.
pub fn child_conflict(app: &WasmApp, message: &str, now: &Time) -> WasmAppStatus {
    not_applied(
        app,
        reasons::CHILD_CONFLICT,
        message,
        "a child's name is taken by an object this WasmApp does not own; rename or remove it",
        now,
    )
}

fn not_applied(
    app: &WasmApp,
    reason: &str,
    message: &str,
    progressing: &str,
    now: &Time,
) -> WasmAppStatus {
    let old = app.status.as_ref();
    let generation = app.metadata.generation;
    let cond = |type_: &str, status: &str, message: String| {
        condition(old, generation, now, type_, status, reason, message)
    };
    let prev = old.cloned().unwrap_or_default();
    WasmAppStatus {
        observed_generation: generation,
        conditions: vec![
            cond(conditions::READY, FALSE, format!("not applied: {message}")),
            cond(conditions::PROGRESSING, FALSE, progressing.to_string()),
            cond(conditions::DEGRADED, TRUE, message.to_string()),
        ],
        ..prev
    }
}

/// `status` with `Degraded=True` naming the configuration sources the pods wait for: the
/// kubelet starts no pod until each ConfigMap and Secret in `spec.config` exists.
pub fn config_missing(
    app: &WasmApp,
    status: WasmAppStatus,
    message: &str,
    now: &Time,
) -> WasmAppStatus {
    degraded(app, status, reasons::CONFIG_MISSING, message, now)
}

/// `status` with `Degraded=True` for `reason` (what the Deployment's status cannot say: a
/// missing ConfigMap, a pod that cannot pull its image), replacing the Degraded condition
/// [`from_deployment`] made.
pub fn degraded(
    app: &WasmApp,
    mut status: WasmAppStatus,
    reason: &str,
    message: &str,
    now: &Time,
) -> WasmAppStatus {
    let degraded = condition(
        app.status.as_ref(),
        app.metadata.generation,
        now,
        conditions::DEGRADED,
        TRUE,
        reason,
        message.to_string(),
    );
    status
        .conditions
        .retain(|c| c.type_ != conditions::DEGRADED);
    status.conditions.push(degraded);
    status
}

/// `Some(kind)` when `new` turned a condition true that was not true in `old`.
pub fn became_true(old: Option<&WasmAppStatus>, new: &WasmAppStatus, type_: &str) -> bool {
    new.is_true(type_) && !old.is_some_and(|o| o.is_true(type_))
}

/// The app's name, for messages.
pub fn display_name(app: &WasmApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

#[cfg(test)]
mod tests;
