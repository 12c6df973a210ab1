//! WasmApp → Deployment, Service, HorizontalPodAutoscaler. Pure functions: the controller applies
//! what these return, and `wasmkube render` prints it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
            MetricSpec, MetricTarget, ResourceMetricSource,
        },
        core::v1::{
            Container, ContainerPort, EnvVar, HTTPGetAction, PodSpec, PodTemplateSpec, Probe,
            Service, ServicePort, ServiceSpec,
        },
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::{api::ObjectMeta, Resource, ResourceExt};

use crate::{
    crd::{HttpProbe, ServiceType, WasmApp},
    names::{self, labels},
    Error,
};

/// Name of the app's container in the pod.
pub const CONTAINER_NAME: &str = "app";
/// Name of the app's port (container and Service).
pub const PORT_NAME: &str = "http";
/// Environment variable telling the shim where a wasi:http component listens.
pub const HTTP_ADDR_ENV: &str = "WASMKUBE_HTTP_ADDR";

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
pub fn build(app: &WasmApp) -> Result<AppObjects, Error> {
    app.spec
        .validate(&app.name_any())
        .map_err(|problems| Error::InvalidSpec(problems.join("; ")))?;
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

fn non_empty<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// The Deployment: one container, `runtimeClassName: wasmkube` unless overridden.
pub fn deployment(app: &WasmApp) -> Deployment {
    let spec = &app.spec;
    let port = spec.target_port();

    let mut env = Vec::with_capacity(spec.env.len() + 1);
    if !spec.env.iter().any(|e| e.name == HTTP_ADDR_ENV) {
        env.push(EnvVar {
            name: HTTP_ADDR_ENV.to_string(),
            value: Some(format!("0.0.0.0:{port}")),
            ..EnvVar::default()
        });
    }
    env.extend(spec.env.iter().cloned());

    let probes = spec.probes.clone().unwrap_or_default();
    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(spec.image.clone()),
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
        readiness_probe: probes.readiness.as_ref().map(|p| http_probe(p, port)),
        startup_probe: probes.startup.as_ref().map(|p| http_probe(p, port)),
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
                    image_pull_secrets: non_empty(&spec.image_pull_secrets),
                    // A wasm guest cannot use the API token or the service-link variables.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
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
            ..HorizontalPodAutoscalerSpec::default()
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
mod tests {
    use k8s_openapi::{
        api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration},
        apimachinery::pkg::api::resource::Quantity,
    };

    use super::*;
    use crate::crd::{Autoscaling, Probes, ServiceConfig, WasmAppSpec};

    pub fn app(spec: WasmAppSpec) -> WasmApp {
        let mut app = WasmApp::new("hello", spec);
        app.metadata.namespace = Some("apps".to_string());
        app.metadata.uid = Some("uid-1".to_string());
        app
    }

    fn basic() -> WasmAppSpec {
        WasmAppSpec {
            image: "docker.io/wasmkube/hello-http:latest".to_string(),
            ..WasmAppSpec::default()
        }
    }

    #[test]
    fn deployment_defaults() {
        let d = deployment(&app(basic()));
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(json["metadata"]["name"], "hello");
        assert_eq!(json["metadata"]["namespace"], "apps");
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "WasmApp");
        assert_eq!(json["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(
            json["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "wasmkube"
        );
        assert_eq!(
            json["metadata"]["labels"]["app.kubernetes.io/component"],
            "wasm-app"
        );
        assert_eq!(json["spec"]["replicas"], 1);
        let pod = &json["spec"]["template"]["spec"];
        assert_eq!(pod["runtimeClassName"], "wasmkube");
        assert_eq!(pod["automountServiceAccountToken"], false);
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "docker.io/wasmkube/hello-http:latest");
        assert_eq!(c["env"][0]["name"], "WASMKUBE_HTTP_ADDR");
        assert_eq!(c["env"][0]["value"], "0.0.0.0:8080");
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(
            json["spec"]["selector"]["matchLabels"],
            serde_json::json!({
                "app.kubernetes.io/instance": "hello",
                "app.kubernetes.io/managed-by": "wasmkube-operator",
                "app.kubernetes.io/name": "hello"
            })
        );
        assert_eq!(
            selector_string(&app(basic())),
            "app.kubernetes.io/instance=hello,app.kubernetes.io/managed-by=wasmkube-operator,app.kubernetes.io/name=hello"
        );
    }

    #[test]
    fn deployment_carries_every_pod_setting() {
        let spec = WasmAppSpec {
            replicas: Some(3),
            args: vec!["--verbose".to_string()],
            env: vec![EnvVar {
                name: "GREETING".to_string(),
                value: Some("hi".to_string()),
                ..EnvVar::default()
            }],
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([(
                    "memory".to_string(),
                    Quantity("64Mi".into()),
                )])),
                ..ResourceRequirements::default()
            }),
            service: Some(ServiceConfig {
                target_port: 3000,
                ..ServiceConfig::default()
            }),
            probes: Some(Probes {
                readiness: Some(HttpProbe {
                    path: "/healthz".to_string(),
                    period_seconds: Some(5),
                    ..HttpProbe::default()
                }),
                ..Probes::default()
            }),
            node_selector: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            tolerations: vec![Toleration {
                key: Some("wasm".to_string()),
                operator: Some("Exists".to_string()),
                ..Toleration::default()
            }],
            image_pull_secrets: vec![LocalObjectReference {
                name: "regcred".to_string(),
            }],
            runtime_class_name: Some("wasmkube-debug".to_string()),
            ..basic()
        };
        let json = serde_json::to_value(deployment(&app(spec))).expect("json");
        assert_eq!(json["spec"]["replicas"], 3);
        let pod = &json["spec"]["template"]["spec"];
        assert_eq!(pod["runtimeClassName"], "wasmkube-debug");
        assert_eq!(pod["nodeSelector"]["zone"], "a");
        assert_eq!(pod["tolerations"][0]["key"], "wasm");
        assert_eq!(pod["imagePullSecrets"][0]["name"], "regcred");
        let c = &pod["containers"][0];
        assert_eq!(c["args"][0], "--verbose");
        assert_eq!(c["env"][0]["value"], "0.0.0.0:3000");
        assert_eq!(c["env"][1]["name"], "GREETING");
        assert_eq!(c["resources"]["limits"]["memory"], "64Mi");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], 3000);
        assert_eq!(c["readinessProbe"]["periodSeconds"], 5);
        assert!(c.get("livenessProbe").is_none());
    }

    #[test]
    fn user_http_addr_wins() {
        let spec = WasmAppSpec {
            env: vec![EnvVar {
                name: HTTP_ADDR_ENV.to_string(),
                value: Some("127.0.0.1:9000".to_string()),
                ..EnvVar::default()
            }],
            ..basic()
        };
        let d = deployment(&app(spec));
        let env = d
            .spec
            .template
            .spec
            .map(|p| p.containers[0].env.clone().unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].value.as_deref(), Some("127.0.0.1:9000"));
    }

    #[test]
    fn service_types() {
        let svc = serde_json::to_value(service(&app(basic()))).expect("json");
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"]["ports"][0]["port"], 80);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(svc["spec"]["selector"]["app.kubernetes.io/name"], "hello");
        assert_eq!(
            service_url(&app(basic())).as_deref(),
            Some("http://hello.apps.svc")
        );

        let node_port = WasmAppSpec {
            service: Some(ServiceConfig {
                type_: ServiceType::NodePort,
                port: 8080,
                target_port: 8080,
                node_port: Some(30080),
            }),
            ..basic()
        };
        let svc = serde_json::to_value(service(&app(node_port.clone()))).expect("json");
        assert_eq!(svc["spec"]["type"], "NodePort");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(
            service_url(&app(node_port)).as_deref(),
            Some("http://hello.apps.svc:8080")
        );

        let none = WasmAppSpec {
            service: Some(ServiceConfig {
                type_: ServiceType::None,
                ..ServiceConfig::default()
            }),
            ..basic()
        };
        assert!(service(&app(none.clone())).is_none());
        assert!(service_url(&app(none)).is_none());
    }

    #[test]
    fn autoscaling_builds_hpa_and_releases_replicas() {
        let spec = WasmAppSpec {
            replicas: Some(2),
            autoscaling: Some(Autoscaling {
                min_replicas: 2,
                max_replicas: 10,
                target_cpu_utilization_percentage: 70,
            }),
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "cpu".to_string(),
                    Quantity("100m".into()),
                )])),
                ..ResourceRequirements::default()
            }),
            ..basic()
        };
        let objs = build(&app(spec)).expect("valid");
        let d = serde_json::to_value(&objs.deployment).expect("json");
        assert!(d["spec"].get("replicas").is_none(), "HPA owns replicas");
        let hpa = serde_json::to_value(objs.autoscaler).expect("json");
        assert_eq!(hpa["apiVersion"], "autoscaling/v2");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
        assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "hello");
        assert_eq!(hpa["spec"]["minReplicas"], 2);
        assert_eq!(hpa["spec"]["maxReplicas"], 10);
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            70
        );
        assert!(build(&app(basic())).expect("valid").autoscaler.is_none());
    }

    #[test]
    fn render_without_uid_has_no_owner() {
        let mut a = app(basic());
        a.metadata.uid = None;
        assert!(deployment(&a).metadata.owner_references.is_none());
    }

    #[test]
    fn invalid_specs_are_refused_with_a_reason() {
        let mut a = app(basic());
        a.metadata.name = Some("1st.app".to_string());
        let err = build(&a).expect_err("dotted name cannot be a Service");
        assert!(err.to_string().contains("DNS-1035"), "{err}");

        let no_cpu = WasmAppSpec {
            autoscaling: Some(Autoscaling {
                min_replicas: 1,
                max_replicas: 3,
                target_cpu_utilization_percentage: 80,
            }),
            ..basic()
        };
        let err = build(&app(no_cpu)).expect_err("no cpu request");
        assert!(err.to_string().contains("resources.requests.cpu"), "{err}");

        let bad_key = WasmAppSpec {
            node_selector: BTreeMap::from([("bad key!".to_string(), "x".to_string())]),
            ..basic()
        };
        assert!(build(&app(bad_key)).is_err());

        let upper = WasmAppSpec {
            image: "docker.io/WasmKube/hello:latest".to_string(),
            ..basic()
        };
        assert!(build(&app(upper)).is_err());
        let upper_tag = WasmAppSpec {
            image: "docker.io/wasmkube/hello:Latest".to_string(),
            ..basic()
        };
        assert!(build(&app(upper_tag)).is_ok(), "tags may be upper-case");
    }
}
