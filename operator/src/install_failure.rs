//! Which installer failures the operator waits out and which need a person: the one place that
//! classifies a failure's reason (operator/README.md, "Node states").
//!
//! The installer's init container is restarted by the kubelet after every failure (with
//! back-off), and a failure that a restart can fix usually passes a few seconds later (the
//! host lock was busy, containerd was slow to come back, the wasm check raced something). Such a
//! node stays `pending` while attempts are left. What no restart can fix — a config the installer
//! refuses, a rollback that failed, a pod the API server refuses or the kubelet cannot start —
//! moves the node to `failed` at once, and so does the last allowed attempt.

use k8s_openapi::api::core::v1::ContainerStatus;
use wasmkube_contract::installer::InstallerFailure;

/// Default of `--max-install-attempts`: the attempts of one installer pod after which a
/// retryable failure is `failed`.
pub const DEFAULT_MAX_INSTALL_ATTEMPTS: u32 = 5;

/// The `reason` values the node installer reports (one list, in the contract crate).
pub use wasmkube_contract::installer::reasons as installer_reasons;

/// The reasons the operator gives itself, from the installer pod rather than its result.
pub mod operator_reasons {
    /// The pod never appeared (the DaemonSet controller could not create it).
    pub const INSTALLER_POD_MISSING: &str = "InstallerPodMissing";
    /// The kubelet cannot start the installer container (image, config).
    pub const INSTALLER_CANNOT_START: &str = "InstallerCannotStart";
    /// The scheduler cannot place the pod.
    pub const INSTALLER_UNSCHEDULABLE: &str = "InstallerUnschedulable";
    /// The pod said nothing for `INSTALLER_TIMEOUT`.
    pub const INSTALLER_TIMEOUT: &str = "InstallerTimeout";
    /// The installer succeeded without proving the handler runs (`--restart none`,
    /// `--skip-verify`): the operator's own settings, not a condition of the moment.
    pub const NOT_VERIFIED: &str = "NotVerified";
}

/// What another attempt can do about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The kubelet's next attempt may pass on its own.
    Retryable,
    /// Nothing changes until a person does something.
    Permanent,
}

const PERMANENT: &[&str] = &[
    installer_reasons::PARSE_ERROR,
    installer_reasons::SCHEMA_V1,
    installer_reasons::UNSUPPORTED_VERSION,
    installer_reasons::NOT_A_TABLE,
    installer_reasons::FOREIGN_RUNTIME,
    installer_reasons::SELF_CHECK,
    installer_reasons::TEMPLATE_CONFLICT,
    installer_reasons::NOT_UTF8,
    installer_reasons::HOST_PATH,
    installer_reasons::RESTART_PLAN,
    operator_reasons::INSTALLER_POD_MISSING,
    operator_reasons::INSTALLER_CANNOT_START,
    operator_reasons::INSTALLER_UNSCHEDULABLE,
    operator_reasons::INSTALLER_TIMEOUT,
    operator_reasons::NOT_VERIFIED,
];

/// Failures that happen before the installer changes anything on the node: a config it
/// refuses to touch (the file is left as it was, containerd not restarted), or an installer pod
/// that never ran. A node `failed` for one of these does not hold a rollout slot (`rollout`).
const LEFT_NODE_UNTOUCHED: &[&str] = &[
    installer_reasons::PARSE_ERROR,
    installer_reasons::SCHEMA_V1,
    installer_reasons::UNSUPPORTED_VERSION,
    installer_reasons::NOT_A_TABLE,
    installer_reasons::FOREIGN_RUNTIME,
    installer_reasons::TEMPLATE_CONFLICT,
    installer_reasons::NOT_UTF8,
    installer_reasons::RESTART_PLAN,
    operator_reasons::INSTALLER_POD_MISSING,
    operator_reasons::INSTALLER_CANNOT_START,
    operator_reasons::INSTALLER_UNSCHEDULABLE,
];

/// Whether a failure with this reason left the node as it was (see [`LEFT_NODE_UNTOUCHED`]).
pub fn left_node_untouched(reason: &str) -> bool {
    LEFT_NODE_UNTOUCHED.contains(&reason)
}

