//! Unit tests of `wasmkube pack`'s archive.
use std::io::Read;

use flate2::read::GzDecoder;
use oci_spec::image::{
    Arch, ImageConfiguration, ImageIndex, ImageManifest, Os, ANNOTATION_REF_NAME,
};
use serde_json::Value;

use super::*;
use crate::{
    archive::{
        sha256_hex,
        testing::{untar, Entries},
        GZIP_OS_UNKNOWN,
    },
    wasm::fixtures::tiny_component,
};

/// The smallest valid core module: magic + version 1, no sections.
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

fn opts(reference: &str) -> PackOptions {
    PackOptions::new(ImageRef::parse(reference).expect("valid reference"))
}

fn blob<'a>(files: &'a Entries, digest: &str) -> &'a [u8] {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    &files
        .get(&format!("blobs/sha256/{hex}"))
        .unwrap_or_else(|| panic!("blob {digest} missing"))
        .1
}

fn index_and_manifest(files: &Entries) -> (ImageIndex, ImageManifest) {
    let index = ImageIndex::from_reader(files["index.json"].1.as_slice()).expect("index");
    assert_eq!(index.manifests().len(), 1);
    let desc = &index.manifests()[0];
    let manifest =
        ImageManifest::from_reader(blob(files, desc.digest().as_ref())).expect("manifest");
    (index, manifest)
}

#[test]
fn packing_is_deterministic() {
    for layout in [Layout::Tar, Layout::Artifact] {
        let mut o = opts("hello");
        o.layout = layout;
        if layout == Layout::Tar {
            o.args = vec!["a".into(), "b".into()];
            o.env = vec!["Z=1".into(), "A=2".into()];
        }
        let first = build_archive("hello.wasm", EMPTY_MODULE, &o).expect("pack");
        let second = build_archive("hello.wasm", EMPTY_MODULE, &o).expect("pack");
        assert_eq!(first.archive, second.archive, "{layout}");
        assert_eq!(first.manifest_digest, second.manifest_digest);
    }
}

#[test]
fn pack_writes_identical_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let module = dir.path().join("hello.wasm");
    fs::write(&module, EMPTY_MODULE).expect("write module");
    let o = opts("hello:v1");
    let a = pack(&module, &dir.path().join("a.tar"), &o).expect("pack a");
    let b = pack(&module, &dir.path().join("b.tar"), &o).expect("pack b");
    let a_bytes = fs::read(&a.output).expect("read a");
    assert_eq!(a_bytes, fs::read(&b.output).expect("read b"));
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(a.size, a_bytes.len() as u64);
    let line = a.to_string();
    assert!(
        line.starts_with("packed docker.io/library/hello:v1 (tar) -> "),
        "{line}"
    );
    assert!(
        line.ends_with(&format!(
            " manifest {}, {} bytes",
            a.manifest_digest, a.size
        )),
        "{line}"
    );
    // No temp files left behind.
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.tar", "b.tar", "hello.wasm"]);
}

#[test]
fn archive_blobs_match_their_names_and_descriptors() {
    for layout in [Layout::Tar, Layout::Artifact] {
        let mut o = opts("hello");
        o.layout = layout;
        let image = build_archive("hello.wasm", EMPTY_MODULE, &o).expect("pack");
        let (order, files) = untar(&image.archive);

        // Sorted, with the directories first.
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "{layout}");
        assert_eq!(order[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(order.len(), 2 + 3 + 2, "{order:?}");
        for (path, (header, data)) in &files {
            assert_eq!(header.mtime().expect("mtime"), 0, "{path}");
            assert_eq!(header.uid().expect("uid"), 0, "{path}");
            assert_eq!(header.gid().expect("gid"), 0, "{path}");
            if header.entry_type() == tar::EntryType::Directory {
                assert_eq!(header.mode().expect("mode"), 0o755, "{path}");
                continue;
            }
            assert_eq!(header.mode().expect("mode"), 0o644, "{path}");
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256_hex(data), hex, "{path}");
            }
        }

        let layout_json: Value =
            serde_json::from_slice(&files["oci-layout"].1).expect("oci-layout");
        assert_eq!(
            layout_json,
            serde_json::json!({"imageLayoutVersion": "1.0.0"})
        );

        let (index, manifest) = index_and_manifest(&files);
        assert_eq!(index.media_type(), &Some(MediaType::ImageIndex));
        let desc = &index.manifests()[0];
        assert_eq!(desc.media_type(), &MediaType::ImageManifest);
        assert_eq!(desc.digest().to_string(), image.manifest_digest);
        assert_eq!(
            desc.size(),
            blob(&files, &image.manifest_digest).len() as u64
        );
        assert_eq!(manifest.media_type(), &Some(MediaType::ImageManifest));
        assert_eq!(manifest.schema_version(), 2);
        assert_eq!(manifest.artifact_type(), &None);
        assert_eq!(manifest.layers().len(), 1);
        for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
            assert_eq!(blob(&files, d.digest().as_ref()).len() as u64, d.size());
        }
        assert_eq!(manifest.config().digest().to_string(), image.config_digest);
        assert_eq!(
            manifest.layers()[0].digest().to_string(),
            image.layer_digest
        );
    }
}

