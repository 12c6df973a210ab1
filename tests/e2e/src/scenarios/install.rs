//! Installing wasmkube and provisioning the node.
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::{
    apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod, node::v1::RuntimeClass,
};
use kube::{
    api::{DeleteParams, ListParams, PostParams},
    Api, ResourceExt,
};
use wasmkube_operator::names::{
    installer, RUNTIME_CLASS, RUNTIME_LABEL, RUNTIME_REASON_ANNOTATION, SHIM_VERSION_ANNOTATION,
    WASM_NODE,
};

use super::{CONTAINERD_CONFIG, ORIGINAL_CONFIG};
use crate::wait::{within, Poll};
use crate::Cluster;
use crate::{events, node};

pub const NS: &str = "wasmkube-system";
pub const OPERATOR: &str = "wasmkube-operator";
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=wasmkube-operator";

/// The operator's running pods.
/// `kubectl set env` on the operator's Deployment: `NAME=value`, or `NAME-` to remove it.
pub fn set_operator_env(c: &Cluster, assignment: &str) -> Result<()> {
    // The rollout replaces the operator's pods: keep what they logged.
    save_operator_logs(c)?;
    c.kubectl(&[
        "-n",
        NS,
        "set",
        "env",
        &format!("deployment/{OPERATOR}"),
        assignment,
    ])?;
    Ok(())
}

/// Keeps the logs of every operator container now on the cluster (and the previous run of a
/// restarted one) in `c.saved_logs`, so a check after the pods are replaced still reads them.
pub fn save_operator_logs(c: &Cluster) -> Result<()> {
    let listing = c.kubectl(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        OPERATOR_SELECTOR,
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}|{.status.containerStatuses[0].containerID}|{.status.containerStatuses[0].lastState.terminated.containerID}{\"\\n\"}{end}",
    ])?;
    // Keyed by container id: a container killed twice still has the logs of each run saved.
    let short = |id: &str| {
        id.rsplit('/')
            .next()
            .unwrap_or(id)
            .chars()
            .take(12)
            .collect::<String>()
    };
    for line in listing.lines() {
        let mut parts = line.split('|');
        let (Some(pod), current, previous) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let mut runs = Vec::new();
        if let Some(id) = current.filter(|id| !id.is_empty()) {
            runs.push((format!("{pod}/operator {}", short(id)), vec!["logs", pod]));
        }
        if let Some(id) = previous.filter(|id| !id.is_empty()) {
            runs.push((
                format!("{pod}/operator {}", short(id)),
                vec!["logs", "--previous", pod],
            ));
        }
        for (key, args) in runs {
            let mut full = vec!["-n", NS];
            full.extend(args);
            // A pod that is going away may no longer have logs: keep what was saved before. A
            // container that started a moment ago may not have logged its first line yet: an
            // empty read is retried for 10 s before it is kept (and fails the check).
            let mut read = c.kubectl(&full);
            for _ in 0..10 {
                if !matches!(&read, Ok(text) if text.trim().is_empty()) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
                read = c.kubectl(&full);
            }
            if let Ok(text) = read {
                let mut saved = c
                    .saved_logs
                    .lock()
                    .map_err(|_| anyhow::anyhow!("log store poisoned"))?;
                // The key names the container: read as the current one and later as the
                // previous one, it is one entry.
                saved.insert(key, text);
            }
        }
    }
    Ok(())
}

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
    // The kubelet restarts the failed installer at once (then with back-off): under the
    // installer's host lock, so that no run of the old pod installs with the restored config;
    // the next scenario wants the fresh pod's own install (config patched, containerd restarted).
    node::hold_installer_lock(c)?;
    let restored = async {
        c.node_sh(&format!("mv -f {saved} {CONTAINERD_CONFIG}"))?;
        // A new installer pod instead of the kubelet's back-off; the old one (at most waiting for
        // the lock) is gone before the lock is released.
        c.kubectl(&[
            "-n",
            NS,
            "delete",
            "pod",
            "-l",
            "app.kubernetes.io/component=install",
            "--wait=true",
            "--timeout=60s",
        ])
    }
    .await;
    node::release_installer_lock(c)?;
    outcome?;
    restored?;
    ensure!(
        Some(&c.node_file_digest(CONTAINERD_CONFIG)?) == ORIGINAL_CONFIG.get(),
        "config not restored"
    );
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
        check
            .starts_with("a wasm container ran /check.wasm through the wasmkube handler's runtime")
            && check.contains("exited 42"),
        "the installer did not run a wasm container before reporting: {check:?}"
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

