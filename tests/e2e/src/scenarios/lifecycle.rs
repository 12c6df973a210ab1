//! Operator lifecycle: leader hand-over, a broken installer image, no Forbidden in the logs.
use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, ResourceExt};
use wasmkube_operator::names::{FIELD_MANAGER, RUNTIME_REASON_ANNOTATION};

use super::install::{leader, operator_available, operator_pods, set_operator_env, NS};
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

pub async fn leader_handover(c: &Cluster) -> Result<()> {
    operator_available(c, Duration::from_secs(60)).await?;
    let old = leader(c).await?.context("no leader")?;
    let gauges = leader_gauges(c, &operator_pods(c).await?)?;
    ensure!(
        exactly_one_leader(&gauges).as_ref() == Some(&old),
        "leader gauges {gauges:?}, lease {old}"
    );
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
    let file = std::env::temp_dir().join(format!("wk-e2e-handover-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        "apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata:\n  name: e2e-handover\n  namespace: default\n\
         spec:\n  image: docker.io/wasmkube/hello-http:0.1.0\n  replicas: 1\n",
    )?;
    let path = file.to_string_lossy().into_owned();
    c.kubectl(&["apply", "-f", &path])?;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
    let d = within(
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
    let writers: Vec<(String, String)> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .map(|m| {
            (
                m.operation.unwrap_or_default(),
                m.subresource.unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        writers
            .iter()
            .filter(|(op, sub)| op == "Apply" && sub.is_empty())
            .count()
            == 1,
        "the operator's writes to the Deployment: {writers:?}"
    );
    // Once the replacement pod is up, still exactly one replica believes it leads.
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
    println!("  leader gauges after hand-over: {gauges:?}");
    c.kubectl(&["delete", "-f", &path, "--wait=true", "--timeout=60s"])?;
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

pub async fn no_forbidden(c: &Cluster) -> Result<()> {
    for p in operator_pods(c).await? {
        let logs = c.kubectl(&["-n", NS, "logs", &p.name_any()])?;
        let bad: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("Forbidden") || l.contains("forbidden"))
            .collect();
        ensure!(bad.is_empty(), "{}: {}", p.name_any(), bad.join("\n"));
        println!(
            "  {}: {} log lines, no Forbidden",
            p.name_any(),
            logs.lines().count()
        );
    }
    Ok(())
}
