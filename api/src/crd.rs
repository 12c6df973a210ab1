//! The `WasmApp` custom resource (`wasmkube.dev/v1alpha1`).
//!
//! The schema the API server enforces is generated from these types (see [`crd_yaml`]); rules the
//! schema cannot express are checked by [`WasmAppSpec::validate`], and a failure there becomes a
//! `Degraded` condition rather than an error.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Affinity, EnvVar, LocalObjectReference, ResourceRequirements, Toleration},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod grants;
/// An object name (RFC 1123 subdomain), as the API server checks it.
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A label-like name (RFC 1123 label).
const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
pub mod image;
mod validate;

pub use grants::{
    ConfigRef, ConfigSpec, FileStoreSpec, KeyValueSpec, MemoryStoreSpec, OutboundSpec,
    RedisStoreSpec, VolumeSpec, DEFAULT_KV_TIMEOUT_MS,
};

pub use validate::{is_dns1035_label, is_qualified_name};

/// Default container (and wasi:http) port.
pub const DEFAULT_TARGET_PORT: i32 = 8080;
/// Default Service port.
pub const DEFAULT_SERVICE_PORT: i32 = 80;
/// Default HPA CPU target.
pub const DEFAULT_TARGET_CPU: i32 = 80;

/// Condition types.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
}

/// Condition reasons (and Event reasons): constants, never literals in the controllers.
pub mod reasons {
    // Ready
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    // Progressing
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const WAITING_FOR_DEPLOYMENT: &str = "WaitingForDeployment";
    // Degraded
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The API server refused a child object (admission, immutable field, port in use).
    pub const APPLY_FAILED: &str = "ApplyFailed";
    /// A child's name is taken by an object this WasmApp does not control: never adopted,
    /// never deleted.
    pub const CHILD_CONFLICT: &str = "ChildConflict";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    pub const REPLICA_FAILURE: &str = "ReplicaFailure";
    /// A ConfigMap or Secret named in `spec.config` does not exist: the pods wait for it.
    pub const CONFIG_MISSING: &str = "ConfigMissing";
    /// A pod cannot pull its image (`ErrImagePull`, `ImagePullBackOff`, …: a wrong pull
    /// secret, a missing image); the message has the kubelet's reason and message.
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    /// A pod's container cannot start or keeps crashing (`CrashLoopBackOff`, …).
    pub const PODS_NOT_STARTING: &str = "PodsNotStarting";
    /// A pod no node can take (the scheduler's `Unschedulable`: no ready wasm node, or none with
    /// room); the message is the scheduler's, naming what each node lacks.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    // Events only
    pub const CREATED: &str = "Created";
    pub const BECAME_READY: &str = "BecameReady";
    pub const BECAME_DEGRADED: &str = "BecameDegraded";
    pub const AUTOSCALER_REMOVED: &str = "AutoscalerRemoved";
    pub const SERVICE_REMOVED: &str = "ServiceRemoved";
}

/// A WebAssembly application: a Deployment whose pods run under the wasmkube RuntimeClass, a
/// Service in front of it, and optionally a HorizontalPodAutoscaler.
// Several printcolumn(...) share keys such as type_, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "wasmkube.dev",
    version = "v1alpha1",
    kind = "WasmApp",
    namespaced,
    shortname = "wapp",
    category = "wasmkube",
    status = "WasmAppStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A WebAssembly application run by the wasmkube containerd shim",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every desired replica is ready"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Ready replicas"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.image",
        description = "The wasm image"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.autoscaling) || !has(self.replicas) || (self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)",
        "message": "with autoscaling, replicas (if set) must lie within autoscaling.minReplicas..maxReplicas",
        "fieldPath": ".replicas",
        "reason": "FieldValueInvalid"
    },
    {
        "rule": "!has(self.keyValue) || !self.keyValue.exists(s, has(s.file)) || (!has(self.autoscaling) && (!has(self.replicas) || self.replicas <= 1))",
        "message": "a file key-value store serves one replica: set replicas to at most 1 and no autoscaling, or use redis",
        "fieldPath": ".keyValue",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "!has(self.autoscaling) || (has(self.resources) && ((has(self.resources.requests) && 'cpu' in self.resources.requests) || (has(self.resources.limits) && 'cpu' in self.resources.limits)))",
        "message": "autoscaling on CPU needs resources.requests.cpu (or limits.cpu)",
        "fieldPath": ".autoscaling",
        "reason": "FieldValueRequired"
    }
]))]
pub struct WasmAppSpec {
    /// OCI image holding the wasm module or component (e.g. built by `wasmkube pack`).
    #[schemars(length(min = 1, max = 1024))]
    pub image: String,

