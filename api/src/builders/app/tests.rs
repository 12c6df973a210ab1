//! The app builders' unit tests.

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
    assert_eq!(c["env"][0]["value"], "[::]:8080");
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
    assert_eq!(c["env"][0]["value"], "[::]:3000");
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
    let addrs: Vec<_> = env.iter().filter(|e| e.name == HTTP_ADDR_ENV).collect();
    assert_eq!(addrs.len(), 1, "{env:?}");
    assert_eq!(addrs[0].value.as_deref(), Some("127.0.0.1:9000"));
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
            scale_down_stabilization_seconds: Some(30),
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
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        30
    );
    assert!(
        hpa["spec"]["behavior"].get("scaleUp").is_none(),
        "scale-up keeps the cluster's default"
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
            scale_down_stabilization_seconds: None,
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

/// The checks of the Pod Security Standards' `restricted` profile (v1.25+) that a pod template
/// can fail, as the admission plugin applies them: a violation each, empty when it passes.
fn restricted_violations(pod: &serde_json::Value) -> Vec<String> {
    let mut v = Vec::new();
    let psc = &pod["securityContext"];
    for (i, c) in pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"] != false {
            v.push(format!("container {i}: allowPrivilegeEscalation != false"));
        }
        if sc["privileged"] == true {
            v.push(format!("container {i}: privileged"));
        }
        let drop = sc["capabilities"]["drop"].as_array().cloned();
        if !drop.is_some_and(|d| d.iter().any(|x| x == "ALL")) {
            v.push(format!("container {i}: capabilities.drop lacks ALL"));
        }
        let added = sc["capabilities"]["add"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if added.iter().any(|x| x != "NET_BIND_SERVICE") {
            v.push(format!("container {i}: adds capabilities {added:?}"));
        }
        let non_root = sc.get("runAsNonRoot").unwrap_or(&psc["runAsNonRoot"]);
        if non_root != true {
            v.push(format!("container {i}: runAsNonRoot not true"));
        }
        let uid = sc.get("runAsUser").unwrap_or(&psc["runAsUser"]);
        if uid == 0 {
            v.push(format!("container {i}: runAsUser 0"));
        }
        let seccomp = sc.get("seccompProfile").unwrap_or(&psc["seccompProfile"]);
        if !matches!(
            seccomp["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        ) {
            v.push(format!("container {i}: seccompProfile {seccomp}"));
        }
    }
    if pod["hostNetwork"] == true || pod["hostPID"] == true || pod["hostIPC"] == true {
        v.push("host namespaces".to_string());
    }
    v
}

#[test]
fn pods_meet_the_restricted_pod_security_standard() {
    let json = serde_json::to_value(deployment(&app(basic()))).expect("json");
    let pod = &json["spec"]["template"]["spec"];
    assert_eq!(restricted_violations(pod), Vec::<String>::new(), "{pod}");
    assert_eq!(
        pod["securityContext"],
        serde_json::json!({
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}
        })
    );
    assert_eq!(
        pod["containers"][0]["securityContext"],
        serde_json::json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true
        })
    );
    // The checker itself catches what the builder must not produce.
    let mut bare = pod.clone();
    bare["securityContext"] = serde_json::json!({});
    bare["containers"][0]["securityContext"] = serde_json::json!({});
    assert_eq!(restricted_violations(&bare).len(), 4, "{bare}");
}

#[test]
fn image_pull_policy_defaults_like_kubernetes_and_can_be_set() {
    let policy = |spec: WasmAppSpec| {
        let json = serde_json::to_value(deployment(&app(spec))).expect("json");
        json["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"].clone()
    };
    assert_eq!(policy(basic()), "Always", ":latest");
    let pinned = WasmAppSpec {
        image: "docker.io/wasmkube/hello-http:0.1.0".to_string(),
        ..basic()
    };
    assert_eq!(policy(pinned.clone()), "IfNotPresent");
    let registry_port = WasmAppSpec {
        image: "localhost:5000/hello-http".to_string(),
        ..basic()
    };
    assert_eq!(policy(registry_port), "Always", "a port is not a tag");
    let never = WasmAppSpec {
        image_pull_policy: Some(crate::crd::ImagePullPolicy::Never),
        ..pinned
    };
    assert_eq!(policy(never), "Never");
}

