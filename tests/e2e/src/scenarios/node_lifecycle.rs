//! The node lifecycle on a real cluster: installer pods that the API refuses (Pod Security),
//! opt-out that drains wasm pods before the uninstall, a rollout that waits for its slot,
//! re-opting in while the runtime is being removed, and removing wasmkube with its script.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    api::{DeleteParams, ListParams, PostParams},
    Api, ResourceExt,
};
use wasmkube_operator::names::{REMOVING_TAINT, RUNTIME_CLASS, RUNTIME_LABEL, WASM_NODE};

use super::install::{operator_available, NS};
use super::lifecycle::runc_pods;
use super::serving::{apply, cluster_ip, get, wasm_app_of};
use super::{CONTAINERD_CONFIG, ORIGINAL_CONFIG};
use crate::wait::{until, within, Poll};
use crate::{events, node, Cluster};

pub(super) fn annotate(c: &Cluster, on: bool) -> Result<()> {
    let arg = if on {
        format!("{WASM_NODE}=true")
    } else {
        format!("{WASM_NODE}-")
    };
    c.kubectl(&["annotate", "node", &c.node, &arg, "--overwrite"])?;
    Ok(())
}

fn pod_security(c: &Cluster, level: &str) -> Result<()> {
    c.kubectl(&[
        "label",
        "namespace",
        NS,
        &format!("pod-security.kubernetes.io/enforce={level}"),
        "--overwrite",
    ])?;
    Ok(())
}

pub async fn pod_security_rejection_is_reported(c: &Cluster) -> Result<()> {
    // The API server refuses the privileged installer pod: no pod ever exists on the node.
    pod_security(c, "baseline")?;
    let outcome = async {
        annotate(c, true)?;
        let reason = node::wait_failed(c, Duration::from_secs(150)).await?;
        ensure!(
            reason.starts_with("InstallerPodMissing") && reason.contains("PodSecurity"),
            "reason {reason:?} does not name the Pod Security refusal"
        );
        let note = within(
            "a WasmRuntimeInstallFailed event naming Pod Security",
            Duration::from_secs(30),
            || async {
                Ok(
                    match events::find_with(c, "WasmRuntimeInstallFailed", &c.node, "PodSecurity")
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
        Ok(())
    }
    .await;
    pod_security(c, "privileged")?;
    outcome?;
    // Opting out of a node that never got a pod ends clean, through the uninstaller.
    annotate(c, false)?;
    node::wait_clean(c, Duration::from_secs(180)).await?;
    ensure!(
        Some(&c.node_file_digest(CONTAINERD_CONFIG)?) == ORIGINAL_CONFIG.get(),
        "the containerd config changed"
    );
    Ok(())
}

const DRAIN_NS: &str = "wk-drain";

fn drain_app() -> String {
    format!(
        "apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata:\n  name: drain-me\n  \
         namespace: {DRAIN_NS}\nspec:\n  image: docker.io/wasmkube/hello-http:0.1.0\n  \
         replicas: 1\n  service:\n    type: None\n"
    )
}

/// The drain app's pods that are bound to the node.
async fn drain_pods_on_node(c: &Cluster) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), DRAIN_NS);
    Ok(pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=drain-me"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&c.node))
        .collect())
}

