//! Apps on their way out: one being deleted applies nothing, and one whose namespace is being
//! deleted (the API server refuses new children with 403 `NamespaceTerminating`) is not reported
//! as failed; an RBAC 403 still is.
use super::*;

#[tokio::test]
async fn an_app_being_deleted_applies_nothing() {
    let mut a = app(spec(), 2, Some(old_status(true, 1)));
    a.metadata.deletion_timestamp = Some(old_status_time());
    let (result, _) = run_reconcile(a, RUNNING, vec![]).await;
    assert_eq!(result.expect("no error"), Action::await_change());
}

#[tokio::test]
async fn a_namespace_being_deleted_is_neither_reported_nor_retried() {
    // No status patch, no Warning event (the verifier refuses any request not listed).
    let a = app(spec(), 1, None);
    let steps = vec![Step::apply(DEPLOYMENT).namespace_terminating("apps")];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    assert_eq!(result.expect("not an error"), Action::await_change());
}

#[tokio::test]
async fn an_rbac_refusal_is_still_reported() {
    let a = app(spec(), 1, None);
    let steps = vec![
        Step::apply(DEPLOYMENT).fail(403, "Forbidden"),
        apply_status(&a).body(|b| {
            assert_eq!(cond(b, "Degraded")["reason"], reasons::APPLY_FAILED);
            assert_eq!(cond(b, "Degraded")["message"], "Forbidden (403): Forbidden");
        }),
        Step::event("apps", "Warning", reasons::APPLY_FAILED),
    ];
    let (result, _) = run_reconcile(a, RUNNING, steps).await;
    assert!(result.is_err(), "retried with back-off");
}
