//! A WasmApp's life: served through its Service, scaled, autoscaled, validated, deleted.
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;

use anyhow::{bail, ensure, Context as _, Result};
use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Pod,
    core::v1::Service,
};
use kube::{api::ListParams, Api, ResourceExt};
use wasmkube_operator::crd::WasmApp;
use wasmkube_operator::names::labels;

use crate::events;
use crate::wait::{within, Poll};
use crate::Cluster;

pub(super) const APP: &str = "hello-http";
pub(super) const NS: &str = "default";
pub(super) const EXAMPLE: &str = "examples/hello-http/wasmapp.yaml";

pub(super) fn selector() -> String {
    format!("{}={APP}", labels::INSTANCE)
}

/// Running, ready pods of the app.
pub(super) async fn ready_pods(c: &Cluster) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    Ok(pods
        .list(&ListParams::default().labels(&selector()))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect())
}

pub(super) async fn wait_ready_replicas(c: &Cluster, n: usize, timeout: Duration) -> Result<()> {
    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), NS);
    within(&format!("{n} ready replicas of {APP}"), timeout, || async {
        let pods = ready_pods(c).await?.len();
        let status = apps.get(APP).await?.status.unwrap_or_default();
        Ok(
            if pods == n && status.ready_replicas == n as i32 && status.replicas == n as i32 {
                Poll::Done(())
            } else {
                Poll::NotYet(format!(
                    "{pods} ready pods; status {}/{} ready",
                    status.ready_replicas, status.replicas
                ))
            },
        )
    })
    .await
}

/// Waits until the example app in `ns` is Ready for its current generation (a Pod Security
/// refusal of its pods is what a timeout then reports: [`within`] retries errors), then GETs
/// `path` through its Service's ClusterIP from the node. Asserts the answer echoes `path` and that the WasmApp's env reached the app;
/// returns the answer.
pub(super) async fn serve_and_get(c: &Cluster, ns: &str, path: &str) -> Result<String> {
    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), ns);
    within(
        &format!("{APP} to be Ready in {ns}"),
        Duration::from_secs(180),
        || async {
            let refused = failed_creates(c, ns).await?;
            if let Some(why) = refused.iter().find(|n| n.contains("PodSecurity")) {
                bail!("Pod Security admission refused the app's pods: {why}");
            }
            let app = apps.get(APP).await?;
            let status = app.status.unwrap_or_default();
            let current = status.observed_generation >= app.metadata.generation;
            Ok(if current && status.is_true("Ready") {
                Poll::Done(())
            } else {
                Poll::NotYet(format!(
                    "{:?} (observed generation {:?} of {:?}); pod creation failures: {refused:?}",
                    status.condition("Ready"),
                    status.observed_generation,
                    app.metadata.generation
                ))
            })
        },
    )
    .await?;
    print!("{}", c.kubectl(&["get", "wapp", APP, "-n", ns])?);

    let services: Api<Service> = Api::namespaced(c.client.clone(), ns);
    let ip = services
        .get(APP)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no ClusterIP")?;
    let body = within(
        &format!("an answer through the Service's ClusterIP in {ns}"),
        Duration::from_secs(30),
        || async {
            Ok(
                match c.http_get_from_node(&format!("http://{ip}:80{path}")) {
                    Ok(body) => Poll::Done(body),
                    Err(e) => Poll::NotYet(format!("{e:#}")),
                },
            )
        },
    )
    .await?;
    println!("  GET http://{ip}{path} -> {}", body.trim());
    ensure!(
        body.trim() == format!("hello from wasi:http, path={path}"),
        "unexpected body {body:?}"
    );
    let env = c.http_get_from_node(&format!("http://{ip}:80/env"))?;
    ensure!(
        env.trim() == "hello from wasm",
        "the WasmApp's env did not reach the app: {env:?}"
    );
    Ok(body)
}

