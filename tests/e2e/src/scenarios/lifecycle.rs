//! Operator lifecycle: leader hand-over, a broken installer image, no Forbidden in the logs.
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::{Api, ResourceExt};
use wasmkube_operator::crd::{conditions, WasmApp};
use wasmkube_operator::names::RUNTIME_REASON_ANNOTATION;

use super::install::{
    leader, operator_available, operator_pods, save_operator_logs, set_operator_env, NS,
};
use super::serving::{apply, wasm_app_of};
use crate::node;
use crate::wait::{within, Poll};
use crate::Cluster;

/// `wasmkube_operator_leader` of each operator pod, read through the apiserver's pod proxy.
fn leader_gauges(c: &Cluster, pods: &[Pod]) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for p in pods {
        let name = p.name_any();
        let metrics = c.kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{NS}/pods/{name}:8080/proxy/metrics"),
        ])?;
        let value = metrics
            .lines()
            .find(|l| l.starts_with("wasmkube_operator_leader "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name}: no wasmkube_operator_leader in /metrics"))?;
        out.insert(name, value);
    }
    Ok(out)
}

fn exactly_one_leader(gauges: &BTreeMap<String, f64>) -> Option<String> {
    let leaders: Vec<&String> = gauges
        .iter()
        .filter(|(_, v)| **v == 1.0)
        .map(|(k, _)| k)
        .collect();
    match leaders.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// The sum of `wasmkube_operator_reconciles_total` of operator pod `pod`, of every controller
/// whose label contains `controller` (`""`: all).
fn reconciles_of(c: &Cluster, pod: &str, controller: &str) -> Result<f64> {
    let metrics = c.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/pods/{pod}:8080/proxy/metrics"),
    ])?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("wasmkube_operator_reconciles_total"))
        .filter(|l| l.contains(&format!("controller=\"{controller}")))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

/// The standbys (every operator pod but `leader`) and their reconcile counts.
async fn standby_reconciles(c: &Cluster, leader: &str) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for p in operator_pods(c).await? {
        let name = p.name_any();
        if name != leader {
            out.insert(name.clone(), reconciles_of(c, &name, "")?);
        }
    }
    Ok(out)
}

/// resourceVersions of the app's Deployment and Service.
async fn children_versions(c: &Cluster, name: &str) -> Result<(String, String)> {
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let services: Api<Service> = Api::namespaced(c.client.clone(), "default");
    Ok((
        deployments
            .get(name)
            .await?
            .resource_version()
            .unwrap_or_default(),
        services
            .get(name)
            .await?
            .resource_version()
            .unwrap_or_default(),
    ))
}