#[test]
fn an_app_behind_a_service_counts_available_only_after_the_proxy_had_time() {
    let min_ready = |spec: WasmAppSpec| {
        serde_json::to_value(deployment(&app(spec))).expect("json")["spec"]
            .get("minReadySeconds")
            .cloned()
    };
    assert_eq!(
        min_ready(basic()),
        Some(serde_json::json!(SERVICE_MIN_READY_SECONDS))
    );
    let worker = WasmAppSpec {
        service: Some(ServiceConfig {
            type_: ServiceType::None,
            ..ServiceConfig::default()
        }),
        ..basic()
    };
    assert_eq!(min_ready(worker), None, "nothing routes to a worker");
}

#[test]
fn an_app_behind_a_service_keeps_serving_while_the_proxies_drop_it() {
    let pod = |spec: WasmAppSpec| {
        serde_json::to_value(deployment(&app(spec))).expect("json")["spec"]["template"]["spec"]
            .clone()
    };
    let served = pod(basic());
    assert_eq!(
        served["containers"][0]["lifecycle"],
        serde_json::json!({"preStop": {"sleep": {"seconds": SERVICE_DRAIN_SECONDS}}})
    );
    // The pause fits the default grace period with time left for the stop itself.
    assert!(served.get("terminationGracePeriodSeconds").is_none());
    assert_eq!(
        served["topologySpreadConstraints"],
        serde_json::json!([{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": served_selector()},
        }])
    );
    let worker = pod(WasmAppSpec {
        service: Some(ServiceConfig {
            type_: ServiceType::None,
            ..ServiceConfig::default()
        }),
        ..basic()
    });
    assert!(
        worker["containers"][0].get("lifecycle").is_none(),
        "nothing routes to a worker: it stops at once"
    );
}

fn served_selector() -> serde_json::Value {
    serde_json::to_value(deployment(&app(basic())).spec.selector.match_labels).expect("json")
}

#[test]
fn an_app_behind_a_service_gets_a_tcp_readiness_probe_by_default() {
    let c = |spec: WasmAppSpec| {
        serde_json::to_value(deployment(&app(spec))).expect("json")["spec"]["template"]["spec"]
            ["containers"][0]
            .clone()
    };
    // No probe in the spec: a TCP connect to the app's port, so a pod is not an endpoint (and
    // not counted in readyReplicas) before the shim's listener is up.
    let plain = c(basic());
    assert_eq!(
        plain["readinessProbe"],
        serde_json::json!({"tcpSocket": {"port": 8080}, "periodSeconds": 2})
    );
    assert!(plain.get("livenessProbe").is_none());
    assert!(plain.get("startupProbe").is_none());
    // It follows targetPort.
    let moved = c(WasmAppSpec {
        service: Some(ServiceConfig {
            target_port: 3000,
            ..ServiceConfig::default()
        }),
        ..basic()
    });
    assert_eq!(moved["readinessProbe"]["tcpSocket"]["port"], 3000);
    // An explicit readiness probe wins.
    let explicit = c(WasmAppSpec {
        probes: Some(Probes {
            readiness: Some(HttpProbe {
                path: "/ready".to_string(),
                ..HttpProbe::default()
            }),
            ..Probes::default()
        }),
        ..basic()
    });
    assert_eq!(explicit["readinessProbe"]["httpGet"]["path"], "/ready");
    assert!(explicit["readinessProbe"].get("tcpSocket").is_none());
    // Only a liveness probe: the default readiness probe still applies beside it.
    let live = c(WasmAppSpec {
        probes: Some(Probes {
            liveness: Some(HttpProbe {
                path: "/live".to_string(),
                ..HttpProbe::default()
            }),
            ..Probes::default()
        }),
        ..basic()
    });
    assert_eq!(live["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(live["readinessProbe"]["tcpSocket"]["port"], 8080);
    // No Service: nothing routes to the port, and the app may not listen at all.
    let worker = c(WasmAppSpec {
        service: Some(ServiceConfig {
            type_: ServiceType::None,
            ..ServiceConfig::default()
        }),
        ..basic()
    });
    assert!(worker.get("readinessProbe").is_none(), "{worker}");
}

#[test]
fn outbound_grants_reach_the_pod_as_the_last_env_entry_and_spec_env_cannot_forge_them() {
    use crate::crd::OutboundSpec;
    use k8s_openapi::api::core::v1::EnvVar;
    let mut spec = basic();
    spec.env = vec![EnvVar {
        name: wasmkube_contract::GRANTS_ENV.into(),
        value: Some(
            r#"{"apiVersion":"wasmkube.dev/grants/v1","outbound":{"allowedHosts":["*"]}}"#.into(),
        ),
        ..EnvVar::default()
    }];
    // Without spec.outbound: an empty document, last, and spec.env's forgery is dropped (the
    // shim grants nothing, not even the pod's volumes).
    let d = serde_json::to_value(deployment(&app(spec.clone()))).expect("json");
    let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .clone();
    let docs: Vec<_> = env
        .iter()
        .filter(|e| e["name"] == wasmkube_contract::GRANTS_ENV)
        .collect();
    assert_eq!(docs.len(), 1, "{env:?}");
    assert_eq!(
        wasmkube_contract::Grants::from_env_value(docs[0]["value"].as_str().expect("value"))
            .expect("a grants document"),
        wasmkube_contract::Grants::none()
    );
    assert!(spec
        .validate("hello")
        .expect_err("reserved")
        .iter()
        .any(|p| p.contains("reserved")));
    spec.outbound = Some(OutboundSpec {
        allowed_hosts: vec!["http://hello-http.apps.svc.cluster.local".into()],
        blocked_networks: vec!["10.0.0.0/8".into()],
    });
    let d = serde_json::to_value(deployment(&app(spec))).expect("json");
    let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .clone();
    let grants: Vec<_> = env
        .iter()
        .filter(|e| e["name"] == wasmkube_contract::GRANTS_ENV)
        .collect();
    assert_eq!(grants.len(), 1, "{env:?}");
    assert_eq!(env.last(), Some(grants[0]));
    let doc =
        wasmkube_contract::Grants::from_env_value(grants[0]["value"].as_str().expect("value"))
            .expect("a grants document");
    let outbound = doc.outbound.expect("outbound");
    assert_eq!(
        outbound.allowed_hosts,
        ["http://hello-http.apps.svc.cluster.local"]
    );
    assert_eq!(outbound.blocked_networks, ["10.0.0.0/8"]);
}

#[test]
fn bad_outbound_entries_are_reported_by_field() {
    use crate::crd::OutboundSpec;
    let mut spec = basic();
    spec.outbound = Some(OutboundSpec {
        allowed_hosts: vec!["https://ok.example".into(), "*://db".into()],
        blocked_networks: vec!["10.0.0.0/33".into()],
    });
    let problems = spec.validate("hello").expect_err("bad");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("outbound.allowedHosts[1]") && p.contains("port")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("outbound.blockedNetworks[0]")),
        "{problems:?}"
    );
}

