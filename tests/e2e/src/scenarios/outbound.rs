//! `spec.outbound` as a user sees it: an app granted one Service reaches it and is refused
//! another (the guest's own error, one log line naming the grant), and an invalid grant is
//! refused by the API server with the field named.
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::core::v1::Service;
use kube::Api;

use crate::wait::{within, Poll};
use crate::Cluster;

const NS: &str = "wasmkube-e2e-outbound";

fn app(name: &str, image: &str, outbound: &str) -> String {
    format!(
        "apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata:\n  name: {name}\n  \
         namespace: {NS}\nspec:\n  image: docker.io/wasmkube/{image}:0.1.0\n  replicas: 1\n\
         {outbound}"
    )
}

fn apply(c: &Cluster, name: &str, manifest: &str) -> Result<(bool, String, String)> {
    let file = std::env::temp_dir().join(format!("wk-e2e-{name}-{}.yaml", std::process::id()));
    std::fs::write(&file, manifest)?;
    c.kubectl_output(&["apply", "-f", &file.to_string_lossy()])
}

/// The ClusterIP of Service `name`, once it has one.
async fn cluster_ip(c: &Cluster, name: &str) -> Result<String> {
    let services: Api<Service> = Api::namespaced(c.client.clone(), NS);
    within(
        &format!("Service {name}"),
        Duration::from_secs(60),
        || async {
            let ip = services
                .get_opt(name)
                .await?
                .and_then(|s| s.spec)
                .and_then(|s| s.cluster_ip);
            Ok(match ip {
                Some(ip) if !ip.is_empty() && ip != "None" => Poll::Done(ip),
                _ => Poll::NotYet("no ClusterIP yet".into()),
            })
        },
    )
    .await
}

/// GET `path` on `ip` from the node until it answers.
async fn get(c: &Cluster, ip: &str, path: &str) -> Result<String> {
    within(
        &format!("an answer from http://{ip}{path}"),
        Duration::from_secs(180),
        || async {
            Ok(match c.http_get_from_node(&format!("http://{ip}{path}")) {
                Ok(body) => Poll::Done(body.trim().to_string()),
                Err(e) => Poll::NotYet(format!("{e:#}")),
            })
        },
    )
    .await
}

pub async fn outbound_grants_reach_the_granted_service_only(c: &Cluster) -> Result<()> {
    c.fresh_namespace(NS)?;
    for target in ["granted", "other"] {
        let (ok, _, err) = apply(c, target, &app(target, "hello-http", ""))?;
        ensure!(ok, "applying {target}: {err}");
    }
    let granted = cluster_ip(c, "granted").await?;
    let other = cluster_ip(c, "other").await?;
    let outbound = format!("  outbound:\n    allowedHosts:\n    - http://{granted}\n");
    let (ok, _, err) = apply(c, "caller", &app("caller", "http-outbound", &outbound))?;
    ensure!(ok, "applying caller: {err}");
    let caller = cluster_ip(c, "caller").await?;
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
    let (ok, _, err) = apply(c, "bad-grant", &app("bad-grant", "http-outbound", bad))?;
    ensure!(
        !ok && err.contains("spec.outbound.allowedHosts[0]"),
        "an invalid allowedHosts entry was not refused by field: {err}"
    );
    c.kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"])?;
    Ok(())
}
