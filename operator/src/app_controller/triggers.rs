//! What makes the app controller reconcile, as stream adapters over watcher events (so tests
//! can feed them events without an API server):
//! - a WasmApp whose spec changed (its `metadata.generation`), never its status alone: our own
//!   status writes would otherwise re-apply every child once more;
//! - any change of an owned Deployment (its status is the app's readiness) or Service;
//! - an owned HPA's spec, not the metric churn in its status.
//!
//! Every adapter updates its store before filtering, so a reconcile reads the latest object
//! (the latest status included) even when that change did not trigger it.

use futures::Stream;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::{
    runtime::{
        predicates,
        reflector::store::Writer,
        watcher::{self, Event},
        PredicateConfig, WatchStreamExt,
    },
    Resource,
};

use super::children::Meta;
use crate::crd::WasmApp;

/// WasmApps to reconcile: applied objects whose generation changed; the store sees every event.
pub fn apps<S>(
    events: S,
    writer: Writer<WasmApp>,
) -> impl Stream<Item = Result<WasmApp, watcher::Error>>
where
    S: Stream<Item = Result<Event<WasmApp>, watcher::Error>>,
{
    events
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, PredicateConfig::default())
}

/// Drops what the ownership check does not read: managed fields and annotations are most of a
/// child's metadata, and 1,000 apps have 3,000 children.
fn slim<K>(meta: &mut Meta<K>) {
    meta.metadata.managed_fields = None;
    meta.metadata.annotations = None;
}

/// Owned Deployments or Services to map to their app: every change (a Deployment's status is
/// the app's readiness).
pub fn children<K, S>(
    events: S,
    writer: Writer<Meta<K>>,
) -> impl Stream<Item = Result<Meta<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    S: Stream<Item = Result<Event<Meta<K>>, watcher::Error>>,
{
    events.modify(slim).reflect(writer).touched_objects()
}

/// Owned HPAs to map to their app: only spec changes (generation), not status churn.
pub fn autoscalers<S>(
    events: S,
    writer: Writer<Meta<HorizontalPodAutoscaler>>,
) -> impl Stream<Item = Result<Meta<HorizontalPodAutoscaler>, watcher::Error>>
where
    S: Stream<Item = Result<Event<Meta<HorizontalPodAutoscaler>>, watcher::Error>>,
{
    children(events, writer).predicate_filter(predicates::generation, PredicateConfig::default())
}

#[cfg(test)]
mod tests {
    use futures::{stream, StreamExt};
    use k8s_openapi::{
        api::apps::v1::Deployment, apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
    };
    use kube::{
        api::ObjectMeta,
        core::PartialObjectMetaExt,
        runtime::reflector::{self, ObjectRef},
    };

    use super::*;
    use crate::crd::{WasmAppSpec, WasmAppStatus};

    fn app(generation: i64, rv: &str, image: &str, ready: i32) -> WasmApp {
        let mut a = WasmApp::new(
            "hello",
            WasmAppSpec {
                image: image.into(),
                ..WasmAppSpec::default()
            },
        );
        a.metadata.namespace = Some("apps".into());
        a.metadata.uid = Some("uid-1".into());
        a.metadata.generation = Some(generation);
        a.metadata.resource_version = Some(rv.into());
        a.status = Some(WasmAppStatus {
            ready_replicas: ready,
            ..WasmAppStatus::default()
        });
        a
    }

    fn meta<K>(generation: i64, rv: &str) -> Meta<K> {
        ObjectMeta {
            name: Some("hello".into()),
            namespace: Some("apps".into()),
            uid: Some("child-uid".into()),
            generation: Some(generation),
            resource_version: Some(rv.into()),
            annotations: Some([("note".to_string(), "x".to_string())].into()),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            ..ObjectMeta::default()
        }
        .into_response_partial()
    }

    fn rvs<K: Resource>(out: &[Result<K, watcher::Error>]) -> Vec<String> {
        out.iter()
            .map(|r| match r {
                Ok(o) => o.meta().resource_version.clone().unwrap_or_default(),
                Err(e) => format!("error: {e}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_status_only_change_of_a_wasmapp_triggers_nothing_but_reaches_the_store() {
        let (store, writer) = reflector::store();
        let events = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(app(1, "10", "img:v1", 0))),
            Ok(Event::InitDone),
            // Our own status write: same generation.
            Ok(Event::Apply(app(1, "11", "img:v1", 1))),
            // A spec change: the API server bumps the generation.
            Ok(Event::Apply(app(2, "12", "img:v2", 1))),
            // Status again, after the new rollout.
            Ok(Event::Apply(app(2, "13", "img:v2", 2))),
        ];
        let out: Vec<_> = apps(stream::iter(events), writer).collect().await;
        assert_eq!(rvs(&out), ["10", "12"], "one trigger per generation");
        let cached = store
            .get(&ObjectRef::new("hello").within("apps"))
            .expect("in the store");
        assert_eq!(
            cached.status.as_ref().map(|s| s.ready_replicas),
            Some(2),
            "the reconcile reads the latest status"
        );
    }

    #[tokio::test]
    async fn hpa_status_churn_triggers_nothing_but_a_spec_change_does() {
        let (store, writer) = reflector::store();
        let events = vec![
            Ok(Event::Apply(meta::<HorizontalPodAutoscaler>(1, "20"))),
            // currentMetrics / currentReplicas updates: new resourceVersion, same generation.
            Ok(Event::Apply(meta(1, "21"))),
            Ok(Event::Apply(meta(1, "22"))),
            Ok(Event::Apply(meta(2, "23"))),
            Ok(Event::Apply(meta(2, "24"))),
        ];
        let out: Vec<_> = autoscalers(stream::iter(events), writer).collect().await;
        assert_eq!(rvs(&out), ["20", "23"]);
        let cached = store
            .get(&ObjectRef::new("hello").within("apps"))
            .expect("in the store");
        assert_eq!(cached.metadata.resource_version.as_deref(), Some("24"));
        assert!(cached.metadata.managed_fields.is_none(), "slimmed");
        assert!(cached.metadata.annotations.is_none(), "slimmed");
    }

    #[tokio::test]
    async fn every_deployment_change_triggers_its_status_is_readiness() {
        let (store, writer) = reflector::store();
        let events = vec![
            Ok(Event::Apply(meta::<Deployment>(1, "30"))),
            Ok(Event::Apply(meta(1, "31"))),
            Ok(Event::Delete(meta(1, "32"))),
        ];
        let out: Vec<_> = children(stream::iter(events), writer).collect().await;
        assert_eq!(rvs(&out), ["30", "31", "32"]);
        assert!(
            store.get(&ObjectRef::new("hello").within("apps")).is_none(),
            "deleted from the store"
        );
    }
}
