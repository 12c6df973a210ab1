//! What a user sees of a wasm workload in its pod: a WASI command run by a Job with
//! `runtimeClassName: wasmkube` runs to completion with its `args` and `env`, `kubectl logs`
//! shows what it printed, and its exit code (or a trap) is the container's; a wasi:http app's
//! requests over the container's `limits.memory` are refused (500 alone, 503 while others hold
//! the memory) with the limit named in the answer and in `kubectl logs`, and the container is
//! never restarted for it.
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::{api::ListParams, Api};
use wasmkube_operator::names::{labels, RUNTIME_CLASS};

use super::registry::push_guest;
use super::serving::{apply, cluster_ip, get, http_status, wasm_app_of};
use crate::wait::{within, Poll};
use crate::Cluster;

/// Namespaces of the two scenarios.
const JOBS: &str = "wasmkube-e2e-jobs";
const LIMITS: &str = "wasmkube-e2e-limits";

/// A Job running `image` once on the wasm runtime, never retried.
fn job(name: &str, image: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let args = serde_json::to_string(args).unwrap_or_default();
    let env: Vec<serde_json::Value> = env
        .iter()
        .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
        .collect();
    let env = serde_json::to_string(&env).unwrap_or_default();
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  namespace: {JOBS}\nspec:\n  \
         backoffLimit: 0\n  template:\n    spec:\n      runtimeClassName: {RUNTIME_CLASS}\n      \
         restartPolicy: Never\n      containers:\n      - name: main\n        image: {image}\n        \
         args: {args}\n        env: {env}\n"
    )
}

/// The terminated state of Job `name`'s container, once it has one.
async fn terminated(c: &Cluster, name: &str) -> Result<ContainerStateTerminated> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), JOBS);
    within(
        &format!("Job {name}'s container to terminate"),
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("job-name={name}")))
                .await?;
            let state = list
                .items
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref()?.first())
                .find_map(|s| s.state.as_ref()?.terminated.clone());
            Ok(match state {
                Some(t) => Poll::Done(t),
                None => Poll::NotYet(format!("{} pods, none terminated", list.items.len())),
            })
        },
    )
    .await
}

pub async fn command_jobs_run_to_completion_with_args_and_logs(c: &Cluster) -> Result<()> {
    c.fresh_namespace(JOBS)?;
    let hello = push_guest("wasm32-wasip1", "hello.wasm", "hello").await?;
    let trap = push_guest("wasm32-wasip1", "trap.wasm", "trap").await?;
    let cases = [
        (
            "args",
            job(
                "args",
                &hello,
                &["first", "second arg"],
                &[("WK_GREETING", "from the Job")],
            ),
        ),
        ("exit-3", job("exit-3", &hello, &[], &[("WK_EXIT", "3")])),
        ("trap", job("trap", &trap, &[], &[])),
    ];
    for (name, manifest) in &cases {
        let (ok, _, err) = apply(c, name, manifest)?;
        ensure!(ok, "applying Job {name}: {err}");
    }

    // Runs to completion: the Job completes, its args and env reached the module.
    c.kubectl(&[
        "wait",
        "-n",
        JOBS,
        "--for=condition=complete",
        "job/args",
        "--timeout=120s",
    ])?;
    let state = terminated(c, "args").await?;
    ensure!(
        state.exit_code == 0,
        "the command exited {}",
        state.exit_code
    );
    let logs = c.kubectl(&["logs", "-n", JOBS, "job/args"])?;
    println!("  kubectl logs job/args:\n{}", indent(&logs));
    for line in [
        "hello from wasm",
        "arg[1]=first",
        "arg[2]=second arg",
        "env WK_GREETING=from the Job",
        "to stderr",
    ] {
        ensure!(
            logs.lines().any(|l| l == line),
            "kubectl logs lacks {line:?}:\n{logs}"
        );
    }

    // The module's exit code is the container's, and the Job fails on it.
    let state = terminated(c, "exit-3").await?;
    ensure!(
        state.exit_code == 3,
        "WK_EXIT=3 gave exit code {}",
        state.exit_code
    );
    c.kubectl(&[
        "wait",
        "-n",
        JOBS,
        "--for=condition=failed",
        "job/exit-3",
        "--timeout=60s",
    ])?;

    // A trap: non-zero, the output before it kept, the trap named in the logs.
    let state = terminated(c, "trap").await?;
    let logs = c.kubectl(&["logs", "-n", JOBS, "job/trap"])?;
    ensure!(
        state.exit_code == 134,
        "a trap gave exit code {}",
        state.exit_code
    );
    ensure!(
        logs.contains("about to trap") && logs.contains("wasm trap"),
        "kubectl logs of the trapping Job:\n{logs}"
    );
    println!(
        "  exit-3: exit code 3, Job failed; trap: exit code 134, logs: {}",
        logs.lines()
            .find(|l| l.contains("wasm trap"))
            .unwrap_or_default()
    );
    c.kubectl(&["delete", "namespace", JOBS, "--wait=false"])?;
    Ok(())
}

