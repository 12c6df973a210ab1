use k8s_openapi::{
    api::apps::v1::{DeploymentSpec, DeploymentStatus},
    jiff::Timestamp,
};

use super::*;
use crate::crd::WasmAppSpec;

fn now(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).expect("ts"))
}

fn app(status: Option<WasmAppStatus>) -> WasmApp {
    let mut a = WasmApp::new("hello", WasmAppSpec::default());
    a.metadata.generation = Some(2);
    a.status = status;
    a
}

fn dep(replicas: i32, status: DeploymentStatus) -> Deployment {
    Deployment {
        metadata: kube::api::ObjectMeta {
            generation: Some(4),
            ..Default::default()
        },
        spec: DeploymentSpec {
            replicas: Some(replicas),
            ..Default::default()
        },
        status: Some(status),
    }
}

fn get<'a>(s: &'a WasmAppStatus, t: &str) -> (&'a str, &'a str) {
    let c = s.condition(t).expect("condition");
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn fresh_deployment_is_waiting() {
    let s = from_deployment(
        &app(None),
        &dep(2, DeploymentStatus::default()),
        Children::default(),
        &now(1),
    );
    assert_eq!(get(&s, "Ready"), ("False", reasons::WAITING_FOR_DEPLOYMENT));
    assert_eq!(
        get(&s, "Progressing"),
        ("True", reasons::WAITING_FOR_DEPLOYMENT)
    );
    assert_eq!(get(&s, "Degraded"), ("False", reasons::AS_EXPECTED));
    assert_eq!(s.observed_generation, Some(2));
}

#[test]
fn ready_pods_not_yet_available_keep_the_app_not_ready() {
    // Within the Deployment's minReadySeconds: every pod ready, none counted available.
    let settling = DeploymentStatus {
        observed_generation: Some(4),
        replicas: Some(2),
        updated_replicas: Some(2),
        ready_replicas: Some(2),
        available_replicas: Some(0),
        ..Default::default()
    };
    let s = from_deployment(&app(None), &dep(2, settling), Children::default(), &now(1));
    assert_eq!(get(&s, "Ready"), ("False", reasons::REPLICAS_NOT_READY));
    assert_eq!(
        s.condition("Ready").map(|c| c.message.as_str()),
        Some("2/2 replicas ready, 0/2 available")
    );
}

#[test]
fn rolling_out_then_ready_keeps_transition_times() {
    let rolling = DeploymentStatus {
        observed_generation: Some(4),
        replicas: Some(2),
        updated_replicas: Some(2),
        ready_replicas: Some(1),
        available_replicas: Some(1),
        ..Default::default()
    };
    let s1 = from_deployment(&app(None), &dep(2, rolling), Children::default(), &now(1));
    assert_eq!(get(&s1, "Ready"), ("False", reasons::REPLICAS_NOT_READY));
    assert_eq!(
        s1.condition("Ready").map(|c| c.message.as_str()),
        Some("1/2 replicas ready")
    );
    assert_eq!(get(&s1, "Progressing"), ("True", reasons::ROLLING_OUT));

    let done = DeploymentStatus {
        observed_generation: Some(4),
        replicas: Some(2),
        updated_replicas: Some(2),
        ready_replicas: Some(2),
        available_replicas: Some(2),
        ..Default::default()
    };
    let s2 = from_deployment(
        &app(Some(s1.clone())),
        &dep(2, done.clone()),
        Children::default(),
        &now(9),
    );
    assert_eq!(get(&s2, "Ready"), ("True", reasons::ALL_REPLICAS_READY));
    assert_eq!(
        get(&s2, "Progressing"),
        ("False", reasons::ROLLOUT_COMPLETE)
    );
    assert_eq!(s2.ready_replicas, 2);
    assert!(became_true(Some(&s1), &s2, "Ready"));
    // Degraded stayed False: its transition time is the first one.
    assert_eq!(
        s2.condition("Degraded")
            .map(|c| c.last_transition_time.clone()),
        Some(now(1))
    );
    assert_eq!(
        s2.condition("Ready")
            .map(|c| c.last_transition_time.clone()),
        Some(now(9))
    );
    // Same input again: identical status (so the controller skips the patch).
    let s3 = from_deployment(
        &app(Some(s2.clone())),
        &dep(2, done),
        Children::default(),
        &now(20),
    );
    assert_eq!(s2, s3);
}

#[test]
fn deadline_exceeded_is_degraded() {
    let stuck = DeploymentStatus {
        observed_generation: Some(4),
        replicas: Some(1),
        updated_replicas: Some(1),
        conditions: Some(vec![DeploymentCondition {
            type_: Some("Progressing".into()),
            status: Some("False".into()),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"hello-1\" has timed out progressing.".into()),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let s = from_deployment(&app(None), &dep(1, stuck), Children::default(), &now(1));
    assert_eq!(
        get(&s, "Degraded"),
        ("True", reasons::PROGRESS_DEADLINE_EXCEEDED)
    );
    assert_eq!(
        get(&s, "Progressing"),
        ("False", reasons::PROGRESS_DEADLINE_EXCEEDED)
    );
    assert_eq!(get(&s, "Ready"), ("False", reasons::REPLICAS_NOT_READY));
}

#[test]
fn scaled_to_zero_is_ready() {
    let zero = DeploymentStatus {
        observed_generation: Some(4),
        ..Default::default()
    };
    let s = from_deployment(&app(None), &dep(0, zero), Children::default(), &now(1));
    assert_eq!(get(&s, "Ready"), ("True", reasons::SCALED_TO_ZERO));
}

#[test]
fn child_conflict_is_degraded_and_not_ready() {
    let ready = from_deployment(
        &app(None),
        &dep(
            1,
            DeploymentStatus {
                observed_generation: Some(4),
                replicas: Some(1),
                updated_replicas: Some(1),
                ready_replicas: Some(1),
                available_replicas: Some(1),
                ..Default::default()
            },
        ),
        Children {
            service_name: Some("hello".into()),
            ..Children::default()
        },
        &now(1),
    );
    assert!(ready.is_true("Ready"));
    let msg = "Service /hello exists and is not owned by WasmApp hello (it has no controller)";
    let s = child_conflict(&app(Some(ready)), msg, &now(5));
    assert_eq!(get(&s, "Ready"), ("False", reasons::CHILD_CONFLICT));
    assert_eq!(get(&s, "Degraded"), ("True", reasons::CHILD_CONFLICT));
    assert_eq!(get(&s, "Progressing"), ("False", reasons::CHILD_CONFLICT));
    assert_eq!(
        s.condition("Degraded").map(|c| c.message.as_str()),
        Some(msg)
    );
    assert_eq!(
        s.condition("Ready").map(|c| c.message.clone()),
        Some(format!("not applied: {msg}"))
    );
    assert_eq!(
        s.condition("Ready").map(|c| c.last_transition_time.clone()),
        Some(now(5)),
        "Ready flipped"
    );
    assert_eq!(s.service_name.as_deref(), Some("hello"), "the rest is kept");
}

#[test]
fn invalid_spec_keeps_counts() {
    let old = WasmAppStatus {
        replicas: 3,
        ready_replicas: 3,
        ..Default::default()
    };
    let s = invalid_spec(&app(Some(old)), "bad", &now(1));
    assert_eq!(s.replicas, 3);
    assert_eq!(get(&s, "Degraded"), ("True", reasons::INVALID_SPEC));
    assert_eq!(
        s.condition("Degraded").map(|c| c.message.as_str()),
        Some("bad")
    );
}
