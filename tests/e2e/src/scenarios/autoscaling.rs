//! Autoscaling a WasmApp. Turning it on hands `spec.replicas` to the HPA without touching a
//! running pod (same pod UIDs), turning it off hands the field back to the operator (replicas
//! kept, same pods); and the HPA really scales a wasm app: metrics-server (tests/cluster/up.sh)
//! reads the wasm pods' CPU from the kubelet, CPU load through the Service scales the Deployment
//! up, and it comes back down when the load stops.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use k8s_openapi::api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler};
use kube::{Api, ResourceExt};
use wasmkube_operator::crd::WasmApp;
use wasmkube_operator::names::{FIELD_MANAGER, HANDOVER_FIELD_MANAGER};

use super::apps::{ready_pods, wait_ready_replicas, APP, NS};
use super::registry::push_guest;
use super::serving::{apply, cluster_ip, get, wasm_app_of};
use crate::wait::{within, Poll};
use crate::Cluster;

/// Managers of the Deployment's `spec.replicas`.
fn replicas_owners(d: &Deployment) -> Vec<String> {
    d.metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:replicas").is_some())
        })
        .filter_map(|m| m.manager)
        .collect()
}

async fn pod_uids(c: &Cluster) -> Result<BTreeSet<String>> {
    Ok(ready_pods(c)
        .await?
        .iter()
        .filter_map(|p| p.uid())
        .collect())
}

pub async fn autoscaling_on_and_off_keeps_running_pods(c: &Cluster) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), NS);
    let replicas = |d: &Deployment| d.spec.replicas;
    ensure!(
        replicas(&deployments.get(APP).await?) == Some(3),
        "not at 3 replicas before"
    );
    let before = pod_uids(c).await?;
    ensure!(before.len() == 3, "3 ready pods before: {before:?}");
    c.kubectl(&[
        "patch", "wapp", APP, "--type=merge", "-p",
        r#"{"spec":{"autoscaling":{"minReplicas":1,"maxReplicas":5,"targetCPUUtilizationPercentage":80}}}"#,
    ])?;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(c.client.clone(), NS);
    let start = Instant::now();
    let mut hpa_seen = false;
    // Watch the count closely while the operator re-applies and the HPA takes over: it must
    // never dip (the bug this guards against dropped it to 1).
    while start.elapsed() < Duration::from_secs(20) {
        let n = replicas(&deployments.get(APP).await?);
        if n != Some(3) {
            bail!("spec.replicas went to {n:?} after turning autoscaling on");
        }
        hpa_seen = hpa_seen || hpas.get_opt(APP).await?.is_some();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(hpa_seen, "no HorizontalPodAutoscaler was created");
    let owners = replicas_owners(&deployments.get(APP).await?);
    println!("  autoscaling on: spec.replicas managed by {owners:?}");
    ensure!(
        !owners.iter().any(|m| m == FIELD_MANAGER),
        "the operator still owns spec.replicas"
    );
    ensure!(
        owners.iter().any(|m| m == HANDOVER_FIELD_MANAGER),
        "spec.replicas was not handed over"
    );
    wait_ready_replicas(c, 3, Duration::from_secs(30)).await?;
    let on = pod_uids(c).await?;
    ensure!(
        on == before,
        "turning autoscaling on replaced pods: {before:?} -> {on:?}"
    );
    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), NS);
    let status = apps.get(APP).await?.status.unwrap_or_default();
    ensure!(
        status.autoscaler_name.as_deref() == Some(APP),
        "status.autoscalerName {:?}",
        status.autoscaler_name
    );

    // Off again: the HPA goes, the operator owns spec.replicas again at the WasmApp's 3, and the
    // same pods run on.
    c.kubectl(&[
        "patch",
        "wapp",
        APP,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/autoscaling"}]"#,
    ])?;
    within(
        "the HPA to go and the operator to own spec.replicas again",
        Duration::from_secs(60),
        || async {
            let d = deployments.get(APP).await?;
            let owners = replicas_owners(&d);
            let hpa = hpas.get_opt(APP).await?.is_some();
            Ok(
                if !hpa && owners.iter().any(|m| m == FIELD_MANAGER) && replicas(&d) == Some(3) {
                    Poll::Done(())
                } else {
                    Poll::NotYet(format!(
                        "HPA present {hpa}, replicas {:?}, owners {owners:?}",
                        replicas(&d)
                    ))
                },
            )
        },
    )
    .await?;
    wait_ready_replicas(c, 3, Duration::from_secs(30)).await?;
    let off = pod_uids(c).await?;
    ensure!(
        off == before,
        "turning autoscaling off replaced pods: {before:?} -> {off:?}"
    );
    let status = apps.get(APP).await?.status.unwrap_or_default();
    ensure!(
        status.autoscaler_name.is_none(),
        "status.autoscalerName {:?} after turning autoscaling off",
        status.autoscaler_name
    );
    println!("  on and off: the same 3 pods ran throughout; the operator owns spec.replicas again");
    Ok(())
}