#[test]
fn index_names_the_image_for_containerd() {
    let image = build_archive("hello.wasm", EMPTY_MODULE, &opts("org/hello:1.2")).expect("pack");
    let (_, files) = untar(&image.archive);
    let (index, _) = index_and_manifest(&files);
    let desc = &index.manifests()[0];
    let annotations = desc.annotations().as_ref().expect("annotations");
    assert_eq!(annotations[ANNOTATION_REF_NAME], "1.2");
    assert_eq!(
        annotations[ANNOTATION_CONTAINERD_IMAGE_NAME],
        "docker.io/org/hello:1.2"
    );
    let platform = desc.platform().as_ref().expect("platform");
    assert_eq!(platform.os(), &Os::from("wasip1"));
    assert_eq!(platform.architecture(), &Arch::Wasm);
}

#[test]
fn tar_layer_holds_the_module_and_matches_diff_id() {
    let module = tiny_component();
    let mut o = opts("ghcr.io/me/app:v1");
    o.args = vec!["--flag".into(), "x y".into()];
    o.env = vec!["RUST_LOG=debug".into(), "EMPTY=".into()];
    o.platform = Some("linux/amd64".parse().expect("platform"));
    let image = build_archive("app.wasm", &module, &o).expect("pack");
    let (_, files) = untar(&image.archive);
    let (_, manifest) = index_and_manifest(&files);

    let layer_desc = &manifest.layers()[0];
    assert_eq!(layer_desc.media_type(), &MediaType::ImageLayerGzip);
    let gz = blob(&files, layer_desc.digest().as_ref());
    // gzip header: no flags (so no file name), mtime 0, OS unknown.
    assert_eq!(gz[3], 0, "FLG");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0][..], "MTIME");
    assert_eq!(gz[9], GZIP_OS_UNKNOWN, "OS");
    let mut layer = Vec::new();
    GzDecoder::new(gz).read_to_end(&mut layer).expect("gunzip");
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    assert_eq!(image.diff_id.as_deref(), Some(diff_id.as_str()));

    let (order, entries) = untar(&layer);
    assert_eq!(order, ["app.wasm"]);
    let (header, data) = &entries["app.wasm"];
    assert_eq!(data, &module);
    assert_eq!(header.mode().expect("mode"), 0o644);
    assert_eq!(header.entry_type(), tar::EntryType::Regular);
    assert_eq!(header.mtime().expect("mtime"), 0);
    assert_eq!(
        (header.uid().expect("uid"), header.gid().expect("gid")),
        (0, 0)
    );

    assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
    let config = ImageConfiguration::from_reader(blob(&files, manifest.config().digest().as_ref()))
        .expect("config");
    assert_eq!(config.rootfs().diff_ids(), &vec![diff_id]);
    assert_eq!(config.rootfs().typ(), "layers");
    assert_eq!(config.os(), &Os::Linux);
    assert_eq!(config.architecture(), &Arch::Amd64);
    assert_eq!(config.created().as_deref(), Some(CREATED));
    let c = config.config().as_ref().expect("config.config");
    assert_eq!(c.entrypoint(), &Some(vec!["/app.wasm".to_owned()]));
    assert_eq!(c.cmd(), &Some(o.args.clone()));
    assert_eq!(c.env(), &Some(o.env.clone()));
}

#[test]
fn tar_config_omits_empty_cmd_and_env() {
    let image = build_archive("hello.wasm", EMPTY_MODULE, &opts("hello")).expect("pack");
    let (_, files) = untar(&image.archive);
    let config: Value =
        serde_json::from_slice(blob(&files, &image.config_digest)).expect("config json");
    assert_eq!(
        config["config"],
        serde_json::json!({"Entrypoint": ["/hello.wasm"]})
    );
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip1");
}

#[test]
fn artifact_layout_uses_wasm_media_types() {
    let mut o = opts("hello");
    o.layout = Layout::Artifact;
    let image = build_archive("hello.wasm", EMPTY_MODULE, &o).expect("pack");
    assert_eq!(image.diff_id, None);
    let (_, files) = untar(&image.archive);
    let (index, manifest) = index_and_manifest(&files);
    assert_eq!(
        manifest.config().media_type().as_ref(),
        WASM_CONFIG_MEDIA_TYPE
    );
    let layer = &manifest.layers()[0];
    assert_eq!(layer.media_type().as_ref(), WASM_LAYER_MEDIA_TYPE);
    assert_eq!(blob(&files, layer.digest().as_ref()), EMPTY_MODULE);
    assert_eq!(
        layer.annotations().as_ref().expect("annotations")[ANNOTATION_TITLE],
        "hello.wasm"
    );
    let config: Value =
        serde_json::from_slice(blob(&files, &image.config_digest)).expect("config json");
    assert_eq!(
        config,
        serde_json::json!({
            "created": CREATED,
            "author": "wasmkube",
            "architecture": "wasm",
            "os": "wasip1",
            "layerDigests": [image.layer_digest],
        })
    );
    let platform = index.manifests()[0].platform().as_ref().expect("platform");
    assert_eq!(platform.os(), &Os::from("wasip1"));
}

