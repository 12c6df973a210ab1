//! Names shared by the controllers, the builders and the manifests (see ARCHITECTURE.md, "Names").

/// The one field manager every server-side apply of ours uses.
pub const FIELD_MANAGER: &str = "wasmkube-operator";
/// The field manager that holds a Deployment's `spec.replicas` while autoscaling takes it over
/// (Kubernetes' documented server-side apply hand-over to an HPA).
pub const HANDOVER_FIELD_MANAGER: &str = "wasmkube-operator-handover";
/// `app.kubernetes.io/managed-by` value, and the Event reporting controller.
pub const MANAGED_BY: &str = "wasmkube-operator";
/// `app.kubernetes.io/part-of` value.
pub const PART_OF: &str = "wasmkube";

/// RuntimeClass name and CRI runtime handler.
pub const RUNTIME_CLASS: &str = "wasmkube";
/// CRI handler the node installer configures in containerd.
pub const RUNTIME_HANDLER: &str = wasmkube_contract::names::RUNTIME_HANDLER;

/// Node opt-in: an annotation (or a label) with this key and the value `"true"`.
pub const WASM_NODE: &str = "wasmkube.dev/wasm-node";
/// Node state label: `queued` / `pending` / `ready` / `failed` / `draining` / `removing`.
pub const RUNTIME_LABEL: &str = "wasmkube.dev/runtime";
/// Installed shim: `<version>@sha256:<hex>`.
pub const SHIM_VERSION_ANNOTATION: &str = "wasmkube.dev/shim-version";
/// Why the last install or uninstall failed (the installer's message).
pub const RUNTIME_REASON_ANNOTATION: &str = "wasmkube.dev/runtime-reason";
/// Which attempt of the current installer pod failed last (`1`, `2`, …): set with
/// [`RUNTIME_REASON_ANNOTATION`] on an install failure, dropped when the node is `ready`.
pub const RUNTIME_ATTEMPTS_ANNOTATION: &str = "wasmkube.dev/runtime-attempts";
/// When the node entered its current run (`queued`, `pending`, `draining`, `removing`), RFC 3339
/// in seconds: installer results from pods created before it are stale and never used, and the
/// rollout queue is served in this order.
pub const RUNTIME_SINCE_ANNOTATION: &str = "wasmkube.dev/runtime-since";
/// Taint (effect `NoSchedule`) on a node being opted out, while its wasm pods drain and the
/// runtime is uninstalled.
pub const REMOVING_TAINT: &str = "wasmkube.dev/runtime-removing";
/// The installer pods' PriorityClass (shipped in manifests/; see operator/README.md for why not
/// `system-node-critical`).
pub const INSTALLER_PRIORITY_CLASS: &str = "wasmkube-node-critical";

/// Values of [`RUNTIME_LABEL`] (the node lifecycle is in operator/README.md).
pub mod runtime_state {
    /// Opted in, waiting for a rollout slot (`--max-concurrent-installs`).
    pub const QUEUED: &str = "queued";
    /// Installing, including while a failed attempt is retried (attempts left).
    pub const PENDING: &str = "pending";
    pub const READY: &str = "ready";
    /// Needs a person: a permanent failure, or the attempts ran out.
    pub const FAILED: &str = "failed";
    /// Opted out: tainted, wasm pods being evicted (or waited for) before the uninstall.
    pub const DRAINING: &str = "draining";
    pub const REMOVING: &str = "removing";
}

/// Recommended labels (<https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/>).
pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
}

/// `app.kubernetes.io/component` of a WasmApp's children.
pub const APP_COMPONENT: &str = "wasm-app";

/// The node installer's DaemonSets, ServiceAccount and pod labels.
pub mod installer {
    /// `app.kubernetes.io/name` of both installer DaemonSets and their pods.
    pub const NAME: &str = "wasmkube-node-installer";
    /// DaemonSet that installs on nodes labelled pending / ready / failed.
    pub const INSTALL_DAEMONSET: &str = "wasmkube-node-installer";
    /// DaemonSet that uninstalls on nodes labelled removing.
    pub const UNINSTALL_DAEMONSET: &str = "wasmkube-node-uninstaller";
    /// `app.kubernetes.io/component` of the install pods.
    pub const COMPONENT_INSTALL: &str = "install";
    /// `app.kubernetes.io/component` of the uninstall pods.
    pub const COMPONENT_UNINSTALL: &str = "uninstall";
    /// The ServiceAccount (no API rights, no token).
    pub const SERVICE_ACCOUNT: &str = "wasmkube-node-installer";
    /// Init container that runs the installer; its termination message is the result.
    pub const INIT_CONTAINER: &str = "installer";
    /// The installer binary inside its image (the shim lies beside it).
    pub const BINARY: &str = "/usr/local/bin/wasmkube-node-installer";
    /// The wasm check's module inside the installer image (`cli::CHECK_MODULE` of the node
    /// installer, which is also its default; keep the two in step).
    pub const CHECK_MODULE: &str = "/usr/local/share/wasmkube/check.wasm";
    /// Default installer image.
    pub const DEFAULT_IMAGE: &str = concat!(
        "docker.io/wasmkube/node-installer:",
        env!("CARGO_PKG_VERSION")
    );
}

/// Namespace of the operator and the installer (Pod Security `privileged`).
pub const DEFAULT_NAMESPACE: &str = "wasmkube-system";