/// One replica leads, the standby reconciles nothing; after the leader's pod is deleted the
/// other takes the Lease, reconciles the existing app without writing its children again (their
/// resourceVersions stay), and serves a new one; the replacement pod is a standby that reconciles
/// nothing. (Both replicas use one field manager, so managedFields alone cannot show a double
/// write; the resourceVersions and the standby's counters can.)
pub async fn leader_handover(c: &Cluster) -> Result<()> {
    operator_available(c, Duration::from_secs(60)).await?;
    let old = leader(c).await?.context("no leader")?;
    let gauges = leader_gauges(c, &operator_pods(c).await?)?;
    ensure!(
        exactly_one_leader(&gauges).as_ref() == Some(&old),
        "leader gauges {gauges:?}, lease {old}"
    );
    // A standby may have led before (a replica that lost its lease goes back to standby, e.g.
    // after the API server outage): what it must not do is reconcile while it stands by.
    let standby = standby_reconciles(c, &old).await?;
    ensure!(!standby.is_empty(), "no standby operator pod");
    // An app the old leader made, Ready, so nothing about it changes on its own.
    let (ok, _, err) = apply(
        c,
        "handover-before",
        &wasm_app_of(
            "default",
            "e2e-before",
            "docker.io/wasmkube/hello-http:0.1.0",
            "",
        ),
    )?;
    ensure!(ok, "applying WasmApp e2e-before: {err}");
    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), "default");
    within(
        "WasmApp e2e-before to be Ready",
        Duration::from_secs(120),
        || async {
            let status = apps.get("e2e-before").await?.status.unwrap_or_default();
            Ok(if status.is_true(conditions::READY) {
                Poll::Done(())
            } else {
                Poll::NotYet(format!("{:?}", status.conditions))
            })
        },
    )
    .await?;
    let before = children_versions(c, "e2e-before").await?;
    // The leader created and reconciled that app meanwhile; the standby's counters stood still.
    let standby_after = standby_reconciles(c, &old).await?;
    ensure!(
        standby_after == standby,
        "a standby reconciled while the leader worked: {standby:?} -> {standby_after:?}"
    );

    save_operator_logs(c)?;
    c.kubectl(&["-n", NS, "delete", "pod", &old, "--wait=false"])?;
    let new = within(
        "another operator pod to take the Lease",
        Duration::from_secs(60),
        || async {
            Ok(match leader(c).await? {
                Some(h) if h != old => Poll::Done(h),
                other => Poll::NotYet(format!("holder {other:?}")),
            })
        },
    )
    .await?;
    println!("  leader {old} -> {new}");
    // The new leader works: a new WasmApp gets its Deployment.
    let (ok, _, err) = apply(
        c,
        "handover-after",
        &wasm_app_of(
            "default",
            "e2e-handover",
            "docker.io/wasmkube/hello-http:0.1.0",
            "",
        ),
    )?;
    ensure!(ok, "applying WasmApp e2e-handover: {err}");
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    within(
        "the new leader to create the Deployment",
        Duration::from_secs(60),
        || async {
            Ok(match deployments.get_opt("e2e-handover").await? {
                Some(d) => Poll::Done(d),
                None => Poll::NotYet("absent".into()),
            })
        },
    )
    .await?;
    // It reconciled both apps (its first pass covers every app), the old one without a write.
    let seen = within(
        "the new leader to reconcile both apps",
        Duration::from_secs(60),
        || async {
            let n = reconciles_of(c, &new, "app")?;
            Ok(if n >= 2.0 {
                Poll::Done(n)
            } else {
                Poll::NotYet(format!("{n} app reconciles"))
            })
        },
    )
    .await?;
    let after = children_versions(c, "e2e-before").await?;
    ensure!(
        before == after,
        "the new leader rewrote e2e-before's children: (Deployment, Service) resourceVersions {before:?} -> {after:?}"
    );
    println!("  e2e-before's children untouched across the hand-over: {after:?}; new leader reconciles {seen}");
    // Once the replacement pod is up, still exactly one replica believes it leads, and the
    // standby reconciles nothing.
    operator_available(c, Duration::from_secs(120)).await?;
    let gauges = within(
        "exactly one leader among the operator pods",
        Duration::from_secs(30),
        || async {
            let g = leader_gauges(c, &operator_pods(c).await?)?;
            Ok(match exactly_one_leader(&g) {
                Some(l) if Some(&l) == leader(c).await?.as_ref() => Poll::Done(g),
                _ => Poll::NotYet(format!("{g:?}")),
            })
        },
    )
    .await?;
    // The standby now is either the replacement pod (0 so far) or the earlier standby, when the
    // replacement won the Lease: that one keeps the count of any earlier spell as leader (the
    // API server outage scenario can hand it the Lease), and must not add to it.
    let standby = standby_reconciles(c, &new).await?;
    let moved: Vec<_> = standby
        .iter()
        .filter(|(pod, n)| **n != standby_after.get(*pod).copied().unwrap_or(0.0))
        .collect();
    ensure!(
        !standby.is_empty() && moved.is_empty(),
        "a standby reconciled after the hand-over: {moved:?} (before it: {standby_after:?})"
    );
    println!("  leader gauges after hand-over: {gauges:?}; standby reconciles {standby:?}");
    c.kubectl(&[
        "-n",
        "default",
        "delete",
        "wasmapp",
        "e2e-handover",
        "e2e-before",
        "--wait=true",
        "--timeout=60s",
    ])?;
    Ok(())
}

