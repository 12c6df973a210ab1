//! `spec.keyValue` as a user sees it, with `examples/kv-counter`: two replicas count visits
//! together in a Redis running in the cluster (Debian's redis-server, in an image built without
//! Docker) that they reach by its Service name through the cluster DNS, the count survives the
//! pods being replaced, and a `file` store with three replicas is refused by the API server
//! with the field named.
use anyhow::{ensure, Context as _, Result};

use super::serving::{apply, cluster_ip, example, get};
use crate::Cluster;

const NS: &str = "wasmkube-e2e-kv";

/// The app's pod IPs, once `n` pods have one.
fn pod_ips(c: &Cluster) -> Result<Vec<String>> {
    let ips = c.kubectl(&[
        "get",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/instance=kv-counter",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ])?;
    Ok(ips.split_whitespace().map(str::to_string).collect())
}

/// Waits for the example's `Ready` condition.
fn ready(c: &Cluster) -> Result<()> {
    c.kubectl(&[
        "wait",
        "-n",
        NS,
        "wasmapp/kv-counter",
        "--for=condition=Ready",
        "--timeout=240s",
    ])?;
    Ok(())
}

fn count(body: &str) -> Result<u64> {
    body.strip_prefix("visits=")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("not a count: {body:?}"))
}

pub async fn kv_counter_counts_across_replicas_and_restarts(c: &Cluster) -> Result<()> {
    c.fresh_namespace(NS)?;
    let (ok, _, err) = apply(c, "redis", &example("kv-counter/redis.yaml", NS)?)?;
    ensure!(ok, "applying the Redis: {err}");
    c.kubectl(&[
        "rollout",
        "status",
        "-n",
        NS,
        "deployment/redis",
        "--timeout=180s",
    ])?;
    let app = example("kv-counter/wasmapp.yaml", NS)?;
    let url = format!("redis://redis.{NS}.svc.cluster.local:6379");
    ensure!(app.contains(&url), "the example's Redis URL moved: {app}");
    let (ok, _, err) = apply(c, "kv-counter", &app)?;
    ensure!(ok, "applying the example: {err}");
    ready(c)?;

    // Each replica, asked directly, continues the other's count.
    let ips = pod_ips(c)?;
    ensure!(ips.len() == 2, "two running replicas: {ips:?}");
    let mut last = 0;
    for round in 0..3 {
        for ip in &ips {
            let n = count(&get(c, &format!("{ip}:8080"), "/count").await?)?;
            ensure!(n == last + 1, "round {round}, {ip}: {n} after {last}");
            last = n;
        }
    }
    let service = cluster_ip(c, NS, "kv-counter").await?;
    let n = count(&get(c, &service, "/count").await?)?;
    ensure!(n == last + 1, "through the Service: {n} after {last}");
    last = n;
    println!("  two replicas counted to {last} together");

    // New pods, same count.
    c.kubectl(&[
        "delete",
        "pods",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/instance=kv-counter",
        "--wait=true",
    ])?;
    ready(c)?;
    let n = count(&get(c, &service, "/count").await?)?;
    ensure!(
        n == last + 1,
        "after the pods were replaced: {n} after {last}"
    );
    println!("  after both pods were replaced: visits={n}");

    // A file store holds one replica: the API server says so, naming the field.
    let bad = format!(
        "apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata:\n  name: file-three\n  \
         namespace: {NS}\nspec:\n  image: docker.io/wasmkube/http-grants:0.1.0\n  replicas: 3\n  \
         keyValue:\n  - name: default\n    file:\n      claimName: data\n"
    );
    let (ok, _, err) = apply(c, "file-three", &bad)?;
    ensure!(
        !ok && err.contains("spec.keyValue") && err.contains("one replica"),
        "a file store with 3 replicas was not refused by field: {err}"
    );
    c.kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"])?;
    Ok(())
}
