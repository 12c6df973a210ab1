//! `spec.outbound` as a user sees it, with `examples/outbound` calling `examples/hello-http` by
//! its Service name through the cluster DNS: the granted name is reached; a granted name whose
//! address is in a blocked network is refused after the lookup; the granted Service's address
//! is refused (the grant names the Service, not an address); each refusal is the guest's own
//! error with one log line naming it. An invalid grant is refused by the API server with the
//! field named.
use anyhow::{ensure, Context as _, Result};

use super::serving::{apply, cluster_ip, example, get, wasm_app};
use crate::Cluster;

const NS: &str = "wasmkube-e2e-outbound";

/// The caller's log line that mentions `what`.
fn log_line(c: &Cluster, what: &str) -> Result<String> {
    let logs = c.kubectl(&[
        "logs",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/instance=outbound",
        "--tail=-1",
    ])?;
    logs.lines()
        .find(|l| l.contains(what))
        .map(str::to_string)
        .with_context(|| format!("no log line names {what}: {logs}"))
}

pub async fn outbound_grants_reach_the_granted_service_only(c: &Cluster) -> Result<()> {
    c.fresh_namespace(NS)?;
    let (ok, _, err) = apply(c, "hello-http", &example("hello-http/wasmapp.yaml", NS)?)?;
    ensure!(ok, "applying examples/hello-http: {err}");
    let (ok, _, err) = apply(c, "other", &wasm_app(NS, "other", "hello-http", ""))?;
    ensure!(ok, "applying other: {err}");
    let hello = cluster_ip(c, NS, "hello-http").await?;
    let other = cluster_ip(c, NS, "other").await?;
    let hello_name = format!("hello-http.{NS}.svc.cluster.local");
    let other_name = format!("other.{NS}.svc.cluster.local");

    // examples/outbound as written, plus a grant of the other Service's name with its address
    // in blockedNetworks: the check on the resolved address is what refuses it.
    let granted = format!("      - http://{hello_name}\n");
    let blocked = format!("    blockedNetworks: [\"{other}/32\"]");
    let caller = example("outbound/wasmapp.yaml", NS)?;
    ensure!(
        caller.contains(&granted),
        "the example's grant moved: {caller}"
    );
    let caller = caller
        .replacen(
            &granted,
            &format!("{granted}      - http://{other_name}\n"),
            1,
        )
        .replace("    # blockedNetworks: [\"192.168.0.0/16\"]", &blocked);
    ensure!(
        caller.contains(&blocked),
        "the example's blockedNetworks comment moved: {caller}"
    );
    let (ok, _, err) = apply(c, "outbound", &caller)?;
    ensure!(ok, "applying examples/outbound: {err}");
    let caller = cluster_ip(c, NS, "outbound").await?;
    // The targets answer through their Services first, so a refusal below is the grant's.
    get(c, &hello, "/ready").await?;
    get(c, &other, "/ready").await?;

    let reached = get(c, &caller, &format!("/fetch?http://{hello_name}/via-dns")).await?;
    ensure!(
        reached.starts_with("status=200 body=") && reached.ends_with(", path=/via-dns"),
        "{hello_name} through the caller: {reached}"
    );
    println!("  granted {hello_name}: {reached}");

    let refused = get(c, &caller, &format!("/fetch?http://{other_name}/")).await?;
    ensure!(
        refused == "error=HttpRequestDenied",
        "{other_name} (granted, address blocked) through the caller: {refused}"
    );
    let line = log_line(c, &format!("http://{other_name}:80 refused"))?;
    ensure!(
        line.contains(&format!("{other} in {other}/32")),
        "the log line does not name the blocked address and network: {line}"
    );
    println!("  blocked {other_name}: {refused}; log: {line}");

    let by_address = get(c, &caller, &format!("/fetch?http://{hello}/")).await?;
    ensure!(
        by_address == "error=HttpRequestDenied",
        "the granted Service by its address through the caller: {by_address}"
    );
    let line = log_line(c, &format!("http://{hello}:80"))?;
    ensure!(
        line.contains("spec.outbound.allowedHosts"),
        "the log line does not say which grant would allow it: {line}"
    );
    println!("  refused {hello} (the grant names the Service): log: {line}");

    let tcp = get(c, &caller, &format!("/tcp?{other}:80")).await?;
    ensure!(
        tcp.starts_with("error="),
        "a raw connection to the blocked address: {tcp}"
    );

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
