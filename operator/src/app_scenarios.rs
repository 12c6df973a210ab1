//! App controller scenarios against the mock API server: one test per behaviour.

mod conflicts;
mod deletion;
mod optional_children;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::ResourceRequirements,
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition},
    jiff::Timestamp,
};
use kube::{
    api::ObjectMeta,
    core::PartialObjectMetaExt,
    runtime::{controller::Action, events::Reporter, watcher::Event},
    Resource,
};
use serde_json::{json, Value};

use crate::{
    app_controller::{error_policy, reconcile, Context},
    crd::{
        conditions, reasons, Autoscaling, ServiceConfig, ServiceType, WasmApp, WasmAppSpec,
        WasmAppStatus,
    },
    events::Recorder,
    fixtures::{finish, mock_client, Step},
    metrics::Metrics,
    names::{FIELD_MANAGER, HANDOVER_FIELD_MANAGER},
    status, Error,
};

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/apps/deployments/hello";
const SERVICE: &str = "/api/v1/namespaces/apps/services/hello";
const HPA: &str = "/apis/autoscaling/v2/namespaces/apps/horizontalpodautoscalers/hello";
const IMAGE: &str = "docker.io/wasmkube/hello-http:latest";

/// A child kind the controller's stores can hold.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Deployment,
    Service,
    Hpa,
}

/// Deployment, Service: what a running app has.
const RUNNING: &[Kind] = &[Kind::Deployment, Kind::Service];

/// Metadata of the child "hello" controlled by `app` (uid `<kind>-uid`).
fn child_meta(app: &WasmApp, kind: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some("hello".into()),
        namespace: Some("apps".into()),
        uid: Some(format!("{kind}-uid")),
        owner_references: app.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// A context whose child stores hold `children` of `app`, as the controller's watches would.
fn context(app: &WasmApp, children: &[Kind]) -> (Arc<Context>, crate::fixtures::ApiServerVerifier) {
    let (client, verifier) = mock_client();
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_string(),
        instance: None,
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Context::new(client, recorder, Metrics::default());
    let mut w = ctx.take_child_writers().expect("writers");
    for kind in children {
        let meta = child_meta(app, &format!("{kind:?}").to_lowercase());
        match kind {
            Kind::Deployment => w
                .deployments
                .apply_watcher_event(&Event::Apply(meta.into_response_partial())),
            Kind::Service => w
                .services
                .apply_watcher_event(&Event::Apply(meta.into_response_partial())),
            Kind::Hpa => w
                .autoscalers
                .apply_watcher_event(&Event::Apply(meta.into_response_partial())),
        }
    }
    (Arc::new(ctx), verifier)
}

/// The metadata GET of a child (the ownership check of a name the stores do not hold as ours).
fn get_meta(path: &str) -> Step {
    Step::get(path)
}

/// A metadata answer: `meta` as a `PartialObjectMetadata`.
fn meta_reply(meta: ObjectMeta) -> Value {
    serde_json::to_value(meta.into_response_partial::<k8s_openapi::api::apps::v1::Deployment>())
        .expect("json")
}

/// A delete of `path` that only deletes the object `uid`.
fn delete_exactly(path: &str, uid: &'static str) -> Step {
    Step::delete(path).body(move |b| {
        assert_eq!(b["propagationPolicy"], "Background", "delete propagation");
        assert_eq!(b["preconditions"]["uid"], uid, "delete precondition in {b}");
    })
}

fn app(spec: WasmAppSpec, generation: i64, status: Option<WasmAppStatus>) -> WasmApp {
    let mut app = WasmApp::new("hello", spec);
    app.metadata.namespace = Some("apps".to_string());
    app.metadata.uid = Some("7d3c-uid".to_string());
    app.metadata.generation = Some(generation);
    app.status = status;
    app
}

fn spec() -> WasmAppSpec {
    WasmAppSpec {
        image: IMAGE.to_string(),
        ..WasmAppSpec::default()
    }
}

fn with_cpu(mut s: WasmAppSpec) -> WasmAppSpec {
    s.resources = Some(ResourceRequirements {
        requests: Some(BTreeMap::from([(
            "cpu".to_string(),
            Quantity("100m".into()),
        )])),
        ..ResourceRequirements::default()
    });
    s
}

/// What the API server answers to a Deployment apply: the object with a generation and status.
fn deployment_reply(
    generation: i64,
    observed: i64,
    replicas: i32,
    ready: i32,
) -> impl FnOnce(&Value) -> Value {
    move |applied: &Value| {
        let mut d = applied.clone();
        d["metadata"]["generation"] = json!(generation);
        if d["spec"].get("replicas").is_none() {
            d["spec"]["replicas"] = json!(replicas);
        }
        d["status"] = json!({
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
        });
        d
    }
}

fn cond<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn old_status(ready: bool, generation: i64) -> WasmAppStatus {
    let t = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(1_700_000_000).expect("ts"),
    );
    let c = |type_: &str, status: &str, reason: &str, message: &str| Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: Some(generation),
        last_transition_time: t.clone(),
    };
    let (r, rr, rm) = if ready {
        ("True", reasons::ALL_REPLICAS_READY, "1/1 replicas ready")
    } else {
        ("False", reasons::REPLICAS_NOT_READY, "0/1 replicas ready")
    };
    let (p, pr, pm) = if ready {
        (
            "False",
            reasons::ROLLOUT_COMPLETE,
            "1/1 replicas up to date",
        )
    } else {
        (
            "True",
            reasons::ROLLING_OUT,
            "1/1 replicas updated, 0 available",
        )
    };
    WasmAppStatus {
        observed_generation: Some(generation),
        replicas: 1,
        ready_replicas: i32::from(ready),
        conditions: vec![
            c(conditions::READY, r, rr, rm),
            c(conditions::PROGRESSING, p, pr, pm),
            c(conditions::DEGRADED, "False", reasons::AS_EXPECTED, "no problems"),
        ],
        service_name: Some("hello".to_string()),
        autoscaler_name: None,
        url: Some("http://hello.apps.svc".to_string()),
        selector: Some(
            "app.kubernetes.io/instance=hello,app.kubernetes.io/managed-by=wasmkube-operator,app.kubernetes.io/name=hello"
                .to_string(),
        ),
    }
}

