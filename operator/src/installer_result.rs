//! The node installer's result, read from its init container's termination message.
//!
//! The installer writes one JSON object to `/dev/termination-log`:
//! `{state: installed|unchanged|uninstalled|failed, flavour, configPath, containerdVersion,
//! shimVersion, shimSha256, restarted, message}` and exits non-zero on failure (so kubelet retries
//! the init container with back-off, and a later success replaces the failure).

use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use serde::Deserialize;
use wasmkube_contract::installer::InstallerFailure;

use crate::{
    install_failure::{self, classify, operator_reasons, Failure},
    names::installer,
};

/// The result's `state` (an unknown one reads as `Unknown`).
pub use wasmkube_contract::installer::InstallerState as ResultState;

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
    /// How the failure left the node (`rolled-back`, `rollback-conflict`, …).
    pub failure: Option<InstallerFailure>,
}

impl InstallerResult {
    /// The failure this result reports, classified ([`install_failure::classify`]).
    fn failure(&self) -> Failure {
        let reason = self.reason.clone().filter(|r| !r.is_empty());
        Failure {
            retry: classify(reason.as_deref(), self.failure),
            message: truncate(&self.failure_message()),
            reason,
            attempt: None,
        }
    }

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
        match self.failure {
            Some(InstallerFailure::RollbackFailed) => {
                out.push_str(" (rollback failed too: the node needs attention)")
            }
            Some(InstallerFailure::RollbackConflict) => out.push_str(
                " (not rolled back: someone else edited the config meanwhile; the node needs \
                 attention)",
            ),
            _ => {}
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
    /// The run failed; the failure says why and whether another attempt may pass.
    Failed(Failure),
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
    // No result to classify (a crash before it, an unreadable one): retried, within the limit.
    let unknown = |message: String| {
        Outcome::Failed(Failure {
            reason: None,
            message: truncate(&message),
            retry: classify(None, None),
            attempt: None,
        })
    };
    match (parsed, term.exit_code) {
        (Some(r), code) => match r.state {
            Some(ResultState::Installed | ResultState::Unchanged)
                if code == 0 && r.verified == Some(false) =>
            {
                Outcome::Failed(Failure::operator(
                    operator_reasons::NOT_VERIFIED,
                    truncate(&format!(
                        "{}: the installer could not confirm that containerd runs the \
                         wasmkube handler: {}",
                        operator_reasons::NOT_VERIFIED,
                        r.message.as_deref().unwrap_or("no message")
                    )),
                ))
            }
            Some(ResultState::Installed | ResultState::Unchanged) if code == 0 => {
                Outcome::Installed {
                    shim_version: shim_version_value(&r),
                }
            }
            Some(ResultState::Uninstalled) if code == 0 => Outcome::Uninstalled,
            Some(_) | None => Outcome::Failed(r.failure()),
        },
        (None, 0) => unknown(format!("unreadable installer result: {raw}")),
        (None, code) => unknown(format!(
            "installer exited with code {code}{}{}",
            if raw.trim().is_empty() { "" } else { ": " },
            raw
        )),
    }
}

// Waiting reasons after which the installer container will not start until someone changes
// something (the image, a secret, the node): reported at once instead of leaving the node
// `pending`.
use crate::pod_problems::CANNOT_START;

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("(unnamed)")
}

/// Why the pod cannot run at all, if it cannot: unschedulable, or its installer container
/// stuck in a [`CANNOT_START`] state.
fn cannot_start(pod: &Pod) -> Option<Failure> {
    let status = pod.status.as_ref()?;
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        let message = format!(
            "{}: installer pod {} cannot be scheduled: {}",
            operator_reasons::INSTALLER_UNSCHEDULABLE,
            pod_name(pod),
            c.message.as_deref().unwrap_or("no message")
        );
        return Some(Failure::operator(
            operator_reasons::INSTALLER_UNSCHEDULABLE,
            truncate(&message),
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
        let message = format!(
            "{}: installer pod {} cannot start: {reason}: {}",
            operator_reasons::INSTALLER_CANNOT_START,
            pod_name(pod),
            waiting.message.as_deref().unwrap_or("no message")
        );
        Failure::operator(operator_reasons::INSTALLER_CANNOT_START, truncate(&message))
    })
}

/// The latest finished run of a pod's installer init container, or why the pod cannot run it.
///
/// While a retry is running, the previous termination (`lastState`) still tells the truth. A
/// failure carries the attempt it came from ([`install_failure::attempt`]).
pub fn pod_outcome(pod: &Pod) -> Option<Outcome> {
    let status = pod
        .status
        .as_ref()?
        .init_container_statuses
        .iter()
        .flatten()
        .find(|s| s.name == installer::INIT_CONTAINER);
    let with_attempt = |outcome: Outcome| match (outcome, status) {
        (Outcome::Failed(mut f), Some(s)) => {
            f.attempt = Some(install_failure::attempt(s));
            Outcome::Failed(f)
        }
        (outcome, _) => outcome,
    };
    let current = status.and_then(|s| s.state.as_ref().and_then(|s| s.terminated.as_ref()));
    if let Some(term) = current {
        return Some(with_attempt(outcome_of(term)));
    }
    if let Some(failure) = cannot_start(pod) {
        return Some(Outcome::Failed(failure));
    }
    let last = status.and_then(|s| s.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
    // An unfinished container reports no exit code; treat "terminated" as done.
    Some(with_attempt(outcome_of(last)))
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
        _ => Ok(Outcome::Failed(Failure::operator(
            operator_reasons::INSTALLER_TIMEOUT,
            truncate(&format!(
                "{}: installer pod {} has not reported after {} s",
                operator_reasons::INSTALLER_TIMEOUT,
                pod_name(pod),
                timeout.as_secs()
            )),
        ))),
    }
}

#[cfg(test)]
mod tests;
