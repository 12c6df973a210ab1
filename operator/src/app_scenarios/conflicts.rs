//! A child's name taken by an object this WasmApp does not control: nothing is adopted, nothing
//! deleted, and the status and a Warning event say which object and whose it is.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;

const FOREIGN_DEPLOYMENT: &str =
    "Deployment apps/hello exists and is not owned by WasmApp hello (it has no owner)";

/// A hand-made object named "hello": no owner references.
fn hand_made() -> Value {
    meta_reply(ObjectMeta {
        name: Some("hello".into()),
        namespace: Some("apps".into()),
        uid: Some("foreign-uid".into()),
        ..ObjectMeta::default()
    })
}

#[tokio::test]
async fn a_foreign_deployment_is_not_adopted_and_the_conflict_reaches_status() {
    let a = app(spec(), 1, None);
    let steps = vec![
        get_meta(DEPLOYMENT).reply(hand_made()),
        // Every name is checked before anything is written.
        get_meta(SERVICE).not_found(),
        // No apply of anything: straight to the status.
        apply_status(&a).body(|b| {
            assert_eq!(cond(b, "Ready")["status"], "False");
            assert_eq!(cond(b, "Ready")["reason"], reasons::CHILD_CONFLICT);
            assert_eq!(cond(b, "Degraded")["status"], "True");
            assert_eq!(cond(b, "Degraded")["reason"], reasons::CHILD_CONFLICT);
            assert_eq!(cond(b, "Degraded")["message"], FOREIGN_DEPLOYMENT);
            assert!(b["status"].get("serviceName").is_none(), "{b}");
        }),
        Step::event("apps", "Warning", reasons::CHILD_CONFLICT)
            .body(|b| assert_eq!(b["note"], FOREIGN_DEPLOYMENT)),
    ];
    let (result, bodies) = run_reconcile(a.clone(), &[], steps).await;
    assert_eq!(
        result.expect("a conflict is not an operator error"),
        Action::requeue(Duration::from_secs(5)),
        "foreign objects are not watched: looked at again with back-off"
    );

    // Still there on the next look: no write at all, the report stands.
    let mut reported = a.clone();
    reported.status = Some(serde_json::from_value(bodies[2]["status"].clone()).expect("status"));
    let steps = vec![
        get_meta(DEPLOYMENT).reply(hand_made()),
        get_meta(SERVICE).not_found(),
    ];
    let (result, _) = run_reconcile(reported.clone(), &[], steps).await;
    result.expect("reconcile");

    // Someone removed it: the app is created as usual and the conflict clears.
    let steps = vec![
        get_meta(DEPLOYMENT).not_found(),
        get_meta(SERVICE).not_found(),
        Step::apply(DEPLOYMENT).reply(built_deployment(&reported, 1, 1, 1, 1)),
        Step::apply(SERVICE),
        apply_status(&reported).body(|b| {
            assert_eq!(cond(b, "Degraded")["status"], "False");
            assert_eq!(cond(b, "Ready")["status"], "True");
        }),
        Step::event("apps", "Normal", reasons::BECAME_READY),
    ];
    let (result, _) = run_reconcile(reported, &[], steps).await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(300))
    );
}

#[tokio::test]
async fn a_child_of_an_earlier_wasmapp_of_that_name_is_not_taken_over() {
    // The app was deleted and created again while the garbage collector still holds the old
    // Deployment: it carries our label (so the store has it) but the old app's UID.
    let old_app = {
        let mut o = app(spec(), 1, None);
        o.metadata.uid = Some("old-uid".into());
        o
    };
    let a = app(spec(), 1, None);
    let (ctx, verifier) = context(&old_app, &[Kind::Deployment]);
    let old_child = meta_reply(child_meta(&old_app, "deployment"));
    let message = "Deployment apps/hello exists and is not owned by WasmApp hello (it is \
                   controlled by an earlier WasmApp hello (uid old-uid), maybe still being deleted)";
    let task = verifier.run(vec![
        // The store's copy is not ours: confirmed with the API before reporting.
        get_meta(DEPLOYMENT).reply(old_child),
        get_meta(SERVICE).not_found(),
        apply_status(&a).body(move |b| assert_eq!(cond(b, "Degraded")["message"], message)),
        Step::event("apps", "Warning", reasons::CHILD_CONFLICT),
    ]);
    let result = reconcile(Arc::new(a), ctx.clone()).await;
    drop(ctx);
    finish(task).await;
    result.expect("reconcile");
}

#[tokio::test]
async fn a_foreign_hpa_is_not_deleted_when_autoscaling_is_off() {
    // The status remembers an HPA "hello", but the object of that name now belongs to someone
    // else (ours was removed and another tool made its own).
    let mut old = old_status(true, 1);
    old.autoscaler_name = Some("hello".to_string());
    let a = app(spec(), 2, Some(old));
    let other_tool = meta_reply(ObjectMeta {
        owner_references: Some(vec![OwnerReference {
            api_version: "keda.sh/v1alpha1".into(),
            kind: "ScaledObject".into(),
            name: "hello".into(),
            uid: "keda-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..child_meta(&a, "hpa")
    });
    let message = "HorizontalPodAutoscaler apps/hello exists and is not owned by WasmApp hello \
                   (it is controlled by ScaledObject hello)";
    let steps = vec![
        get_meta(HPA).reply(other_tool),
        // No DELETE, and no apply either: one conflict stops the whole reconcile.
        apply_status(&a).body(move |b| {
            assert_eq!(cond(b, "Ready")["status"], "False");
            assert_eq!(cond(b, "Degraded")["reason"], reasons::CHILD_CONFLICT);
            assert_eq!(cond(b, "Degraded")["message"], message);
            assert_eq!(b["status"]["autoscalerName"], "hello", "unchanged");
        }),
        Step::event("apps", "Warning", reasons::CHILD_CONFLICT)
            .body(move |b| assert_eq!(b["note"], message)),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    assert_eq!(
        result.expect("reconcile"),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn every_conflict_is_named_in_one_message() {
    let mut s = with_cpu(spec());
    s.autoscaling = Some(Autoscaling {
        min_replicas: 1,
        max_replicas: 3,
        target_cpu_utilization_percentage: 80,
        scale_down_stabilization_seconds: None,
    });
    let a = app(s, 1, None);
    let steps = vec![
        get_meta(DEPLOYMENT).reply(hand_made()),
        get_meta(SERVICE).not_found(),
        get_meta(HPA).reply(hand_made()),
        apply_status(&a).body(|b| {
            let m = cond(b, "Degraded")["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert_eq!(
                m,
                format!(
                    "{FOREIGN_DEPLOYMENT}; HorizontalPodAutoscaler apps/hello exists and is not \
                     owned by WasmApp hello (it has no owner)"
                )
            );
        }),
        Step::event("apps", "Warning", reasons::CHILD_CONFLICT),
    ];
    let (result, _) = run_reconcile(a, &[], steps).await;
    result.expect("reconcile");
}
