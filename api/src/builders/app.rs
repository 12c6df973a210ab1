//! WasmApp → Deployment, Service, HorizontalPodAutoscaler. Pure functions: the controller applies
//! what these return, and `wasmkube render` prints it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        autoscaling::v2::{
            CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
            HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
            ResourceMetricSource,
        },
        core::v1::{
            Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, Lifecycle,
            LifecycleHandler, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
            SecurityContext, Service, ServicePort, ServiceSpec, SleepAction, TCPSocketAction,
            TopologySpreadConstraint,
        },
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::{core::ObjectMeta, Resource, ResourceExt};
use wasmkube_contract::http;

use crate::{
    crd::{HttpProbe, InstanceReuse, ServiceType, WasmApp},
    names::{self, labels},
    BuildError,
};

/// Name of the app's container in the pod.
pub const CONTAINER_NAME: &str = "app";
/// Name of the app's port (container and Service).
pub const PORT_NAME: &str = "http";
/// Environment variable telling the shim where a wasi:http component listens.
pub const HTTP_ADDR_ENV: &str = "WASMKUBE_HTTP_ADDR";
/// How often the default readiness probe ([`default_readiness`]) looks, in seconds: short, so a
/// pod joins its Service soon after its listener opens.
pub const DEFAULT_READINESS_PERIOD_SECONDS: i32 = 2;
/// How long a pod behind a Service must stay ready before the Deployment counts it available
/// (`minReadySeconds`), and so before the WasmApp is `Ready`. A pod's readiness reaches the
/// Service's EndpointSlice and then every node's kube-proxy, which rewrites its rules at most
/// once a second (`iptables.minSyncPeriod`): in between, the Service refuses connections
/// although the pod answers. Five seconds cover that path on a loaded node; a rollout waits as
/// long per new pod, so an old pod leaves only once its successor is reachable.
pub const SERVICE_MIN_READY_SECONDS: i32 = 5;
/// How long a terminating pod behind a Service keeps serving before it is asked to stop (a
/// `preStop` sleep, run by the kubelet: nothing is executed in the wasm container). Deleting a
/// pod removes it from the Service's EndpointSlice at once, but every node's kube-proxy rewrites
/// its rules up to a second later, and the shim stops on SIGTERM: without the pause, requests
/// routed in that window are refused during rollouts, scale-downs and node drains. Five seconds
/// cover that path on a loaded node (the same as [`SERVICE_MIN_READY_SECONDS`] on the way in);
/// the pod's 30 s grace period leaves 25 s for the stop itself.
pub const SERVICE_DRAIN_SECONDS: i64 = 5;
// The pause must leave the stop time within the pod's default 30 s grace period.
const _: () = assert!(SERVICE_DRAIN_SECONDS < 30);
/// The uid and gid app pods run as: numeric, so the kubelet can prove `runAsNonRoot` for an
/// image without a `USER` (a wasm image has none); 65532 is the distroless `nonroot` user.
pub const APP_UID: i64 = 65532;

/// The listen address in `WASMKUBE_HTTP_ADDR`: every address of the pod, IPv6 and (dual-stack)
/// IPv4; the shim falls back to `0.0.0.0` on a node without IPv6.
pub fn http_addr(port: i32) -> String {
    format!("[::]:{port}")
}

/// Everything the operator applies for one WasmApp.
#[derive(Clone, Debug, PartialEq)]
pub struct AppObjects {
    pub deployment: Deployment,
    /// `None` when `service.type: None`.
    pub service: Option<Service>,
    /// `None` without `autoscaling`.
    pub autoscaler: Option<HorizontalPodAutoscaler>,
}

/// The pod selector: stable for the life of the app (a Deployment's selector is immutable).
pub fn selector_labels(app: &WasmApp) -> BTreeMap<String, String> {
    let name = app.name_any();
    BTreeMap::from([
        (labels::NAME.to_string(), name.clone()),
        (labels::INSTANCE.to_string(), name),
        (
            labels::MANAGED_BY.to_string(),
            names::MANAGED_BY.to_string(),
        ),
    ])
}