const HPA_NS: &str = "wasmkube-e2e-hpa";
const BUSY: &str = "busy";

/// Runs `clients` loops of requests to the app's `/loop` route (a guest spinning with no host
/// calls; each request ends when curl gives up after 3 s and drops it) from the node, in their
/// own process group; returns the group id to kill.
fn start_load(c: &Cluster, ip: &str, clients: usize) -> Result<String> {
    let pgid = c.node_sh(&format!(
        "setsid sh -c 'for i in $(seq {clients}); do \
         (while :; do curl -s -o /dev/null --max-time 3 http://{ip}/loop; done) & done; wait' \
         >/dev/null 2>&1 </dev/null & echo $!"
    ))?;
    let pgid = pgid.trim().to_string();
    ensure!(
        !pgid.is_empty() && pgid.bytes().all(|b| b.is_ascii_digit()),
        "the load did not start: {pgid:?}"
    );
    Ok(pgid)
}

/// Stops the load's process group; fails if any of it is left.
fn stop_load(c: &Cluster, pgid: &str) -> Result<()> {
    c.node_sh(&format!(
        "kill -TERM -{pgid}; for i in $(seq 50); do pgrep -g {pgid} >/dev/null || exit 0; \
         sleep 0.1; done; echo 'load still running' >&2; exit 1"
    ))?;
    Ok(())
}

/// The Deployment's `spec.replicas` and ready replicas.
async fn counts(deployments: &Api<Deployment>) -> Result<(i32, i32)> {
    let d = deployments.get(BUSY).await?;
    Ok((
        d.spec.replicas.unwrap_or(0),
        d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
    ))
}

pub async fn hpa_scales_a_wasm_app_on_cpu_load(c: &Cluster) -> Result<()> {
    c.fresh_namespace(HPA_NS)?;
    let image = push_guest("wasm32-wasip2", "http_limits.wasm", "http-limits").await?;
    let manifest = wasm_app_of(
        HPA_NS,
        BUSY,
        &image,
        "  resources:\n    requests:\n      cpu: 50m\n    limits:\n      cpu: 300m\n  \
         autoscaling:\n    minReplicas: 1\n    maxReplicas: 3\n    targetCPUUtilizationPercentage: 50\n    \
         scaleDownStabilizationSeconds: 10\n",
    );
    let (ok, _, err) = apply(c, BUSY, &manifest)?;
    ensure!(ok, "applying WasmApp {BUSY}: {err}");
    let ip = cluster_ip(c, HPA_NS, BUSY).await?;
    get(c, &ip, "/hello").await?;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), HPA_NS);
    // metrics-server has the pod's CPU before the load starts (so the HPA acts on it).
    within(
        "metrics-server to report the wasm pod's CPU",
        Duration::from_secs(90),
        || async {
            let (ok, out, err) =
                c.kubectl_output(&["top", "pods", "-n", HPA_NS, "--no-headers"])?;
            Ok(if ok && out.contains(BUSY) {
                Poll::Done(out)
            } else {
                Poll::NotYet(format!("{out}{err}"))
            })
        },
    )
    .await?;

    let started = Instant::now();
    let pgid = start_load(c, &ip, 3)?;
    let up = within(
        "the HPA to scale the wasm app up under CPU load",
        Duration::from_secs(180),
        || async {
            let (want, ready) = counts(&deployments).await?;
            Ok(if want >= 2 && ready == want {
                Poll::Done(want)
            } else {
                Poll::NotYet(format!("spec.replicas {want}, ready {ready}"))
            })
        },
    )
    .await;
    let top = c
        .kubectl_output(&["top", "pods", "-n", HPA_NS, "--no-headers"])
        .map(|(_, out, _)| out)
        .unwrap_or_default();
    stop_load(c, &pgid)?;
    let up = up?;
    let up_after = started.elapsed();
    println!(
        "  under load: scaled 1 -> {up} ({:.0} s after the load started); kubectl top:\n{}",
        up_after.as_secs_f64(),
        top.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
            .trim_end()
    );

    let stopped = Instant::now();
    within(
        "the HPA to scale the wasm app back down after the load",
        Duration::from_secs(240),
        || async {
            let (want, ready) = counts(&deployments).await?;
            Ok(if want == 1 && ready == 1 {
                Poll::Done(())
            } else {
                Poll::NotYet(format!("spec.replicas {want}, ready {ready}"))
            })
        },
    )
    .await?;
    get(c, &ip, "/after").await?;
    println!(
        "  load stopped: back to 1 replica {:.0} s later (scaleDownStabilizationSeconds: 10)",
        stopped.elapsed().as_secs_f64()
    );
    c.kubectl(&["delete", "namespace", HPA_NS, "--wait=false"])?;
    Ok(())
}
