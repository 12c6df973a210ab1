//! The installer result's unit tests.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, PodStatus,
};

use super::*;
use crate::install_failure::Retry;

fn term(code: i32, message: &str) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: code,
        message: Some(message.to_string()),
        ..Default::default()
    }
}

#[test]
fn installed_and_unchanged_are_installed() {
    let msg = r#"{"state":"installed","flavour":"kind","configPath":"/etc/containerd/config.toml",
        "containerdVersion":"2.1.1","shimVersion":"0.1.0","shimSha256":"abc","restarted":true,"message":"ok"}"#;
    assert_eq!(
        outcome_of(&term(0, msg)),
        Outcome::Installed {
            shim_version: "0.1.0@sha256:abc".to_string()
        }
    );
    let msg = r#"{"state":"unchanged","shimVersion":"0.1.0","shimSha256":"abc","extra":1}"#;
    assert!(matches!(
        outcome_of(&term(0, msg)),
        Outcome::Installed { .. }
    ));
}

#[test]
fn failures_carry_the_message() {
    let msg = r#"{"state":"failed","message":"config.toml: unsupported schema version 1"}"#;
    assert_eq!(
        outcome_of(&term(1, msg)),
        Outcome::Failed(Failure {
            reason: None,
            message: "config.toml: unsupported schema version 1".to_string(),
            retry: Retry::Retryable,
            attempt: None,
        })
    );
    let msg = r#"{"state":"failed","reason":"ParseError","failure":"nothing-changed","message":"config.toml: line 2"}"#;
    assert_eq!(
        outcome_of(&term(1, msg)),
        Outcome::Failed(Failure {
            reason: Some("ParseError".to_string()),
            message: "ParseError: config.toml: line 2".to_string(),
            retry: Retry::Permanent,
            attempt: None,
        })
    );
    let msg = r#"{"state":"failed","reason":"VerifyTimeout","failure":"rollback-failed","message":"containerd did not come back"}"#;
    assert_eq!(
        outcome_of(&term(4, msg)),
        Outcome::Failed(Failure {
            reason: Some("VerifyTimeout".to_string()),
            message: "VerifyTimeout: containerd did not come back (rollback failed too: the node needs attention)".to_string(),
            retry: Retry::Permanent,
            attempt: None,
        })
    );
    let msg = r#"{"state":"failed","reason":"WasmCheckFailed","failure":"rolled-back","message":"exited 143"}"#;
    assert!(matches!(
        outcome_of(&term(3, msg)),
        Outcome::Failed(Failure {
            retry: Retry::Retryable,
            ..
        })
    ));
    // A state the operator does not act on is not success.
    assert!(matches!(
        outcome_of(&term(0, r#"{"state":"dry-run","message":"diff"}"#)),
        Outcome::Failed(_)
    ));
    // A crash before the result: the logs are the message (FallbackToLogsOnError).
    assert_eq!(
        outcome_of(&term(101, "thread 'main' panicked")),
        Outcome::Failed(Failure {
            reason: None,
            message: "installer exited with code 101: thread 'main' panicked".to_string(),
            retry: Retry::Retryable,
            attempt: None,
        })
    );
    // "installed" with a non-zero exit is not trusted.
    assert!(matches!(
        outcome_of(&term(2, r#"{"state":"installed"}"#)),
        Outcome::Failed(_)
    ));
    let long = "x".repeat(5000);
    match outcome_of(&term(1, &long)) {
        Outcome::Failed(f) => assert!(f.message.len() < 1100),
        other => panic!("{other:?}"),
    }
}

#[test]
fn running_retry_reports_the_last_result() {
    let pod = Pod {
        status: Some(PodStatus {
            init_container_statuses: Some(vec![ContainerStatus {
                name: installer::INIT_CONTAINER.to_string(),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..Default::default()
                }),
                restart_count: 2,
                last_state: Some(ContainerState {
                    terminated: Some(term(1, r#"{"state":"failed","message":"boom"}"#)),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        pod_outcome(&pod),
        Some(Outcome::Failed(Failure {
            reason: None,
            message: "boom".to_string(),
            retry: Retry::Retryable,
            // The third run is on: the second one failed.
            attempt: Some(2),
        }))
    );
    assert_eq!(pod_outcome(&Pod::default()), None);
}

fn waiting_pod(reason: &str) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("wasmkube-node-installer-abcde".to_string()),
            ..Default::default()
        },
        status: Some(PodStatus {
            init_container_statuses: Some(vec![ContainerStatus {
                name: installer::INIT_CONTAINER.to_string(),
                state: Some(ContainerState {
                    waiting: Some(k8s_openapi::api::core::v1::ContainerStateWaiting {
                        reason: Some(reason.to_string()),
                        message: Some("pull access denied".to_string()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_pod_that_cannot_start_is_a_failure() {
    match pod_outcome(&waiting_pod("ImagePullBackOff")) {
        Some(Outcome::Failed(Failure { message, retry, .. })) => {
            assert_eq!(retry, Retry::Permanent);
            assert!(message.starts_with("InstallerCannotStart:"), "{message}");
            assert!(
                message.contains("wasmkube-node-installer-abcde"),
                "{message}"
            );
            assert!(
                message.contains("ImagePullBackOff: pull access denied"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Still being created: no outcome yet.
    assert_eq!(pod_outcome(&waiting_pod("ContainerCreating")), None);
    assert_eq!(pod_outcome(&waiting_pod("PodInitializing")), None);
}

#[test]
fn an_unschedulable_pod_is_a_failure() {
    let mut pod = waiting_pod("PodInitializing");
    if let Some(status) = pod.status.as_mut() {
        status.init_container_statuses = None;
        status.conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
            type_: "PodScheduled".to_string(),
            status: "False".to_string(),
            reason: Some("Unschedulable".to_string()),
            message: Some("0/1 nodes are available: 1 Insufficient memory.".to_string()),
            ..Default::default()
        }]);
    }
    match pod_outcome(&pod) {
        Some(Outcome::Failed(Failure { message, retry, .. })) => {
            assert_eq!(retry, Retry::Permanent);
            assert!(message.contains("Insufficient memory"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_installer_that_never_reports_times_out() {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    let created = Timestamp::from_second(1_700_000_000).expect("ts");
    let mut pod = waiting_pod("PodInitializing");
    pod.metadata.creation_timestamp = Some(Time(created));
    let at = |secs: i64| Timestamp::from_second(1_700_000_000 + secs).expect("ts");
    let timeout = std::time::Duration::from_secs(600);
    // Still within the timeout: no result, and when to look again.
    assert_eq!(
        pod_outcome_by(&pod, at(100), timeout),
        Err(std::time::Duration::from_secs(500))
    );
    match pod_outcome_by(&pod, at(600), timeout) {
        Ok(Outcome::Failed(Failure { message, retry, .. })) => {
            assert_eq!(retry, Retry::Permanent);
            assert!(message.starts_with("InstallerTimeout:"), "{message}");
            assert!(
                message.contains("wasmkube-node-installer-abcde"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A result, however late, is the result.
    let mut done = pod.clone();
    if let Some(st) = done.status.as_mut() {
        st.init_container_statuses = Some(vec![ContainerStatus {
            name: installer::INIT_CONTAINER.to_string(),
            state: Some(ContainerState {
                terminated: Some(term(
                    0,
                    r#"{"state":"installed","shimVersion":"0.1.0","verified":true}"#,
                )),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    }
    assert!(matches!(
        pod_outcome_by(&done, at(5000), timeout),
        Ok(Outcome::Installed { .. })
    ));
}

#[test]
fn an_unverified_install_is_not_ready() {
    let msg = r#"{"state":"installed","shimVersion":"0.1.0","shimSha256":"abc","verified":false,
        "message":"installed; containerd was not restarted (--restart none)"}"#;
    match outcome_of(&term(0, msg)) {
        Outcome::Failed(Failure { message, retry, .. }) => {
            assert_eq!(retry, Retry::Permanent);
            assert!(message.starts_with("NotVerified:"), "{message}");
            assert!(message.contains("--restart none"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let msg = r#"{"state":"unchanged","shimVersion":"0.1.0","shimSha256":"abc","verified":true}"#;
    assert!(matches!(
        outcome_of(&term(0, msg)),
        Outcome::Installed { .. }
    ));
}

#[test]
fn a_rollback_conflict_needs_a_person_and_says_why() {
    let msg = r#"{"state":"failed","reason":"WasmCheckFailed","failure":"rollback-conflict","message":"exited 143"}"#;
    let r: InstallerResult = serde_json::from_str(msg).expect("parse");
    let f = r.failure();
    assert_eq!(f.retry, Retry::Permanent);
    assert!(
        f.message.contains("someone else edited the config"),
        "{}",
        f.message
    );
}
