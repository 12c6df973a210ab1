//! Installing wasmkube and provisioning the node.
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::{
    apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod, node::v1::RuntimeClass,
};
use kube::{api::ListParams, Api, ResourceExt};
use wasmkube_operator::names::{
    RUNTIME_CLASS, RUNTIME_LABEL, RUNTIME_REASON_ANNOTATION, SHIM_VERSION_ANNOTATION, WASM_NODE,
};

use super::{CONTAINERD_CONFIG, ORIGINAL_CONFIG};
use crate::wait::{within, Poll};
use crate::Cluster;
use crate::{events, node};

pub const NS: &str = "wasmkube-system";
pub const OPERATOR: &str = "wasmkube-operator";
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=wasmkube-operator";

/// The operator's running pods.
pub async fn operator_pods(c: &Cluster) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    Ok(pods
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// Waits until the operator Deployment has all its replicas ready and up to date.
pub async fn operator_available(c: &Cluster, timeout: Duration) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), NS);
    within(
        "the operator Deployment to be available",
        timeout,
        || async {
            let d = deployments.get(OPERATOR).await?;
            let want = d.spec.replicas.unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            let generation = d.metadata.generation;
            let ok = st.observed_generation == generation
                && st.updated_replicas == Some(want)
                && st.ready_replicas == Some(want)
                && st.replicas == Some(want);
            Ok(if ok {
                Poll::Done(())
            } else {
                Poll::NotYet(format!("{st:?}"))
            })
        },
    )
    .await
}

/// The pod holding the leader Lease.
pub async fn leader(c: &Cluster) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), NS);
    Ok(leases
        .get_opt(OPERATOR)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

pub async fn operator_installs(c: &Cluster) -> Result<()> {
    // The node must start out clean (a previous run's leftovers would make this a lie).
    let (label, annotations) = node::runtime(c).await?;
    ensure!(
        label.is_none() && !annotations.contains_key(WASM_NODE),
        "node {} is not clean before the suite: label {label:?}, annotations {annotations:?}",
        c.node
    );
    let digest = c.node_file_digest(CONTAINERD_CONFIG)?;
    ORIGINAL_CONFIG.get_or_init(|| digest.clone());
    println!("  node {}: {CONTAINERD_CONFIG} sha256 {digest}", c.node);

    let out = c.kubectl(&["apply", "-k", "manifests/"])?;
    print!("{out}");
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/wasmapps.wasmkube.dev",
        "--timeout=60s",
    ])?;
    operator_available(c, Duration::from_secs(180)).await?;

    let pods = operator_pods(c).await?;
    ensure!(
        pods.len() == 2,
        "expected 2 operator pods, found {}",
        pods.len()
    );
    for p in &pods {
        let spec = p.spec.as_ref().context("pod spec")?;
        ensure!(
            spec.service_account_name.as_deref() == Some(OPERATOR),
            "operator pod {} runs as {:?}",
            p.name_any(),
            spec.service_account_name
        );
    }
    let names: Vec<String> = pods.iter().map(ResourceExt::name_any).collect();
    let holder = within(
        "an operator pod to hold the leader Lease",
        Duration::from_secs(60),
        || async {
            Ok(match leader(c).await? {
                Some(h) if names.contains(&h) => Poll::Done(h),
                other => Poll::NotYet(format!("holder {other:?}, pods {names:?}")),
            })
        },
    )
    .await?;
    println!("  leader: {holder}");

    let classes: Api<RuntimeClass> = Api::all(c.client.clone());
    let rc = within(
        "the wasmkube RuntimeClass",
        Duration::from_secs(60),
        || async {
            Ok(match classes.get_opt(RUNTIME_CLASS).await? {
                Some(rc) => Poll::Done(rc),
                None => Poll::NotYet("absent".into()),
            })
        },
    )
    .await?;
    ensure!(
        rc.handler == "wasmkube",
        "RuntimeClass handler {}",
        rc.handler
    );
    let selector = rc
        .scheduling
        .and_then(|s| s.node_selector)
        .unwrap_or_default();
    ensure!(
        selector.get(RUNTIME_LABEL).map(String::as_str) == Some("ready"),
        "RuntimeClass nodeSelector {selector:?}"
    );
    Ok(())
}

