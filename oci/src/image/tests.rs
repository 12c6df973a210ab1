//! COPY's Docker rules over a real context directory, the run config, and reproducibility.
use std::{os::unix::fs::symlink, time::SystemTime};

use super::*;
use crate::{
    archive::{sha256_hex, testing::untar},
    dockerfile::parse,
};

fn write(dir: &Path, rel: &str, data: &[u8], mode: u32) {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(&path, data).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The context `scripts/images.sh --context` lays out, with tiny stand-in binaries.
fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(d, "wasmkube-node-installer", b"installer", 0o755);
    write(d, "containerd-shim-wasmkube-v1", b"shim", 0o755);
    write(d, "wasmkube-operator", b"operator", 0o755);
    write(d, "pause", b"pause", 0o755);
    write(d, "check.wasm", b"\0asm", 0o644);
    write(d, "bin/busybox", b"busybox", 0o755);
    symlink("busybox", d.join("bin/sh")).expect("symlink");
    symlink("busybox", d.join("bin/nsenter")).expect("symlink");
    symlink("busybox", d.join("bin/chroot")).expect("symlink");
    dir
}

fn lay_out(dockerfile: &str, context: &Path) -> Result<(LayerTree, RunConfig), BuildError> {
    layout(&parse(dockerfile).expect("parse"), context)
}

fn file(mode: u32, data: &[u8]) -> LayerEntry {
    LayerEntry::File {
        mode,
        data: data.to_vec(),
    }
}

fn dir() -> LayerEntry {
    LayerEntry::Dir { mode: 0o755 }
}

fn link(target: &str) -> LayerEntry {
    LayerEntry::Symlink {
        target: target.to_owned(),
    }
}

#[test]
fn node_installer_layout_matches_its_dockerfile() {
    let ctx = context();
    let text = include_str!("../../../images/node-installer.Dockerfile");
    let (tree, run) = lay_out(text, ctx.path()).expect("layout");
    let expected = LayerTree::from([
        ("bin".into(), dir()),
        ("bin/busybox".into(), file(0o755, b"busybox")),
        ("bin/chroot".into(), link("busybox")),
        ("bin/nsenter".into(), link("busybox")),
        ("bin/sh".into(), link("busybox")),
        ("usr".into(), dir()),
        ("usr/local".into(), dir()),
        ("usr/local/bin".into(), dir()),
        (
            "usr/local/bin/containerd-shim-wasmkube-v1".into(),
            file(0o755, b"shim"),
        ),
        (
            "usr/local/bin/wasmkube-node-installer".into(),
            file(0o755, b"installer"),
        ),
        ("usr/local/share".into(), dir()),
        ("usr/local/share/wasmkube".into(), dir()),
        (
            "usr/local/share/wasmkube/check.wasm".into(),
            file(0o644, b"\0asm"),
        ),
    ]);
    assert_eq!(tree, expected);
    assert_eq!(
        run.entrypoint,
        Some(vec!["/usr/local/bin/wasmkube-node-installer".to_owned()])
    );
    assert_eq!(run.user.as_deref(), Some("0:0"));
    assert_eq!(run.env, [format!("PATH={DEFAULT_PATH}")]);
    assert_eq!(run.working_dir.as_deref(), Some("/"));
    assert_eq!(
        run.labels["org.opencontainers.image.title"],
        "wasmkube node installer"
    );
}

#[test]
fn operator_and_pause_layouts() {
    let ctx = context();
    let (tree, run) = lay_out(
        include_str!("../../../images/operator.Dockerfile"),
        ctx.path(),
    )
    .expect("operator");
    let files: Vec<_> = tree.keys().map(String::as_str).collect();
    assert_eq!(
        files,
        [
            "usr",
            "usr/local",
            "usr/local/bin",
            "usr/local/bin/wasmkube-operator"
        ]
    );
    assert_eq!(run.user.as_deref(), Some("65532:65532"));
    let (tree, run) =
        lay_out(include_str!("../../../images/pause.Dockerfile"), ctx.path()).expect("pause");
    assert_eq!(
        tree,
        LayerTree::from([("pause".into(), file(0o755, b"pause"))])
    );
    assert_eq!(run.entrypoint, Some(vec!["/pause".to_owned()]));
}

