//! The app controller: WasmApp → Deployment, Service, HPA (server-side apply), status, Events.

use std::{sync::Arc, time::Duration};

use futures::{Future, StreamExt};
use k8s_openapi::{
    api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams},
    runtime::{
        controller::{Action, Controller},
        events::{Event, EventType, Recorder},
        predicates,
        reflector::{self, ObjectRef},
        watcher, PredicateConfig, WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::{
    backoff::ErrorBackoff,
    builders::app::{self as build, AppObjects},
    crd::{conditions, reasons, WasmApp, WasmAppStatus},
    metrics::Metrics,
    names::{FIELD_MANAGER, HANDOVER_FIELD_MANAGER},
    status::{self, Children},
    Error, Result,
};

const CONTROLLER: &str = "app";
/// Periodic re-check of an app that is fine (owned-object watches catch the rest).
const RESYNC: Duration = Duration::from_secs(300);

/// What the app reconciler needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub backoff: ErrorBackoff<ObjectRef<WasmApp>>,
}

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: Metrics) -> Self {
        Context {
            client,
            recorder,
            metrics,
            backoff: ErrorBackoff::default(),
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    Ok(api.patch(name, &apply_params(), &Patch::Apply(obj)).await?)
}

/// Hands `spec.replicas` of a running Deployment over to its new HPA without a dip.
///
/// Applying the Deployment without `spec.replicas` would drop the field we owned, and the
/// Deployment would fall back to 1 replica until the HPA acts. So, as the Kubernetes docs
/// describe for a hand-over, a second field manager first applies the current count: the field
/// stays owned (by it) when our apply leaves it out, and the HPA changes it from there.
async fn hand_replicas_to_autoscaler(api: &Api<Deployment>, name: &str) -> Result<()> {
    let current = match api.get_opt(name).await? {
        Some(d) => d.spec.replicas,
        None => return Ok(()),
    };
    let Some(replicas) = current else {
        return Ok(());
    };
    let patch = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": { "replicas": replicas },
    });
    api.patch(
        name,
        &PatchParams::apply(HANDOVER_FIELD_MANAGER),
        &Patch::Apply(patch),
    )
    .await?;
    info!(deployment = %name, replicas, "handed spec.replicas over to the autoscaler");
    Ok(())
}

/// Deletes `name`, treating "already gone" as success. Returns whether something was deleted.
async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn publish(
    ctx: &Context,
    app: &WasmApp,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(crate::events::note(note)),
        action: action.to_string(),
        secondary: None,
    };
    // Events are best effort: a failure to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, &app.object_ref(&())).await {
        warn!(error = %e, app = %app.name_any(), "cannot publish event");
    }
}