pub async fn serves_through_service(c: &Cluster) -> Result<()> {
    c.kubectl(&["apply", "-f", EXAMPLE])?;
    serve_and_get(c, NS, "/e2e?x=1").await?;
    for pod in ready_pods(c).await? {
        let spec = pod.spec.context("pod spec")?;
        ensure!(
            spec.runtime_class_name.as_deref() == Some("wasmkube"),
            "pod {} runs without the wasmkube RuntimeClass",
            pod.metadata.name.unwrap_or_default()
        );
        ensure!(
            spec.node_name.as_deref() == Some(c.node.as_str()),
            "pod on {:?}",
            spec.node_name
        );
    }
    Ok(())
}

/// Every pod object of the app, terminating ones included.
async fn all_pods(c: &Cluster) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    Ok(pods
        .list(&ListParams::default().labels(&selector()))
        .await?
        .items)
}

/// `kubectl scale` up to 3 and down to 1 (the two pods removed stop on SIGTERM: their objects
/// are gone well inside the 30 s grace period, while the one kept serves on), then up to 3 again
/// for the autoscaling scenario.
pub async fn scale(c: &Cluster) -> Result<()> {
    c.kubectl(&["scale", &format!("wapp/{APP}"), "--replicas=3"])?;
    wait_ready_replicas(c, 3, Duration::from_secs(120)).await?;
    print!("{}", c.kubectl(&["get", "wapp", APP])?);

    let kept_before: Vec<String> = ready_pods(c).await?.iter().map(|p| p.name_any()).collect();
    let started = Instant::now();
    c.kubectl(&["scale", &format!("wapp/{APP}"), "--replicas=1"])?;
    let left = within(
        "the app's pods to be down to 1 object",
        Duration::from_secs(25),
        || async {
            let pods = all_pods(c).await?;
            Ok(if pods.len() == 1 {
                Poll::Done(pods)
            } else {
                Poll::NotYet(format!("{} pod objects", pods.len()))
            })
        },
    )
    .await
    .context("scaled-down wasm pods did not stop on SIGTERM before the grace period")?;
    let gone_after = started.elapsed();
    wait_ready_replicas(c, 1, Duration::from_secs(30)).await?;
    ensure!(
        kept_before.contains(&left[0].name_any()),
        "the pod kept ({}) is not one of those that ran before ({kept_before:?})",
        left[0].name_any()
    );
    let ip = super::serving::cluster_ip(c, NS, APP).await?;
    super::serving::get(c, &ip, "/after-scale-down").await?;
    println!(
        "  scaled 3 -> 1: two pods gone {:.1} s after kubectl scale (grace period 30 s); the kept \
         one serves",
        gone_after.as_secs_f64()
    );

    c.kubectl(&["scale", &format!("wapp/{APP}"), "--replicas=3"])?;
    wait_ready_replicas(c, 3, Duration::from_secs(120)).await?;
    Ok(())
}

fn invalid(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         spec:\n  image: docker.io/wasmkube/hello-http:0.1.0\n{extra}"
    )
}

pub async fn cel_rejects_invalid(c: &Cluster) -> Result<()> {
    let cases = [
        (
            "e2e-bad-autoscaling",
            "  resources:\n    requests:\n      cpu: 10m\n  autoscaling:\n    minReplicas: 5\n    maxReplicas: 2\n",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        (
            "e2e-bad-nodeport",
            "  service:\n    type: ClusterIP\n    port: 80\n    nodePort: 30080\n",
            "nodePort needs type NodePort or LoadBalancer",
        ),
        ("e2e-bad-replicas", "  replicas: -1\n", "spec.replicas"),
        (
            "e2e-bad-reuse",
            "  http:\n    instanceReuse:\n      idleTimeout: 1m\n",
            "spec.http.instanceReuse.idleTimeout",
        ),
    ];
    let dir = std::env::temp_dir().join(format!("wk-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), NS);
    for (name, extra, expect) in cases {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, invalid(name, extra))?;
        let path = file.to_string_lossy().into_owned();
        let (ok, _, err) = c.kubectl_output(&["create", "-f", &path])?;
        ensure!(!ok, "the apiserver accepted the invalid WasmApp {name}");
        ensure!(
            err.contains(expect),
            "{name}: the rejection does not say {expect:?}: {err}"
        );
        println!("  {name}: rejected: {}", err.trim());
        ensure!(
            apps.get_opt(name).await?.is_none(),
            "{name} exists after the rejection"
        );
    }
    Ok(())
}

pub async fn delete_collects_children(c: &Cluster) -> Result<()> {
    c.kubectl(&["delete", "-f", EXAMPLE, "--wait=true", "--timeout=60s"])?;
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), NS);
    let services: Api<Service> = Api::namespaced(c.client.clone(), NS);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(c.client.clone(), NS);
    within(
        "the app's Deployment, Service, HPA and pods to be collected",
        Duration::from_secs(120),
        || async {
            let left = [
                ("Deployment", deployments.get_opt(APP).await?.is_some()),
                ("Service", services.get_opt(APP).await?.is_some()),
                ("HPA", hpas.get_opt(APP).await?.is_some()),
            ];
            let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
            let pods = pods
                .list(&ListParams::default().labels(&selector()))
                .await?
                .items
                .len();
            let names: Vec<&str> = left.iter().filter(|(_, x)| *x).map(|(n, _)| *n).collect();
            Ok(if names.is_empty() && pods == 0 {
                Poll::Done(())
            } else {
                Poll::NotYet(format!("left: {names:?}, {pods} pods"))
            })
        },
    )
    .await?;
    Ok(())
}