#[test]
fn copy_follows_dockers_destination_rules() {
    let ctx = context();
    write(ctx.path(), "conf/app.toml", b"x = 1", 0o600);
    write(ctx.path(), "conf/sub/deep", b"deep", 0o644);
    symlink("pause", ctx.path().join("pause-link")).expect("symlink");
    let text = "FROM scratch
COPY pause /renamed
COPY pause /opt
COPY pause /existing/
COPY pause /existing
COPY --chmod=0700 conf /etc/app
COPY pause-link /followed
WORKDIR /srv/www
COPY pause rel/
ENV PATH=/bin A=1
ENV A=2
";
    let (tree, run) = lay_out(text, ctx.path()).expect("layout");
    // A file to a path that is not a directory: that name.
    assert_eq!(tree["renamed"], file(0o755, b"pause"));
    assert_eq!(tree["opt"], file(0o755, b"pause"));
    // Into a directory: given with a trailing slash, or one that exists already.
    assert_eq!(tree["existing"], dir());
    assert_eq!(tree["existing/pause"], file(0o755, b"pause"));
    // A directory: its contents, recursively; --chmod on files and directories.
    assert_eq!(tree["etc/app"], LayerEntry::Dir { mode: 0o700 });
    assert_eq!(tree["etc/app/app.toml"], file(0o700, b"x = 1"));
    assert_eq!(tree["etc/app/sub"], LayerEntry::Dir { mode: 0o700 });
    assert_eq!(tree["etc/app/sub/deep"], file(0o700, b"deep"));
    assert!(!tree.contains_key("etc/app/conf"));
    // A symlink given as the source is followed.
    assert_eq!(tree["followed"], file(0o755, b"pause"));
    // WORKDIR creates its directory; relative destinations resolve against it.
    assert_eq!(tree["srv/www"], dir());
    assert_eq!(tree["srv/www/rel/pause"], file(0o755, b"pause"));
    assert_eq!(run.working_dir.as_deref(), Some("/srv/www"));
    // ENV replaces in place.
    assert_eq!(run.env, ["PATH=/bin", "A=2"]);
}

#[test]
fn copy_refuses_sources_outside_the_context_and_conflicts() {
    let ctx = context();
    let outside = tempfile::tempdir().expect("tempdir");
    write(outside.path(), "secret", b"s", 0o644);
    symlink(outside.path().join("secret"), ctx.path().join("escape")).expect("symlink");
    for (text, want) in [
        ("FROM scratch\nCOPY ../x /x\n", "outside the build context"),
        (
            "FROM scratch\nCOPY escape /x\n",
            "outside the build context",
        ),
        (
            "FROM scratch\n\nCOPY nope /x\n",
            "line 3: COPY source \"nope\" is not in",
        ),
        (
            "FROM scratch\nCOPY pause /a\nCOPY pause /a/b\n",
            "line 3: cannot put /a/b in the image: a parent directory is a file",
        ),
        (
            "FROM scratch\nCOPY bin/ /x/\nCOPY pause /x/sh/y\n",
            "a parent directory is a file or symlink",
        ),
    ] {
        let err = lay_out(text, ctx.path()).expect_err(text);
        assert!(err.to_string().contains(want), "{text}: {err}");
    }
    let err = layout(
        &parse("FROM scratch\n").expect("parse"),
        &ctx.path().join("pause"),
    )
    .expect_err("file as context");
    assert!(matches!(err, BuildError::Context { .. }), "{err}");
}

#[test]
fn builds_are_byte_identical_whatever_the_file_times() {
    let ctx = context();
    let dockerfile = ctx.path().join("node-installer.Dockerfile");
    fs::write(
        &dockerfile,
        include_str!("../../../images/node-installer.Dockerfile"),
    )
    .expect("write");
    let reference = ImageRef::parse("docker.io/wasmkube/node-installer:0.1.0").expect("ref");
    let platform = ImagePlatform::linux_amd64();
    let first = build_image(&dockerfile, ctx.path(), &reference, &platform).expect("build");
    // Touch every file: Docker would record the new mtimes; we must not.
    let later = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
    for name in [
        "wasmkube-node-installer",
        "containerd-shim-wasmkube-v1",
        "bin/busybox",
    ] {
        fs::File::options()
            .write(true)
            .open(ctx.path().join(name))
            .expect("open")
            .set_modified(later)
            .expect("set mtime");
    }
    let second = build_image(&dockerfile, ctx.path(), &reference, &platform).expect("build");
    assert_eq!(first.archive, second.archive);
    assert_eq!(first.manifest_digest, second.manifest_digest);
    assert_eq!(first.entries, 13);

    // A changed byte changes the digest.
    write(ctx.path(), "bin/busybox", b"busyboX", 0o755);
    let third = build_image(&dockerfile, ctx.path(), &reference, &platform).expect("build");
    assert_ne!(first.manifest_digest, third.manifest_digest);

    // The archive's blobs are named by their digests.
    let (_, entries) = untar(&first.archive);
    let mut blobs = 0;
    for (path, (_, data)) in &entries {
        if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            assert_eq!(sha256_hex(data), hex, "{path}");
            blobs += 1;
        }
    }
    assert_eq!(blobs, 3, "config, layer, manifest");
}