pub async fn broken_config_fails(c: &Cluster) -> Result<()> {
    let saved = format!("{CONTAINERD_CONFIG}.e2e-saved");
    c.node_sh(&format!(
        "cp -p {CONTAINERD_CONFIG} {saved} && printf 'version = 2\\n[plugins\\nbroken = \\n' > {CONTAINERD_CONFIG}"
    ))?;
    let broken = c.node_file_digest(CONTAINERD_CONFIG)?;
    let outcome = async {
        c.kubectl(&[
            "annotate",
            "node",
            &c.node,
            &format!("{WASM_NODE}=true"),
            "--overwrite",
        ])?;
        let reason = node::wait_failed(c, Duration::from_secs(120)).await?;
        ensure!(
            reason.starts_with("ParseError"),
            "reason {reason:?} does not name the parse error"
        );
        let note = within(
            "a WasmRuntimeInstallFailed event",
            Duration::from_secs(30),
            || async {
                Ok(
                    match events::find_with(c, "WasmRuntimeInstallFailed", &c.node, "ParseError")
                        .await?
                    {
                        Some(n) => Poll::Done(n),
                        None => Poll::NotYet("no event".into()),
                    },
                )
            },
        )
        .await?;
        println!("  event: {note}");
        // The installer refused: the broken file is exactly as we wrote it.
        ensure!(
            c.node_file_digest(CONTAINERD_CONFIG)? == broken,
            "the installer wrote to a config it could not parse"
        );
        Ok(())
    }
    .await;
    c.node_sh(&format!("mv -f {saved} {CONTAINERD_CONFIG}"))?;
    outcome?;
    ensure!(
        Some(&c.node_file_digest(CONTAINERD_CONFIG)?) == ORIGINAL_CONFIG.get(),
        "config not restored"
    );
    // Retry at once instead of waiting for kubelet's back-off: a new installer pod.
    c.kubectl(&[
        "-n",
        NS,
        "delete",
        "pod",
        "-l",
        "app.kubernetes.io/component=install",
        "--wait=false",
    ])?;
    Ok(())
}

pub async fn opt_in_provisions(c: &Cluster) -> Result<()> {
    let annotations = node::wait_state(c, "ready", Duration::from_secs(240)).await?;
    let version = annotations
        .get(SHIM_VERSION_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    println!("  shim: {version}");
    ensure!(
        version.starts_with("0.1.0@sha256:"),
        "shim-version annotation {version:?}"
    );
    ensure!(
        !annotations.contains_key(RUNTIME_REASON_ANNOTATION),
        "a stale failure reason stayed: {annotations:?}"
    );
    let pods = node::installer_pods(c, "install").await?;
    let pod = pods.first().context("no install pod on the node")?;
    let spec = pod.spec.as_ref().context("install pod spec")?;
    ensure!(
        spec.priority_class_name.as_deref() == Some("wasmkube-node-critical")
            && spec.priority == Some(1_000_000_000),
        "install pod priority {:?} / {:?}",
        spec.priority_class_name,
        spec.priority
    );
    let result = node::installer_result(pod)?;
    println!("  installer result: {result}");
    ensure!(result["state"] == "installed", "state {}", result["state"]);
    ensure!(result["restarted"] == true, "containerd was not restarted");
    ensure!(result["verified"] == true, "the handler was not verified");
    let check = result["wasmCheck"].as_str().unwrap_or_default();
    ensure!(
        check.starts_with("a wasm pod ran /usr/local/share/wasmkube/check.wasm"),
        "the installer did not run a wasm pod before reporting: {check:?}"
    );
    let config = c.node_sh(&format!("cat {CONTAINERD_CONFIG}"))?;
    ensure!(
        config.contains("io.containerd.wasmkube.v1") && config.contains("wasmkube"),
        "the node's config has no wasmkube runtime:\n{config}"
    );
    ensure!(
        c.node_file_digest(&format!("{CONTAINERD_CONFIG}.wasmkube.orig"))?
            .as_str()
            == ORIGINAL_CONFIG
                .get()
                .map(String::as_str)
                .unwrap_or_default(),
        "the installer's backup is not the original config"
    );
    c.node_sh("test -x /opt/wasmkube/bin/containerd-shim-wasmkube-v1")?;
    Ok(())
}
