//! The app's children as the controller sees them, and the rule that guards every write to
//! them: the operator applies (with `force`) or deletes an object only when it carries a
//! controller owner reference to this very WasmApp (its UID). An object of the same name that
//! someone else made is never adopted and never deleted.
//!
//! Ownership is read from reflector stores of the children the operator labels (metadata only,
//! managed fields and annotations dropped), so a steady-state reconcile sends no extra request.
//! A name the store does not know as ours is checked with one metadata GET: the stores only see
//! labelled objects, so a foreign object of that name is invisible to them.

use std::{fmt, sync::Mutex};

use k8s_openapi::{
    api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Service},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    core::PartialObjectMeta,
    runtime::reflector::{self, ObjectRef, Store},
    Api, Resource, ResourceExt,
};
use serde::de::DeserializeOwned;

use crate::{crd::WasmApp, Result};

/// What the stores hold of a child.
pub type Meta<K> = PartialObjectMeta<K>;

/// Read side of the children's stores (cheap to clone).
#[derive(Clone)]
pub struct ChildStores {
    pub deployments: Store<Meta<Deployment>>,
    pub services: Store<Meta<Service>>,
    pub autoscalers: Store<Meta<HorizontalPodAutoscaler>>,
}

/// Write side, fed by the controller's watches of the children.
pub struct ChildWriters {
    pub deployments: reflector::store::Writer<Meta<Deployment>>,
    pub services: reflector::store::Writer<Meta<Service>>,
    pub autoscalers: reflector::store::Writer<Meta<HorizontalPodAutoscaler>>,
}

/// Empty stores and their writers.
pub fn stores() -> (ChildStores, ChildWriters) {
    let (deployments, dw) = reflector::store();
    let (services, sw) = reflector::store();
    let (autoscalers, aw) = reflector::store();
    (
        ChildStores {
            deployments,
            services,
            autoscalers,
        },
        ChildWriters {
            deployments: dw,
            services: sw,
            autoscalers: aw,
        },
    )
}

/// The writers until the controller takes them (once).
#[derive(Default)]
pub(crate) struct WriterSlot(Mutex<Option<ChildWriters>>);

impl WriterSlot {
    pub(crate) fn new(writers: ChildWriters) -> Self {
        WriterSlot(Mutex::new(Some(writers)))
    }

    pub(crate) fn take(&self) -> Option<ChildWriters> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Who controls an object with a child's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// No such object.
    Absent,
    /// Controlled by this WasmApp; `uid` is the child's own, for delete preconditions.
    Ours { uid: Option<String> },
    /// Not ours; `owner` says whose it is, for the status message.
    Foreign { owner: String },
}

fn is_our_app(r: &OwnerReference, app: &WasmApp) -> bool {
    let group = r.api_version.split('/').next().unwrap_or_default();
    r.controller == Some(true)
        && r.kind == WasmApp::kind(&())
        && group == WasmApp::group(&())
        && app.metadata.uid.as_deref() == Some(r.uid.as_str())
}

/// Whether `meta` (an existing object) is controlled by `app`.
pub fn ownership(meta: &ObjectMeta, app: &WasmApp) -> Ownership {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    if refs.iter().any(|r| is_our_app(r, app)) {
        return Ownership::Ours {
            uid: meta.uid.clone(),
        };
    }
    let owner = match refs.iter().find(|r| r.controller == Some(true)) {
        Some(r) if r.kind == WasmApp::kind(&()) && r.name == app.name_any() => format!(
            "it is controlled by an earlier WasmApp {} (uid {}), maybe still being deleted",
            r.name, r.uid
        ),
        Some(r) => format!("it is controlled by {} {}", r.kind, r.name),
        None if refs.is_empty() => "it has no owner".to_string(),
        None => format!(
            "it has no controller; owners: {}",
            refs.iter()
                .map(|r| format!("{} {}", r.kind, r.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Ownership::Foreign { owner }
}

/// A child that exists under another owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub app: String,
    pub owner: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} exists and is not owned by WasmApp {} ({})",
            self.kind, self.namespace, self.name, self.app, self.owner
        )
    }
}

/// Looks up who controls the object `name` of kind `K` in the app's namespace: the store first
/// (a hit that is ours needs no request), then a metadata GET (authoritative).
pub async fn lookup<K>(
    store: &Store<Meta<K>>,
    api: &Api<K>,
    app: &WasmApp,
    name: &str,
) -> Result<Ownership>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug,
{
    let key = ObjectRef::<Meta<K>>::new(name).within(&app.namespace().unwrap_or_default());
    if let Some(cached) = store.get(&key) {
        let found = ownership(&cached.metadata, app);
        if matches!(found, Ownership::Ours { .. }) {
            return Ok(found);
        }
    }
    Ok(match api.get_metadata_opt(name).await? {
        Some(meta) => ownership(&meta.metadata, app),
        None => Ownership::Absent,
    })
}