/// Opt-out with a wasm pod running: taint, eviction, and only then the uninstall.
pub async fn opt_out_drains_before_uninstalling(c: &Cluster) -> Result<()> {
    operator_available(c, Duration::from_secs(120)).await?;
    c.kubectl(&["create", "namespace", DRAIN_NS])?;
    let file = std::env::temp_dir().join("wasmkube-e2e-drain.yaml");
    std::fs::write(&file, drain_app())?;
    c.kubectl(&["apply", "-f", &file.to_string_lossy()])?;
    let running = within(
        "the drain app's pod to run",
        Duration::from_secs(90),
        || async {
            let pods = drain_pods_on_node(c).await?;
            let running: Vec<String> = pods
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .map(|p| p.name_any())
                .collect();
            Ok(match running.first() {
                Some(name) => Poll::Done(name.clone()),
                None => Poll::NotYet(format!("{} pods on the node", pods.len())),
            })
        },
    )
    .await?;
    println!("  wasm pod {running} runs; opting out");
    let runc_before = runc_pods(c).await?;

    // Watch the node go through draining → removing (a watch sees every state, however
    // short), and poll where the wasm pod is when the uninstall starts.
    let recorder = node::Recorder::start(c).await?;
    let results = node::Results::start(c, "uninstall").await?;
    annotate(c, false)?;
    let pod_at_removing = until(
        "the node to reach removing",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            let (label, _) = node::runtime(c).await?;
            Ok(match label.as_deref() {
                // A pod whose containers have stopped (the kubelet sets a terminal phase
                // before the object goes) no longer runs on the runtime.
                Some("removing") | None => Poll::Done(
                    drain_pods_on_node(c)
                        .await?
                        .iter()
                        .filter(|p| {
                            !matches!(
                                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                                Some("Succeeded" | "Failed")
                            )
                        })
                        .map(|p| {
                            format!(
                                "{} ({:?})",
                                p.name_any(),
                                p.status.as_ref().and_then(|s| s.phase.as_deref())
                            )
                        })
                        .collect::<Vec<_>>(),
                ),
                other => Poll::NotYet(format!("label {other:?}")),
            })
        },
    )
    .await?;
    // The watch may deliver `removing` a moment after the poll saw it.
    let seen = within(
        "the node watch to see the removal",
        Duration::from_secs(10),
        || async {
            let seen = recorder.seen();
            Ok(
                if seen
                    .iter()
                    .any(|(s, _)| matches!(s.as_deref(), Some("removing") | None))
                {
                    Poll::Done(seen)
                } else {
                    Poll::NotYet(format!("{seen:?}"))
                },
            )
        },
    )
    .await?;
    drop(recorder);
    let saw_taint = seen.iter().any(|(_, tainted)| *tainted);
    let states: Vec<Option<String>> = seen.into_iter().map(|(s, _)| s).collect();
    println!("  states seen: {states:?}");
    ensure!(
        states.iter().any(|s| s.as_deref() == Some("draining")),
        "the node never went through draining: {states:?}"
    );
    ensure!(saw_taint, "the node was never tainted {REMOVING_TAINT}");
    ensure!(
        pod_at_removing.is_empty(),
        "the uninstall started while wasm pods still ran on the node: {pod_at_removing:?}"
    );
    node::wait_clean(c, Duration::from_secs(240)).await?;
    assert_runtime_gone(c)?;
    // The uninstall pod's own word, not only its effects.
    let results = results.seen();
    let result = results
        .last()
        .context("no result from the uninstall pod was seen")?;
    ensure!(
        result["state"] == "uninstalled"
            && result["changes"].as_array().is_some_and(|c| !c.is_empty()),
        "the uninstall pod's result: {result}"
    );
    println!(
        "  uninstall pod's result: {} (changes {})",
        result["state"], result["changes"]
    );
    let runc_after = runc_pods(c).await?;
    ensure!(
        runc_before == runc_after,
        "runc pods changed across the uninstall: {runc_before:?} -> {runc_after:?}"
    );
    // The Deployment's replacement has nowhere to go: no node is ready for wasm.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), DRAIN_NS);
    let left = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=drain-me"))
        .await?;
    ensure!(
        left.items.iter().all(|p| p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none()),
        "a drain-me pod is bound after the opt-out"
    );
    // The app first (its children are collected), then the namespace: an operator reconciling
    // into a terminating namespace would be refused.
    c.kubectl(&[
        "-n",
        DRAIN_NS,
        "delete",
        "wasmapp",
        "drain-me",
        "--wait=true",
    ])?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(c.client.clone(), DRAIN_NS);
    within(
        "drain-me's Deployment to be collected",
        Duration::from_secs(60),
        || async {
            Ok(match deployments.get_opt("drain-me").await? {
                None => Poll::Done(()),
                Some(_) => Poll::NotYet("still there".into()),
            })
        },
    )
    .await?;
    c.kubectl(&["delete", "namespace", DRAIN_NS, "--wait=false"])?;
    Ok(())
}