#[test]
fn instance_reuse_reaches_the_shim_as_its_variables_and_owns_them() {
    use crate::crd::{HttpSpec, InstanceReuse};
    let env_of = |spec: WasmAppSpec| -> Vec<(String, String)> {
        let json = serde_json::to_value(deployment(&app(spec))).expect("json");
        json["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_string(),
                    e["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let reuse_vars = |env: &[(String, String)]| -> Vec<(String, String)> {
        env.iter()
            .filter(|(n, _)| http::REUSE_ENVS.contains(&n.as_str()))
            .cloned()
            .collect()
    };
    // Off by default: no variable, so every request gets a fresh instance.
    assert!(reuse_vars(&env_of(basic())).is_empty());
    // A user's own variables stay when the spec does not set reuse.
    let mut by_hand = basic();
    by_hand.env.push(k8s_openapi::api::core::v1::EnvVar {
        name: http::REUSE_MAX_REQUESTS_ENV.to_string(),
        value: Some("7".to_string()),
        ..Default::default()
    });
    assert_eq!(
        reuse_vars(&env_of(by_hand.clone())),
        vec![(http::REUSE_MAX_REQUESTS_ENV.to_string(), "7".to_string())]
    );
    // `instanceReuse: {}`: the defaults, spelled out; maxConcurrent left to the shim.
    let mut on = by_hand;
    on.http = Some(HttpSpec {
        instance_reuse: Some(InstanceReuse::default()),
    });
    assert_eq!(
        reuse_vars(&env_of(on.clone())),
        vec![
            (http::REUSE_MAX_REQUESTS_ENV.to_string(), "1000".to_string()),
            (http::REUSE_IDLE_TIMEOUT_ENV.to_string(), "60s".to_string()),
        ],
        "the spec's setting replaces the user's variable"
    );
    on.http = Some(HttpSpec {
        instance_reuse: Some(InstanceReuse {
            max_requests: Some(50),
            max_concurrent: Some(4),
            idle_timeout: Some("1500ms".to_string()),
        }),
    });
    assert_eq!(
        reuse_vars(&env_of(on)),
        vec![
            (http::REUSE_MAX_REQUESTS_ENV.to_string(), "50".to_string()),
            (
                http::REUSE_IDLE_TIMEOUT_ENV.to_string(),
                "1500ms".to_string()
            ),
            (http::REUSE_MAX_CONCURRENT_ENV.to_string(), "4".to_string()),
        ]
    );
}
