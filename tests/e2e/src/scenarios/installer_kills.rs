//! The installer SIGKILLed mid-run inside the cluster, as a node losing power or an OOM kill
//! would: the kubelet's retry converges, and containerd's config is never half-written or lost.
//!
//! The kills are the installer's own crash points (`WASMKUBE_INSTALLER_CRASH_AT`,
//! node-installer/src/crash_point.rs), set on the installer DaemonSet's container with
//! `kubectl set env` (a field the operator does not own, so its server-side apply keeps it).
//! `node-installer/tests/crash_points.rs` kills every step against a live containerd; this is
//! the same on a real node, with the operator and the kubelet doing the retrying.
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use wasmkube_contract::installer::CRASH_AT_ENV as CRASH_ENV;
use wasmkube_contract::names::RUNTIME_TYPE;
use wasmkube_operator::names::installer;

use super::install::NS;
use super::node_lifecycle::{annotate, assert_runtime_gone};
use super::{CONTAINERD_CONFIG, ORIGINAL_CONFIG};
use crate::wait::{within, Poll};
use crate::{node, Cluster};

/// Where the installer keeps the original config (node-installer's `atomic_write::backup_path`).
const CONFIG_BACKUP_SUFFIX: &str = ".wasmkube.orig";

/// Sets (or with `None` removes) the crash point on a DaemonSet's installer container.
fn set_crash_point(c: &Cluster, daemonset: &str, point: Option<&str>) -> Result<()> {
    let assignment = match point {
        Some(p) => format!("{CRASH_ENV}={p}"),
        None => format!("{CRASH_ENV}-"),
    };
    c.kubectl(&[
        "-n",
        NS,
        "set",
        "env",
        &format!("daemonset/{daemonset}"),
        "-c",
        installer::INIT_CONTAINER,
        &assignment,
    ])?;
    Ok(())
}

/// Waits until `results` saw an installer run killed at `point`; returns its last log lines.
async fn killed_at(results: &node::Results, point: &str) -> Result<String> {
    let needle = format!("crash point {point} reached");
    within(
        &format!("an installer run to die by SIGKILL at {point}"),
        Duration::from_secs(180),
        || async {
            let killed = results.killed();
            Ok(match killed.iter().find(|k| k.contains(&needle)) {
                Some(k) => Poll::Done(k.clone()),
                None => Poll::NotYet(format!("killed runs so far: {killed:?}")),
            })
        },
    )
    .await
}

/// The node's containerd config is whole: valid TOML that registers our runtime (the patched
/// file, not a partial one), and the backup beside it holds the original bytes.
fn config_whole_and_backed_up(c: &Cluster) -> Result<()> {
    let text = c.node_sh(&format!("cat {CONTAINERD_CONFIG}"))?;
    let doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{CONTAINERD_CONFIG} is not valid TOML after the kill"))?;
    ensure!(
        doc.to_string().contains(RUNTIME_TYPE),
        "{CONTAINERD_CONFIG} after the kill does not register {RUNTIME_TYPE}:\n{text}"
    );
    let backup = c.node_file_digest(&format!("{CONTAINERD_CONFIG}{CONFIG_BACKUP_SUFFIX}"))?;
    ensure!(
        Some(&backup) == ORIGINAL_CONFIG.get(),
        "the config backup after the kill is {backup}, the original {:?}",
        ORIGINAL_CONFIG.get()
    );
    Ok(())
}

/// Install killed after its config write: the kubelet's retry (which finds the config written
/// and so does not reach the point again) converges, ready and verified. Uninstall killed after
/// removing the shim: the next run converges to clean with the original bytes.
pub async fn installer_killed_mid_run_converges(c: &Cluster) -> Result<()> {
    node::wait_clean(c, Duration::from_secs(60)).await?;
    let outcome = async {
        set_crash_point(c, installer::INSTALL_DAEMONSET, Some("after-config-write"))?;
        let results = node::Results::start(c, "install").await?;
        annotate(c, true)?;
        let kill = killed_at(&results, "after-config-write").await?;
        println!("  install killed: {kill}");
        config_whole_and_backed_up(c)?;
        let annotations = node::wait_state(c, "ready", Duration::from_secs(180)).await?;
        ensure!(
            !annotations.contains_key(wasmkube_operator::names::RUNTIME_REASON_ANNOTATION),
            "a failure reason stayed on the ready node: {annotations:?}"
        );
        let verified = results
            .seen()
            .into_iter()
            .find(|r| r["verified"] == true)
            .with_context(|| format!("no verified install result: {:?}", results.seen()))?;
        println!("  the kubelet's retry converged: {}", verified["state"]);

        set_crash_point(
            c,
            installer::UNINSTALL_DAEMONSET,
            Some("after-shim-removed"),
        )?;
        let results = node::Results::start(c, "uninstall").await?;
        annotate(c, false)?;
        let kill = killed_at(&results, "after-shim-removed").await?;
        println!("  uninstall killed: {kill}");
        // This point is reached on every run (the shim's removal is idempotent), so the next
        // run goes without it, as after a power loss: the DaemonSet replaces the pod.
        set_crash_point(c, installer::UNINSTALL_DAEMONSET, None)?;
        node::wait_clean(c, Duration::from_secs(180)).await?;
        assert_runtime_gone(c)?;
        println!("  the retry converged: the original config, nothing of wasmkube left");
        Ok(())
    }
    .await;
    for ds in [installer::INSTALL_DAEMONSET, installer::UNINSTALL_DAEMONSET] {
        set_crash_point(c, ds, None)?;
    }
    outcome
}
