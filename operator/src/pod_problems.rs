//! Why an app's pods do not start, read from their container statuses: the kubelet's waiting
//! reason (`ErrImagePull`, `ImagePullBackOff`, `CrashLoopBackOff`, …) and its message, which
//! the Deployment's own status never carries. The app controller puts it in the WasmApp's
//! `Degraded` condition, so `kubectl get wapp` says why an app is not ready. A pod the scheduler
//! cannot place (`PodScheduled=False`, `Unschedulable`) is reported with the scheduler's message
//! (which nodes lack what), since such a pod has no container status at all.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::crd::reasons;

/// Waiting reasons after which a container will not start until something changes (a pull
/// secret, the image, the node). `ContainerCreating` and `PodInitializing` are progress. The
/// installer's pods are judged by the same list.
pub const CANNOT_START: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];
/// An app's container that starts and keeps exiting (the installer's exits are its result).
const CRASHING: &str = "CrashLoopBackOff";

/// Longest kubelet message kept (a registry's answer can be long).
const MAX_MESSAGE: usize = 400;

/// A stuck pod: the condition reason to report and a message naming the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    pub reason: &'static str,
    pub message: String,
}

/// The first stuck container among `pods` (by pod name, so the report is stable), if any.
pub fn stuck(pods: &[Pod]) -> Option<PodProblem> {
    let mut pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| p.name_any());
    let containers = pods.iter().find_map(|pod| stuck_container(pod));
    containers.or_else(|| pods.iter().find_map(|pod| unschedulable(pod)))
}

/// The scheduler's verdict on a pod it cannot place.
fn unschedulable(pod: &Pod) -> Option<PodProblem> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    (condition.reason.as_deref() == Some("Unschedulable")).then(|| PodProblem {
        reason: reasons::UNSCHEDULABLE,
        message: format!(
            "pod {} is Pending: {}",
            pod.name_any(),
            tail(
                condition.message.as_deref().unwrap_or("no message").trim(),
                MAX_MESSAGE
            )
        ),
    })
}

/// The first container of `pod` that cannot start.
fn stuck_container(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers.into_iter().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let why = waiting.reason.as_deref()?;
        let kind = CANNOT_START
            .iter()
            .chain(std::iter::once(&CRASHING))
            .find(|s| **s == why)?;
        let last_run = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|_| why == CRASHING);
        let detail: String = match last_run {
            // The kubelet's back-off message says nothing of why: the last run's exit code
            // and the end of its log (terminationMessagePolicy FallbackToLogsOnError) do.
            Some(t) => format!(
                "last run exited with code {}: {}",
                t.exit_code,
                tail(
                    t.message.as_deref().unwrap_or("no message").trim(),
                    MAX_MESSAGE
                )
            ),
            None => waiting
                .message
                .as_deref()
                .unwrap_or("no message")
                .chars()
                .take(MAX_MESSAGE)
                .collect(),
        };
        let hint = if detail.contains("mismatched image rootfs and manifest layers") {
            // containerd before 1.6.25/1.7.7 cannot unpack non-tar layers; it stores the
            // image anyway, so the kubelet's retry (IfNotPresent) starts the pod.
            " (this node's containerd is older than 1.6.25/1.7.7 and cannot unpack an image \
                 whose layers are not tar layers, as a Wasm OCI artifact or a Spin app: it keeps \
                 the image, so with imagePullPolicy IfNotPresent the kubelet's next try starts \
                 the pod; with Always it never does. Upgrade containerd, or push the module with \
                 `wasmkube push --layout image`)"
        } else if detail.contains("parent snapshot") && detail.contains("does not exist") {
            // containerd 2.x's CRI unpacks tar layers for the node's platform only.
            " (containerd 2.x unpacks an image's tar layers only when the image's platform is \
                 the node's, and this image's is not (wasi/wasm, say): push the module as a Wasm \
                 OCI artifact (`wasmkube push app.wasm REF`), or the image with `--platform \
                 linux/amd64`, the node's)"
        } else if detail.contains("no command specified") {
            // containerd's CRI needs a process to start; a Wasm OCI artifact's config has
            // no Entrypoint (the shim reads the module from the image's wasm layer).
            " (the image has no entrypoint, as a Wasm OCI artifact pushed by wkg, wash or \
                 `wasmkube push` has none: give the WasmApp spec.args, e.g. [\"app\"], which \
                 become the guest's argv, or push it with `wasmkube push --layout image`)"
        } else {
            ""
        };
        let reason = match *kind {
            "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
                reasons::IMAGE_PULL_FAILED
            }
            _ => reasons::PODS_NOT_STARTING,
        };
        Some(PodProblem {
            reason,
            message: format!(
                "pod {} container {}: {why}: {detail}{hint}",
                pod.name_any(),
                c.name
            ),
        })
    })
}

