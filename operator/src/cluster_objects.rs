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
    .default_backoff()
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
    .default_backoff()
    .map(|_| ());
    let mut triggers = Box::pin(futures::stream::select(ds_events, rc_events));
    let backoff = ErrorBackoff::default();
    loop {
        match ensure_cluster_objects(&client, &cfg).await {
            Ok(()) => backoff.reset(&()),
            Err(e) => {
                metrics.error("cluster", &e);
                let delay = backoff.next_delay(());
                warn!(error = %e, ?delay, "cannot apply installer DaemonSets / RuntimeClass");
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        // Wait for a change (our own no-op applies do not produce one), then coalesce a burst.
        if triggers.next().await.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Some(Some(())) = futures::FutureExt::now_or_never(triggers.next()) {}
    }
}
