//! How a WasmApp's pods are admitted and when they count as ready: under the `restricted` Pod
//! Security Standard, and on a node that has never compiled the app (Ready means answering; once
//! idle, each pod's shim keeps only runwasi's zygote and the guest: no compile broker, no
//! per-container process);
//! and what a crash-looping app whose module does not compile costs the node (one compile).
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod, core::v1::Service};
use kube::{api::ListParams, Api};

use super::apps::{selector, serve_and_get, EXAMPLE, NS};
use crate::wait::{within, Poll};
use crate::Cluster;

/// Namespace of [`serves_under_restricted_pod_security`].
const RESTRICTED_NS: &str = "wasmkube-e2e-restricted";

/// The example app in a fresh namespace that enforces the `restricted` Pod Security Standard:
/// the operator's pods are admitted as they are, run (non-root, no capabilities, read-only
/// rootfs, RuntimeDefault seccomp) and answer through their Service.
pub async fn serves_under_restricted_pod_security(c: &Cluster) -> Result<()> {
    let ns = RESTRICTED_NS;
    c.fresh_namespace(ns)?;
    c.kubectl(&[
        "label",
        "namespace",
        ns,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ])?;
    // The namespace really enforces: a pod without a security context is refused.
    let (ok, _, err) = c.kubectl_output(&[
        "run",
        "e2e-unrestricted",
        "-n",
        ns,
        "--image=docker.io/wasmkube/hello-http:0.1.0",
        "--restart=Never",
        "--dry-run=server",
    ])?;
    ensure!(
        !ok && err.contains("violates PodSecurity"),
        "the namespace does not enforce restricted (is PodSecurity admission on?): {err}"
    );

    let example = std::fs::read_to_string(c.repo.join(EXAMPLE))
        .with_context(|| format!("reading {EXAMPLE}"))?;
    let manifest = example.replace(&format!("namespace: {NS}"), &format!("namespace: {ns}"));
    ensure!(
        manifest.contains(ns),
        "{EXAMPLE} names no namespace to replace"
    );
    let dir = std::env::temp_dir().join(format!("wk-e2e-restricted-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("wasmapp.yaml");
    std::fs::write(&file, manifest)?;
    c.kubectl(&["apply", "-f", &file.to_string_lossy()])?;

    serve_and_get(c, ns, "/restricted").await?;

    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let running = pods
        .list(&ListParams::default().labels(&selector()))
        .await?
        .items;
    ensure!(!running.is_empty(), "no pods");
    for pod in running {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.context("pod spec")?;
        let psc = spec.security_context.unwrap_or_default();
        ensure!(
            psc.run_as_user == Some(65532) && psc.run_as_non_root == Some(true),
            "pod {name} runs as {:?} (runAsNonRoot {:?})",
            psc.run_as_user,
            psc.run_as_non_root
        );
        let sc = spec.containers[0]
            .security_context
            .clone()
            .unwrap_or_default();
        ensure!(
            sc.read_only_root_filesystem == Some(true)
                && sc.allow_privilege_escalation == Some(false),
            "pod {name} container security context {sc:?}"
        );
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        ensure!(phase == "Running", "pod {name} is {phase}");
    }

    c.kubectl(&["delete", "namespace", ns, "--wait=true", "--timeout=120s"])?;
    Ok(())
}

/// An app whose code the node has never compiled (the shim's cache, `shim/src/cache.rs`'s
/// `DEFAULT_CACHE_DIR`, emptied first) and that sets no readiness probe: once `kubectl wait
/// --for=condition=Ready` returns, every request through its Service is answered (the operator's
/// default TCP readiness probe keeps a pod out of the endpoints until its listener is up).
pub async fn ready_means_answering_on_a_cold_node(c: &Cluster) -> Result<()> {
    const CACHE: &str = "/var/lib/wasmkube/cache";
    const COLD: &str = "e2e-cold";
    c.node_sh(&format!("rm -rf {CACHE} && test ! -e {CACHE}"))?;
    let file = std::env::temp_dir().join(format!("wk-e2e-cold-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata:\n  name: {COLD}\n  \
             namespace: {NS}\nspec:\n  image: docker.io/wasmkube/hello-http:0.1.0\n  replicas: 2\n"
        ),
    )?;
    let path = file.to_string_lossy().into_owned();
    let start = Instant::now();
    c.kubectl(&["apply", "-f", &path])?;
    let wapp = format!("wapp/{COLD}");
    c.kubectl(&[
        "wait",
        "-n",
        NS,
        "--for=condition=Ready",
        &wapp,
        "--timeout=180s",
    ])?;
    println!("  Ready {:.1} s after apply", start.elapsed().as_secs_f64());
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), NS);
    let probe = deployments
        .get(COLD)
        .await?
        .spec
        .template
        .spec
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.readiness_probe)
        .context("no readiness probe on the app's container")?;
    ensure!(
        probe.tcp_socket.is_some(),
        "not the default probe: {probe:?}"
    );
    let services: Api<Service> = Api::namespaced(c.client.clone(), NS);
    let ip = services
        .get(COLD)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the Service has no ClusterIP")?;
    let mut failures = Vec::new();
    for i in 0..50 {
        match c.http_get_from_node(&format!("http://{ip}:80/cold/{i}")) {
            Ok(body) if body.trim() == format!("hello from wasi:http, path=/cold/{i}") => {}
            Ok(body) => failures.push(format!("#{i}: body {body:?}")),
            Err(e) => failures.push(format!("#{i}: {e:#}")),
        }
    }
    println!("  50 requests through {ip}: {} failed", failures.len());
    ensure!(failures.is_empty(), "after Ready: {failures:?}");
    // The node really compiled the app just now (the cache is back, with an entry).
    let entries = c.node_sh(&format!("ls {CACHE} | grep -c 'cwasm$' || true"))?;
    ensure!(
        entries.trim().parse::<u32>().unwrap_or(0) >= 1,
        "no compiled entry in {CACHE} after the cold start"
    );
    // The cold start ran Winch code; the broker then compiled Cranelift's for the next start,
    // in the background.
    let tiers = || -> Result<(u32, u32)> {
        let count = |filter: &str| -> Result<u32> {
            let n = c.node_sh(&format!("ls {CACHE} | grep 'cwasm$' | {filter} || true"))?;
            Ok(n.trim().parse().unwrap_or(0))
        };
        Ok((count("grep -c -- -winch-")?, count("grep -vc -- -winch-")?))
    };
    within(
        "the tier-up's optimised code",
        Duration::from_secs(120),
        || async {
            Ok(match tiers()? {
                (winch, optimised) if winch >= 1 && optimised >= 1 => Poll::Done(()),
                (winch, optimised) => Poll::NotYet(format!(
                    "{winch} Winch and {optimised} Cranelift entries in {CACHE}"
                )),
            })
        },
    )
    .await?;
    println!("  the cold start ran Winch code; Cranelift's is cached for the next start");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let names: Vec<String> = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={COLD}")))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let t = Instant::now();
    within(
        "the idle pods' shims to keep only their zygote and guest",
        Duration::from_secs(60),
        || async {
            let seen = names
                .iter()
                .map(|pod| shim_children(c, NS, pod))
                .collect::<Result<Vec<_>>>()?;
            Ok(
                if seen.len() == 2 && seen.iter().all(|s| s.as_str() == "0 2") {
                    Poll::Done(())
                } else {
                    Poll::NotYet(format!(
                        "(brokers, processes of the shim's binary) per pod: {seen:?}"
                    ))
                },
            )
        },
    )
    .await?;
    println!(
        "  idle: each pod's shim keeps its zygote and the guest, no broker ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    c.kubectl(&["delete", "-f", &path, "--wait=true", "--timeout=60s"])?;
    Ok(())
}

