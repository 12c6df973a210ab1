//! The node installer's two DaemonSets and the `wasmkube` RuntimeClass.
//!
//! Node state drives scheduling: the *install* DaemonSet selects nodes labelled
//! `wasmkube.dev/runtime` in (`pending`, `ready`, `failed`), the *uninstall* DaemonSet nodes
//! labelled `removing`. Moving a node's label is therefore all it takes to run the right verb on
//! it (see operator/README.md). Both run the installer in an init container, whose termination
//! message is the JSON result, and then idle (the installer's `idle` verb) so the result stays readable.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet},
        core::v1::{
            Affinity, Capabilities, Container, HostPathVolumeSource, NodeAffinity,
            NodeSelector as CoreNodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
            PodTemplateSpec, ResourceRequirements, SecurityContext, Toleration, Volume,
            VolumeMount,
        },
        node::v1::{RuntimeClass, Scheduling},
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::LabelSelector, util::intstr::IntOrString,
    },
};
use kube::api::ObjectMeta;

use crate::{
    drain::DrainPolicy,
    names::{self, installer, labels, runtime_state},
};

/// What an installer DaemonSet does on its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallerAction {
    Install,
    Uninstall,
}

impl InstallerAction {
    pub fn daemonset_name(self) -> &'static str {
        match self {
            InstallerAction::Install => installer::INSTALL_DAEMONSET,
            InstallerAction::Uninstall => installer::UNINSTALL_DAEMONSET,
        }
    }

    pub fn component(self) -> &'static str {
        match self {
            InstallerAction::Install => installer::COMPONENT_INSTALL,
            InstallerAction::Uninstall => installer::COMPONENT_UNINSTALL,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            InstallerAction::Install => "install",
            InstallerAction::Uninstall => "uninstall",
        }
    }

    /// Node label values this DaemonSet runs on.
    pub fn node_states(self) -> &'static [&'static str] {
        match self {
            InstallerAction::Install => &[
                runtime_state::PENDING,
                runtime_state::READY,
                runtime_state::FAILED,
            ],
            InstallerAction::Uninstall => &[runtime_state::REMOVING],
        }
    }

    /// The action whose pods carry this `app.kubernetes.io/component`.
    pub fn from_component(component: &str) -> Option<Self> {
        match component {
            installer::COMPONENT_INSTALL => Some(InstallerAction::Install),
            installer::COMPONENT_UNINSTALL => Some(InstallerAction::Uninstall),
            _ => None,
        }
    }
}

/// Operator settings that shape the installer pods.
#[derive(Clone, Debug, PartialEq)]
pub struct InstallerConfig {
    pub namespace: String,
    pub image: String,
    /// Path of the bundled shim inside the installer image; `None`: the installer's default
    /// (the shim beside its binary).
    pub shim_path: Option<String>,
    /// `--restart` passed to the installer (`auto`, `systemd`, `none`).
    pub restart: String,
    /// How many nodes install (and so restart containerd) at once: the opt-in rollout's
    /// slots, and the DaemonSets' `maxUnavailable` for installer upgrades.
    pub max_concurrent_installs: u16,
    /// The installer pods' PriorityClass.
    pub priority_class: String,
    /// What happens to wasm pods on a node being opted out.
    pub drain: DrainPolicy,
    /// `--lock-timeout` passed to the installer (seconds to wait for another run's host lock);
    /// `None`: the installer's default.
    pub lock_timeout: Option<u64>,
}

impl Default for InstallerConfig {
    fn default() -> Self {
        InstallerConfig {
            namespace: names::DEFAULT_NAMESPACE.to_string(),
            image: installer::DEFAULT_IMAGE.to_string(),
            shim_path: None,
            restart: "auto".to_string(),
            max_concurrent_installs: 1,
            priority_class: names::INSTALLER_PRIORITY_CLASS.to_string(),
            drain: DrainPolicy::Evict,
            lock_timeout: None,
        }
    }
}

/// Labels of an installer DaemonSet's pods (also its selector).
pub fn pod_labels(action: InstallerAction) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), installer::NAME.to_string()),
        (
            labels::COMPONENT.to_string(),
            action.component().to_string(),
        ),
    ])
}

fn common_labels(action: InstallerAction) -> BTreeMap<String, String> {
    let mut l = pod_labels(action);
    l.insert(labels::PART_OF.to_string(), names::PART_OF.to_string());
    l.insert(
        labels::MANAGED_BY.to_string(),
        names::MANAGED_BY.to_string(),
    );
    l
}

