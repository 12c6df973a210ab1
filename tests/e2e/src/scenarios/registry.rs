//! Images from the cluster's registries, as users ship them. Every image the suite runs reached
//! the node by a pull from the cluster's registry (`tests/cluster/up.sh` pushes them there);
//! this scenario adds the private case: the example app copied with wasmkube's registry client
//! (a pull from the open registry, a push with basic credentials) into the registry that requires
//! them; a WasmApp whose `imagePullSecrets` names a `kubernetes.io/dockerconfigjson` Secret with
//! the right password serves it; one whose Secret has a wrong password never starts, and its
//! status says why with the kubelet's `ErrImagePull`/`ImagePullBackOff` message.
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use wasmkube_oci::{
    build_archive,
    inspect::read_archive_bytes,
    registry::{self, Credentials, RegistryOptions},
    ImagePlatform, ImageRef, PackOptions,
};
use wasmkube_operator::crd::{conditions, reasons, WasmApp};

use super::serving::{apply, cluster_ip, get, wasm_app_of};
use crate::wait::{within, Poll};
use crate::Cluster;

const NS: &str = "wasmkube-e2e-registry";
/// The cluster's registries (tests/cluster/lib.sh): anonymous, and basic auth.
pub(super) const OPEN: &str = "localhost:5001";
const PRIVATE: &str = "localhost:5002";
const USER: &str = "wasmkube";

/// WasmApp `name`'s `Degraded` condition, once it is True for `reason` (within 120 s).
pub(super) async fn degraded_for(
    apps: &Api<WasmApp>,
    name: &str,
    reason: &str,
) -> Result<Condition> {
    within(
        &format!("WasmApp {name} to be Degraded with reason {reason}"),
        Duration::from_secs(120),
        || async {
            let status = apps.get(name).await?.status.unwrap_or_default();
            Ok(match status.condition(conditions::DEGRADED) {
                Some(d) if d.status == "True" && d.reason == reason => Poll::Done(d.clone()),
                other => Poll::NotYet(format!("Degraded: {other:?}")),
            })
        },
    )
    .await
}

/// The private registry's password, which `up.sh` generated.
fn password() -> Result<String> {
    let dir = std::env::var("CLUSTER_DIR").unwrap_or_else(|_| "/var/tmp/wasmkube-cluster".into());
    let file = format!("{dir}/registry-auth.password");
    Ok(std::fs::read_to_string(&file)
        .with_context(|| format!("{file} (written by tests/cluster/up.sh)"))?
        .trim()
        .to_string())
}

/// A pull Secret for the private registry.
fn pull_secret(name: &str, password: &str) -> String {
    let config = serde_json::json!({"auths": {PRIVATE: {"username": USER, "password": password}}});
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {NS}\n\
         type: kubernetes.io/dockerconfigjson\nstringData:\n  .dockerconfigjson: '{config}'\n"
    )
}

