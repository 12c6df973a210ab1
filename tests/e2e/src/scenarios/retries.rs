//! An install attempt that fails and is retried: the node stays `pending` (never `failed`) with
//! the reason and the attempt recorded, then turns `ready` when the kubelet's retry passes.
//!
//! The failure is real and retryable: the test holds the installer's host lock
//! ([`node::hold_installer_lock`]) while the operator runs with a short
//! `--installer-lock-timeout`, so the attempt gives up with `Locked`; releasing the lock lets the
//! next attempt pass.
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use wasmkube_operator::names::{RUNTIME_ATTEMPTS_ANNOTATION, RUNTIME_REASON_ANNOTATION};

use super::install::{operator_available, set_operator_env};
use crate::wait::{within, Poll};
use crate::{events, node, Cluster};

/// The operator setting that reaches the installer pods as `--lock-timeout`.
const LOCK_TIMEOUT_ENV: &str = "WASMKUBE_INSTALLER_LOCK_TIMEOUT";

fn set_lock_timeout(c: &Cluster, secs: Option<u32>) -> Result<()> {
    let assignment = match secs {
        Some(s) => format!("{LOCK_TIMEOUT_ENV}={s}"),
        None => format!("{LOCK_TIMEOUT_ENV}-"),
    };
    set_operator_env(c, &assignment)
}

/// Waits until the node's install pod runs the installer with (or without) `--lock-timeout`
/// and has reported, and the node is `ready`.
async fn settled(c: &Cluster, with_lock_timeout: bool) -> Result<()> {
    within(
        "the install pod of the current DaemonSet to report",
        Duration::from_secs(240),
        || async {
            let pods = node::installer_pods(c, "install").await?;
            let Some(pod) = pods.first() else {
                return Ok(Poll::NotYet("no install pod".into()));
            };
            let command = pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .and_then(|i| i.first())
                .and_then(|i| i.command.clone())
                .unwrap_or_default();
            let has = command.iter().any(|a| a == "--lock-timeout");
            Ok(match node::installer_result(pod) {
                Ok(result) if has == with_lock_timeout => Poll::Done(result),
                Ok(_) => Poll::NotYet(format!("an older pod: {command:?}")),
                Err(e) => Poll::NotYet(format!("{e:#}")),
            })
        },
    )
    .await?;
    node::wait_state(c, "ready", Duration::from_secs(120)).await?;
    Ok(())
}

pub async fn retried_install_stays_pending_then_ready(c: &Cluster) -> Result<()> {
    node::wait_state(c, "ready", Duration::from_secs(60)).await?;
    node::hold_installer_lock(c)?;
    let outcome = async {
        // A new DaemonSet template: the node's install pod is replaced and runs again, and
        // its first attempt cannot get the lock within 5 s.
        set_lock_timeout(c, Some(5))?;
        let pending = within(
            "the node to be pending with a Locked failure and its attempt",
            Duration::from_secs(240),
            || async {
                let (label, annotations) = node::runtime(c).await?;
                let reason = annotations.get(RUNTIME_REASON_ANNOTATION);
                let attempts = annotations.get(RUNTIME_ATTEMPTS_ANNOTATION);
                ensure!(
                    label.as_deref() != Some("failed"),
                    "a retryable failure made the node failed: {annotations:?}"
                );
                Ok(match (label.as_deref(), reason, attempts) {
                    (Some("pending"), Some(r), Some(n)) if r.starts_with("Locked") => {
                        Poll::Done((r.clone(), n.clone()))
                    }
                    _ => Poll::NotYet(format!("label {label:?}, annotations {annotations:?}")),
                })
            },
        )
        .await?;
        println!("  pending, attempt {}: {}", pending.1, pending.0);
        let note = within(
            "a WasmRuntimeInstallRetrying event",
            Duration::from_secs(30),
            || async {
                Ok(
                    match events::find_with(c, "WasmRuntimeInstallRetrying", &c.node, "Locked")
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
        ensure!(note.contains("will retry"), "event note {note:?}");
        Ok(())
    }
    .await;
    node::release_installer_lock(c)?;
    if outcome.is_err() {
        set_lock_timeout(c, None)?;
    }
    outcome?;

    // The kubelet's next attempt (after its back-off) gets the lock and passes.
    let annotations = node::wait_state(c, "ready", Duration::from_secs(240)).await?;
    ensure!(
        !annotations.contains_key(RUNTIME_REASON_ANNOTATION)
            && !annotations.contains_key(RUNTIME_ATTEMPTS_ANNOTATION),
        "the failure stayed on a ready node: {annotations:?}"
    );
    let pods = node::installer_pods(c, "install").await?;
    let pod = pods.first().context("no install pod")?;
    let restarts = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|s| s.first())
        .map_or(0, |s| s.restart_count);
    let result = node::installer_result(pod)?;
    println!(
        "  ready after {} installer restart(s): {}",
        restarts, result["state"]
    );
    ensure!(restarts >= 1, "the install passed without a retry");
    ensure!(result["verified"] == true, "not verified: {result}");
    let ready = events::find_with(c, "WasmRuntimeReady", &c.node, "failed)")
        .await?
        .context("no WasmRuntimeReady event naming the failed attempts")?;
    println!("  event: {ready}");

    // Back to the default lock timeout: one more (unchanged) run.
    set_lock_timeout(c, None)?;
    operator_available(c, Duration::from_secs(180)).await?;
    settled(c, false).await
}