/// The status apply of `app`, answered with the app carrying the applied status.
fn apply_status(app: &WasmApp) -> Step {
    let path = format!(
        "/apis/wasmkube.dev/v1alpha1/namespaces/apps/wasmapps/{}/status",
        app.metadata.name.clone().unwrap_or_default()
    );
    let current = serde_json::to_value(app).expect("json");
    Step::apply(&path).reply_with(move |body| {
        let mut v = current;
        v["status"] = body["status"].clone();
        v
    })
}

async fn run_reconcile(
    app: WasmApp,
    children: &[Kind],
    steps: Vec<Step>,
) -> (Result<Action, Error>, Vec<Value>) {
    let (ctx, verifier) = context(&app, children);
    let task = verifier.run(steps);
    let result = reconcile(Arc::new(app), ctx.clone()).await;
    drop(ctx);
    (result, finish(task).await)
}

/// The Deployment the builders make for `app`, as the API server would echo it back.
fn built_deployment(
    app: &WasmApp,
    generation: i64,
    observed: i64,
    replicas: i32,
    ready: i32,
) -> Value {
    let d = serde_json::to_value(crate::builders::app::deployment(app)).expect("json");
    deployment_reply(generation, observed, replicas, ready)(&d)
}

#[tokio::test]
async fn create_applies_deployment_and_service_then_status_and_event() {
    let a = app(spec(), 1, None);
    let steps = vec![
        // A new app: its names are checked before anything is written.
        get_meta(DEPLOYMENT).not_found(),
        get_meta(SERVICE).not_found(),
        Step::apply(DEPLOYMENT)
            .body(|b| {
                assert_eq!(b["apiVersion"], "apps/v1");
                assert_eq!(b["kind"], "Deployment");
                assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "7d3c-uid");
                assert_eq!(b["metadata"]["ownerReferences"][0]["controller"], true);
                assert_eq!(
                    b["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                    "wasmkube-operator"
                );
                assert_eq!(b["spec"]["replicas"], 1);
                let pod = &b["spec"]["template"]["spec"];
                assert_eq!(pod["runtimeClassName"], "wasmkube");
                assert_eq!(pod["containers"][0]["image"], IMAGE);
                assert_eq!(
                    pod["containers"][0]["env"][0],
                    json!({"name": "WASMKUBE_HTTP_ADDR", "value": "[::]:8080"})
                );
                assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
                assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
                assert_eq!(pod["securityContext"]["runAsUser"], 65532);
                assert_eq!(
                    pod["containers"][0]["securityContext"]["capabilities"]["drop"],
                    json!(["ALL"])
                );
                assert!(b.get("status").is_none(), "apply never sends status");
            })
            .reply(built_deployment(&a, 1, 0, 1, 0)),
        Step::apply(SERVICE).body(|b| {
            assert_eq!(b["kind"], "Service");
            assert_eq!(b["spec"]["type"], "ClusterIP");
            assert_eq!(
                b["spec"]["ports"][0],
                json!({"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"})
            );
            assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "WasmApp");
        }),
        apply_status(&a).body(|b| {
            assert_eq!(b["apiVersion"], "wasmkube.dev/v1alpha1");
            assert_eq!(b["kind"], "WasmApp");
            assert_eq!(b["status"]["observedGeneration"], 1);
            assert_eq!(b["status"]["serviceName"], "hello");
            assert_eq!(b["status"]["url"], "http://hello.apps.svc");
            assert!(b["status"]["selector"]
                .as_str()
                .is_some_and(|s| s.contains("app.kubernetes.io/name=hello")));
            assert_eq!(cond(b, "Ready")["status"], "False");
            assert_eq!(cond(b, "Ready")["reason"], reasons::WAITING_FOR_DEPLOYMENT);
            assert_eq!(cond(b, "Progressing")["status"], "True");
            assert_eq!(cond(b, "Degraded")["status"], "False");
        }),
        Step::event("apps", "Normal", reasons::CREATED).body(|b| {
            assert_eq!(b["regarding"]["kind"], "WasmApp");
            assert_eq!(b["regarding"]["name"], "hello");
        }),
    ];
    let (result, _) = run_reconcile(a, &[], steps).await;
    // Not ready yet: looked at again soon (pods and their pull errors are not watched).
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(15))
    );
}