pub async fn private_image_pulls_with_its_pull_secret_only(c: &Cluster) -> Result<()> {
    c.fresh_namespace(NS)?;
    let password = password()?;
    let source: ImageRef = format!("{OPEN}/wasmkube/hello-http:0.1.0").parse()?;
    let private: ImageRef = format!("{PRIVATE}/private/hello-http:0.1.0").parse()?;
    let image = registry::pull(&source, &RegistryOptions::default())
        .await
        .with_context(|| format!("pulling {source}"))?;
    let anonymous = RegistryOptions {
        credentials: Credentials::Anonymous,
        ..RegistryOptions::default()
    };
    let refused = registry::push(&image, &private, &anonymous).await;
    ensure!(
        matches!(refused, Err(registry::RegistryError::Unauthorized { .. })),
        "an anonymous push to {PRIVATE} was not refused with 401: {refused:?}"
    );
    let with_password = RegistryOptions {
        credentials: Credentials::Basic {
            username: USER.into(),
            password: password.clone(),
        },
        ..RegistryOptions::default()
    };
    let pushed = registry::push(&image, &private, &with_password).await?;
    ensure!(
        pushed.manifest_digest == image.manifest_digest(),
        "the copy has another digest: {pushed:?}"
    );
    println!(
        "  copied {source} to {private} ({})",
        pushed.manifest_digest
    );

    let wrong = "not-the-password";
    for (name, pw) in [("good-pull", password.as_str()), ("wrong-pull", wrong)] {
        let (ok, _, err) = apply(c, name, &pull_secret(name, pw))?;
        ensure!(ok, "applying Secret {name}: {err}");
    }
    let app = |name: &str, secret: &str| {
        wasm_app_of(
            NS,
            name,
            &private.to_string(),
            &format!("  imagePullSecrets:\n    - name: {secret}\n"),
        )
    };
    let (ok, _, err) = apply(c, "private", &app("private", "good-pull"))?;
    ensure!(ok, "applying WasmApp private: {err}");
    let (ok, _, err) = apply(c, "wrong-secret", &app("wrong-secret", "wrong-pull"))?;
    ensure!(ok, "applying WasmApp wrong-secret: {err}");

    let ip = cluster_ip(c, NS, "private").await?;
    let answer = get(c, &ip, "/from-the-private-registry").await?;
    ensure!(
        answer.contains("path=/from-the-private-registry"),
        "the private image's app answered {answer:?}"
    );
    println!("  served from {private} with Secret good-pull: {answer}");

    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), NS);
    let degraded = degraded_for(&apps, "wrong-secret", reasons::IMAGE_PULL_FAILED).await?;
    ensure!(
        (degraded.message.contains("ErrImagePull")
            || degraded.message.contains("ImagePullBackOff"))
            && degraded.message.contains(&private.to_string()),
        "Degraded names neither the kubelet's reason nor the image: {}",
        degraded.message
    );
    ensure!(
        !degraded.message.contains(&password) && !degraded.message.contains(wrong),
        "a password reached the status: {}",
        degraded.message
    );
    let ready = apps
        .get("wrong-secret")
        .await?
        .status
        .unwrap_or_default()
        .is_true(conditions::READY);
    ensure!(!ready, "wrong-secret is Ready without its image");
    println!(
        "  wrong-secret: Degraded {}: {}",
        degraded.reason, degraded.message
    );
    c.kubectl(&["delete", "namespace", NS, "--wait=false"])?;
    Ok(())
}

/// `tests/guests`' wasi:http component, as the one build left it.
pub(super) fn hello_component() -> Result<std::path::PathBuf> {
    guest("wasm32-wasip2", "http_hello.wasm")
}

/// A built test guest (`tests/guests`, by scripts/build.sh): `target`'s release `file`.
pub(super) fn guest(target: &str, file: &str) -> Result<std::path::PathBuf> {
    let guests = std::env::var("WASMKUBE_GUESTS_DIR").unwrap_or_else(|_| {
        let target =
            std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "/var/tmp/wasmkube-target".into());
        format!("{target}/guests")
    });
    let path = std::path::PathBuf::from(guests).join(format!("{target}/release/{file}"));
    ensure!(
        path.is_file(),
        "{} is not built (scripts/build.sh)",
        path.display()
    );
    Ok(path)
}

/// Packs test guest `file` of `target` as the tar-layer image `wasmkube pack` writes (for
/// linux/amd64, as scripts/images.sh does, so every containerd version unpacks it) and pushes
/// it to the open registry as `localhost:5001/e2e/<repo>:0.1.0`; returns that reference.
pub(super) async fn push_guest(target: &str, file: &str, repo: &str) -> Result<String> {
    let module = std::fs::read(guest(target, file)?)?;
    let reference = format!("{OPEN}/e2e/{repo}:0.1.0");
    let image_ref: ImageRef = reference.parse()?;
    let mut opts = PackOptions::new(image_ref.clone());
    opts.platform = Some(ImagePlatform::linux_amd64());
    let packed = build_archive(file, &module, &opts)?;
    let image = read_archive_bytes(&packed.archive, std::path::Path::new(file))?.image;
    let pushed = registry::push(&image, &image_ref, &RegistryOptions::default()).await?;
    println!("  pushed {reference} ({file}): {}", pushed.manifest_digest);
    Ok(reference)
}