const GOOD_IMAGE: &str = "docker.io/wasmkube/node-installer:0.1.0";
/// Not a valid reference (upper case): kubelet reports InvalidImageName without any network.
const BAD_IMAGE: &str = "docker.io/wasmkube/Node-Installer:0.1.0";

fn set_installer_image(c: &Cluster, image: &str) -> Result<()> {
    set_operator_env(c, &format!("WASMKUBE_INSTALLER_IMAGE={image}"))
}

pub async fn bad_installer_image(c: &Cluster) -> Result<()> {
    set_installer_image(c, BAD_IMAGE)?;
    let outcome = async {
        let reason = node::wait_failed(c, Duration::from_secs(180)).await?;
        ensure!(
            reason.starts_with("InstallerCannotStart") && reason.contains("InvalidImageName"),
            "reason {reason:?}"
        );
        Ok(())
    }
    .await;
    set_installer_image(c, GOOD_IMAGE)?;
    outcome?;
    let annotations = node::wait_state(c, "ready", Duration::from_secs(240)).await?;
    ensure!(
        !annotations.contains_key(RUNTIME_REASON_ANNOTATION),
        "the failure reason stayed after recovery: {annotations:?}"
    );
    let pods = node::installer_pods(c, "install").await?;
    let result = node::installer_result(pods.first().context("no install pod")?)?;
    println!("  installer result after recovery: {}", result["state"]);
    ensure!(
        result["state"] == "unchanged",
        "a re-run on a provisioned node changed something: {result}"
    );
    Ok(())
}

/// Container ids and restart counts of the operator's pods (ordinary runc pods).
pub async fn runc_pods(c: &Cluster) -> Result<BTreeMap<String, (String, i32)>> {
    let mut out = BTreeMap::new();
    for p in operator_pods(c).await? {
        let st = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|s| s.first())
            .context("operator pod without container status")?;
        out.insert(
            p.name_any(),
            (
                st.container_id.clone().unwrap_or_default(),
                st.restart_count,
            ),
        );
    }
    Ok(out)
}

/// No operator container that ran during the suite (replaced pods and previous runs included,
/// see [`save_operator_logs`]) logged a 403 (a missing permission, or a refusal in a namespace
/// being deleted, which the operator skips quietly), and none logged nothing.
pub async fn no_forbidden(c: &Cluster) -> Result<()> {
    save_operator_logs(c)?;
    let saved = c
        .saved_logs
        .lock()
        .map_err(|_| anyhow::anyhow!("log store poisoned"))?
        .clone();
    ensure!(!saved.is_empty(), "no operator logs were read");
    for (container, logs) in &saved {
        ensure!(
            !logs.trim().is_empty(),
            "{container} logged nothing (not even its start-up line)"
        );
        // Neither a missing permission nor noise about namespaces being deleted under live
        // WasmApps (the suite does that): the operator skips those quietly.
        let restarts = c
            .api_restarts
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        let during_a_restart = |line: &str| {
            let at: String = line
                .split("\"timestamp\":\"")
                .nth(1)
                .unwrap_or_default()
                .chars()
                .take(19)
                .collect();
            at.len() == 19
                && restarts
                    .iter()
                    .any(|(from, to)| from.as_str() <= at.as_str() && at.as_str() <= to.as_str())
        };
        let (allowed, forbidden): (Vec<&str>, Vec<&str>) = logs
            .lines()
            .filter(|l| l.contains("Forbidden") || l.contains("forbidden"))
            .partition(|l| during_a_restart(l));
        if !allowed.is_empty() {
            println!(
                "  {container}: {} 403s while the API server restarted (its RBAC cache not yet filled), allowed",
                allowed.len()
            );
        }
        ensure!(
            forbidden.is_empty(),
            "{container}: {}",
            forbidden.join("\n")
        );
        println!(
            "  {container}: {} log lines, no Forbidden",
            logs.lines().count()
        );
    }
    Ok(())
}
