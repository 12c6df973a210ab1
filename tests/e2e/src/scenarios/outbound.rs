//! `spec.outbound` as a user sees it: an app granted one Service reaches it and is refused
//! another (the guest's own error, one log line naming the grant), and an invalid grant is
//! refused by the API server with the field named.
use anyhow::{ensure, Context as _, Result};

use super::serving::{apply, cluster_ip, get, wasm_app};
use crate::Cluster;

const NS: &str = "wasmkube-e2e-outbound";

pub async fn outbound_grants_reach_the_granted_service_only(c: &Cluster) -> Result<()> {
    c.fresh_namespace(NS)?;
    for target in ["granted", "other"] {
        let (ok, _, err) = apply(c, target, &wasm_app(NS, target, "hello-http", ""))?;
        ensure!(ok, "applying {target}: {err}");
    }
    let granted = cluster_ip(c, NS, "granted").await?;
    let other = cluster_ip(c, NS, "other").await?;
    let outbound = format!("  outbound:\n    allowedHosts:\n    - http://{granted}\n");
    let (ok, _, err) = apply(
        c,
        "caller",
        &wasm_app(NS, "caller", "http-outbound", &outbound),
    )?;
    ensure!(ok, "applying caller: {err}");
    let caller = cluster_ip(c, NS, "caller").await?;
    // The targets answer through their Services first, so a refusal below is the grant's.
    get(c, &granted, "/ready").await?;
    get(c, &other, "/ready").await?;
    let reached = get(c, &caller, &format!("/fetch?http://{granted}/via-grant")).await?;
    ensure!(
        reached == "status=200 body=hello from wasi:http, path=/via-grant",
        "the granted Service through the caller: {reached}"
    );
    println!("  granted {granted}: {reached}");
    let refused = get(c, &caller, &format!("/fetch?http://{other}/")).await?;
    ensure!(
        refused == "error=HttpRequestDenied",
        "the other Service through the caller: {refused}"
    );
    let tcp = get(c, &caller, &format!("/tcp?{other}:80")).await?;
    ensure!(
        tcp.starts_with("error="),
        "a raw connection to the other Service: {tcp}"
    );
    let logs = c.kubectl(&[
        "logs",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/instance=caller",
        "--tail=-1",
    ])?;
    let line = logs
        .lines()
        .find(|l| l.contains(&format!("http://{other}:80")))
        .with_context(|| format!("no log line names the refused destination: {logs}"))?;
    ensure!(
        line.contains("spec.outbound.allowedHosts"),
        "the log line does not say which grant would allow it: {line}"
    );
    println!("  refused {other}: {refused}; log: {line}");

    // Invalid grants never reach the cluster: the API server names the field.
    let bad = "  outbound:\n    allowedHosts:\n    - ht!tp://x\n";
    let (ok, _, err) = apply(
        c,
        "bad-grant",
        &wasm_app(NS, "bad-grant", "http-outbound", bad),
    )?;
    ensure!(
        !ok && err.contains("spec.outbound.allowedHosts[0]"),
        "an invalid allowedHosts entry was not refused by field: {err}"
    );
    c.kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"])?;
    Ok(())
}
