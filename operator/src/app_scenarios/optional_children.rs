//! The children an app may or may not have: the HPA (autoscaling on and off) and the Service
//! (`service.type: None`). Deleting one is as guarded as applying it.

use super::*;

#[tokio::test]
async fn autoscaling_on_applies_hpa_and_leaves_replicas_to_it() {
    let mut s = with_cpu(spec());
    s.autoscaling = Some(Autoscaling {
        min_replicas: 2,
        max_replicas: 8,
        target_cpu_utilization_percentage: 60,
        scale_down_stabilization_seconds: None,
    });
    let a = app(s, 2, Some(old_status(true, 1)));
    let steps = vec![
        // The new HPA's name is free.
        get_meta(HPA).not_found(),
        // Turning autoscaling on: the running count (3) is first applied by the hand-over
        // manager, so leaving the field out of our apply does not reset it to 1.
        Step::get(DEPLOYMENT).reply(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "hello", "namespace": "apps"},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
        })),
        Step::apply_as(HANDOVER_FIELD_MANAGER, DEPLOYMENT).body(|b| {
            assert_eq!(
                b,
                &json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "hello"},
                    "spec": {"replicas": 3},
                })
            );
        }),
        Step::apply(DEPLOYMENT)
            .body(|b| {
                assert!(
                    b["spec"].get("replicas").is_none(),
                    "the HPA owns spec.replicas: {b}"
                );
                assert_eq!(
                    b["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
                    "100m"
                );
            })
            .reply(built_deployment(&a, 2, 2, 2, 2)),
        Step::apply(SERVICE),
        Step::apply(HPA).body(|b| {
            assert_eq!(b["apiVersion"], "autoscaling/v2");
            assert_eq!(
                b["spec"]["scaleTargetRef"],
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "hello"})
            );
            assert_eq!(b["spec"]["minReplicas"], 2);
            assert_eq!(b["spec"]["maxReplicas"], 8);
            assert_eq!(
                b["spec"]["metrics"][0]["resource"]["target"],
                json!({"type": "Utilization", "averageUtilization": 60})
            );
            assert_eq!(b["metadata"]["ownerReferences"][0]["name"], "hello");
        }),
        apply_status(&a).body(|b| {
            assert_eq!(b["status"]["autoscalerName"], "hello");
            assert_eq!(b["status"]["replicas"], 2);
            assert_eq!(cond(b, "Ready")["status"], "True");
        }),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    result.expect("reconcile");
}

#[tokio::test]
async fn autoscaling_off_deletes_the_stale_hpa() {
    let mut old = old_status(true, 1);
    old.autoscaler_name = Some("hello".to_string());
    let a = app(spec(), 2, Some(old));
    let steps = vec![
        Step::apply(DEPLOYMENT)
            .body(|b| assert_eq!(b["spec"]["replicas"], 1, "replicas back under our control"))
            .reply(built_deployment(&a, 2, 2, 1, 1)),
        Step::apply(SERVICE),
        // Ours (the store says so): deleted, and only if it is still that very object.
        delete_exactly(HPA, "hpa-uid")
            .reply(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
        Step::event("apps", "Normal", reasons::AUTOSCALER_REMOVED),
        apply_status(&a).body(|b| {
            assert!(b["status"].get("autoscalerName").is_none(), "{b}");
            assert_eq!(b["status"]["observedGeneration"], 2);
        }),
    ];
    let (result, _) = run_reconcile(a, &[Kind::Deployment, Kind::Service, Kind::Hpa], steps).await;
    result.expect("reconcile");
}

#[tokio::test]
async fn service_type_none_deletes_the_service_and_tolerates_404() {
    let mut s = spec();
    s.service = Some(ServiceConfig {
        type_: ServiceType::None,
        ..ServiceConfig::default()
    });
    let a = app(s, 2, Some(old_status(true, 1)));
    let steps = vec![
        Step::apply(DEPLOYMENT).reply(built_deployment(&a, 2, 2, 1, 1)),
        // Gone between the watch event and the delete: fine.
        delete_exactly(SERVICE, "service-uid").not_found(),
        apply_status(&a).body(|b| {
            assert!(b["status"].get("serviceName").is_none());
            assert!(b["status"].get("url").is_none());
        }),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    result.expect("reconcile");
}

#[tokio::test]
async fn service_type_none_without_the_service_deletes_nothing() {
    let mut s = spec();
    s.service = Some(ServiceConfig {
        type_: ServiceType::None,
        ..ServiceConfig::default()
    });
    let a = app(s, 2, Some(old_status(true, 1)));
    let steps = vec![
        // The stores do not know the old Service: one look, it is gone, no delete.
        get_meta(SERVICE).not_found(),
        Step::apply(DEPLOYMENT).reply(built_deployment(&a, 2, 2, 1, 1)),
        apply_status(&a).body(|b| assert!(b["status"].get("serviceName").is_none())),
    ];
    let (result, _) = run_reconcile(a, &[Kind::Deployment], steps).await;
    result.expect("reconcile");
}
