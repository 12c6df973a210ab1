//! The app controller: WasmApp → Deployment, Service, HPA (server-side apply), status, Events.
//!
//! Every child is applied or deleted only when it is absent or controlled by this WasmApp
//! ([`children`]); a name taken by someone else's object stops the reconcile with a
//! `ChildConflict` status instead of adopting or deleting that object.

mod apply;
pub mod children;
pub mod triggers;

use std::{sync::Arc, time::Duration};

use futures::{Future, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{ConfigMap, Pod, Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::core::PartialObjectMeta;
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
    runtime::{
        controller::{Action, Controller},
        events::{Event, EventType},
        reflector::{self, ObjectRef},
        watcher, WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::json;
use tracing::{debug, info, warn};

use self::apply::{apply_children, Outcome};
use self::children::{ChildStores, ChildWriters, WriterSlot};
use crate::{
    backoff::ErrorBackoff,
    builders::app as build,
    crd::{conditions, reasons, WasmApp, WasmAppStatus},
    events::Recorder,
    metrics::Metrics,
    names::{FIELD_MANAGER, HANDOVER_FIELD_MANAGER},
    pod_problems::{self, PodProblem},
    status::{self, Children},
    Error, Result,
};

const CONTROLLER: &str = "app";
/// Periodic re-check of an app that is fine (owned-object watches catch the rest).
const RESYNC: Duration = Duration::from_secs(300);
/// How soon an app waiting for a ConfigMap or Secret, or not ready, looks again: those and
/// pods are not watched (a cluster-wide watch of Secrets or pods is more than the operator
/// should hold).
const CONFIG_RECHECK: Duration = Duration::from_secs(15);

/// What the app reconciler needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub backoff: ErrorBackoff<ObjectRef<WasmApp>>,
    /// The labelled children, by metadata: [`run`] feeds them from its watches. Until then (or
    /// when nothing feeds them) every ownership check is a GET.
    pub children: ChildStores,
    writers: WriterSlot,
}

impl Context {
    pub fn new(client: Client, recorder: Recorder, metrics: Metrics) -> Self {
        let (children, writers) = children::stores();
        Context {
            client,
            recorder,
            metrics,
            backoff: ErrorBackoff::default(),
            children,
            writers: WriterSlot::new(writers),
        }
    }

    /// The writers of [`Context::children`], once: for the controller's watches (or a test or
    /// benchmark that plays them).
    pub fn take_child_writers(&self) -> Option<ChildWriters> {
        self.writers.take()
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

/// Deletes the child `name` if it is still the object `uid` (ours, checked before), treating
/// "already gone" as success. Returns whether something was deleted.
async fn delete_owned<K>(api: &Api<K>, name: &str, uid: Option<String>) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut params = DeleteParams::background();
    params.preconditions = Some(Preconditions {
        uid,
        resource_version: None,
    });
    match api.delete(name, &params).await {
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
    match ctx.recorder.publish(&event, &app.object_ref(&())).await {
        Ok(()) => {}
        // The app goes with its namespace: nobody will read the event.
        Err(kube::Error::Api(status)) if namespace_terminating(&status) => {
            debug!(app = %app.name_any(), "namespace being deleted: event not recorded");
        }
        Err(e) => warn!(error = %e, app = %app.name_any(), "cannot publish event"),
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

/// Whether the API server refused an object because its namespace is being deleted (403 with
/// cause `NamespaceTerminating`, from the NamespaceLifecycle admission plugin): the app goes with
/// its namespace, so there is nothing to report and nothing to retry.
fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.code == 403
        && status
            .details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

/// Reports an app whose children were not (all) applied: `new` as status (when it changed) and,
/// the first time this `message` is reported for `reason`, a Warning event.
async fn report_not_applied(
    ctx: &Context,
    app: &WasmApp,
    new: WasmAppStatus,
    reason: &str,
    action: &str,
    message: String,
) -> Result<()> {
    let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
    let old = app.status.as_ref();
    if old != Some(&new) {
        let apps: Api<WasmApp> = Api::namespaced(ctx.client.clone(), &ns);
        patch_status(&apps, &name, &new).await?;
    }
    let already_reported = old
        .and_then(|o| o.condition(conditions::DEGRADED))
        .is_some_and(|c| c.reason == reason && c.message == message);
    if !already_reported {
        warn!(app = %name, namespace = %ns, %reason, %message, "children not applied");
        publish(ctx, app, EventType::Warning, reason, action, message).await;
    }
    Ok(())
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
    if app.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes the children it owns.
        debug!(app = %name, namespace = %ns, "being deleted: nothing to apply");
        ctx.backoff.reset(&ObjectRef::from_obj(app.as_ref()));
        return Ok(Action::await_change());
    }

    let objects = match build::build(&app).map_err(Error::from) {
        Ok(objects) => objects,
        Err(Error::InvalidSpec(message)) => {
            // Not an error of the operator: report it and wait for the user to change the spec.
            ctx.metrics
                .error(CONTROLLER, &Error::InvalidSpec(String::new()));
            let new = status::invalid_spec(&app, &message, &now());
            report_not_applied(&ctx, &app, new, reasons::INVALID_SPEC, "Validate", message).await?;
            ctx.backoff.reset(&ObjectRef::from_obj(app.as_ref()));
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let has_service = objects.service.is_some();
    let (applied, service_name, autoscaler_name) = match apply_children(
        &ctx, &app, &ns, &name, objects,
    )
    .await
    {
        Ok(Outcome::Applied {
            deployment,
            service,
            autoscaler,
        }) => (deployment, service, autoscaler),
        Ok(Outcome::Conflicts(conflicts)) => {
            let message = conflicts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            let new = status::child_conflict(&app, &message, &now());
            report_not_applied(&ctx, &app, new, reasons::CHILD_CONFLICT, "Apply", message).await?;
            // Foreign objects are not watched: look again with back-off until it is resolved.
            let delay = ctx.backoff.next_delay(ObjectRef::from_obj(app.as_ref()));
            return Ok(Action::requeue(delay));
        }
        Err(Error::Kube(kube::Error::Api(status))) if namespace_terminating(&status) => {
            debug!(app = %name, namespace = %ns, "namespace being deleted: children not applied");
            ctx.backoff.reset(&ObjectRef::from_obj(app.as_ref()));
            return Ok(Action::await_change());
        }
        Err(Error::Kube(kube::Error::Api(status))) if refused(status.code) => {
            let message = format!("{} ({}): {}", status.reason, status.code, status.message);
            let new = status::apply_failed(&app, &message, &now());
            report_not_applied(&ctx, &app, new, reasons::APPLY_FAILED, "Apply", message).await?;
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
    let mut new = status::from_deployment(&app, &applied, children, &now());
    let missing = missing_config(&ctx, &app, &ns).await?;
    // Pod states are not watched: while the app is not ready, look at them on each (sooner)
    // recheck, so a pod that cannot pull its image shows in the status with the kubelet's reason.
    let recheck = !missing.is_empty() || !new.is_true(conditions::READY);
    if !missing.is_empty() {
        new = status::config_missing(&app, new, &missing.join("; "), &now());
    } else if new
        .condition(conditions::READY)
        .is_some_and(|c| c.reason == reasons::REPLICAS_NOT_READY)
    {
        // The Deployment controller made the pods (before that there are none to look at).
        if let Some(problem) = stuck_pods(&ctx, &app, &ns).await? {
            new = status::degraded(&app, new, problem.reason, &problem.message, &now());
        }
    }
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
    Ok(Action::requeue(if recheck {
        CONFIG_RECHECK
    } else {
        RESYNC
    }))
}

/// The ConfigMaps and Secrets of `spec.config` and `spec.keyValue` that do not exist, each as a message naming it
/// and its field. Only metadata is read: the operator never sees a Secret's values.
async fn missing_config(ctx: &Context, app: &WasmApp, ns: &str) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for (i, kv) in app.spec.key_value.iter().enumerate() {
        if let Some(r) = &kv.redis {
            if secrets.get_metadata_opt(&r.secret_name).await?.is_none() {
                missing.push(format!(
                    "Secret {:?} (spec.keyValue[{i}].redis.secretName) not found; the pods wait for it",
                    r.secret_name
                ));
            }
        }
    }
    let Some(config) = &app.spec.config else {
        return Ok(missing);
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    for (i, r) in config.from_config_maps.iter().enumerate() {
        if config_maps.get_metadata_opt(&r.name).await?.is_none() {
            missing.push(format!(
                "ConfigMap {:?} (spec.config.fromConfigMaps[{i}]) not found; the pods wait for it",
                r.name
            ));
        }
    }
    for (i, r) in config.from_secrets.iter().enumerate() {
        if secrets.get_metadata_opt(&r.name).await?.is_none() {
            missing.push(format!(
                "Secret {:?} (spec.config.fromSecrets[{i}]) not found; the pods wait for it",
                r.name
            ));
        }
    }
    Ok(missing)
}

/// Why the app's pods do not start, if one is stuck (see [`pod_problems`]).
async fn stuck_pods(ctx: &Context, app: &WasmApp, ns: &str) -> Result<Option<PodProblem>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&build::selector_string(app)))
        .await?;
    Ok(pod_problems::stuck(&list.items))
}

/// Counts the error and retries with per-object exponential back-off.
pub fn error_policy(app: Arc<WasmApp>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(CONTROLLER, error);
    let delay = ctx.backoff.next_delay(ObjectRef::from_obj(app.as_ref()));
    warn!(app = %app.name_any(), namespace = ?app.namespace(), %error, ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs the app controller until `shutdown` resolves. What triggers a reconcile is in
/// [`triggers`]; the children's watches also feed [`Context::children`].
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::names::labels::MANAGED_BY,
        crate::names::MANAGED_BY
    ));
    let (reader, writer) = reflector::store();
    // Each watch reports to `/readyz` (crate::watch_health); a deleted app's backoff is dropped.
    let health = ctx.metrics.watches.clone();
    use crate::watch_health::observe;
    let apps = triggers::apps(
        observe(
            watcher(
                Api::<WasmApp>::all(client.clone()),
                watcher::Config::default().any_semantic(),
            ),
            health.clone(),
            "wasmapps",
        )
        .backoff(crate::watch_health::WatchBackoff::default())
        .inspect(ctx.backoff.forget_deleted(ObjectRef::from_obj)),
        writer,
    );
    let writers = ctx.take_child_writers().unwrap_or_else(|| {
        warn!("the child stores are fed elsewhere; ownership checks fall back to GETs");
        children::stores().1
    });
    let deployments = triggers::children(
        observe(
            watcher(
                Api::<PartialObjectMeta<Deployment>>::all(client.clone()),
                owned.clone(),
            ),
            health.clone(),
            "deployments",
        )
        .backoff(crate::watch_health::WatchBackoff::default()),
        writers.deployments,
    );
    let services = triggers::children(
        observe(
            watcher(
                Api::<PartialObjectMeta<Service>>::all(client.clone()),
                owned.clone(),
            ),
            health.clone(),
            "services",
        )
        .backoff(crate::watch_health::WatchBackoff::default()),
        writers.services,
    );
    let hpas = triggers::autoscalers(
        observe(
            watcher(
                Api::<PartialObjectMeta<HorizontalPodAutoscaler>>::all(client),
                owned,
            ),
            health,
            "horizontalpodautoscalers",
        )
        .backoff(crate::watch_health::WatchBackoff::default()),
        writers.autoscalers,
    );
    use crate::watch_health::without_errors;
    Controller::for_stream(without_errors(apps), reader)
        .owns_stream(without_errors(deployments))
        .owns_stream(without_errors(services))
        .owns_stream(without_errors(hpas))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "app controller event");
            }
        })
        .await;
}