/// The conflict `found` means for the child `name` of kind `K`, if any.
pub fn conflict<K: Resource<DynamicType = ()>>(
    found: &Ownership,
    app: &WasmApp,
    name: &str,
) -> Option<Conflict> {
    match found {
        Ownership::Foreign { owner } => Some(Conflict {
            kind: K::kind(&()).into_owned(),
            namespace: app.namespace().unwrap_or_default(),
            name: name.to_string(),
            app: app.name_any(),
            owner: owner.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use kube::core::PartialObjectMetaExt;

    use super::*;
    use crate::crd::WasmAppSpec;

    fn app(uid: &str) -> WasmApp {
        let mut a = WasmApp::new("hello", WasmAppSpec::default());
        a.metadata.namespace = Some("apps".into());
        a.metadata.uid = Some(uid.into());
        a
    }

    fn owned_by(refs: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some("hello".into()),
            namespace: Some("apps".into()),
            uid: Some("child-uid".into()),
            owner_references: Some(refs),
            ..ObjectMeta::default()
        }
    }

    fn wasmapp_ref(uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "wasmkube.dev/v1alpha1".into(),
            kind: "WasmApp".into(),
            name: "hello".into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn only_a_controller_reference_to_this_uid_is_ours() {
        let a = app("uid-1");
        assert_eq!(
            ownership(&owned_by(vec![wasmapp_ref("uid-1", true)]), &a),
            Ownership::Ours {
                uid: Some("child-uid".into())
            }
        );
        // What the builders put on every child is recognised.
        let built = crate::builders::app::deployment(&a).metadata;
        assert!(matches!(ownership(&built, &a), Ownership::Ours { .. }));

        let foreign = |meta: ObjectMeta| match ownership(&meta, &a) {
            Ownership::Foreign { owner } => owner,
            other => panic!("{other:?} for {meta:?}"),
        };
        assert_eq!(foreign(ObjectMeta::default()), "it has no owner");
        assert_eq!(
            foreign(owned_by(vec![wasmapp_ref("uid-0", true)])),
            "it is controlled by an earlier WasmApp hello (uid uid-0), maybe still being deleted"
        );
        assert_eq!(
            foreign(owned_by(vec![wasmapp_ref("uid-1", false)])),
            "it has no controller; owners: WasmApp hello",
            "a non-controller reference is not control"
        );
        let mut other_kind = wasmapp_ref("uid-1", true);
        other_kind.kind = "Release".into();
        other_kind.api_version = "helm.example/v1".into();
        other_kind.name = "web".into();
        assert_eq!(
            foreign(owned_by(vec![other_kind])),
            "it is controlled by Release web"
        );
        let mut other_group = wasmapp_ref("uid-1", true);
        other_group.api_version = "example.com/v1".into();
        assert!(matches!(
            ownership(&owned_by(vec![other_group]), &a),
            Ownership::Foreign { .. }
        ));
        // Another version of our own API still counts (a future v1beta1 child).
        let mut v1beta1 = wasmapp_ref("uid-1", true);
        v1beta1.api_version = "wasmkube.dev/v1beta1".into();
        assert!(matches!(
            ownership(&owned_by(vec![v1beta1]), &a),
            Ownership::Ours { .. }
        ));
    }

    #[test]
    fn conflicts_name_kind_object_app_and_owner() {
        let a = app("uid-1");
        let found = ownership(&ObjectMeta::default(), &a);
        let c = conflict::<Deployment>(&found, &a, "hello").expect("conflict");
        assert_eq!(
            c.to_string(),
            "Deployment apps/hello exists and is not owned by WasmApp hello (it has no owner)"
        );
        assert!(conflict::<Service>(&Ownership::Absent, &a, "hello").is_none());
        assert!(conflict::<Service>(&Ownership::Ours { uid: None }, &a, "hello").is_none());
    }

    #[tokio::test]
    async fn a_store_hit_that_is_ours_needs_no_request() {
        let a = app("uid-1");
        let (stores, mut writers) = stores();
        let meta = owned_by(vec![wasmapp_ref("uid-1", true)]).into_response_partial::<Service>();
        writers
            .services
            .apply_watcher_event(&kube::runtime::watcher::Event::Apply(meta));
        // A client whose every request fails: the lookup must not send one.
        let (client, handle) = crate::fixtures::mock_client();
        drop(handle);
        let api: Api<Service> = Api::namespaced(client, "apps");
        let found = lookup(&stores.services, &api, &a, "hello")
            .await
            .expect("no request sent");
        assert_eq!(
            found,
            Ownership::Ours {
                uid: Some("child-uid".into())
            }
        );
    }
}