/// The container's restart count of the single pod of WasmApp `app`.
async fn restarts(c: &Cluster, app: &str) -> Result<i32> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), LIMITS);
    let list = pods
        .list(&ListParams::default().labels(&format!("{}={app}", labels::INSTANCE)))
        .await?;
    let counts: Vec<i32> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref()?.first())
        .map(|s| s.restart_count)
        .collect();
    ensure!(counts.len() == 1, "expected one pod of {app}: {counts:?}");
    Ok(counts[0])
}

pub async fn memory_limit_refuses_requests_without_a_restart(c: &Cluster) -> Result<()> {
    c.fresh_namespace(LIMITS)?;
    let image = push_guest("wasm32-wasip2", "http_limits.wasm", "http-limits").await?;
    let app = "limits";
    let manifest = wasm_app_of(
        LIMITS,
        app,
        &image,
        "  resources:\n    limits:\n      memory: 96Mi\n",
    );
    let (ok, _, err) = apply(c, app, &manifest)?;
    ensure!(ok, "applying WasmApp {app}: {err}");
    let ip = cluster_ip(c, LIMITS, app).await?;
    let answer = get(c, &ip, "/hello").await?;
    ensure!(answer == "ok /hello", "the app answered {answer:?}");

    // Alone, more than the limit: 500, the limit named.
    let (status, alone) = http_status(c, &format!("http://{ip}/alloc?mb=200&ms=0"))?;
    ensure!(
        status == 500 && alone.contains("memory limit"),
        "200 MiB under a 96Mi limit: {alone}"
    );
    // Two requests that fit alone but not together: the second gets 503 with retry-after
    // while the first holds its memory; the first is served.
    let both = c.node_sh(&format!(
        "curl -sS -i --max-time 20 'http://{ip}/alloc?mb=56&ms=4000' > /tmp/wk-e2e-first & \
         sleep 1.5; curl -sS -i --max-time 20 'http://{ip}/alloc?mb=56&ms=0'; wait; \
         echo '----- first'; cat /tmp/wk-e2e-first; rm -f /tmp/wk-e2e-first"
    ))?;
    let (second, first) = both.split_once("----- first").context("no first answer")?;
    ensure!(
        second.starts_with("HTTP/1.1 503")
            && second.contains("memory limit")
            && second.to_ascii_lowercase().contains("retry-after: 1"),
        "the second request while 56 MiB were held:\n{second}"
    );
    ensure!(
        first.trim_start().starts_with("HTTP/1.1 200") && first.contains("held 56 MiB"),
        "the first request:\n{first}"
    );
    // Nothing was lost: the app answers, was never restarted, and its log names the limit.
    let (status, body) = http_status(c, &format!("http://{ip}/alloc?mb=56&ms=0"))?;
    ensure!(status == 200, "after the refusals: {body}");
    let count = restarts(c, app).await?;
    ensure!(count == 0, "the container restarted {count} times");
    let logs = c.kubectl(&["logs", "-n", LIMITS, &format!("deploy/{app}")])?;
    ensure!(
        logs.contains("/alloc?mb=200&ms=0 failed: memory limit reached")
            && logs.contains("/alloc?mb=56&ms=0 failed: memory limit reached"),
        "kubectl logs does not name the memory limit:\n{logs}"
    );
    println!("  500 alone, 503 + retry-after under pressure, restartCount 0; logs:");
    println!("{}", indent(&logs));
    c.kubectl(&["delete", "namespace", LIMITS, "--wait=false"])?;
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>()
        .trim_end()
        .to_string()
}
