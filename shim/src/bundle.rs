//! The spec a wasm container is built from: containerd's, plus the guest's root view.
//!
//! A guest sees its files through WASI preopens, and a preopened directory reaches everything
//! mounted below it. Preopening the container's `/` would hand the guest every mount the
//! kubelet, the CRI and the runtime add: `/proc` (the process's own environment and memory
//! files among them), `/dev`, `/etc/hosts`, the service-account token, and the ConfigMaps and
//! Secrets the shim serves through `wasi:config`. So before libcontainer reads the spec (the
//! `container_bundle` hook of runwasi's `Shim`, see `third_party/containerd-shim-wasm`), the
//! shim adds one mount: a *non-recursive* bind of the container's rootfs at [`ROOT_VIEW`]. That
//! mount holds the image's files and whatever the container writes, and none of the mounts
//! made on top of the rootfs; the guest's `/` is that view ([`crate::preopens`]). The shim
//! itself keeps the full view, to read `/proc`, its cgroup and the configuration.
//!
//! The changed spec is written next to containerd's (`<bundle>/wasmkube/config.json`, the
//! rootfs given by absolute path); containerd's own file is not touched, and containerd
//! removes both with the bundle.
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Where the guest's root view is mounted in the container: under `/dev`, the runtime's own
/// tmpfs, so the mount point is not a directory in the image's filesystem either.
pub const ROOT_VIEW: &str = "/dev/.wasmkube/root";

/// The annotation containerd's CRI sets to `sandbox` on a pod's pause container.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// Why a container's spec could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read the container's spec {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the container's spec {path} is not an OCI runtime spec: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("cannot write the container's spec to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// runwasi's hook: builds `<bundle>/wasmkube/config.json` with the root view and returns that
/// directory, or `None` for a pod's pause container, which runs natively and has no guest.
pub fn container_bundle(bundle: &Path) -> Result<Option<PathBuf>, BundleError> {
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    let mut spec: Value = serde_json::from_str(&text).map_err(|e| BundleError::Invalid {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    if is_pod_sandbox(&spec) {
        return Ok(None);
    }
    with_root_view(&mut spec, bundle).map_err(|detail| BundleError::Invalid {
        path: path.clone(),
        detail,
    })?;
    let dir = bundle.join("wasmkube");
    let out = dir.join("config.json");
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)?;
        // A string-keyed JSON value always serialises.
        std::fs::write(&out, serde_json::to_vec(&spec).unwrap_or_default())
    };
    write().map_err(|source| BundleError::Write {
        path: out.clone(),
        source,
    })?;
    Ok(Some(dir))
}

fn is_pod_sandbox(spec: &Value) -> bool {
    spec.pointer(&format!(
        "/annotations/{}",
        CONTAINER_TYPE.replace('/', "~1")
    ))
    .and_then(Value::as_str)
        == Some("sandbox")
}

/// Makes the spec's rootfs path absolute (relative to `bundle`) and appends the root-view
/// mount: a plain (not recursive) bind of the rootfs, read-only when the rootfs is.
pub fn with_root_view(spec: &mut Value, bundle: &Path) -> Result<(), String> {
    let root = spec
        .pointer_mut("/root")
        .and_then(Value::as_object_mut)
        .ok_or("it has no root")?;
    let rel = root
        .get("path")
        .and_then(Value::as_str)
        .ok_or("it has no root.path")?;
    let rootfs = if Path::new(rel).is_absolute() {
        PathBuf::from(rel)
    } else {
        bundle.join(rel)
    };
    let rootfs = rootfs
        .to_str()
        .ok_or("its root.path is not UTF-8")?
        .to_string();
    root.insert("path".into(), Value::String(rootfs.clone()));
    let read_only = root
        .get("readonly")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut options = vec!["bind", "nosuid", "nodev"];
    if read_only {
        options.push("ro");
    }
    let mount = json!({
        "destination": ROOT_VIEW,
        "type": "bind",
        "source": rootfs,
        "options": options,
    });
    match spec.get_mut("mounts") {
        Some(Value::Array(mounts)) => mounts.push(mount),
        Some(_) => return Err("its mounts are not a list".into()),
        None => {
            spec.as_object_mut()
                .ok_or("it is not an object")?
                .insert("mounts".into(), Value::Array(vec![mount]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_view_is_a_plain_bind_of_the_rootfs_after_every_other_mount() {
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "process": {"args": ["/app.wasm"]},
        });
        with_root_view(&mut spec, Path::new("/run/b")).expect("spec");
        assert_eq!(spec["root"]["path"], "/run/b/rootfs");
        let mounts = spec["mounts"].as_array().expect("mounts");
        assert_eq!(mounts.len(), 2);
        assert_eq!(
            mounts[1],
            json!({
                "destination": ROOT_VIEW,
                "type": "bind",
                "source": "/run/b/rootfs",
                "options": ["bind", "nosuid", "nodev", "ro"],
            }),
            "not rbind: the view must not carry the mounts below"
        );
        assert_eq!(spec["process"]["args"][0], "/app.wasm", "the rest is kept");
    }

    #[test]
    fn a_writable_rootfs_gives_a_writable_view_and_an_absolute_root_stays() {
        let mut spec = json!({"root": {"path": "/var/rootfs"}});
        with_root_view(&mut spec, Path::new("/run/b")).expect("spec");
        assert_eq!(spec["root"]["path"], "/var/rootfs");
        assert_eq!(
            spec["mounts"][0]["options"],
            json!(["bind", "nosuid", "nodev"])
        );
    }

    #[test]
    fn a_bundle_is_written_beside_containerds_and_a_pause_container_is_left_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let original = r#"{"root":{"path":"rootfs"},"mounts":[]}"#;
        std::fs::write(dir.path().join("config.json"), original).expect("spec");
        let ours = container_bundle(dir.path()).expect("ok").expect("a bundle");
        assert_eq!(ours, dir.path().join("wasmkube"));
        let written: Value =
            serde_json::from_slice(&std::fs::read(ours.join("config.json")).expect("written"))
                .expect("json");
        assert_eq!(written["mounts"][0]["destination"], ROOT_VIEW);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.json")).expect("read"),
            original,
            "containerd's spec is untouched"
        );

        let pause = tempfile::tempdir().expect("tmp");
        std::fs::write(
            pause.path().join("config.json"),
            r#"{"root":{"path":"rootfs"},"annotations":{"io.kubernetes.cri.container-type":"sandbox"}}"#,
        )
        .expect("spec");
        assert_eq!(container_bundle(pause.path()).expect("ok"), None);

        let broken = tempfile::tempdir().expect("tmp");
        std::fs::write(broken.path().join("config.json"), "{").expect("spec");
        let e = container_bundle(broken.path()).expect_err("broken");
        assert!(e.to_string().contains("not an OCI runtime spec"), "{e}");
    }
}
