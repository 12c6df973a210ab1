//! `wasmkube image build` end to end on the project's real Dockerfiles (`images/`), over a
//! stand-in context: the archive lists exactly the Dockerfile's files with their exec bits,
//! its config carries entrypoint, user and platform, two builds are byte-identical, and a
//! Dockerfile outside the subset fails naming its line.

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    os::unix::fs::{symlink, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use flate2::read::GzDecoder;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn wasmkube(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmkube"))
        .args(args)
        .output()
        .expect("run wasmkube")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What `scripts/images.sh --context` lays out, with small stand-ins for the binaries.
fn context(dir: &Path) {
    for name in [
        "wasmkube-operator",
        "wasmkube-node-installer",
        "containerd-shim-wasmkube-v1",
        "pause",
        "bin/busybox",
    ] {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, format!("\x7fELF {name}")).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    symlink("busybox", dir.join("bin/sh")).expect("symlink");
    symlink("busybox", dir.join("bin/nsenter")).expect("symlink");
    symlink("busybox", dir.join("bin/chroot")).expect("symlink");
    let check = dir.join("check.wasm");
    fs::write(&check, "\0asm check").expect("write");
    fs::set_permissions(&check, fs::Permissions::from_mode(0o644)).expect("chmod");
}

/// One image archive read back: index, manifest, config and the layer's entries.
struct Image {
    index: Value,
    config: Value,
    /// path -> (entry type, mode, uid, gid, symlink target or contents)
    layer: BTreeMap<String, (tar::EntryType, u32, u64, u64, String)>,
}

fn read_image(archive: &Path) -> Image {
    let bytes = fs::read(archive).expect("archive");
    let mut files = BTreeMap::new();
    for entry in tar::Archive::new(bytes.as_slice())
        .entries()
        .expect("entries")
    {
        let mut entry = entry.expect("entry");
        let path = text(&entry.path_bytes());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        files.insert(path, data);
    }
    let blob = |digest: &Value| {
        let hex = digest
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .expect("digest");
        files[&format!("blobs/sha256/{hex}")].clone()
    };
    let index: Value = serde_json::from_slice(&files["index.json"]).expect("index");
    let manifest: Value =
        serde_json::from_slice(&blob(&index["manifests"][0]["digest"])).expect("manifest");
    let config: Value = serde_json::from_slice(&blob(&manifest["config"]["digest"])).expect("cfg");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let mut tar_bytes = Vec::new();
    GzDecoder::new(blob(&layers[0]["digest"]).as_slice())
        .read_to_end(&mut tar_bytes)
        .expect("gunzip");
    let mut layer = BTreeMap::new();
    for entry in tar::Archive::new(tar_bytes.as_slice())
        .entries()
        .expect("entries")
    {
        let mut entry = entry.expect("entry");
        let h = entry.header().clone();
        assert_eq!(h.mtime().expect("mtime"), 0);
        let path = text(&entry.path_bytes());
        let content = match entry.link_name_bytes() {
            Some(link) => text(&link),
            None => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data).expect("read");
                text(&data)
            }
        };
        layer.insert(
            path,
            (
                h.entry_type(),
                h.mode().expect("mode"),
                h.uid().expect("uid"),
                h.gid().expect("gid"),
                content,
            ),
        );
    }
    Image {
        index,
        config,
        layer,
    }
}

/// `wasmkube image build -f DOCKERFILE --context CONTEXT --name NAME -o OUT` for linux/amd64.
fn image_build(dockerfile: &Path, context: &Path, name: &str, out: &Path) -> std::process::Output {
    wasmkube(&[
        "image",
        "build",
        "-f",
        dockerfile.to_str().expect("utf8"),
        "--context",
        context.to_str().expect("utf8"),
        "--name",
        name,
        "-o",
        out.to_str().expect("utf8"),
        "--platform",
        "linux/amd64",
    ])
}

/// Builds one of the real Dockerfiles in images/; returns stdout.
fn build(dockerfile: &str, context: &Path, name: &str, out: &Path) -> String {
    let o = image_build(&repo().join("images").join(dockerfile), context, name, out);
    assert!(o.status.success(), "stderr: {}", text(&o.stderr));
    text(&o.stdout)
}