async fn patch_status(api: &Api<WasmApp>, name: &str, status: &WasmAppStatus) -> Result<()> {
    let patch = json!({
        "apiVersion": WasmApp::api_version(&()),
        "kind": WasmApp::kind(&()),
        "status": status,
    });
    api.patch_status(name, &apply_params(), &Patch::Apply(patch))
        .await?;
    Ok(())
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Whether an API error means the API server refused our object (admission, validation, an
/// immutable field, a port in use), as opposed to a passing failure (throttling, timeouts, 5xx).
fn refused(code: u16) -> bool {
    (400..500).contains(&code) && code != 408 && code != 429
}

/// Applies the Deployment, the Service and the HPA (or deletes those no longer wanted); returns
/// the applied Deployment and the names of the Service and HPA that exist.
async fn apply_children(
    ctx: &Context,
    app: &WasmApp,
    ns: &str,
    name: &str,
    objects: AppObjects,
) -> Result<(Deployment, Option<String>, Option<String>)> {
    let AppObjects {
        deployment,
        service,
        autoscaler,
    } = objects;
    let old = app.status.as_ref();

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    // Autoscaling was just turned on for a Deployment whose replicas we set so far.
    if autoscaler.is_some() && old.is_some_and(|o| o.autoscaler_name.is_none()) {
        hand_replicas_to_autoscaler(&deployments, name).await?;
    }
    let applied = apply(&deployments, name, &deployment).await?;

    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let service_name = match &service {
        Some(svc) => {
            apply(&services, name, svc).await?;
            Some(name.to_string())
        }
        None => {
            if let Some(stale) = old.and_then(|o| o.service_name.as_deref()) {
                if delete_if_present(&services, stale).await? {
                    publish(
                        ctx,
                        app,
                        EventType::Normal,
                        reasons::SERVICE_REMOVED,
                        "Delete",
                        format!("deleted Service {stale}: service.type is None"),
                    )
                    .await;
                }
            }
            None
        }
    };

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    let autoscaler_name = match &autoscaler {
        Some(hpa) => {
            apply(&hpas, name, hpa).await?;
            Some(name.to_string())
        }
        None => {
            if let Some(stale) = old.and_then(|o| o.autoscaler_name.as_deref()) {
                if delete_if_present(&hpas, stale).await? {
                    publish(
                        ctx,
                        app,
                        EventType::Normal,
                        reasons::AUTOSCALER_REMOVED,
                        "Delete",
                        format!("deleted HorizontalPodAutoscaler {stale}: autoscaling was removed"),
                    )
                    .await;
                }
            }
            None
        }
    };

    Ok((applied, service_name, autoscaler_name))
}

/// One reconciliation of one WasmApp.
pub async fn reconcile(app: Arc<WasmApp>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = app
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = app
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let apps: Api<WasmApp> = Api::namespaced(ctx.client.clone(), &ns);
    let old = app.status.as_ref();

    let objects = match build::build(&app) {
        Ok(objects) => objects,
        Err(Error::InvalidSpec(message)) => {
            // Not an error of the operator: report it and wait for the user to change the spec.
            ctx.metrics
                .error(CONTROLLER, &Error::InvalidSpec(String::new()));
            let new = status::invalid_spec(&app, &message, &now());
            if old != Some(&new) {
                patch_status(&apps, &name, &new).await?;
            }
            let already_reported = old
                .and_then(|o| o.condition(conditions::DEGRADED))
                .is_some_and(|c| c.reason == reasons::INVALID_SPEC && c.message == message);
            if !already_reported {
                warn!(app = %name, namespace = %ns, %message, "invalid WasmApp spec");
                publish(
                    &ctx,
                    &app,
                    EventType::Warning,
                    reasons::INVALID_SPEC,
                    "Validate",
                    message,
                )
                .await;
            }
            ctx.backoff.reset(&ObjectRef::from_obj(app.as_ref()));
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let has_service = objects.service.is_some();
    let (applied, service_name, autoscaler_name) =
        match apply_children(&ctx, &app, &ns, &name, objects).await {
            Ok(done) => done,
            Err(Error::Kube(kube::Error::Api(status))) if refused(status.code) => {
                let message = format!("{} ({}): {}", status.reason, status.code, status.message);
                let new = status::apply_failed(&app, &message, &now());
                if old != Some(&new) {
                    patch_status(&apps, &name, &new).await?;
                }
                let already_reported = old
                    .and_then(|o| o.condition(conditions::DEGRADED))
                    .is_some_and(|c| c.reason == reasons::APPLY_FAILED && c.message == message);
                if !already_reported {
                    warn!(app = %name, namespace = %ns, %message, "the API server refused a child");
                    publish(
                        &ctx,
                        &app,
                        EventType::Warning,
                        reasons::APPLY_FAILED,
                        "Apply",
                        message,
                    )
                    .await;
                }
                return Err(Error::Kube(kube::Error::Api(status)));
            }
            Err(e) => return Err(e),
        };

    let children = Children {
        service_name,
        autoscaler_name,
        url: build::service_url(&app),
        selector: Some(build::selector_string(&app)),
    };
    let new = status::from_deployment(&app, &applied, children, &now());
    if old != Some(&new) {
        patch_status(&apps, &name, &new).await?;
    }

    if old.is_none() {
        info!(app = %name, namespace = %ns, "created children");
        publish(
            &ctx,
            &app,
            EventType::Normal,
            reasons::CREATED,
            "Apply",
            format!(
                "created Deployment {name}{}",
                if has_service { " and Service" } else { "" }
            ),
        )
        .await;
    }
    if status::became_true(old, &new, conditions::READY) {
        let note = new
            .condition(conditions::READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        publish(
            &ctx,
            &app,
            EventType::Normal,
            reasons::BECAME_READY,
            "Reconcile",
            note,
        )
        .await;
    }
    if status::became_true(old, &new, conditions::DEGRADED) {
        let note = new
            .condition(conditions::DEGRADED)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default();
        publish(
            &ctx,
            &app,
            EventType::Warning,
            reasons::BECAME_DEGRADED,
            "Reconcile",
            note,
        )
        .await;
    }

    ctx.backoff.reset(&ObjectRef::from_obj(app.as_ref()));
    Ok(Action::requeue(RESYNC))
}

/// Counts the error and retries with per-object exponential back-off.
pub fn error_policy(app: Arc<WasmApp>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(CONTROLLER, error);
    let delay = ctx.backoff.next_delay(ObjectRef::from_obj(app.as_ref()));
    warn!(app = %app.name_any(), namespace = ?app.namespace(), %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the app controller until `shutdown` resolves.
///
/// Triggers: a WasmApp's spec (generation) changes, not its status (our own status writes would
/// otherwise re-apply every child once more); any change of an owned Deployment (its status is
/// the app's readiness) or Service; an owned HPA's spec, not the metric churn in its status.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::names::labels::MANAGED_BY,
        crate::names::MANAGED_BY
    ));
    let (reader, writer) = reflector::store();
    let apps = watcher(
        Api::<WasmApp>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());
    let hpas = watcher(
        Api::<HorizontalPodAutoscaler>::all(client.clone()),
        owned.clone(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());
    Controller::for_stream(apps, reader)
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client), owned)
        .owns_stream(hpas)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "app controller event");
            }
        })
        .await;
}
