//! The order of the writes to an app's children: every one checked first (absent or ours),
//! then server-side applied, or deleted only if it is still the very object that was ours.

use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service,
};
use kube::{
    runtime::{events::EventType, reflector},
    Api, Resource,
};
use serde::de::DeserializeOwned;

use super::{
    apply,
    children::{self, Conflict, Ownership},
    delete_owned, hand_replicas_to_autoscaler, publish, Context,
};
use crate::{
    builders::app::AppObjects,
    crd::{reasons, WasmApp},
    Result,
};

/// What [`apply_children`] did.
pub(super) enum Outcome {
    /// Everything applied: the API server's Deployment, and the Service and HPA that exist.
    Applied {
        deployment: Box<Deployment>,
        service: Option<String>,
        autoscaler: Option<String>,
    },
    /// Nothing written: these names are taken by objects this app does not control.
    Conflicts(Vec<Conflict>),
}

/// A child to delete, if it is (still) ours.
struct Stale {
    name: String,
    uid: Option<String>,
}

/// Checks the child `name` (to apply, or to delete when `stale`): records a conflict, or returns
/// the child to delete.
async fn check<K>(
    store: &reflector::Store<children::Meta<K>>,
    api: &Api<K>,
    app: &WasmApp,
    name: &str,
    conflicts: &mut Vec<Conflict>,
) -> Result<Option<Stale>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let found = children::lookup(store, api, app, name).await?;
    conflicts.extend(children::conflict::<K>(&found, app, name));
    Ok(match found {
        Ownership::Ours { uid } => Some(Stale {
            name: name.to_string(),
            uid,
        }),
        Ownership::Absent | Ownership::Foreign { .. } => None,
    })
}

/// Applies the Deployment, the Service and the HPA (or deletes those no longer wanted), after
/// checking that every one of them is absent or ours: one conflict and nothing is written.
pub(super) async fn apply_children(
    ctx: &Context,
    app: &WasmApp,
    ns: &str,
    name: &str,
    objects: AppObjects,
) -> Result<Outcome> {
    let AppObjects {
        deployment,
        service,
        autoscaler,
    } = objects;
    let old = app.status.as_ref();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    let stores = &ctx.children;

    let mut conflicts = Vec::new();
    check(&stores.deployments, &deployments, app, name, &mut conflicts).await?;
    let stale_service = match (&service, old.and_then(|o| o.service_name.as_deref())) {
        (Some(_), _) => {
            check(&stores.services, &services, app, name, &mut conflicts).await?;
            None
        }
        (None, Some(stale)) => {
            check(&stores.services, &services, app, stale, &mut conflicts).await?
        }
        (None, None) => None,
    };
    let stale_autoscaler = match (&autoscaler, old.and_then(|o| o.autoscaler_name.as_deref())) {
        (Some(_), _) => {
            check(&stores.autoscalers, &hpas, app, name, &mut conflicts).await?;
            None
        }
        (None, Some(stale)) => {
            check(&stores.autoscalers, &hpas, app, stale, &mut conflicts).await?
        }
        (None, None) => None,
    };
    if !conflicts.is_empty() {
        return Ok(Outcome::Conflicts(conflicts));
    }

    // Autoscaling was just turned on for a Deployment whose replicas we set so far.
    if autoscaler.is_some() && old.is_some_and(|o| o.autoscaler_name.is_none()) {
        hand_replicas_to_autoscaler(&deployments, name).await?;
    }
    let applied = apply(&deployments, name, &deployment).await?;

    let service_name = match &service {
        Some(svc) => {
            apply(&services, name, svc).await?;
            Some(name.to_string())
        }
        None => {
            if let Some(stale) = stale_service {
                if delete_owned(&services, &stale.name, stale.uid).await? {
                    publish(
                        ctx,
                        app,
                        EventType::Normal,
                        reasons::SERVICE_REMOVED,
                        "Delete",
                        format!("deleted Service {}: service.type is None", stale.name),
                    )
                    .await;
                }
            }
            None
        }
    };

    let autoscaler_name = match &autoscaler {
        Some(hpa) => {
            apply(&hpas, name, hpa).await?;
            Some(name.to_string())
        }
        None => {
            if let Some(stale) = stale_autoscaler {
                if delete_owned(&hpas, &stale.name, stale.uid).await? {
                    publish(
                        ctx,
                        app,
                        EventType::Normal,
                        reasons::AUTOSCALER_REMOVED,
                        "Delete",
                        format!(
                            "deleted HorizontalPodAutoscaler {}: autoscaling was removed",
                            stale.name
                        ),
                    )
                    .await;
                }
            }
            None
        }
    };

    Ok(Outcome::Applied {
        deployment: Box::new(applied),
        service: service_name,
        autoscaler: autoscaler_name,
    })
}
