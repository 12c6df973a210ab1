//! What the scenarios with HTTP apps share: a WasmApp manifest or one of `examples/`,
//! `kubectl apply` of one, a Service's ClusterIP, and a GET through it from the node.
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::Api;

use crate::wait::{within, Poll};
use crate::Cluster;

/// A one-replica WasmApp of the project's image `image`, with `extra` appended to its spec
/// (indented two spaces).
pub fn wasm_app(ns: &str, name: &str, image: &str, extra: &str) -> String {
    wasm_app_of(
        ns,
        name,
        &format!("docker.io/wasmkube/{image}:0.1.0"),
        extra,
    )
}

/// A one-replica WasmApp of image reference `image`, with `extra` appended to its spec.
pub fn wasm_app_of(ns: &str, name: &str, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\nspec:\n  image: {image}\n  replicas: 1\n{extra}"
    )
}

/// `examples/{file}`, moved from namespace `default` to `ns`: its objects and the Service names
/// it uses (`*.default.svc.cluster.local`), so the example runs as a user would run it.
pub fn example(file: &str, ns: &str) -> Result<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/");
    let text = std::fs::read_to_string(format!("{path}{file}"))
        .with_context(|| format!("examples/{file}"))?;
    Ok(text
        .replace("namespace: default", &format!("namespace: {ns}"))
        .replace(
            ".default.svc.cluster.local",
            &format!(".{ns}.svc.cluster.local"),
        ))
}

/// `kubectl apply` of `manifest`: (succeeded, stdout, stderr).
pub fn apply(c: &Cluster, name: &str, manifest: &str) -> Result<(bool, String, String)> {
    let file = std::env::temp_dir().join(format!("wk-e2e-{name}-{}.yaml", std::process::id()));
    std::fs::write(&file, manifest)?;
    c.kubectl_output(&["apply", "-f", &file.to_string_lossy()])
}

/// The ClusterIP of Service `name`, once it has one.
pub async fn cluster_ip(c: &Cluster, ns: &str, name: &str) -> Result<String> {
    let services: Api<Service> = Api::namespaced(c.client.clone(), ns);
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

/// GET `path` on `ip` from the node until it answers; the body, trimmed.
pub async fn get(c: &Cluster, ip: &str, path: &str) -> Result<String> {
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

/// One GET of `url` from the node, whatever its status: (status, headers and body as curl
/// prints them with `-i`).
pub fn http_status(c: &Cluster, url: &str) -> Result<(u16, String)> {
    let out = c.node_sh(&format!("curl -sS -i --max-time 20 '{url}'"))?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status from {url}: {out:?}"))?;
    Ok((status, out))
}

/// Waits until the Deployment `name` in `ns` (a WasmApp's) has `n` ready replicas.
pub async fn ready_replicas(c: &Cluster, ns: &str, name: &str, n: i32) -> Result<()> {
    ready_replicas_within(c, ns, name, n, Duration::from_secs(180)).await
}

/// [`ready_replicas`] with its own time limit.
pub async fn ready_replicas_within(
    c: &Cluster,
    ns: &str,
    name: &str,
    n: i32,
    timeout: Duration,
) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), ns);
    within(
        &format!("{n} ready replicas of {name}"),
        timeout,
        || async {
            let ready = deployments
                .get_opt(name)
                .await?
                .and_then(|d| d.status?.ready_replicas)
                .unwrap_or(0);
            Ok(if ready == n {
                Poll::Done(())
            } else {
                Poll::NotYet(format!("{ready} ready"))
            })
        },
    )
    .await
}