/// The containerd config is the original; no shim, compiled-module cache or config backup is
/// left on the node, and containerd's CRI no longer lists the handler.
pub(super) fn assert_runtime_gone(c: &Cluster) -> Result<()> {
    let digest = c.node_file_digest(CONTAINERD_CONFIG)?;
    ensure!(
        Some(&digest) == ORIGINAL_CONFIG.get(),
        "containerd config after uninstall {digest}, before {:?}",
        ORIGINAL_CONFIG.get()
    );
    let leftovers = c.node_sh(
        "for p in /opt/wasmkube/bin/containerd-shim-wasmkube-v1 /usr/local/bin/containerd-shim-wasmkube-v1; do \
         if [ -e \"$p\" ] || [ -L \"$p\" ]; then echo \"$p\"; fi; done",
    )?;
    ensure!(leftovers.trim().is_empty(), "uninstall left {leftovers}");
    let leftovers = c.node_sh(&format!(
        "for p in {cache} {config}.wasmkube.orig {config}.wasmkube.absent; do \
         if [ -e \"$p\" ]; then echo \"$p\"; fi; done",
        cache = wasmkube_contract::names::CACHE_DIR,
        config = CONTAINERD_CONFIG,
    ))?;
    ensure!(leftovers.trim().is_empty(), "uninstall left {leftovers}");
    let info = c.node_sh("crictl info")?;
    ensure!(
        info.contains("\"runtimes\"") && !info.contains(wasmkube_contract::names::RUNTIME_TYPE),
        "containerd's CRI still lists the wasmkube runtime after the uninstall"
    );
    Ok(())
}

const PHANTOM: &str = "wasmkube-e2e-phantom";

/// A Node object without a kubelet, opted in: its install pod never runs, so it holds the one
/// rollout slot for as long as it exists.
async fn phantom_node(c: &Cluster) -> Result<()> {
    let nodes: Api<Node> = Api::all(c.client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": PHANTOM,
            "labels": {"kubernetes.io/hostname": PHANTOM, "kubernetes.io/os": "linux"},
            "annotations": {WASM_NODE: "true"}
        }
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    Ok(())
}

async fn label_of(c: &Cluster, name: &str) -> Result<Option<String>> {
    let nodes: Api<Node> = Api::all(c.client.clone());
    Ok(nodes.get(name).await?.labels().get(RUNTIME_LABEL).cloned())
}