    /// When the kubelet pulls the image. Default as in a Pod: `Always` for a `:latest` or
    /// untagged image without a digest, `IfNotPresent` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "image_pull_policy_schema")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Desired replicas (default 1). Ignored while `autoscaling` is set: the HPA owns the count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: Option<i32>,

    /// Arguments passed to the wasm program (argv[1..]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub args: Vec<String>,

    /// Environment variables, as in a container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub env: Vec<EnvVar>,

    /// CPU and memory requests and limits; the memory limit also bounds the wasm store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// How the app is exposed: a Service of this type in front of `targetPort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceConfig>,

    /// HTTP probes against the app's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,

    /// Extra node selector; the RuntimeClass already restricts pods to ready wasm nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Pod tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Pod affinity and anti-affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Secrets used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// RuntimeClass of the pods (default `wasmkube`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = DNS_SUBDOMAIN)
    )]
    pub runtime_class_name: Option<String>,

    /// Horizontal autoscaling on CPU; when set, an HPA owns the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Where the app may connect: outgoing wasi:http requests and wasi:sockets connections.
    /// Absent: nowhere (no requests, no sockets, no name lookups), as in Spin and wasmCloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboundSpec>,

    /// What the app reads through `wasi:config/store`: inline values, then ConfigMaps, then
    /// Secrets, a later key replacing an earlier one. Secrets reach the guest only there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigSpec>,

    /// Volumes the app may use, each preopened at its mount path. The guest sees its image's
    /// files and these, nothing else the pod mounts (`/etc/hosts`, tokens, `/proc`, `/dev`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<VolumeSpec>,

    /// Key-value stores the app opens by name through `wasi:keyvalue` (store, atomics, batch):
    /// Redis (shared by replicas), a file on a claim (one replica), or the pod's memory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub key_value: Vec<KeyValueSpec>,

    /// How the wasi:http server runs the app's component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
}

/// `spec.http`: how requests meet instances of the app's wasi:http component.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSpec {
    /// Serve several requests, one after another, with one instance of the component. Off
    /// (absent): every request gets a fresh instance, as in Spin and `wasmtime serve`, so no
    /// state survives a request. On: globals, linear memory and whatever the guest's language
    /// runtime keeps (caches, a JavaScript heap) carry over from one request to the next on the
    /// same instance, while different instances share nothing: turn it on only for apps that
    /// expect that. An instance that traps, exceeds its deadline or loses its client is dropped,
    /// never reused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<InstanceReuse>,
}

/// `spec.http.instanceReuse`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReuse {
    /// Requests one instance serves before it is dropped (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_requests: Option<i32>,
    /// Reusable instances alive at once, idle or serving; each serves one request at a time
    /// (a wasi:http 0.2 export is not re-entrant). A request that finds none idle while this
    /// many are alive gets a fresh instance of its own. Default: as many as the pod serves
    /// requests at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent: Option<i32>,
    /// How long an idle instance is kept, e.g. `30s` or `500ms` (default `60s`). Idle
    /// instances keep their memory; the pod's memory limit still bounds them together with the
    /// instances serving, and idle ones are dropped first when a request needs the memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,6}(ms|s)$"))]
    pub idle_timeout: Option<String>,
}

