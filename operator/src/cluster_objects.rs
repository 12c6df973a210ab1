//! The cluster-scoped objects the node controller keeps as built: both installer DaemonSets and
//! the `wasmkube` RuntimeClass.

use std::time::Duration;

use futures::{Future, StreamExt};
use k8s_openapi::api::{apps::v1::DaemonSet, node::v1::RuntimeClass};
use kube::{
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tracing::warn;

use crate::{
    backoff::ErrorBackoff,
    builders::installer::{self as build, InstallerAction, InstallerConfig},
    metrics::Metrics,
    names::FIELD_MANAGER,
    Result,
};

/// Applies the installer DaemonSets and the RuntimeClass (server-side apply, idempotent).
pub async fn ensure_cluster_objects(client: &Client, cfg: &InstallerConfig) -> Result<()> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &cfg.namespace);
    for action in [InstallerAction::Uninstall, InstallerAction::Install] {
        let ds = build::daemonset(cfg, action);
        daemonsets
            .patch(action.daemonset_name(), &pp, &Patch::Apply(&ds))
            .await?;
    }
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    classes
        .patch(
            crate::names::RUNTIME_CLASS,
            &pp,
            &Patch::Apply(&build::runtime_class()),
        )
        .await?;
    Ok(())
}

/// Keeps the DaemonSets and the RuntimeClass as built: applies them now and again whenever
/// someone changes or deletes them, until `shutdown` resolves.
pub async fn keep_cluster_objects(
    client: Client,
    cfg: InstallerConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    tokio::select! {
        () = shutdown => {}
        () = keep_cluster_objects_loop(client, cfg, metrics) => {}
    }
}

async fn keep_cluster_objects_loop(client: Client, cfg: InstallerConfig, metrics: Metrics) {
    let ds_api: Api<PartialObjectMeta<DaemonSet>> = Api::namespaced(client.clone(), &cfg.namespace);
    let rc_api: Api<PartialObjectMeta<RuntimeClass>> = Api::all(client.clone());
    let ds_events = crate::watch_health::observe(
        watcher(
            ds_api,
            watcher::Config::default().labels(&build::all_pods_selector()),
        ),
        metrics.watches.clone(),
        "installer-daemonsets",
    )
    .backoff(crate::watch_health::WatchBackoff::default())
    .map(|_| ());
    let rc_events = crate::watch_health::observe(
        watcher(
            rc_api,
            watcher::Config::default()
                .fields(&format!("metadata.name={}", crate::names::RUNTIME_CLASS)),
        ),
        metrics.watches.clone(),
        "runtimeclass",
    )
    .backoff(crate::watch_health::WatchBackoff::default())
    .map(|_| ());
    let mut triggers = Box::pin(futures::stream::select(ds_events, rc_events));
    let backoff = ErrorBackoff::default();
    loop {
        let pause = match ensure_cluster_objects(&client, &cfg).await {
            Ok(()) => {
                backoff.reset(&());
                // Wait for a change (our own no-op applies do not produce one), then coalesce
                // a burst.
                if triggers.next().await.is_none() {
                    return;
                }
                Duration::from_millis(500)
            }
            Err(e) => {
                metrics.error("cluster", &e);
                let delay = backoff.next_delay(());
                warn!(error = %e, ?delay, "cannot apply installer DaemonSets / RuntimeClass");
                delay
            }
        };
        // The watches go on while the loop pauses: their health (`/readyz`) stays current, and
        // a watch that must re-list after the API server came back does so now, not after a
        // back-off of up to 5 minutes.
        if !drain_for(&mut triggers, pause).await {
            return;
        }
    }
}

/// Polls `triggers` (dropping its items) for `pause`; false if it ended.
async fn drain_for<S: futures::Stream<Item = ()> + Unpin>(
    triggers: &mut S,
    pause: Duration,
) -> bool {
    let deadline = tokio::time::sleep(pause);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            item = triggers.next() => if item.is_none() { return false },
        }
    }
}