/// `wkg` from crates.io (scripts/prereqs.sh installs it), if on PATH or in WASMKUBE_WKG.
fn wkg() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("WASMKUBE_WKG") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("wkg"))
        .find(|p| p.is_file())
}

/// A Wasm OCI artifact (config `application/vnd.wasm.config.v0+json`, one `application/wasm`
/// layer), pushed by `wkg oci push` as users of the Bytecode Alliance tools do: containerd 1.6's
/// CRI pulls it and the shim reads the module from the image's layer. Without a command the CRI
/// refuses the container ("no command specified"): the WasmApp's status says so and what to do;
/// with `spec.args` it serves.
pub async fn wasm_oci_artifact_from_wkg_serves(c: &Cluster) -> Result<()> {
    const ARTIFACT_NS: &str = "wasmkube-e2e-artifact";
    c.fresh_namespace(ARTIFACT_NS)?;
    let module = hello_component()?;
    let reference = format!("{OPEN}/artifacts/hello:0.1.0");
    let Some(wkg) = wkg() else {
        anyhow::bail!("wkg is not installed (scripts/prereqs.sh installs it from crates.io)");
    };
    let out = std::process::Command::new(&wkg)
        .args(["oci", "push", "--insecure", OPEN, &reference])
        .arg(&module)
        .output()
        .context("running wkg")?;
    ensure!(
        out.status.success(),
        "wkg oci push {reference}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // What wkg pushed is the artifact layout.
    let pulled = registry::pull(&reference.parse()?, &RegistryOptions::default()).await?;
    let manifest = pulled.checked_manifest()?;
    ensure!(
        manifest.config().media_type().to_string() == wasmkube_oci::WASM_CONFIG_MEDIA_TYPE
            && manifest.layers().len() == 1
            && manifest.layers()[0].media_type().to_string() == wasmkube_oci::WASM_LAYER_MEDIA_TYPE,
        "wkg pushed something else: {}",
        String::from_utf8_lossy(&pulled.manifest)
    );
    println!("  wkg oci push {reference}: {}", pulled.manifest_digest());

    let (ok, _, err) = apply(
        c,
        "no-args",
        &wasm_app_of(ARTIFACT_NS, "no-args", &reference, ""),
    )?;
    ensure!(ok, "applying WasmApp no-args: {err}");
    let (ok, _, err) = apply(
        c,
        "artifact",
        &wasm_app_of(ARTIFACT_NS, "artifact", &reference, "  args: [\"hello\"]\n"),
    )?;
    ensure!(ok, "applying WasmApp artifact: {err}");
    let ip = cluster_ip(c, ARTIFACT_NS, "artifact").await?;
    let answer = get(c, &ip, "/from-an-artifact").await?;
    ensure!(
        answer.contains("path=/from-an-artifact"),
        "the artifact's app answered {answer:?}"
    );
    println!("  served from the artifact with args [hello]: {answer}");

    let apps: Api<WasmApp> = Api::namespaced(c.client.clone(), ARTIFACT_NS);
    let degraded = degraded_for(&apps, "no-args", reasons::PODS_NOT_STARTING).await?;
    ensure!(
        degraded.message.contains("no command specified")
            && degraded.message.contains("give the WasmApp spec.args"),
        "Degraded does not say what to do: {}",
        degraded.message
    );
    println!(
        "  no-args: Degraded {}: {}",
        degraded.reason, degraded.message
    );
    c.kubectl(&["delete", "namespace", ARTIFACT_NS, "--wait=false"])?;
    Ok(())
}