/// Opt-in with the one slot taken waits in `queued`; freeing the slot installs; opting out and
/// back in during the removal ends ready and untainted.
pub async fn opt_in_waits_for_a_rollout_slot(c: &Cluster) -> Result<()> {
    phantom_node(c).await?;
    let outcome = async {
        within(
            "the phantom node to hold the slot",
            Duration::from_secs(30),
            || async {
                Ok(match label_of(c, PHANTOM).await?.as_deref() {
                    Some("pending") => Poll::Done(()),
                    other => Poll::NotYet(format!("{other:?}")),
                })
            },
        )
        .await?;
        annotate(c, true)?;
        node::wait_state(c, "queued", Duration::from_secs(30)).await?;
        // It stays queued while the slot is taken.
        let held = Instant::now();
        while held.elapsed() < Duration::from_secs(8) {
            let label = label_of(c, &c.node).await?;
            ensure!(
                label.as_deref() == Some("queued"),
                "the node left the queue while the slot was taken: {label:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    }
    .await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    nodes.delete(PHANTOM, &DeleteParams::default()).await?;
    outcome?;
    let started = Instant::now();
    node::wait_state(c, "ready", Duration::from_secs(180)).await?;
    println!(
        "  slot freed: ready {:.1} s after the phantom node was deleted",
        started.elapsed().as_secs_f64()
    );

    // Opt out, and opt back in as soon as the removal has begun.
    annotate(c, false)?;
    let caught = until(
        "the node to start its removal",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            // `removing`: the uninstaller is at work (no wasm pod runs, so `draining` is short).
            Ok(match label_of(c, &c.node).await?.as_deref() {
                Some(s @ "removing") => Poll::Done(s.to_string()),
                other => Poll::NotYet(format!("{other:?}")),
            })
        },
    )
    .await?;
    annotate(c, true)?;
    println!("  re-opted in during {caught}");
    node::wait_state(c, "ready", Duration::from_secs(240)).await?;
    let taints = node::taints(c).await?;
    ensure!(
        !taints.iter().any(|t| t == REMOVING_TAINT),
        "the removal taint stayed after re-opting in: {taints:?}"
    );
    let pods = node::installer_pods(c, "install").await?;
    let result = node::installer_result(pods.first().context("no install pod")?)?;
    ensure!(result["verified"] == true, "not verified: {result}");
    // Not only a label: a wasm app serves on the node again.
    let (ok, _, err) = apply(
        c,
        "re-opt-in",
        &wasm_app_of(
            "default",
            "e2e-re-opt-in",
            "docker.io/wasmkube/hello-http:0.1.0",
            "",
        ),
    )?;
    ensure!(ok, "applying WasmApp e2e-re-opt-in: {err}");
    let ip = cluster_ip(c, "default", "e2e-re-opt-in").await?;
    let answer = get(c, &ip, "/after-re-opt-in").await?;
    ensure!(
        answer.contains("path=/after-re-opt-in"),
        "after re-opting in the app answered {answer:?}"
    );
    println!("  a wasm app serves after the re-opt-in: {}", answer.trim());
    c.kubectl(&[
        "-n",
        "default",
        "delete",
        "wasmapp",
        "e2e-re-opt-in",
        "--wait=true",
        "--timeout=60s",
    ])?;
    Ok(())
}

/// The documented way to remove wasmkube (operator/README.md): `scripts/uninstall.sh` opts every
/// node out, waits until each is clean, then `kubectl delete -k manifests/`.
pub async fn uninstall_script_leaves_nodes_clean(c: &Cluster) -> Result<()> {
    let (label, _) = node::runtime(c).await?;
    ensure!(
        label.as_deref() == Some("ready"),
        "the node should still be provisioned before the removal (label {label:?})"
    );
    // A live WasmApp when the CRD goes: it is deleted with its CRD, and its children with it.
    c.fresh_namespace(UNINSTALL_NS)?;
    let (ok, _, err) = apply(
        c,
        "live-at-uninstall",
        &wasm_app_of(
            UNINSTALL_NS,
            "live",
            "docker.io/wasmkube/hello-http:0.1.0",
            "",
        ),
    )?;
    ensure!(ok, "applying WasmApp live: {err}");
    let ip = cluster_ip(c, UNINSTALL_NS, "live").await?;
    get(c, &ip, "/before-uninstall").await?;
    let out = std::process::Command::new("bash")
        .arg(c.repo.join("scripts/uninstall.sh"))
        .env("KUBECTL", c.kubectl_path())
        .current_dir(&c.repo)
        .output()
        .context("cannot run scripts/uninstall.sh")?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    ensure!(
        out.status.success(),
        "scripts/uninstall.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    node::wait_clean(c, Duration::from_secs(10)).await?;
    assert_runtime_gone(c)?;
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    within(
        "namespace wasmkube-system to be gone",
        Duration::from_secs(180),
        || async {
            Ok(match namespaces.get_opt(NS).await? {
                None => Poll::Done(()),
                Some(ns) => Poll::NotYet(format!("{:?}", ns.status.and_then(|s| s.phase))),
            })
        },
    )
    .await?;
    let classes: Api<k8s_openapi::api::node::v1::RuntimeClass> = Api::all(c.client.clone());
    ensure!(
        classes.get_opt(RUNTIME_CLASS).await?.is_none(),
        "the RuntimeClass stayed"
    );
    let pods: Api<Pod> = Api::all(c.client.clone());
    let left = pods
        .list(&ListParams::default().labels("app.kubernetes.io/part-of=wasmkube"))
        .await?;
    ensure!(
        left.items.is_empty(),
        "wasmkube pods left: {}",
        left.items.len()
    );
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(c.client.clone());
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(c.client.clone(), UNINSTALL_NS);
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(c.client.clone(), UNINSTALL_NS);
    within(
        "the CRD and the live WasmApp's children to be gone",
        Duration::from_secs(120),
        || async {
            let crd = crds.get_opt("wasmapps.wasmkube.dev").await?.is_some();
            let deployment = deployments.get_opt("live").await?.is_some();
            let service = services.get_opt("live").await?.is_some();
            Ok(if !crd && !deployment && !service {
                Poll::Done(())
            } else {
                Poll::NotYet(format!(
                    "CRD {crd}, Deployment {deployment}, Service {service}"
                ))
            })
        },
    )
    .await?;
    println!("  the live WasmApp went with its CRD, its Deployment and Service collected");
    c.kubectl(&["delete", "namespace", UNINSTALL_NS, "--wait=false"])?;
    Ok(())
}

/// Namespace of the WasmApp alive when [`uninstall_script_leaves_nodes_clean`] runs.
const UNINSTALL_NS: &str = "wk-uninstall";
