//! Faults injected under serving wasm pods, with what a user sees and proof that nothing was lost.
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::{api::ListParams, Api};
use wasmkube_operator::names::labels;

use super::registry::push_guest;
use super::serving::{apply, cluster_ip, get, wasm_app_of};
use crate::node;
use crate::wait::{within, Poll};
use crate::Cluster;

const NS: &str = "wasmkube-e2e-faults";
const APP: &str = "steady";
/// Where the load loop on the node keeps its counts, and the file that stops it.
const LOAD_COUNTS: &str = "/tmp/wk-e2e-faults-load";
const LOAD_STOP: &str = "/tmp/wk-e2e-faults-stop";

/// The app's pods: (uid, restartCount), sorted.
async fn pods(c: &Cluster) -> Result<Vec<(String, i32)>> {
    let api: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let list = api
        .list(&ListParams::default().labels(&format!("{}={APP}", labels::INSTANCE)))
        .await?;
    let mut out: Vec<(String, i32)> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| {
                    s.container_statuses
                        .as_ref()?
                        .first()
                        .map(|c| c.restart_count)
                })
                .unwrap_or(-1);
            (p.metadata.uid.clone().unwrap_or_default(), restarts)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The pids of every wasmkube shim process on the node.
fn shims(c: &Cluster) -> Result<BTreeSet<u32>> {
    // `[c]`: the pattern does not match the shell that runs pgrep.
    let out = c.node_sh("pgrep -f '[c]ontainerd-shim-wasmkube-v1 -namespace' || true")?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// One loop of GETs through the Service from the node, counting answers and failures (each
/// request may take 2 s) into [`LOAD_COUNTS`] until [`LOAD_STOP`] appears.
fn start_load(c: &Cluster, ip: &str) -> Result<()> {
    c.node_sh(&format!(
        "rm -f {LOAD_STOP} {LOAD_COUNTS}; setsid sh -c 'ok=0; failed=0; \
         while [ ! -e {LOAD_STOP} ]; do \
         if curl -fsS -o /dev/null --max-time 2 http://{ip}/hello; then ok=$((ok+1)); \
         else failed=$((failed+1)); fi; echo \"$ok $failed\" > {LOAD_COUNTS}; done; \
         echo \"$ok $failed done\" > {LOAD_COUNTS}' >/dev/null 2>&1 </dev/null &"
    ))?;
    Ok(())
}

/// Stops the load; returns (answered, failed).
async fn stop_load(c: &Cluster) -> Result<(u64, u64)> {
    c.node_sh(&format!("touch {LOAD_STOP}"))?;
    let counts = within("the load loop to stop", Duration::from_secs(10), || async {
        let text = c.node_sh(&format!("cat {LOAD_COUNTS} 2>/dev/null || true"))?;
        Ok(if text.trim_end().ends_with("done") {
            Poll::Done(text)
        } else {
            Poll::NotYet(text)
        })
    })
    .await?;
    c.node_sh(&format!("rm -f {LOAD_STOP} {LOAD_COUNTS}"))?;
    let mut n = counts.split_whitespace().map(str::parse::<u64>);
    match (n.next(), n.next()) {
        (Some(Ok(ok)), Some(Ok(failed))) => Ok((ok, failed)),
        _ => anyhow::bail!("unreadable load counts {counts:?}"),
    }
}

/// containerd restarted on the node (as the installer or a package upgrade does) while a
/// 2-replica wasm app serves under load through its Service: the wasm pods keep serving — same
/// pods, no container restart, the same shim processes, 0 failed requests — the node stays
/// `ready`, and once the app is deleted none of its shims is left behind.
pub async fn containerd_restart_keeps_wasm_pods_serving(c: &Cluster) -> Result<()> {
    c.fresh_namespace(NS)?;
    let image = push_guest("wasm32-wasip2", "http_limits.wasm", "http-limits").await?;
    let shims_before_app = shims(c)?;
    let manifest = wasm_app_of(NS, APP, &image, "").replace("replicas: 1", "replicas: 2");
    let (ok, _, err) = apply(c, APP, &manifest)?;
    ensure!(ok, "applying WasmApp {APP}: {err}");
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), NS);
    within("2 ready replicas", Duration::from_secs(120), || async {
        let ready = deployments
            .get_opt(APP)
            .await?
            .and_then(|d| d.status?.ready_replicas)
            .unwrap_or(0);
        Ok(if ready == 2 {
            Poll::Done(())
        } else {
            Poll::NotYet(format!("{ready} ready"))
        })
    })
    .await?;
    let ip = cluster_ip(c, NS, APP).await?;
    get(c, &ip, "/hello").await?;
    let before = pods(c).await?;
    let app_shims: BTreeSet<u32> = shims(c)?.difference(&shims_before_app).copied().collect();
    ensure!(
        !app_shims.is_empty(),
        "no shim process appeared for the app's pods"
    );
    let containerd_before = c.node_sh("pgrep -x containerd | sort || true")?;

    start_load(c, &ip)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The local cluster's hook stops containerd and its supervisor starts the next one; a
    // systemd node (kind) restarts the unit.
    c.node_sh(
        "if [ -x /etc/wasmkube/restart-containerd ]; then /etc/wasmkube/restart-containerd; \
         else systemctl restart containerd; fi",
    )
    .context("restarting containerd on the node")?;
    let containerd_after = within(
        "containerd to answer again after its restart",
        Duration::from_secs(60),
        || async {
            let pid = c.node_sh("pgrep -x containerd | sort || true")?;
            let answers = c.node_sh("crictl info >/dev/null 2>&1 && echo yes || true")?;
            Ok(
                if !pid.trim().is_empty() && pid != containerd_before && answers.trim() == "yes" {
                    Poll::Done(pid)
                } else {
                    Poll::NotYet(format!("containerd pid {pid:?}, CRI answers: {answers:?}"))
                },
            )
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (answered, failed) = stop_load(c).await?;
    println!(
        "  containerd pid(s) {:?} -> {:?}: {answered} requests answered, {failed} failed during \
         the restart",
        containerd_before.split_whitespace().collect::<Vec<_>>(),
        containerd_after.split_whitespace().collect::<Vec<_>>()
    );
    ensure!(answered > 0, "no request was answered");
    ensure!(
        failed == 0,
        "{failed} of {} requests failed while containerd restarted",
        answered + failed
    );
    let after = pods(c).await?;
    ensure!(
        after == before,
        "the wasm pods changed across the containerd restart: {before:?} -> {after:?}"
    );
    let now = shims(c)?;
    ensure!(
        app_shims.is_subset(&now),
        "shims of the app's pods died with containerd: {app_shims:?}, now {now:?}"
    );
    node::wait_state(c, "ready", Duration::from_secs(5)).await?;
    println!(
        "  same pods {:?} (restartCount unchanged), same shims {app_shims:?}, node ready",
        after
            .iter()
            .map(|(uid, _)| &uid[..8.min(uid.len())])
            .collect::<Vec<_>>()
    );

    // Deleting the app after the restart leaves none of its shims (the new containerd owns the
    // old shims and stops them).
    c.kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"])?;
    let left = within(
        "the app's shims to exit after its pods were deleted",
        Duration::from_secs(30),
        || async {
            let left: Vec<u32> = shims(c)?.intersection(&app_shims).copied().collect();
            Ok(if left.is_empty() {
                Poll::Done(left)
            } else {
                Poll::NotYet(format!("still running: {left:?}"))
            })
        },
    )
    .await?;
    ensure!(left.is_empty(), "shims left: {left:?}");
    println!("  app deleted: no shim of it left");
    Ok(())
}