impl InstanceReuse {
    /// Default of `maxRequests`.
    pub const DEFAULT_MAX_REQUESTS: i32 = 1000;
    /// Default of `idleTimeout`.
    pub const DEFAULT_IDLE_TIMEOUT: &'static str = "60s";
}

/// A container's `imagePullPolicy`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The field's schema: the enum alone. schemars would add `null` to the enum for an `Option`,
/// which the API server refuses; an absent field already means "unset".
fn image_pull_policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ["Always", "IfNotPresent", "Never"],
    })
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Service type: the Kubernetes ones, or `None` for no Service at all.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    None,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::None => "None",
        }
    }
}

/// The app's port and the Service in front of it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.nodePort) || self.type == 'NodePort' || self.type == 'LoadBalancer'",
        "message": "nodePort needs type NodePort or LoadBalancer",
        "fieldPath": ".nodePort",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct ServiceConfig {
    /// `ClusterIP` (default), `NodePort`, `LoadBalancer`, or `None` (no Service).
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port the Service listens on.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Port the wasm app listens on (container port and `WASMKUBE_HTTP_ADDR`).
    #[serde(default = "default_target_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub target_port: i32,
    /// Fixed node port for `NodePort` / `LoadBalancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            type_: ServiceType::ClusterIP,
            port: DEFAULT_SERVICE_PORT,
            target_port: DEFAULT_TARGET_PORT,
            node_port: None,
        }
    }
}

fn default_service_port() -> i32 {
    DEFAULT_SERVICE_PORT
}

fn default_target_port() -> i32 {
    DEFAULT_TARGET_PORT
}

/// HTTP probes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<HttpProbe>,
}

/// An `httpGet` probe against the app's port (or `port`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    /// Request path.
    #[serde(default = "default_probe_path")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = "^/"))]
    pub path: String,
    /// Port (default: the app's `targetPort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
}

fn default_probe_path() -> String {
    "/".to_string()
}

/// CPU-based horizontal autoscaling.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        "fieldPath": ".minReplicas",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct Autoscaling {
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Target average CPU utilisation, percent of the CPU request.
    #[serde(
        default = "default_target_cpu",
        rename = "targetCPUUtilizationPercentage"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    /// How long the load must stay low before the HPA scales down (its
    /// `behavior.scaleDown.stabilizationWindowSeconds`); unset: the cluster's default (5
    /// minutes unless the controller-manager says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<i32>,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_target_cpu() -> i32 {
    DEFAULT_TARGET_CPU
}

/// Observed state, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WasmAppStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of the Deployment (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Ready pods of the Deployment.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `Ready`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The Service in front of the app, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// The HorizontalPodAutoscaler, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_name: Option<String>,
    /// In-cluster URL of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Label selector of the pods, for the scale subresource (and `kubectl autoscale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

impl WasmAppStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

impl WasmAppSpec {
    /// The Service settings in effect (defaults when `service` is absent).
    pub fn service_config(&self) -> ServiceConfig {
        self.service.clone().unwrap_or_default()
    }

    /// The pull policy in effect: the one set, or Kubernetes' default for the image.
    pub fn image_pull_policy(&self) -> ImagePullPolicy {
        self.image_pull_policy
            .unwrap_or_else(|| image::default_pull_policy(&self.image))
    }

    /// The port the app listens on.
    pub fn target_port(&self) -> i32 {
        self.service
            .as_ref()
            .map_or(DEFAULT_TARGET_PORT, |s| s.target_port)
    }
}

/// The CustomResourceDefinition, as the API server gets it.
pub fn crd() -> CustomResourceDefinition {
    WasmApp::crd()
}

/// The CRD as YAML, exactly what `crds/wasmapp.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&crd())?;
    Ok(format!(
        "# Generated by `wasmkube-operator crd` from api/src/crd.rs; do not edit.\n\
         # Regenerate: cargo run -p wasmkube-operator -- crd > crds/wasmapp.yaml\n{body}"
    ))
}
