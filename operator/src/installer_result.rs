//! The node installer's result, read from its init container's termination message.
//!
//! The installer writes one JSON object to `/dev/termination-log`:
//! `{state: installed|unchanged|uninstalled|failed, flavour, configPath, containerdVersion,
//! shimVersion, shimSha256, restarted, message}` and exits non-zero on failure (so kubelet retries
//! the init container with back-off, and a later success replaces the failure).

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use serde::Deserialize;

use crate::names::installer;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ResultState {
    Installed,
    Unchanged,
    Uninstalled,
    Failed,
    /// `not-installed`, `partial`, `dry-run` (from `status` / `--dry-run`) or a future state.
    #[serde(other)]
    Other,
}

/// The JSON object, tolerant of fields it does not know.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstallerResult {
    pub state: Option<ResultState>,
    pub flavour: Option<String>,
    pub config_path: Option<String>,
    pub containerd_version: Option<String>,
    pub shim_version: Option<String>,
    pub shim_sha256: Option<String>,
    pub restarted: Option<bool>,
    /// Whether containerd answered with the `wasmkube` handler loaded. `false` (e.g. `--restart
    /// none`, `--skip-verify`) is not a ready node.
    pub verified: Option<bool>,
    pub message: Option<String>,
    /// A stable name for the failure cause (`SchemaV1`, `ParseError`, …).
    pub reason: Option<String>,
    /// `nothing-changed`, `rolled-back` or `rollback-failed`.
    pub failure: Option<String>,
}

impl InstallerResult {
    /// `Reason: message`, plus a warning when the rollback failed too.
    fn failure_message(&self) -> String {
        let message = self
            .message
            .as_deref()
            .unwrap_or("the installer reported failure without a message");
        let mut out = match self.reason.as_deref() {
            Some(r) if !r.is_empty() => format!("{r}: {message}"),
            _ => message.to_string(),
        };
        if self.failure.as_deref() == Some("rollback-failed") {
            out.push_str(" (rollback failed too: the node needs attention)");
        }
        out
    }
}

/// What a finished installer run means for the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Installed (or already installed): `<version>@sha256:<hex>`.
    Installed { shim_version: String },
    /// Uninstalled (or nothing to uninstall).
    Uninstalled,
    /// The run failed; the message says why.
    Failed { message: String },
}

/// Longest reason we copy into an annotation or an Event note.
const MAX_MESSAGE: usize = 1000;

fn truncate(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The installed-shim annotation value.
pub fn shim_version_value(result: &InstallerResult) -> String {
    let version = result.shim_version.as_deref().unwrap_or("unknown");
    match result.shim_sha256.as_deref() {
        Some(sha) if !sha.is_empty() => format!("{version}@sha256:{sha}"),
        _ => version.to_string(),
    }
}

/// Interprets one termination of the installer container.
pub fn outcome_of(term: &ContainerStateTerminated) -> Outcome {
    let raw = term.message.as_deref().unwrap_or_default();
    let parsed: Option<InstallerResult> = serde_json::from_str(raw.trim()).ok();
    match (parsed, term.exit_code) {
        (Some(r), code) => match r.state {
            Some(ResultState::Installed | ResultState::Unchanged)
                if code == 0 && r.verified == Some(false) =>
            {
                Outcome::Failed {
                    message: truncate(&format!(
                        "NotVerified: the installer could not confirm that containerd runs the \
                         wasmkube handler: {}",
                        r.message.as_deref().unwrap_or("no message")
                    )),
                }
            }
            Some(ResultState::Installed | ResultState::Unchanged) if code == 0 => {
                Outcome::Installed {
                    shim_version: shim_version_value(&r),
                }
            }
            Some(ResultState::Uninstalled) if code == 0 => Outcome::Uninstalled,
            Some(_) | None => Outcome::Failed {
                message: truncate(&r.failure_message()),
            },
        },
        (None, 0) => Outcome::Failed {
            message: truncate(&format!("unreadable installer result: {raw}")),
        },
        (None, code) => Outcome::Failed {
            message: truncate(&format!(
                "installer exited with code {code}{}{}",
                if raw.trim().is_empty() { "" } else { ": " },
                raw
            )),
        },
    }
}

/// Waiting reasons after which the installer container will not start until someone changes
/// something (the image, a secret, the node): reported at once instead of leaving the node
/// `pending`. Transient ones (`ContainerCreating`, `PodInitializing`) are not here.
const CANNOT_START: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("(unnamed)")
}