/// Label selector (string form) matching the pods of both installer DaemonSets.
pub fn all_pods_selector() -> String {
    format!("{}={}", labels::NAME, installer::NAME)
}

fn tolerate_all() -> Vec<Toleration> {
    // An opted-in node is provisioned whatever its taints (control plane, dedicated pools,
    // NoExecute pressure taints): the installer is what makes the node usable at all.
    vec![Toleration {
        operator: Some("Exists".to_string()),
        ..Toleration::default()
    }]
}

/// An installer DaemonSet.
pub fn daemonset(cfg: &InstallerConfig, action: InstallerAction) -> DaemonSet {
    let host_root = "/host";
    let mut command = vec![
        installer::BINARY.to_string(),
        action.verb().to_string(),
        "--host-root".to_string(),
        host_root.to_string(),
    ];
    if let Some(shim) = &cfg.shim_path {
        command.extend(["--shim".to_string(), shim.clone()]);
    }
    if action == InstallerAction::Install {
        // Ready only after a wasm container really ran through the handler's runtime: the
        // check module ships in this very image. The check runs in containerd namespace
        // `wasmkube-check` (the kubelet does not manage it) from a host directory the
        // installer owns, so it needs no image pull and no API access.
        command.extend([
            "--check-module".to_string(),
            installer::CHECK_MODULE.to_string(),
        ]);
    }
    command.extend([
        "--restart".to_string(),
        cfg.restart.clone(),
        "--result-file".to_string(),
        "/dev/termination-log".to_string(),
    ]);
    if let Some(secs) = cfg.lock_timeout {
        command.extend(["--lock-timeout".to_string(), secs.to_string()]);
    }
    let installer = Container {
        name: installer::INIT_CONTAINER.to_string(),
        image: Some(cfg.image.clone()),
        command: Some(command),
        termination_message_path: Some("/dev/termination-log".to_string()),
        // A crash before the result is written still leaves its last log lines as the message.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "host-root".to_string(),
            mount_path: host_root.to_string(),
            ..VolumeMount::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("50m".to_string())),
                ("memory".to_string(), Quantity("32Mi".to_string())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("256Mi".to_string()),
            )])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let idle = Container {
        name: "idle".to_string(),
        // The installer image's own `idle` verb: no third image to pull or mirror.
        image: Some(cfg.image.clone()),
        command: Some(vec![installer::BINARY.to_string(), "idle".to_string()]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(65535),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("1m".to_string())),
                ("memory".to_string(), Quantity("4Mi".to_string())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("16Mi".to_string()),
            )])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let affinity = Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(CoreNodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: names::RUNTIME_LABEL.to_string(),
                        operator: "In".to_string(),
                        values: Some(action.node_states().iter().map(|s| s.to_string()).collect()),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        ..Affinity::default()
    };
    DaemonSet {
        metadata: ObjectMeta {
            name: Some(action.daemonset_name().to_string()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(common_labels(action)),
            ..ObjectMeta::default()
        },
        spec: DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(pod_labels(action)),
                ..LabelSelector::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(i32::from(
                        cfg.max_concurrent_installs.max(1),
                    ))),
                    ..RollingUpdateDaemonSet::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(common_labels(action)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(installer::SERVICE_ACCOUNT.to_string()),
                    automount_service_account_token: Some(false),
                    host_pid: Some(true),
                    // Our own class (manifests/priority-class.yaml): GKE admits
                    // system-node-critical outside kube-system only with a ResourceQuota.
                    priority_class_name: Some(cfg.priority_class.clone()),
                    affinity: Some(affinity),
                    tolerations: Some(tolerate_all()),
                    init_containers: Some(vec![installer]),
                    containers: vec![idle],
                    volumes: Some(vec![Volume {
                        name: "host-root".to_string(),
                        host_path: Some(HostPathVolumeSource {
                            path: "/".to_string(),
                            type_: Some("Directory".to_string()),
                        }),
                        ..Volume::default()
                    }]),
                    termination_grace_period_seconds: Some(5),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        },
        status: None,
    }
}

