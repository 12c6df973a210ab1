//! `spec.config` and `spec.volumes` as a user sees them: the app reads a ConfigMap and a Secret
//! through `wasi:config`, an edit of the ConfigMap reaches it without a restart, even on an
//! instance that is reused (the time it took is printed), the Secret's value is nowhere but there, the guest sees none of the pod's other
//! mounts, a missing ConfigMap is named in the WasmApp's status, and a volume with two sources is
//! refused by the API server.
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use kube::{Api, ResourceExt};
use wasmkube_operator::crd::WasmApp;

use super::serving::{apply, cluster_ip, get, wasm_app};
use crate::wait::{within, Poll};
use crate::Cluster;

const NS: &str = "wasmkube-e2e-config";
const SECRET_VALUE: &str = "e2e-s3cr3t-4d1c";

fn config_map(greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-settings\n  namespace: {NS}\n\
         data:\n  greeting: {greeting}\n  color: blue\n"
    )
}

pub async fn config_and_volumes_reach_the_app_and_nothing_else(c: &Cluster) -> Result<()> {
    c.fresh_namespace(NS)?;
    let (ok, _, err) = apply(c, "settings", &config_map("hello"))?;
    ensure!(ok, "applying the ConfigMap: {err}");
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-secret\n  namespace: {NS}\n\
         stringData:\n  token: {SECRET_VALUE}\n  color: red\n"
    );
    let (ok, _, err) = apply(c, "secret", &secret)?;
    ensure!(ok, "applying the Secret: {err}");
    let grants = "  config:\n    values:\n      inline: \"yes\"\n    fromConfigMaps:\n    - name: \
                  app-settings\n    fromSecrets:\n    - name: app-secret\n  volumes:\n  - name: \
                  scratch\n    mountPath: /scratch\n    emptyDir: {}\n  http:\n    \
                  instanceReuse:\n      idleTimeout: 600s\n";
    let (ok, _, err) = apply(
        c,
        "configured",
        &wasm_app(NS, "configured", "http-grants", grants),
    )?;
    ensure!(ok, "applying the app: {err}");
    let ip = cluster_ip(c, NS, "configured").await?;
    get(c, &ip, "/ready").await?;

    ensure!(
        get(c, &ip, "/config/greeting").await? == "hello",
        "greeting"
    );
    let color = get(c, &ip, "/config/color").await?;
    ensure!(color == "red", "the Secret is last and wins: {color}");
    ensure!(get(c, &ip, "/config/token").await? == SECRET_VALUE, "token");
    ensure!(get(c, &ip, "/config/inline").await? == "yes", "inline");
    let scratch = get(c, &ip, "/ls?/scratch").await?;
    ensure!(
        !scratch.starts_with("error="),
        "the granted emptyDir: {scratch}"
    );
    // The runtime leaves empty files in the image where it mounts the pod's own; the guest
    // sees those, never the mounts.
    for (path, pods) in [
        ("/etc/hosts", "Kubernetes-managed"),
        ("/etc/resolv.conf", "nameserver"),
        ("/dev/termination-log", ""),
        ("/proc/self/environ", ""),
    ] {
        let got = get(c, &ip, &format!("/file?{path}")).await?;
        let theirs = if pods.is_empty() {
            !got.starts_with("error=")
        } else {
            got.contains(pods)
        };
        ensure!(!theirs, "{path} is the pod's, not the guest's: {got}");
    }
    let env = get(c, &ip, "/env").await?;
    ensure!(
        !env.contains(SECRET_VALUE),
        "the Secret in the guest's env: {env}"
    );

    // An edit of the ConfigMap reaches the running pod's next instance: no restart.
    let pod_uids = || {
        c.kubectl(&[
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/instance=configured",
            "-o",
            "jsonpath={.items[*].metadata.uid}",
        ])
    };
    let pods_before = pod_uids()?;
    // Reuse is on: one instance serves these sequential requests, and the edit must reach it.
    let instance = get(c, &ip, "/instance").await?;
    let (id, served) = super::instance_reuse::instance(&instance)?;
    let edited = Instant::now();
    let (ok, _, err) = apply(c, "settings", &config_map("bonjour"))?;
    ensure!(ok, "editing the ConfigMap: {err}");
    within("the edited greeting", Duration::from_secs(180), || async {
        Ok(match get(c, &ip, "/config/greeting").await?.as_str() {
            "bonjour" => Poll::Done(()),
            other => Poll::NotYet(format!("still {other:?}")),
        })
    })
    .await?;
    println!(
        "  a ConfigMap edit reached the app's reused instance in {:.1} s, without a restart",
        edited.elapsed().as_secs_f64()
    );
    let again = get(c, &ip, "/instance").await?;
    let (id_after, served_after) = super::instance_reuse::instance(&again)?;
    // (`/instance` counts its own requests: the next one on the same instance.)
    ensure!(
        id_after == id && served_after == served + 1,
        "the edit was seen by the instance that served before it ({instance}), not a new one: \
         {again}"
    );
    let pods_after = pod_uids()?;
    ensure!(
        pods_before == pods_after,
        "the pod was replaced: {pods_before} → {pods_after}"
    );

    // The Secret's value is in no log, Event or status.
    let logs = c.kubectl(&[
        "logs",
        "-n",
        NS,
        "-l",
        "app.kubernetes.io/instance=configured",
        "--tail=-1",
    ])?;
    let events = c.kubectl(&["get", "events", "-n", NS, "-o", "yaml"])?;
    let status = c.kubectl(&["get", "wasmapp", "-n", NS, "configured", "-o", "yaml"])?;
    let deployment = c.kubectl(&["get", "deployment", "-n", NS, "configured", "-o", "yaml"])?;
    for (what, text) in [
        ("logs", &logs),
        ("Events", &events),
        ("WasmApp", &status),
        ("Deployment", &deployment),
    ] {
        ensure!(
            !text.contains(SECRET_VALUE),
            "the Secret's value is in the {what}"
        );
    }

    // A missing ConfigMap is named in the status.
    let missing = "  config:\n    fromConfigMaps:\n    - name: not-there\n";
    let (ok, _, err) = apply(
        c,
        "waiting",
        &wasm_app(NS, "waiting", "http-grants", missing),
    )?;
    ensure!(ok, "applying the app without its ConfigMap: {err}");
    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), NS);
    let message = within(
        "ConfigMissing in the status",
        Duration::from_secs(60),
        || async {
            let app = apps.get("waiting").await?;
            let degraded = app
                .status
                .as_ref()
                .and_then(|s| s.condition("Degraded"))
                .filter(|d| d.status == "True" && d.reason == "ConfigMissing")
                .map(|d| d.message.clone());
            Ok(match degraded {
                Some(m) => Poll::Done(m),
                None => Poll::NotYet(format!("{} status: {:?}", app.name_any(), app.status)),
            })
        },
    )
    .await?;
    ensure!(
        message.contains("\"not-there\"") && message.contains("spec.config.fromConfigMaps[0]"),
        "the condition does not name the ConfigMap: {message}"
    );
    println!("  missing ConfigMap: {message}");

    // A volume with two sources never reaches the cluster.
    let bad = "  volumes:\n  - name: two\n    mountPath: /two\n    emptyDir: {}\n    \
               persistentVolumeClaim:\n      claimName: x\n";
    let (ok, _, err) = apply(
        c,
        "two-sources",
        &wasm_app(NS, "two-sources", "http-grants", bad),
    )?;
    ensure!(
        !ok && err.contains("spec.volumes[0]") && err.contains("exactly one"),
        "a volume with two sources was not refused by field: {err}"
    );
    c.kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"])
        .context("deleting the namespace")?;
    Ok(())
}