#[tokio::test]
async fn update_reapplies_with_new_image_without_created_event() {
    let mut s = spec();
    s.image = "docker.io/wasmkube/hello-http:v2".to_string();
    s.args = vec!["--greeting".into(), "hej".into()];
    let a = app(s, 2, Some(old_status(true, 1)));
    let steps = vec![
        Step::apply(DEPLOYMENT)
            .body(|b| {
                let c = &b["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(c["image"], "docker.io/wasmkube/hello-http:v2");
                assert_eq!(c["args"], json!(["--greeting", "hej"]));
            })
            .reply(built_deployment(&a, 2, 1, 1, 1)),
        Step::apply(SERVICE),
        apply_status(&a).body(|b| {
            assert_eq!(b["status"]["observedGeneration"], 2);
            assert_eq!(cond(b, "Ready")["reason"], reasons::WAITING_FOR_DEPLOYMENT);
            assert_eq!(cond(b, "Progressing")["status"], "True");
        }),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    result.expect("reconcile");
}

#[tokio::test]
async fn scale_sets_deployment_replicas_and_reports_counts() {
    let mut s = spec();
    s.replicas = Some(5);
    let a = app(s, 3, Some(old_status(true, 2)));
    let steps = vec![
        Step::apply(DEPLOYMENT)
            .body(|b| assert_eq!(b["spec"]["replicas"], 5))
            .reply(built_deployment(&a, 3, 3, 5, 2)),
        Step::apply(SERVICE),
        list_pods(vec![]),
        apply_status(&a).body(|b| {
            assert_eq!(b["status"]["replicas"], 5);
            assert_eq!(b["status"]["readyReplicas"], 2);
            assert_eq!(cond(b, "Ready")["status"], "False");
            assert_eq!(cond(b, "Ready")["message"], "2/5 replicas ready");
            assert_eq!(cond(b, "Degraded")["status"], "False");
        }),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(15))
    );
}

/// The app's pods, listed by its selector.
fn list_pods(items: Vec<Value>) -> Step {
    Step::get("/api/v1/namespaces/apps/pods")
        .query(
            "labelSelector",
            "app.kubernetes.io/instance=hello,app.kubernetes.io/managed-by=wasmkube-operator,app.kubernetes.io/name=hello",
        )
        .reply(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}))
}