/// For pod `name`: "<compile brokers> <children running the shim's binary>" of its shim daemon
/// on the node (found by the pod's sandbox id).
fn shim_children(c: &Cluster, ns: &str, name: &str) -> Result<String> {
    let out = c.node_sh(&format!(
        "sid=$(crictl pods -q --state ready --label io.kubernetes.pod.name={name} \
         --label io.kubernetes.pod.namespace={ns}) && [ -n \"$sid\" ] && \
         d=$(pgrep --ns $$ --nslist mnt -f \"[c]ontainerd-shim-wasmkube-v1 .*-id $sid\" | head -1) && \
         [ -n \"$d\" ] && b=0 && s=0 && for p in $(pgrep -P \"$d\"); do \
         tr '\\0' ' ' < /proc/$p/cmdline | grep -q -- --wasmkube-compile-broker && b=$((b+1)); \
         readlink /proc/$p/exe | grep -q containerd-shim-wasmkube-v1 && s=$((s+1)); done; \
         echo \"$b $s\""
    ))?;
    Ok(out.trim().to_string())
}

/// Namespace of [`failed_compile_is_compiled_once`].
const LATE_NS: &str = "wasmkube-e2e-late";

/// A WasmApp whose module fails to compile (`docker.io/wasmkube/late-fail`, its last function
/// does not type-check): the pod crash-loops with exit 126 and the compiler's error in its log;
/// the node compiled it once, and the restart gets the remembered error from the shim instead
/// of compiling again (one failure entry in the node's cache).
pub async fn failed_compile_is_compiled_once(c: &Cluster) -> Result<()> {
    const CACHE: &str = "/var/lib/wasmkube/cache";
    const APP: &str = "late-fail";
    let ns = LATE_NS;
    c.fresh_namespace(ns)?;
    let file = std::env::temp_dir().join(format!("wk-e2e-late-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "apiVersion: wasmkube.dev/v1alpha1\nkind: WasmApp\nmetadata:\n  name: {APP}\n  \
             namespace: {ns}\nspec:\n  image: docker.io/wasmkube/late-fail:0.1.0\n  \
             replicas: 1\n  service:\n    type: None\n"
        ),
    )?;
    c.kubectl(&["apply", "-f", &file.to_string_lossy()])?;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={APP}");
    let (pod, exit, recalled) = within(
        "a restart of the late-fail pod that recalls the failed compile",
        Duration::from_secs(150),
        || async {
            let Some(pod) = pods
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
                .into_iter()
                .next()
            else {
                return Ok(Poll::NotYet("no pod yet".into()));
            };
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.first().cloned());
            let restarts = status.as_ref().map(|s| s.restart_count).unwrap_or(0);
            let exit = status
                .as_ref()
                .and_then(|s| s.last_state.as_ref())
                .and_then(|l| l.terminated.as_ref())
                .map(|t| t.exit_code);
            if restarts < 1 {
                return Ok(Poll::NotYet(format!("{name}: no restart yet")));
            }
            let (ok, logs, _) = c.kubectl_output(&["logs", "-n", ns, &name])?;
            if ok && logs.contains("failed to compile on this node") {
                Ok(Poll::Done((name, exit, logs)))
            } else {
                Ok(Poll::NotYet(format!(
                    "{name}: {restarts} restarts, log {logs:?}"
                )))
            }
        },
    )
    .await?;
    println!("  {pod} after a restart: {}", recalled.trim());
    ensure!(
        exit == Some(126),
        "the failed start exited {exit:?}, not 126"
    );
    ensure!(
        recalled.contains("type mismatch"),
        "the remembered error does not name the cause: {recalled}"
    );
    let remembered = c.node_sh(&format!("ls {CACHE} | grep -c '^module-failed-' || true"))?;
    ensure!(
        remembered.trim() == "1",
        "{} failure entries in the node's cache, not 1",
        remembered.trim()
    );
    c.kubectl(&["delete", "namespace", ns, "--wait=true", "--timeout=120s"])?;
    Ok(())
}