/// Classifies a failure by its `reason` and the installer's `failure` field. A reason this
/// operator does not know (a newer installer's, or none: a crash before the result) is
/// retryable: the attempt limit still ends it.
pub fn classify(reason: Option<&str>, failure: Option<InstallerFailure>) -> Retry {
    let permanent = reason.is_some_and(|r| PERMANENT.contains(&r))
        || failure.is_some_and(InstallerFailure::needs_a_person);
    if permanent {
        Retry::Permanent
    } else {
        Retry::Retryable
    }
}

/// A failed installer run, as the node's state records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The stable cause (`ParseError`, `InstallerTimeout`, …), when there is one.
    pub reason: Option<String>,
    /// `Reason: message`: what `wasmkube.dev/runtime-reason` and the event say.
    pub message: String,
    pub retry: Retry,
    /// Which attempt of the installer container failed (1 = the pod's first), when known.
    pub attempt: Option<u32>,
}

impl Failure {
    /// A failure the operator found itself (`reason` is one of [`operator_reasons`]).
    pub fn operator(reason: &'static str, message: String) -> Self {
        Failure {
            reason: Some(reason.to_string()),
            message,
            retry: classify(Some(reason), None),
            attempt: None,
        }
    }

    /// Whether this failure is `reason`.
    pub fn is(&self, reason: &str) -> bool {
        self.reason.as_deref() == Some(reason)
    }
}

/// The attempt that produced `status`'s newest termination (1 = the first).
///
/// The kubelet stamps each container it creates with the restarts before it, and reports the
/// newest container's count: a terminated container (or one waiting in back-off after it) is
/// attempt `restartCount + 1`; while a retry runs, `lastState` is attempt `restartCount`.
pub fn attempt(status: &ContainerStatus) -> u32 {
    let restarts = u32::try_from(status.restart_count).unwrap_or(0);
    let running = status.state.as_ref().is_some_and(|s| s.running.is_some());
    if running {
        restarts.max(1)
    } else {
        restarts.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };

    use super::*;

    #[test]
    fn reasons_are_classified_in_one_place() {
        for permanent in [
            "ParseError",
            "SchemaV1",
            "TemplateConflict",
            "RestartPlan",
            "InstallerPodMissing",
            "InstallerCannotStart",
            "InstallerTimeout",
            "NotVerified",
        ] {
            assert_eq!(
                classify(Some(permanent), None),
                Retry::Permanent,
                "{permanent}"
            );
        }
        for retryable in [
            "Locked",
            "WasmCheckFailed",
            "VerifyTimeout",
            "RestartFailed",
        ] {
            assert_eq!(
                classify(Some(retryable), Some(InstallerFailure::RolledBack)),
                Retry::Retryable,
                "{retryable}"
            );
        }
        // Unknown or absent: retried, bounded by the attempt limit.
        assert_eq!(classify(Some("SomethingNew"), None), Retry::Retryable);
        assert_eq!(classify(None, None), Retry::Retryable);
        // A failed rollback needs a person whatever the cause.
        assert_eq!(
            classify(
                Some("VerifyTimeout"),
                Some(InstallerFailure::RollbackFailed)
            ),
            Retry::Permanent
        );
        assert_eq!(
            classify(
                Some("WasmCheckFailed"),
                Some(InstallerFailure::RollbackConflict)
            ),
            Retry::Permanent
        );
    }

    fn status(restarts: i32, state: ContainerState) -> ContainerStatus {
        ContainerStatus {
            restart_count: restarts,
            state: Some(state),
            ..ContainerStatus::default()
        }
    }

    #[test]
    fn attempts_count_from_the_kubelets_restarts() {
        let terminated = ContainerState {
            terminated: Some(ContainerStateTerminated::default()),
            ..ContainerState::default()
        };
        let running = ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        };
        let backoff = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        };
        // The first run failed.
        assert_eq!(attempt(&status(0, terminated.clone())), 1);
        // The second run is on; lastState is still the first.
        assert_eq!(attempt(&status(1, running)), 1);
        // The second failed, then waits in back-off.
        assert_eq!(attempt(&status(1, terminated)), 2);
        assert_eq!(attempt(&status(1, backoff)), 2);
    }
}