/// The installer's `check` verb in a pod on the node, while its kubelet runs: 50 wasm checks in
/// containerd namespace `wasmkube-check`, none stopped by the kubelet's housekeeping (issue 15:
/// the CRI check in `k8s.io` was, at random).
pub async fn wasm_check_survives_the_kubelet(c: &Cluster) -> Result<()> {
    const RUNS: u32 = 50;
    const POD: &str = "wasmkube-check-50";
    let installers = node::installer_pods(c, "install").await?;
    let image = installers
        .first()
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.image.clone())
        .context("no install pod on the node to take the installer image from")?;
    // As the installer DaemonSet runs it (operator/src/builders/installer.rs): privileged, the
    // host's `/` at /host, no API access.
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": POD, "namespace": NS },
        "spec": {
            "nodeName": c.node,
            "restartPolicy": "Never",
            "serviceAccountName": installer::SERVICE_ACCOUNT,
            "automountServiceAccountToken": false,
            "tolerations": [{ "operator": "Exists" }],
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "check",
                "image": image,
                "command": [
                    installer::BINARY, "check", "--repeat", RUNS.to_string(),
                    "--host-root", "/host", "--result-file", "/dev/termination-log"
                ],
                "securityContext": { "privileged": true },
                "volumeMounts": [{ "name": "host-root", "mountPath": "/host" }]
            }],
            "volumes": [{
                "name": "host-root",
                "hostPath": { "path": "/", "type": "Directory" }
            }]
        }
    }))?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let _ = pods.delete(POD, &DeleteParams::default()).await;
    within(
        "an earlier check pod to be gone",
        Duration::from_secs(60),
        || async {
            Ok(match pods.get_opt(POD).await? {
                None => Poll::Done(()),
                Some(_) => Poll::NotYet("still there".into()),
            })
        },
    )
    .await?;
    pods.create(&PostParams::default(), &pod).await?;
    let phase = within(
        &format!("the check pod to finish {RUNS} runs"),
        Duration::from_secs(600),
        || async {
            let p = pods.get(POD).await?;
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            Ok(match phase.as_str() {
                "Succeeded" | "Failed" => Poll::Done(phase),
                _ => Poll::NotYet(phase),
            })
        },
    )
    .await?;
    let log = c.kubectl(&["-n", NS, "logs", POD])?;
    let passes = log
        .lines()
        .filter(|l| l.starts_with("check ") && l.contains(": passed: "))
        .count();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains(": FAILED: ")).collect();
    let summary = log
        .lines()
        .find(|l| l.contains("wasm checks passed"))
        .unwrap_or_default();
    println!("  {summary}; pod {phase}");
    ensure!(
        phase == "Succeeded" && passes == RUNS as usize && failures.is_empty(),
        "{passes} of {RUNS} checks passed, pod {phase}; failures: {failures:#?}\n{log}"
    );
    ensure!(
        summary.starts_with(&format!("{RUNS} of {RUNS} wasm checks passed")),
        "summary {summary:?}"
    );
    // Nothing of the checks is left, neither in containerd nor on the host.
    let left = c.node_sh(
        "ctr -n wasmkube-check containers ls -q 2>/dev/null; ls /var/lib/wasmkube/check 2>/dev/null; true",
    )?;
    ensure!(left.trim().is_empty(), "the checks left: {left}");
    pods.delete(POD, &DeleteParams::default()).await?;
    Ok(())
}
