//! Spin apps from a registry, in the layout `spin registry push` writes (assembled by
//! `wasmkube_test_harness::spin_image`, pushed with wasmkube's registry client). One app (a single HTTP component, an `environment` entry) serves
//! through its Service with the locked app's env; one behind a Redis trigger never serves, and the
//! WasmApp's status and `kubectl describe` say why (the shim's message, via the container's
//! `FallbackToLogsOnError` termination message).
use anyhow::{ensure, Result};
use kube::Api;
use wasmkube_oci::registry::{self, RegistryOptions};
use wasmkube_operator::crd::{reasons, WasmApp};
use wasmkube_test_harness::spin_image::spin_image;

use super::registry::{degraded_for, hello_component, OPEN};
use super::serving::{apply, cluster_ip, get, wasm_app_of};
use crate::Cluster;

const NS: &str = "wasmkube-e2e-spin";

pub async fn spin_app_image_serves_and_an_unsupported_one_says_why(c: &Cluster) -> Result<()> {
    c.fresh_namespace(NS)?;
    let wasm = std::fs::read(hello_component()?)?;
    let opts = RegistryOptions::default();
    for (repo, trigger) in [("hello", "http"), ("redis-trigger", "redis")] {
        let reference = format!("{OPEN}/spin/{repo}:0.1.0");
        let pushed = registry::push(
            &spin_image(&wasm, trigger, &[("WK_GREETING", "from spin.toml")]),
            &reference.parse()?,
            &opts,
        )
        .await?;
        println!(
            "  pushed {reference} (Spin layout): {}",
            pushed.manifest_digest
        );
        // A Spin image has no entrypoint, as a Wasm artifact has none: SpinKube gives its pods a
        // command; a WasmApp gives spec.args.
        let app = wasm_app_of(NS, repo, &reference, "  args: [\"spin\"]\n");
        let (ok, _, err) = apply(c, repo, &app)?;
        ensure!(ok, "applying WasmApp {repo}: {err}");
    }

    let ip = cluster_ip(c, NS, "hello").await?;
    let answer = get(c, &ip, "/from-spin").await?;
    ensure!(
        answer.contains("path=/from-spin"),
        "the Spin app answered {answer:?}"
    );
    let env = get(c, &ip, "/env").await?;
    ensure!(
        env.trim() == "from spin.toml",
        "the component's environment from the locked app did not reach it: {env:?}"
    );
    println!("  Spin app served: {} / env: {}", answer.trim(), env.trim());

    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), NS);
    let degraded = degraded_for(&apps, "redis-trigger", reasons::PODS_NOT_STARTING).await?;
    ensure!(
        degraded
            .message
            .contains("trigger \"trigger--hello\" is of type \"redis\"")
            && degraded.message.contains("exited with code 126"),
        "Degraded does not say why the Spin app cannot run: {}",
        degraded.message
    );
    println!(
        "  redis-trigger: Degraded {}: {}",
        degraded.reason, degraded.message
    );
    let described = c.kubectl(&["describe", "pods", "-n", NS])?;
    ensure!(
        described.contains("HTTP triggers only"),
        "kubectl describe does not show the shim's message:\n{described}"
    );
    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}