#[tokio::test]
async fn a_pod_that_cannot_pull_its_image_makes_the_app_degraded_with_the_kubelet_reason() {
    let a = app(spec(), 3, Some(old_status(true, 2)));
    let stuck = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hello-7d-abc", "namespace": "apps"},
        "status": {"containerStatuses": [{
            "name": "app", "image": IMAGE, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull",
                "message": "failed to pull and unpack image: 401 Unauthorized"}}
        }]}
    });
    let steps = vec![
        Step::apply(DEPLOYMENT).reply(built_deployment(&a, 3, 3, 1, 0)),
        Step::apply(SERVICE),
        list_pods(vec![stuck]),
        apply_status(&a).body(|b| {
            assert_eq!(cond(b, "Ready")["status"], "False");
            assert_eq!(cond(b, "Degraded")["status"], "True");
            assert_eq!(cond(b, "Degraded")["reason"], reasons::IMAGE_PULL_FAILED);
            assert_eq!(
                cond(b, "Degraded")["message"],
                "pod hello-7d-abc container app: ErrImagePull: failed to pull and unpack image: 401 Unauthorized"
            );
        }),
        Step::event("apps", "Warning", reasons::BECAME_DEGRADED).body(|b| {
            assert!(b["note"].as_str().is_some_and(|n| n.starts_with("ImagePullFailed: pod hello-7d-abc")));
        }),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(15))
    );
}

#[tokio::test]
async fn invalid_spec_becomes_degraded_without_children_or_error() {
    let mut a = app(spec(), 1, None);
    a.metadata.name = Some("hello.v1".to_string());
    let steps = vec![
        apply_status(&a).body(|b| {
            assert_eq!(cond(b, "Degraded")["status"], "True");
            assert_eq!(cond(b, "Degraded")["reason"], reasons::INVALID_SPEC);
            assert!(cond(b, "Degraded")["message"]
                .as_str()
                .is_some_and(|m| m.contains("DNS-1035")));
            assert_eq!(cond(b, "Ready")["status"], "False");
            assert_eq!(cond(b, "Ready")["reason"], reasons::INVALID_SPEC);
        }),
        Step::event("apps", "Warning", reasons::INVALID_SPEC)
            .body(|b| assert!(b["note"].as_str().is_some_and(|n| n.contains("hello.v1")))),
    ];
    let (result, bodies) = run_reconcile(a.clone(), &[], steps).await;
    assert_eq!(
        result.expect("no error, no crash loop"),
        Action::await_change()
    );

    // Reconciling again with that status reported: nothing to send.
    let status: WasmAppStatus =
        serde_json::from_value(bodies[0]["status"].clone()).expect("status");
    a.status = Some(status);
    let (result, _) = run_reconcile(a, &[], vec![]).await;
    assert_eq!(result.expect("reconcile"), Action::await_change());
}