fn node_port_app(name: &str) -> String {
    format!(
        "apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         spec:\n  image: docker.io/wasmkube/hello-http:0.1.0\n  replicas: 0\n  service:\n    type: NodePort\n    \
         port: 80\n    targetPort: 8080\n    nodePort: 30080\n"
    )
}

pub async fn refused_child_reaches_status(c: &Cluster) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("wk-e2e-np-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), NS);
    let mut files = Vec::new();
    for name in ["e2e-nodeport-a", "e2e-nodeport-b"] {
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, node_port_app(name))?;
        let path = file.to_string_lossy().into_owned();
        c.kubectl(&["apply", "-f", &path])?;
        files.push(path);
        if name.ends_with('a') {
            // The first one gets the port.
            within(
                "e2e-nodeport-a's Service",
                Duration::from_secs(60),
                || async {
                    let s = apps.get("e2e-nodeport-a").await?.status.unwrap_or_default();
                    Ok(match s.service_name {
                        Some(_) => Poll::Done(()),
                        None => Poll::NotYet(format!("{s:?}")),
                    })
                },
            )
            .await?;
        }
    }
    let degraded = within(
        "e2e-nodeport-b to report the refused Service",
        Duration::from_secs(60),
        || async {
            let s = apps.get("e2e-nodeport-b").await?.status.unwrap_or_default();
            Ok(match s.condition("Degraded") {
                Some(d) if d.status == "True" && d.reason == "ApplyFailed" => {
                    Poll::Done((d.message.clone(), s.is_true("Ready")))
                }
                other => Poll::NotYet(format!("{other:?}")),
            })
        },
    )
    .await?;
    println!("  e2e-nodeport-b Degraded: {}", degraded.0);
    let note = within(
        "an ApplyFailed event on e2e-nodeport-b",
        Duration::from_secs(30),
        || async {
            Ok(
                match events::find(c, "ApplyFailed", "e2e-nodeport-b").await? {
                    Some(n) => Poll::Done(n),
                    None => Poll::NotYet("no event".into()),
                },
            )
        },
    )
    .await?;
    ensure!(note.contains("already allocated"), "event note {note:?}");
    ensure!(!degraded.1, "Ready stayed True after the refusal");
    ensure!(
        degraded.0.contains("already allocated"),
        "the message is not the API's: {}",
        degraded.0
    );
    for f in &files {
        c.kubectl(&["delete", "-f", f, "--wait=true", "--timeout=60s"])?;
    }
    Ok(())
}

/// Why pods of `ns` were refused, from the ReplicaSet controller's `FailedCreate` events.
async fn failed_creates(c: &Cluster, ns: &str) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(c.client.clone(), ns);
    Ok(events
        .list(&ListParams::default().fields("reason=FailedCreate"))
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.note)
        .collect())
}