#[test]
fn artifact_component_lists_its_world() {
    let mut o = opts("hello");
    o.layout = Layout::Artifact;
    let image = build_archive("app.wasm", &tiny_component(), &o).expect("pack");
    assert_eq!(image.kind, WasmKind::Component);
    let (_, files) = untar(&image.archive);
    let config: Value =
        serde_json::from_slice(blob(&files, &image.config_digest)).expect("config json");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(
        config["component"],
        serde_json::json!({
            "exports": ["wasi:cli/run@0.2.0"],
            "imports": ["wasi:cli/environment@0.2.0"],
        })
    );
}

#[test]
fn artifact_refuses_what_it_cannot_carry() {
    for (field, setter) in [
        (
            "--arg",
            (|o: &mut PackOptions| o.args = vec!["x".into()]) as fn(&mut _),
        ),
        ("--env", |o| o.env = vec!["A=b".into()]),
        ("--platform", |o| {
            o.platform = Some(ImagePlatform::default())
        }),
    ] {
        let mut o = opts("hello");
        o.layout = Layout::Artifact;
        setter(&mut o);
        let err = build_archive("hello.wasm", EMPTY_MODULE, &o).expect_err(field);
        assert!(matches!(err, PackError::NotInArtifact { .. }), "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn invalid_inputs_are_refused() {
    let o = opts("hello");
    let err = build_archive("notes.txt", b"hello world\n", &o).expect_err("text");
    assert!(matches!(err, PackError::NotWasm { .. }));
    let msg = err.to_string();
    assert!(msg.contains("notes.txt"), "{msg}");
    assert!(msg.contains("68 65 6c 6c"), "{msg}");

    let err = build_archive("old.wasm", b"\0asm\x0a\0\x01\0", &o).expect_err("old");
    assert!(
        matches!(err, PackError::UnsupportedWasmVersion { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0a 00 01 00"), "{err}");

    let err = build_archive("empty.wasm", b"", &o).expect_err("empty");
    assert!(err.to_string().contains("an empty file"), "{err}");

    for bad in ["", ".", "..", "a/b.wasm"] {
        let err = build_archive(bad, EMPTY_MODULE, &o).expect_err(bad);
        assert!(
            matches!(err, PackError::InvalidFileName { .. }),
            "{bad}: {err}"
        );
    }

    for bad in ["NOEQUALS", "=value", "A=\0"] {
        let mut o = opts("hello");
        o.env = vec![bad.to_owned()];
        let err = build_archive("hello.wasm", EMPTY_MODULE, &o).expect_err(bad);
        assert!(matches!(err, PackError::InvalidEnv { .. }), "{bad}: {err}");
    }

    let mut o = opts("hello");
    o.layout = Layout::Artifact;
    let mut broken = tiny_component();
    broken.truncate(broken.len() - 2);
    let err = build_archive("c.wasm", &broken, &o).expect_err("truncated component");
    assert!(matches!(err, PackError::ComponentMetadata { .. }), "{err}");
}

#[test]
fn pack_reports_missing_and_invalid_files_by_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.tar");
    let missing = dir.path().join("nope.wasm");
    let err = pack(&missing, &out, &opts("hello")).expect_err("missing");
    assert!(matches!(err, PackError::ModuleNotFound { .. }), "{err}");
    assert!(err.to_string().contains(&missing.display().to_string()));

    let text = dir.path().join("sub").join("hello.wasm");
    fs::create_dir(dir.path().join("sub")).expect("mkdir");
    fs::write(&text, "(module)").expect("write");
    let err = pack(&text, &out, &opts("hello")).expect_err("wat");
    let msg = err.to_string();
    assert!(msg.contains(&text.display().to_string()), "{msg}");
    assert!(msg.contains("WebAssembly text"), "{msg}");
    assert!(!out.exists());

    let module = dir.path().join("ok.wasm");
    fs::write(&module, EMPTY_MODULE).expect("write");
    let err = pack(
        &module,
        &dir.path().join("no-such-dir").join("x.tar"),
        &opts("hello"),
    )
    .expect_err("unwritable");
    assert!(matches!(err, PackError::WriteOutput { .. }), "{err}");
}

#[test]
fn different_inputs_give_different_digests() {
    let base = build_archive("hello.wasm", EMPTY_MODULE, &opts("hello")).expect("pack");
    let renamed = build_archive("other.wasm", EMPTY_MODULE, &opts("hello")).expect("pack");
    let retagged = build_archive("hello.wasm", EMPTY_MODULE, &opts("hello:v2")).expect("pack");
    assert_ne!(base.manifest_digest, renamed.manifest_digest);
    // The name lives only in index.json: same manifest, different archive.
    assert_eq!(base.manifest_digest, retagged.manifest_digest);
    assert_ne!(base.archive, retagged.archive);
}