#[tokio::test]
async fn deployment_becoming_ready_sets_ready_and_records_event() {
    let a = app(spec(), 1, Some(old_status(false, 1)));
    let steps = vec![
        Step::apply(DEPLOYMENT).reply(built_deployment(&a, 1, 1, 1, 1)),
        Step::apply(SERVICE),
        apply_status(&a).body(|b| {
            assert_eq!(b["status"]["readyReplicas"], 1);
            assert_eq!(cond(b, "Ready")["status"], "True");
            assert_eq!(cond(b, "Ready")["reason"], reasons::ALL_REPLICAS_READY);
            assert_eq!(cond(b, "Progressing")["status"], "False");
            assert_eq!(cond(b, "Progressing")["reason"], reasons::ROLLOUT_COMPLETE);
            // Degraded did not change: its transition time is kept.
            assert_eq!(
                cond(b, "Degraded")["lastTransitionTime"],
                "2023-11-14T22:13:20Z"
            );
        }),
        Step::event("apps", "Normal", reasons::BECAME_READY)
            .body(|b| assert_eq!(b["note"], "1/1 replicas ready")),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    result.expect("reconcile");
}

#[tokio::test]
async fn steady_state_sends_only_the_applies_no_ownership_gets() {
    let a = app(spec(), 1, Some(old_status(true, 1)));
    let steps = vec![
        Step::apply(DEPLOYMENT).reply(built_deployment(&a, 1, 1, 1, 1)),
        Step::apply(SERVICE),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    result.expect("reconcile");
}

#[tokio::test]
async fn api_errors_requeue_with_backoff() {
    let a = app(spec(), 1, None);
    let (ctx, verifier) = context(&a, RUNNING);
    let task = verifier.run(vec![Step::apply(DEPLOYMENT).fail(500, "InternalError")]);
    let arc = Arc::new(a);
    let err = reconcile(arc.clone(), ctx.clone())
        .await
        .expect_err("500 fails the reconcile");
    assert_eq!(err.metric_label(), "api");
    assert_eq!(
        error_policy(arc.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(5))
    );
    assert_eq!(
        error_policy(arc, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(10))
    );
    drop(ctx);
    finish(task).await;
}

#[tokio::test]
async fn a_refused_child_turns_ready_false_with_the_api_message() {
    // The app was Ready; now the API server refuses its Service (e.g. a NodePort in use).
    let a = app(spec(), 2, Some(old_status(true, 1)));
    let steps = vec![
        Step::apply(DEPLOYMENT).reply(built_deployment(&a, 2, 2, 1, 1)),
        Step::apply(SERVICE).fail(422, "Invalid"),
        apply_status(&a).body(|b| {
            assert_eq!(cond(b, "Ready")["status"], "False");
            assert_eq!(cond(b, "Ready")["reason"], reasons::APPLY_FAILED);
            assert_eq!(cond(b, "Degraded")["status"], "True");
            assert_eq!(cond(b, "Degraded")["reason"], reasons::APPLY_FAILED);
            assert_eq!(cond(b, "Degraded")["message"], "Invalid (422): Invalid");
            assert_eq!(b["status"]["observedGeneration"], 2);
        }),
        Step::event("apps", "Warning", reasons::APPLY_FAILED),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    let err = result.expect_err("the refusal still fails the reconcile (retried with back-off)");
    assert_eq!(err.metric_label(), "api");
}

#[tokio::test]
async fn a_refusal_already_in_status_is_not_reported_again() {
    let a = app(spec(), 2, Some(old_status(true, 1)));
    let reported = status::apply_failed(&a, "Invalid (422): Invalid", &old_status_time());
    let a = app(spec(), 2, Some(reported));
    let steps = vec![
        Step::apply(DEPLOYMENT).reply(built_deployment(&a, 2, 2, 1, 1)),
        Step::apply(SERVICE).fail(422, "Invalid"),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    assert!(result.is_err());
}

fn old_status_time() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(1_700_000_000).expect("ts"),
    )
}