/// The selector as a string, for `status.selector` (scale subresource).
pub fn selector_string(app: &WasmApp) -> String {
    selector_labels(app)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Recommended `app.kubernetes.io/*` labels for every child.
pub fn app_labels(app: &WasmApp) -> BTreeMap<String, String> {
    let mut l = selector_labels(app);
    l.insert(labels::PART_OF.to_string(), names::PART_OF.to_string());
    l.insert(
        labels::COMPONENT.to_string(),
        names::APP_COMPONENT.to_string(),
    );
    l
}

fn child_meta(app: &WasmApp) -> ObjectMeta {
    ObjectMeta {
        name: Some(app.name_any()),
        namespace: app.namespace(),
        labels: Some(app_labels(app)),
        owner_references: app.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// Builds every child. Fails only on a spec that [`crate::crd::WasmAppSpec::validate`] rejects.
pub fn build(app: &WasmApp) -> Result<AppObjects, BuildError> {
    app.spec
        .validate(&app.name_any())
        .map_err(|problems| BuildError::InvalidSpec(problems.join("; ")))?;
    Ok(AppObjects {
        deployment: deployment(app),
        service: service(app),
        autoscaler: autoscaler(app),
    })
}

fn http_probe(p: &HttpProbe, default_port: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(p.path.clone()),
            port: IntOrString::Int(p.port.unwrap_or(default_port)),
            scheme: Some("HTTP".to_string()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: p.initial_delay_seconds,
        period_seconds: p.period_seconds,
        timeout_seconds: p.timeout_seconds,
        failure_threshold: p.failure_threshold,
        ..Probe::default()
    }
}

/// The readiness probe of an app served through a Service that sets none: a TCP connect to its
/// port. The shim opens a wasi:http app's listener only once the component is compiled and
/// instantiable, so until then the pod is not Ready, not an endpoint of the Service, and the
/// WasmApp not `Ready` (its status counts the Deployment's ready replicas). TCP rather than an
/// HTTP GET: it asks nothing of the app (any path may be an error, or have side effects).
pub fn default_readiness(port: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(DEFAULT_READINESS_PERIOD_SECONDS),
        ..Probe::default()
    }
}

/// The container's readiness probe: the spec's, else [`default_readiness`] when a Service sends
/// traffic to the port. An app with `service.type: None` gets none by default: it may not
/// listen at all (a `wasi:cli` worker), and nothing routes to it.
fn readiness_probe(spec: &crate::crd::WasmAppSpec, port: i32) -> Option<Probe> {
    match spec.probes.as_ref().and_then(|p| p.readiness.as_ref()) {
        Some(p) => Some(http_probe(p, port)),
        None if spec.service_config().type_ != ServiceType::None => Some(default_readiness(port)),
        None => None,
    }
}

fn non_empty<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// `spec.http.instanceReuse` as the shim reads it: every variable set, defaults filled in
/// (except `maxConcurrent`, whose default the shim derives from the pod's concurrency).
fn instance_reuse_env(reuse: &InstanceReuse) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![
        var(
            http::REUSE_MAX_REQUESTS_ENV,
            reuse
                .max_requests
                .unwrap_or(InstanceReuse::DEFAULT_MAX_REQUESTS)
                .to_string(),
        ),
        var(
            http::REUSE_IDLE_TIMEOUT_ENV,
            reuse
                .idle_timeout
                .clone()
                .unwrap_or_else(|| InstanceReuse::DEFAULT_IDLE_TIMEOUT.to_string()),
        ),
    ];
    if let Some(n) = reuse.max_concurrent {
        env.push(var(http::REUSE_MAX_CONCURRENT_ENV, n.to_string()));
    }
    env
}

/// The Deployment: one container, `runtimeClassName: wasmkube` unless overridden.
pub fn deployment(app: &WasmApp) -> Deployment {
    let spec = &app.spec;
    let port = spec.target_port();

    let mut env = Vec::with_capacity(spec.env.len() + 1);
    if !spec.env.iter().any(|e| e.name == HTTP_ADDR_ENV) {
        env.push(EnvVar {
            name: HTTP_ADDR_ENV.to_string(),
            value: Some(http_addr(port)),
            ..EnvVar::default()
        });
    }
    let reuse = spec.http.as_ref().and_then(|h| h.instance_reuse.as_ref());
    env.extend(
        spec.env
            .iter()
            .filter(|e| e.name != wasmkube_contract::GRANTS_ENV)
            // spec.http.instanceReuse owns these when set.
            .filter(|e| reuse.is_none() || !http::REUSE_ENVS.contains(&e.name.as_str()))
            .cloned(),
    );
    if let Some(reuse) = reuse {
        env.extend(instance_reuse_env(reuse));
    }
    // Last, so no entry of spec.env can stand in for it (validation also refuses one).
    let grants = super::grants::pod_grants(app);
    env.push(EnvVar {
        name: wasmkube_contract::GRANTS_ENV.to_string(),
        value: Some(grants.document.to_env_value()),
        ..EnvVar::default()
    });

    let probes = spec.probes.clone().unwrap_or_default();
    let serves = spec.service_config().type_ != ServiceType::None;
    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(spec.image_pull_policy().as_str().to_string()),
        args: non_empty(&spec.args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.to_string()),
            container_port: port,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        resources: spec.resources.clone(),
        liveness_probe: probes.liveness.as_ref().map(|p| http_probe(p, port)),
        readiness_probe: readiness_probe(spec, port),
        startup_probe: probes.startup.as_ref().map(|p| http_probe(p, port)),
        security_context: Some(container_security_context()),
        volume_mounts: non_empty(&grants.mounts),
        // A guest cannot write /dev/termination-log (its root view hides it): the end of its
        // log (the shim's `wasmkube: …` line) becomes the message of a failed run, which
        // `kubectl describe` and the WasmApp's status show.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        lifecycle: serves.then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: SERVICE_DRAIN_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    };

    let pod_labels = app_labels(app);
    Deployment {
        metadata: child_meta(app),
        spec: DeploymentSpec {
            // With autoscaling the HPA owns the count: leave the field to it.
            replicas: match spec.autoscaling {
                Some(_) => None,
                None => Some(spec.replicas.unwrap_or(1)),
            },
            min_ready_seconds: serves.then_some(SERVICE_MIN_READY_SECONDS),
            // A file key-value store opens in one process at a time: the old pod goes first.
            strategy: super::grants::has_single_holder_store(app).then(|| DeploymentStrategy {
                type_: Some("Recreate".to_string()),
                ..DeploymentStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(app)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    runtime_class_name: Some(
                        spec.runtime_class_name
                            .clone()
                            .unwrap_or_else(|| names::RUNTIME_CLASS.to_string()),
                    ),
                    containers: vec![container],
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    tolerations: non_empty(&spec.tolerations),
                    affinity: spec.affinity.clone(),
                    // Replicas spread over the wasm nodes where they can (a preference, never
                    // a reason to stay Pending), so one node's drain or loss leaves the others.
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "kubernetes.io/hostname".to_string(),
                        when_unsatisfiable: "ScheduleAnyway".to_string(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(app)),
                            ..LabelSelector::default()
                        }),
                        ..TopologySpreadConstraint::default()
                    }]),
                    image_pull_secrets: non_empty(&spec.image_pull_secrets),
                    // A wasm guest cannot use the API token or the service-link variables.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security_context(!spec.volumes.is_empty())),
                    volumes: non_empty(&grants.volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// The pod-level half of the Pod Security Standards' `restricted` profile: a numeric non-root
/// user and group, and the runtime's default seccomp profile. With granted volumes, they
/// belong to the app's group too (`fsGroup`), so a claim or an emptyDir is writable to it.
pub fn pod_security_context(with_volumes: bool) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(APP_UID),
        run_as_group: Some(APP_UID),
        fs_group: with_volumes.then_some(APP_UID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The container-level half of `restricted`: no privilege escalation, no capabilities, and a
/// read-only root filesystem (the shim writes nothing into the container's rootfs).
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        read_only_root_filesystem: Some(true),
        ..SecurityContext::default()
    }
}

/// The Service in front of the app, unless `service.type: None`.
pub fn service(app: &WasmApp) -> Option<Service> {
    let cfg = app.spec.service_config();
    if cfg.type_ == ServiceType::None {
        return None;
    }
    Some(Service {
        metadata: child_meta(app),
        spec: Some(ServiceSpec {
            type_: Some(cfg.type_.as_str().to_string()),
            selector: Some(selector_labels(app)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_string()),
                port: cfg.port,
                target_port: Some(IntOrString::Int(cfg.target_port)),
                node_port: cfg.node_port,
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// An autoscaling/v2 HPA on CPU, when `autoscaling` is set.
pub fn autoscaler(app: &WasmApp) -> Option<HorizontalPodAutoscaler> {
    let a = app.spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(app),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "Deployment".to_string(),
                name: app.name_any(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_string(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_string(),
                    target: MetricTarget {
                        type_: "Utilization".to_string(),
                        average_utilization: Some(a.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: a.scale_down_stabilization_seconds.map(|seconds| {
                HorizontalPodAutoscalerBehavior {
                    scale_down: Some(HPAScalingRules {
                        stabilization_window_seconds: Some(seconds),
                        ..HPAScalingRules::default()
                    }),
                    ..HorizontalPodAutoscalerBehavior::default()
                }
            }),
        },
        status: None,
    })
}

/// The in-cluster URL of the app's Service.
pub fn service_url(app: &WasmApp) -> Option<String> {
    let cfg = app.spec.service_config();
    if cfg.type_ == ServiceType::None {
        return None;
    }
    let ns = app.namespace().unwrap_or_else(|| "default".to_string());
    let port = if cfg.port == 80 {
        String::new()
    } else {
        format!(":{}", cfg.port)
    };
    Some(format!("http://{}.{ns}.svc{port}", app.name_any()))
}

#[cfg(test)]
mod tests;