#[test]
fn real_dockerfiles_build_reproducible_images_with_their_files() {
    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctx = tmp.path().join("context");
    context(&ctx);
    let dir = |p: &str| (p.to_owned(), (D, 0o755, 0, 0, String::new()));
    let exe = |p: &str, name: &str| (p.to_owned(), (F, 0o755, 0, 0, format!("\x7fELF {name}")));
    let cases = [
        (
            "operator.Dockerfile",
            "docker.io/wasmkube/operator:0.1.0",
            "/usr/local/bin/wasmkube-operator",
            "65532:65532",
            vec![
                dir("usr/"),
                dir("usr/local/"),
                dir("usr/local/bin/"),
                exe("usr/local/bin/wasmkube-operator", "wasmkube-operator"),
            ],
        ),
        (
            "node-installer.Dockerfile",
            "docker.io/wasmkube/node-installer:0.1.0",
            "/usr/local/bin/wasmkube-node-installer",
            "0:0",
            vec![
                dir("bin/"),
                exe("bin/busybox", "bin/busybox"),
                ("bin/chroot".into(), (L, 0o777, 0, 0, "busybox".into())),
                ("bin/nsenter".into(), (L, 0o777, 0, 0, "busybox".into())),
                ("bin/sh".into(), (L, 0o777, 0, 0, "busybox".into())),
                dir("usr/"),
                dir("usr/local/"),
                dir("usr/local/bin/"),
                exe(
                    "usr/local/bin/containerd-shim-wasmkube-v1",
                    "containerd-shim-wasmkube-v1",
                ),
                exe(
                    "usr/local/bin/wasmkube-node-installer",
                    "wasmkube-node-installer",
                ),
                dir("usr/local/share/"),
                dir("usr/local/share/wasmkube/"),
                (
                    "usr/local/share/wasmkube/check.wasm".into(),
                    (F, 0o644, 0, 0, "\0asm check".into()),
                ),
            ],
        ),
        (
            "pause.Dockerfile",
            "localhost/wasmkube/pause:0.1.0",
            "/pause",
            "65535:65535",
            vec![exe("pause", "pause")],
        ),
    ];
    for (dockerfile, name, entrypoint, user, files) in cases {
        let a = tmp.path().join("a.tar");
        let b = tmp.path().join("b.tar");
        let line = build(dockerfile, &ctx, name, &a);
        build(dockerfile, &ctx, name, &b);
        let bytes = fs::read(&a).expect("a");
        assert_eq!(
            bytes,
            fs::read(&b).expect("b"),
            "{dockerfile}: reproducible"
        );
        assert!(
            line.starts_with(&format!("built {name} (linux/amd64) -> ")),
            "{line}"
        );
        assert!(
            line.contains(&format!(", {} bytes (", bytes.len())),
            "{line}"
        );

        let image = read_image(&a);
        let want: BTreeMap<_, _> = files.into_iter().collect();
        assert_eq!(image.layer, want, "{dockerfile}: layer");
        let desc = &image.index["manifests"][0];
        assert_eq!(desc["annotations"]["io.containerd.image.name"], name);
        assert_eq!(desc["platform"]["os"], "linux");
        assert_eq!(desc["platform"]["architecture"], "amd64");
        assert_eq!(image.config["os"], "linux");
        assert_eq!(image.config["architecture"], "amd64");
        let c = &image.config["config"];
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!([entrypoint]),
            "{dockerfile}"
        );
        assert_eq!(c["User"], user, "{dockerfile}");
        assert_eq!(
            c["Env"],
            serde_json::json!([
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            ])
        );

        // `image inspect` reads the same archive back.
        let o = wasmkube(&["image", "inspect", "--files", a.to_str().expect("utf8")]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let out = text(&o.stdout);
        let digest = desc["digest"].as_str().expect("digest");
        assert!(
            out.starts_with(&format!(
                "{name} manifest {digest} platform linux/amd64 archive {} bytes content ",
                bytes.len()
            )),
            "{out}"
        );
        assert_eq!(out.lines().count(), 1 + want.len(), "{out}");
    }
}

#[test]
fn dockerfiles_outside_the_subset_fail_naming_file_and_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ctx = tmp.path().join("context");
    context(&ctx);
    let dockerfile = tmp.path().join("bad.Dockerfile");
    fs::write(
        &dockerfile,
        "FROM scratch\nCOPY pause /pause\nRUN chmod +x /pause\n",
    )
    .expect("write");
    let out = tmp.path().join("bad.tar");
    let o = image_build(&dockerfile, &ctx, "bad", &out);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("bad.Dockerfile"), "{err}");
    assert!(
        err.contains("line 3 `RUN chmod +x /pause`: RUN is not supported"),
        "{err}"
    );
    assert!(!out.exists());
}