/// Why the pod cannot run at all, if it cannot: unschedulable, or its installer container
/// stuck in a [`CANNOT_START`] state.
fn cannot_start(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Some(format!(
            "InstallerUnschedulable: installer pod {} cannot be scheduled: {}",
            pod_name(pod),
            c.message.as_deref().unwrap_or("no message")
        ));
    }
    let waiting = status
        .init_container_statuses
        .iter()
        .flatten()
        .find(|s| s.name == installer::INIT_CONTAINER)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    let reason = waiting.reason.as_deref()?;
    CANNOT_START.contains(&reason).then(|| {
        format!(
            "InstallerCannotStart: installer pod {} cannot start: {reason}: {}",
            pod_name(pod),
            waiting.message.as_deref().unwrap_or("no message")
        )
    })
}

/// The latest finished run of a pod's installer init container, or why the pod cannot run it.
///
/// While a retry is running, the previous termination (`lastState`) still tells the truth.
pub fn pod_outcome(pod: &Pod) -> Option<Outcome> {
    let status = pod
        .status
        .as_ref()?
        .init_container_statuses
        .iter()
        .flatten()
        .find(|s| s.name == installer::INIT_CONTAINER);
    let current = status.and_then(|s| s.state.as_ref().and_then(|s| s.terminated.as_ref()));
    if let Some(term) = current {
        return Some(outcome_of(term));
    }
    if let Some(message) = cannot_start(pod) {
        return Some(Outcome::Failed {
            message: truncate(&message),
        });
    }
    let last = status.and_then(|s| s.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
    // An unfinished container reports no exit code; treat "terminated" as done.
    Some(outcome_of(last))
}

/// How long an installer pod may go without any result before the node is `failed`: the
/// installer itself gives up on containerd after 60 s and rolls back, so ten minutes without a
/// word means it is stuck (a hung mount, a containerd that never answers, a pending init).
pub const INSTALLER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// [`pod_outcome`], plus a failure once the pod is older than `timeout` without any result.
/// `Err(wait)`: no result yet; look again after `wait`.
pub fn pod_outcome_by(
    pod: &Pod,
    now: k8s_openapi::jiff::Timestamp,
    timeout: std::time::Duration,
) -> Result<Outcome, std::time::Duration> {
    if let Some(outcome) = pod_outcome(pod) {
        return Ok(outcome);
    }
    let Some(created) = pod.metadata.creation_timestamp.as_ref().map(|t| t.0) else {
        return Err(timeout);
    };
    let age = std::time::Duration::try_from(now.duration_since(created)).unwrap_or_default();
    match timeout.checked_sub(age) {
        Some(left) if !left.is_zero() => Err(left),
        _ => Ok(Outcome::Failed {
            message: truncate(&format!(
                "InstallerTimeout: installer pod {} has not reported after {} s",
                pod_name(pod),
                timeout.as_secs()
            )),
        }),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStatus, PodStatus,
    };

    use super::*;

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
            Outcome::Failed {
                message: "config.toml: unsupported schema version 1".to_string()
            }
        );
        let msg = r#"{"state":"failed","reason":"VerifyTimeout","failure":"rollback-failed","message":"containerd did not come back"}"#;
        assert_eq!(
            outcome_of(&term(4, msg)),
            Outcome::Failed {
                message: "VerifyTimeout: containerd did not come back (rollback failed too: the node needs attention)".to_string()
            }
        );
        // A state the operator does not act on is not success.
        assert!(matches!(
            outcome_of(&term(0, r#"{"state":"dry-run","message":"diff"}"#)),
            Outcome::Failed { .. }
        ));
        // A crash before the result: the logs are the message (FallbackToLogsOnError).
        assert_eq!(
            outcome_of(&term(101, "thread 'main' panicked")),
            Outcome::Failed {
                message: "installer exited with code 101: thread 'main' panicked".to_string()
            }
        );
        // "installed" with a non-zero exit is not trusted.
        assert!(matches!(
            outcome_of(&term(2, r#"{"state":"installed"}"#)),
            Outcome::Failed { .. }
        ));
        let long = "x".repeat(5000);
        match outcome_of(&term(1, &long)) {
            Outcome::Failed { message } => assert!(message.len() < 1100),
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
            Some(Outcome::Failed {
                message: "boom".to_string()
            })
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
            Some(Outcome::Failed { message }) => {
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
            Some(Outcome::Failed { message }) => {
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
            Ok(Outcome::Failed { message }) => {
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
            Outcome::Failed { message } => {
                assert!(message.starts_with("NotVerified:"), "{message}");
                assert!(message.contains("--restart none"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let msg =
            r#"{"state":"unchanged","shimVersion":"0.1.0","shimSha256":"abc","verified":true}"#;
        assert!(matches!(
            outcome_of(&term(0, msg)),
            Outcome::Installed { .. }
        ));
    }
}