/// At most `max` characters from the end of `text`, from a line start when one fits.
fn tail(text: &str, max: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_string();
    }
    let end: String = chars[chars.len() - max..].iter().collect();
    match end.split_once('\n') {
        Some((_, rest)) if !rest.trim().is_empty() => rest.to_string(),
        _ => end,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(name: &str, state: ContainerState) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "app".into(),
                    state: Some(state),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn waiting(reason: &str, message: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(message.into()),
            }),
            ..ContainerState::default()
        }
    }

    #[test]
    fn an_image_pull_failure_is_named_with_the_kubelet_message() {
        let pods = [
            pod("b", waiting("ErrImagePull", "401 Unauthorized")),
            pod(
                "a",
                ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..ContainerState::default()
                },
            ),
        ];
        assert_eq!(
            stuck(&pods),
            Some(PodProblem {
                reason: reasons::IMAGE_PULL_FAILED,
                message: "pod b container app: ErrImagePull: 401 Unauthorized".into(),
            })
        );
    }

    #[test]
    fn a_pod_no_node_can_take_carries_the_scheduler_message() {
        let message = "0/3 nodes are available: 1 node(s) didn't match Pod's node \
                       affinity/selector, 2 Insufficient cpu.";
        let pending = |name: &str, reason: &str| Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                conditions: Some(vec![k8s_openapi::api::core::v1::PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                    ..Default::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        assert_eq!(
            stuck(&[pending("z", "Unschedulable")]),
            Some(PodProblem {
                reason: reasons::UNSCHEDULABLE,
                message: format!("pod z is Pending: {message}"),
            })
        );
        // Not yet looked at by the scheduler (no reason): progress.
        assert_eq!(stuck(&[pending("z", "")]), None);
        // A container that cannot start says more than a pod that waits for room.
        assert_eq!(
            stuck(&[
                pending("a", "Unschedulable"),
                pod("b", waiting("ErrImagePull", "404"))
            ])
            .map(|p| p.reason),
            Some(reasons::IMAGE_PULL_FAILED)
        );
    }

    #[test]
    fn progress_is_not_a_problem_and_the_first_pod_by_name_wins() {
        assert_eq!(stuck(&[pod("a", waiting("ContainerCreating", ""))]), None);
        let pods = [
            pod("z", waiting("ImagePullBackOff", "back-off")),
            pod("m", waiting("CrashLoopBackOff", "exit 1")),
        ];
        let problem = stuck(&pods).expect("stuck");
        assert_eq!(problem.reason, reasons::PODS_NOT_STARTING);
        assert!(problem
            .message
            .starts_with("pod m container app: CrashLoopBackOff"));
    }

    #[test]
    fn layouts_a_containerd_cannot_unpack_get_the_version_that_can() {
        let old = "failed to pull and unpack image \"localhost:5001/a:1\": failed to unpack image \
                   on snapshotter overlayfs: mismatched image rootfs and manifest layers";
        let problem = stuck(&[pod("a", waiting("ErrImagePull", old))]).expect("stuck");
        assert_eq!(problem.reason, reasons::IMAGE_PULL_FAILED);
        assert!(
            problem.message.contains("older than 1.6.25/1.7.7"),
            "{}",
            problem.message
        );
        let new = "failed to create containerd container: parent snapshot sha256:3479 does not \
                   exist: not found";
        let problem = stuck(&[pod("a", waiting("CreateContainerError", new))]).expect("stuck");
        assert!(
            problem.message.contains("containerd 2.x unpacks"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn a_crash_loop_says_how_the_last_run_ended() {
        use k8s_openapi::api::core::v1::ContainerStateTerminated;
        let log = format!(
            "{}\nwasmkube: Spin app: trigger \"t\" is of type \"redis\"\n",
            "noise ".repeat(200)
        );
        let mut crashing = pod(
            "a",
            waiting(
                "CrashLoopBackOff",
                "back-off 10s restarting failed container",
            ),
        );
        if let Some(statuses) = crashing
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
        {
            statuses[0].last_state = Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 126,
                    message: Some(log),
                    ..ContainerStateTerminated::default()
                }),
                ..ContainerState::default()
            });
        }
        let problem = stuck(&[crashing]).expect("stuck");
        assert_eq!(
            problem.message,
            "pod a container app: CrashLoopBackOff: last run exited with code 126: \
             wasmkube: Spin app: trigger \"t\" is of type \"redis\""
        );
    }

    #[test]
    fn an_image_without_entrypoint_gets_the_way_out() {
        let message = "failed to generate container \"d97\" spec: failed to generate spec: no command specified";
        let problem = stuck(&[pod("a", waiting("CreateContainerError", message))]).expect("stuck");
        assert_eq!(problem.reason, reasons::PODS_NOT_STARTING);
        assert!(
            problem
                .message
                .contains("no command specified (the image has no entrypoint"),
            "{}",
            problem.message
        );
        assert!(
            problem.message.contains("give the WasmApp spec.args"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(5000);
        let problem = stuck(&[pod("a", waiting("ErrImagePull", &long))]).expect("stuck");
        assert!(
            problem.message.len() < MAX_MESSAGE + 100,
            "{}",
            problem.message.len()
        );
    }
}
