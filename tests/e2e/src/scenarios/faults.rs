//! Faults injected under serving wasm pods, with what a user sees and proof that nothing was lost.
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::{api::ListParams, Api};
use wasmkube_operator::names::labels;

use super::registry::push_guest;
use super::serving::{apply, cluster_ip, get, ready_replicas, ready_replicas_within, wasm_app_of};
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
    // `[c]`: the pattern does not match the shell that runs pgrep. `--ns $$ --nslist mnt`: the
    // node's own processes (the local cluster's nodes share one PID namespace).
    let out = c.node_sh(
        "pgrep --ns $$ --nslist mnt -f '[c]ontainerd-shim-wasmkube-v1 -namespace' || true",
    )?;
    Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// One loop of GETs through the Service from the node, counting answers and failures (each
/// request may take 2 s) into [`LOAD_COUNTS`] until [`LOAD_STOP`] appears.
pub(super) fn start_load(c: &Cluster, ip: &str) -> Result<()> {
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
pub(super) async fn stop_load(c: &Cluster) -> Result<(u64, u64)> {
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
    ready_replicas(c, NS, APP, 2).await?;
    let ip = cluster_ip(c, NS, APP).await?;
    get(c, &ip, "/hello").await?;
    let before = pods(c).await?;
    let app_shims: BTreeSet<u32> = shims(c)?.difference(&shims_before_app).copied().collect();
    ensure!(
        !app_shims.is_empty(),
        "no shim process appeared for the app's pods"
    );
    let containerd_before = c.node_sh("pgrep --ns $$ --nslist mnt -x containerd | sort || true")?;

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
            let pid = c.node_sh("pgrep --ns $$ --nslist mnt -x containerd | sort || true")?;
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

/// The operator pods: (name, uid, restartCount, pod IP).
async fn operator_pods_now(c: &Cluster) -> Result<Vec<(String, String, i32, String)>> {
    let mut out: Vec<_> = super::install::operator_pods(c)
        .await?
        .iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let restarts = status
                .container_statuses
                .as_ref()
                .and_then(|s| s.first())
                .map(|s| s.restart_count)
                .unwrap_or(-1);
            (
                p.metadata.name.clone().unwrap_or_default(),
                p.metadata.uid.clone().unwrap_or_default(),
                restarts,
                status.pod_ip.unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `GET http://IP:8080/PATH` from the node: (status, body).
fn operator_endpoint(c: &Cluster, ip: &str, path: &str) -> Result<(u16, String)> {
    let out = c.node_sh(&format!(
        "curl -sS --max-time 3 -w '\\n%{{http_code}}' 'http://{ip}:8080{path}' || true"
    ))?;
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

/// The API server stopped for 30 s (a control-plane restart): the leader's `/readyz` says its
/// watches fail while `/healthz` stays 200 (so the kubelet restarts nothing); once the API
/// server is back the operator is ready again without a restart (the same pods, restartCount
/// unchanged, one Lease holder), reconciles a change made afterwards, and the node and the
/// WasmApp are where they were.
pub async fn apiserver_outage_recovers_without_restart(c: &Cluster) -> Result<()> {
    const SECONDS: u64 = 30;
    c.fresh_namespace(NS)?;
    let (ok, _, err) = apply(
        c,
        "outage",
        &wasm_app_of(NS, APP, "docker.io/wasmkube/hello-http:0.1.0", ""),
    )?;
    ensure!(ok, "applying WasmApp {APP}: {err}");
    ready_replicas(c, NS, APP, 1).await?;
    super::install::operator_available(c, Duration::from_secs(60)).await?;
    let before = operator_pods_now(c).await?;
    let leader = super::install::leader(c)
        .await?
        .context("no operator holds the Lease")?;
    let leader_ip = before
        .iter()
        .find(|(name, ..)| *name == leader)
        .map(|(.., ip)| ip.clone())
        .context("the leader is not among the operator pods")?;
    ensure!(
        operator_endpoint(c, &leader_ip, "/readyz")?.0 == 200,
        "the leader is not ready before the outage"
    );

    // WASMKUBE_E2E_APISERVER_OUTAGE (kind: a command that moves the static pod's manifest away
    // and back), `{seconds}` replaced; else the local cluster's script.
    let mut outage = match std::env::var("WASMKUBE_E2E_APISERVER_OUTAGE") {
        Ok(t) => {
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", &t.replace("{seconds}", &SECONDS.to_string())]);
            cmd
        }
        Err(_) => {
            let mut cmd =
                std::process::Command::new(c.repo.join("tests/cluster/apiserver-outage.sh"));
            cmd.arg(SECONDS.to_string());
            cmd
        }
    };
    let started = std::time::Instant::now();
    let outage_from = utc_second();
    let mut child = outage
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the API server outage")?;
    // During the outage: the leader's /readyz turns 503 naming its failing watches; /healthz
    // stays 200 for every operator pod.
    let mut unready: Option<(f64, String)> = None;
    let mut healthz_failures = Vec::new();
    while child.try_wait()?.is_none() {
        if unready.is_none() {
            let (code, body) = operator_endpoint(c, &leader_ip, "/readyz")?;
            if code == 503 {
                unready = Some((started.elapsed().as_secs_f64(), body));
            }
        }
        for (name, _, _, ip) in &before {
            let (code, _) = operator_endpoint(c, ip, "/healthz")?;
            if code != 200 {
                healthz_failures.push(format!("{name}: {code}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the outage script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let back = started.elapsed().as_secs_f64();
    let (at, body) = unready.context("the leader's /readyz never said the API was unreachable")?;
    println!(
        "  API server down for {SECONDS} s (back after {back:.1} s); the leader's /readyz 503 \
         from {at:.1} s: {}",
        body.lines().take(3).collect::<Vec<_>>().join(" | ")
    );
    ensure!(
        healthz_failures.is_empty(),
        "/healthz failed during the outage (the kubelet would restart the operator): \
         {healthz_failures:?}"
    );

    // After: ready again, no restart, one leader, and it reconciles.
    let last_said = std::sync::Mutex::new(String::new());
    let ready_again = within(
        "every operator pod ready again",
        // Watches whose failures were only the API server's absence recover once it has
        // answered for watch_health::API_RECOVERY (35 s); one that must re-list (410) is ready
        // when its list is done: about 10 s after the API server is back (up to ~220 s before
        // the errors were kept from the Controllers, see operator/README.md); the limit is
        // generous for a loaded CI machine.
        Duration::from_secs(300),
        || async {
            let mut not = Vec::new();
            for (name, _, _, ip) in &before {
                let (code, body) = operator_endpoint(c, ip, "/readyz")?;
                if code != 200 {
                    not.push(format!("{name}: {code} {}", body.replace('\n', " | ")));
                }
            }
            let said = not.join("; ");
            let mut last = last_said.lock().unwrap_or_else(|e| e.into_inner());
            if *last != said && !said.is_empty() {
                // What the user would see, each time it changes.
                println!("  at {:.1} s: {said}", started.elapsed().as_secs_f64());
            }
            *last = said.clone();
            Ok(if not.is_empty() {
                Poll::Done(started.elapsed().as_secs_f64())
            } else {
                Poll::NotYet(said)
            })
        },
    )
    .await?;
    // The restarted API server's 403s until its RBAC cache is filled are not missing
    // permissions (the log check allows them in this span, see lifecycle::no_forbidden).
    c.api_restarts
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .push((outage_from, utc_second()));
    let after = operator_pods_now(c).await?;
    ensure!(
        after == before,
        "the operator pods changed or restarted across the outage: {before:?} -> {after:?}"
    );
    let holder = super::install::leader(c).await?;
    ensure!(
        holder
            .as_ref()
            .is_some_and(|h| before.iter().any(|(n, ..)| n == h)),
        "no operator pod holds the Lease after the outage: {holder:?}"
    );
    c.kubectl(&["-n", NS, "scale", &format!("wapp/{APP}"), "--replicas=2"])?;
    // Ready can come before every watch has re-listed (a watch recovered by the probes may
    // still meet a 410 and re-list): the scale is reconciled once the WasmApp watch is back.
    ready_replicas_within(c, NS, APP, 2, Duration::from_secs(300)).await?;
    node::wait_state(c, "ready", Duration::from_secs(30)).await?;
    println!(
        "  operator ready again at {ready_again:.1} s, same pods and restartCounts {:?}, leader \
         {}; a scale to 2 after the outage reconciled (2 ready at {:.1} s)",
        after.iter().map(|(n, _, r, _)| (n, r)).collect::<Vec<_>>(),
        holder.unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
    c.kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"])?;
    Ok(())
}

/// Now, UTC, to the second, as the operator's JSON logs begin their `timestamp`.
fn utc_second() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .to_string()
        .chars()
        .take(19)
        .collect()
}