/// The `wasmkube` RuntimeClass: pods using it land only on nodes whose runtime is ready.
pub fn runtime_class() -> RuntimeClass {
    RuntimeClass {
        metadata: ObjectMeta {
            name: Some(names::RUNTIME_CLASS.to_string()),
            labels: Some(BTreeMap::from([
                (labels::PART_OF.to_string(), names::PART_OF.to_string()),
                (
                    labels::MANAGED_BY.to_string(),
                    names::MANAGED_BY.to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        handler: names::RUNTIME_HANDLER.to_string(),
        overhead: None,
        scheduling: Some(Scheduling {
            node_selector: Some(BTreeMap::from([(
                names::RUNTIME_LABEL.to_string(),
                runtime_state::READY.to_string(),
            )])),
            tolerations: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_daemonset_shape() {
        let cfg = InstallerConfig {
            max_concurrent_installs: 3,
            shim_path: Some("/opt/wasmkube/containerd-shim-wasmkube-v1".to_string()),
            image: "registry.example/wasmkube/node-installer:v9".to_string(),
            ..InstallerConfig::default()
        };
        let ds = serde_json::to_value(daemonset(&cfg, InstallerAction::Install)).expect("json");
        assert_eq!(ds["metadata"]["name"], "wasmkube-node-installer");
        assert_eq!(ds["metadata"]["namespace"], "wasmkube-system");
        assert_eq!(
            ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            3
        );
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["priorityClassName"], "wasmkube-node-critical");
        assert_eq!(pod["hostPID"], true);
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["serviceAccountName"], "wasmkube-node-installer");
        assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/");
        let term = &pod["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchExpressions"][0];
        assert_eq!(term["key"], "wasmkube.dev/runtime");
        assert_eq!(
            term["values"],
            serde_json::json!(["pending", "ready", "failed"])
        );
        assert_eq!(
            pod["tolerations"],
            serde_json::json!([{ "operator": "Exists" }]),
            "tolerates every taint"
        );
        let init = &pod["initContainers"][0];
        assert_eq!(init["securityContext"]["privileged"], true);
        assert_eq!(init["volumeMounts"][0]["mountPath"], "/host");
        assert_eq!(init["terminationMessagePolicy"], "FallbackToLogsOnError");
        let cmd: Vec<String> = serde_json::from_value(init["command"].clone()).expect("cmd");
        assert_eq!(
            cmd.join(" "),
            "/usr/local/bin/wasmkube-node-installer install --host-root /host --shim \
             /opt/wasmkube/containerd-shim-wasmkube-v1 --check-module /usr/local/share/wasmkube/check.wasm \
             --restart auto --result-file /dev/termination-log"
        );
        assert_eq!(
            pod["containers"][0]["image"],
            pod["initContainers"][0]["image"]
        );
        assert_eq!(
            pod["containers"][0]["command"],
            serde_json::json!([installer::BINARY, "idle"])
        );
    }

    #[test]
    fn uninstall_daemonset_targets_removing_nodes() {
        let ds = daemonset(&InstallerConfig::default(), InstallerAction::Uninstall);
        let json = serde_json::to_value(&ds).expect("json");
        assert_eq!(json["metadata"]["name"], "wasmkube-node-uninstaller");
        assert_eq!(
            json["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
            "uninstall"
        );
        let term = &json["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchExpressions"][0];
        assert_eq!(term["values"], serde_json::json!(["removing"]));
        assert_eq!(
            json["spec"]["template"]["spec"]["initContainers"][0]["command"][1],
            "uninstall"
        );
        let cmd = json["spec"]["template"]["spec"]["initContainers"][0]["command"].to_string();
        assert!(
            !cmd.contains("--check-module"),
            "uninstall runs no wasm check: {cmd}"
        );
    }

    #[test]
    fn lock_timeout_reaches_both_verbs_only_when_set() {
        let cfg = InstallerConfig {
            lock_timeout: Some(5),
            ..InstallerConfig::default()
        };
        for action in [InstallerAction::Install, InstallerAction::Uninstall] {
            let ds = serde_json::to_value(daemonset(&cfg, action)).expect("json");
            let cmd = ds["spec"]["template"]["spec"]["initContainers"][0]["command"].to_string();
            assert!(cmd.ends_with(r#""--lock-timeout","5"]"#), "{cmd}");
            let ds = serde_json::to_value(daemonset(&InstallerConfig::default(), action));
            let cmd = ds.expect("json")["spec"]["template"]["spec"]["initContainers"][0]["command"]
                .to_string();
            assert!(!cmd.contains("--lock-timeout"), "{cmd}");
        }
    }

    #[test]
    fn runtime_class_shape() {
        let rc = serde_json::to_value(runtime_class()).expect("json");
        assert_eq!(rc["apiVersion"], "node.k8s.io/v1");
        assert_eq!(rc["handler"], "wasmkube");
        assert_eq!(
            rc["scheduling"]["nodeSelector"]["wasmkube.dev/runtime"],
            "ready"
        );
    }
}
