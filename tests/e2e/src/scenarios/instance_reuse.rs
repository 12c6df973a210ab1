//! `spec.http.instanceReuse` as a user sees it: the example app's `/instance` path says which
//! instance answered and how many requests that instance served. With reuse on, one instance
//! serves `maxRequests` requests in turn; taken off again, every request gets a fresh instance.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{api::ListParams, Api};
use wasmkube_contract::http::{REUSE_IDLE_TIMEOUT_ENV, REUSE_MAX_REQUESTS_ENV};
use wasmkube_operator::names::labels;

use super::serving::{apply, cluster_ip, get, http_status, ready_replicas, wasm_app};
use crate::wait::{within, Poll};
use crate::Cluster;

const NS: &str = "e2e-reuse";
const APP: &str = "reuse";

/// `/instance`'s answer: (instance id, requests it served).
pub(super) fn instance(body: &str) -> Result<(String, u32)> {
    // "instance <id>: request <n> of this instance"
    let mut words = body.split_whitespace();
    let id = words
        .nth(1)
        .context("no id")?
        .trim_end_matches(':')
        .to_string();
    let n = words
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no count in {body:?}"))?;
    Ok((id, n))
}

async fn instances(c: &Cluster, ip: &str, n: usize) -> Result<Vec<(String, u32)>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(instance(&get(c, ip, "/instance").await?)?);
    }
    Ok(out)
}

/// The app container's value of `var`.
async fn env_of(c: &Cluster, var: &str) -> Result<Option<String>> {
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), NS);
    let d = deployments.get(APP).await?;
    let containers = d
        .spec
        .template
        .spec
        .map(|p| p.containers)
        .unwrap_or_default();
    Ok(containers
        .first()
        .and_then(|c| c.env.as_ref())
        .and_then(|env| env.iter().find(|e| e.name == var))
        .and_then(|e| e.value.clone()))
}

pub async fn instance_reuse_on_and_off(c: &Cluster) -> Result<()> {
    c.fresh_namespace(NS)?;
    let reuse = "  http:\n    instanceReuse:\n      maxRequests: 4\n      maxConcurrent: 1\n";
    let (ok, _, err) = apply(c, APP, &wasm_app(NS, APP, "hello-http", reuse))?;
    ensure!(ok, "applying {APP} with instanceReuse: {err}");
    ready_replicas(c, NS, APP, 1).await?;
    ensure!(
        env_of(c, REUSE_MAX_REQUESTS_ENV).await?.as_deref() == Some("4")
            && env_of(c, REUSE_IDLE_TIMEOUT_ENV).await?.as_deref() == Some("60s"),
        "the Deployment does not carry the reuse settings"
    );
    let ip = cluster_ip(c, NS, APP).await?;
    // Once through the Service first (its answer counts on whichever instance it used).
    get(c, &ip, "/ready").await?;
    let runs = instances(c, &ip, 9).await?;
    println!("  reuse on (maxRequests 4): {runs:?}");
    let second = runs
        .iter()
        .position(|(id, _)| *id != runs[0].0)
        .with_context(|| format!("one instance served nine requests: {runs:?}"))?;
    ensure!(second <= 4, "{runs:?}");
    let next: Vec<u32> = runs[second..second + 4].iter().map(|r| r.1).collect();
    ensure!(
        next == [1, 2, 3, 4] && runs[second].0 == runs[second + 3].0,
        "one instance, four requests in turn: {runs:?}"
    );
    ensure!(
        runs[second + 4].1 == 1 && runs[second + 4].0 != runs[second].0,
        "a fifth request gets a new instance: {runs:?}"
    );
    let logs = c.kubectl(&["logs", "-n", NS, &format!("deployment/{APP}")])?;
    ensure!(
        logs.contains("instance reuse on: up to 4 requests per instance, 1 reusable instances"),
        "kubectl logs does not say reuse is on: {logs}"
    );

    // Off again: spec.http removed, the pods replaced, a fresh instance per request.
    c.kubectl(&[
        "patch",
        "wapp",
        APP,
        "-n",
        NS,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/http"}]"#,
    ])?;
    // The new pod serving and the old one gone (not one still draining behind the Service).
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let selector = format!("{}={APP}", labels::INSTANCE);
    within(
        "one pod without the reuse settings",
        Duration::from_secs(120),
        || async {
            let env = env_of(c, REUSE_MAX_REQUESTS_ENV).await?;
            let listed = pods.list(&ListParams::default().labels(&selector)).await?;
            // Every pod listed ready and without the setting: right after the patch the old
            // pod is still the only one, ready, with the setting.
            let new_and_ready = listed.items.iter().all(|p| {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let reused = p.spec.as_ref().is_some_and(|s| {
                    s.containers.iter().any(|c| {
                        c.env
                            .iter()
                            .flatten()
                            .any(|e| e.name == REUSE_MAX_REQUESTS_ENV)
                    })
                });
                ready && !reused && p.metadata.deletion_timestamp.is_none()
            });
            Ok(
                if env.is_none() && listed.items.len() == 1 && new_and_ready {
                    Poll::Done(())
                } else {
                    Poll::NotYet(format!(
                        "{REUSE_MAX_REQUESTS_ENV}={env:?} in the Deployment; {} pods, all ready \
                     and without it: {new_and_ready}",
                        listed.items.len()
                    ))
                },
            )
        },
    )
    .await?;
    let runs = instances(c, &ip, 4).await?;
    println!("  reuse off: {runs:?}");
    ensure!(
        runs.iter().all(|(_, n)| *n == 1),
        "without reuse every request is a fresh instance's first: {runs:?}"
    );
    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}

/// An app whose reused instance returns without answering (as a componentize-js FetchEvent app
/// does): that client gets 500 at once, the pod turns reuse off and says so in its log, and
/// every later request gets a fresh instance.
pub async fn reuse_turned_off_for_an_app_that_cannot_be_reused(c: &Cluster) -> Result<()> {
    const NS: &str = "e2e-reuse-silent";
    const APP: &str = "silent";
    c.fresh_namespace(NS)?;
    let reuse = "  http:\n    instanceReuse:\n      maxConcurrent: 1\n";
    let (ok, _, err) = apply(c, APP, &wasm_app(NS, APP, "http-outbound", reuse))?;
    ensure!(ok, "applying {APP} with instanceReuse: {err}");
    ready_replicas(c, NS, APP, 1).await?;
    let ip = cluster_ip(c, NS, APP).await?;
    // Two answers from one instance: reuse is on.
    let (a, n) = instance(&get(c, &ip, "/instance").await?)?;
    let (b, m) = instance(&get(c, &ip, "/instance").await?)?;
    ensure!(a == b && m == n + 1, "reuse on: {a} {n}, {b} {m}");
    let start = Instant::now();
    let (status, out) = http_status(c, &format!("http://{ip}/silent"))?;
    let took = start.elapsed();
    println!("  /silent on a reused instance: {status} after {took:?}");
    ensure!(status == 500, "/silent: {out}");
    ensure!(
        took < Duration::from_secs(5),
        "/silent answered after {took:?}, not at once"
    );
    let runs = instances(c, &ip, 3).await?;
    println!("  after it: {runs:?}");
    ensure!(
        runs.iter().all(|(_, n)| *n == 1) && runs[0].0 != runs[1].0 && runs[1].0 != runs[2].0,
        "reuse off: every request a fresh instance's first: {runs:?}"
    );
    let logs = c.kubectl(&["logs", "-n", NS, &format!("deployment/{APP}")])?;
    ensure!(
        logs.contains("instance reuse turned off"),
        "kubectl logs does not say reuse was turned off: {logs}"
    );
    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
