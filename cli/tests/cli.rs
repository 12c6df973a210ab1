//! The `wasmkube` binary end to end: arguments in, archive and message out.

use std::{fs, path::Path, process::Command};

const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

fn wasmkube(args: &[&str], cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasmkube"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run wasmkube")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn pack_prints_summary_and_is_reproducible() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("hello.wasm"), EMPTY_MODULE).expect("write");
    let run = |out: &str| {
        let o = wasmkube(
            &[
                "pack",
                "hello.wasm",
                "--name",
                "hello",
                "-o",
                out,
                "--arg",
                "--verbose",
                "--env",
                "A=1",
            ],
            dir.path(),
        );
        assert!(o.status.success(), "stderr: {}", text(&o.stderr));
        text(&o.stdout)
    };
    let first = run("a.tar");
    let second = run("b.tar");
    let a = fs::read(dir.path().join("a.tar")).expect("a.tar");
    assert_eq!(a, fs::read(dir.path().join("b.tar")).expect("b.tar"));

    let (head, tail) = first
        .trim_end()
        .split_once(" manifest sha256:")
        .expect("manifest digest in output");
    assert_eq!(head, "packed docker.io/library/hello:latest (tar) -> a.tar");
    let (hex, size) = tail.split_once(", ").expect("size in output");
    assert_eq!(hex.len(), 64);
    assert_eq!(size, format!("{} bytes", a.len()));
    assert_eq!(second.replace("b.tar", "a.tar"), first);

    let via_lib = wasmkube_oci::build_archive(
        "hello.wasm",
        EMPTY_MODULE,
        &wasmkube_oci::PackOptions {
            args: vec!["--verbose".into()],
            env: vec!["A=1".into()],
            ..wasmkube_oci::PackOptions::new("hello".parse().expect("ref"))
        },
    )
    .expect("library pack");
    assert_eq!(via_lib.archive, a, "binary and library agree");
}

#[test]
fn pack_artifact_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("m.wasm"), EMPTY_MODULE).expect("write");
    let o = wasmkube(
        &[
            "pack",
            "m.wasm",
            "--name",
            "ghcr.io/me/m:1",
            "-o",
            "m.tar",
            "--layout",
            "artifact",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "stderr: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("packed ghcr.io/me/m:1 (artifact) -> m.tar manifest sha256:"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn pack_rejects_non_wasm_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("script.sh"), "#!/bin/sh\necho hi\n").expect("write");
    let o = wasmkube(
        &["pack", "script.sh", "--name", "x", "-o", "x.tar"],
        dir.path(),
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("script.sh is not a WebAssembly binary"),
        "{err}"
    );
    assert!(err.contains("found bytes 23 21 2f 62"), "{err}");
    assert!(!dir.path().join("x.tar").exists());
}

#[test]
fn pack_reports_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = wasmkube(
        &["pack", "missing.wasm", "--name", "x", "-o", "x.tar"],
        dir.path(),
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("module file missing.wasm does not exist"),
        "{err}"
    );
}

#[test]
fn pack_rejects_bad_reference_and_platform() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("m.wasm"), EMPTY_MODULE).expect("write");
    let o = wasmkube(
        &["pack", "m.wasm", "--name", "Bad/Name:tag", "-o", "x.tar"],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("invalid image reference"),
        "{}",
        text(&o.stderr)
    );
    let o = wasmkube(
        &[
            "pack",
            "m.wasm",
            "--name",
            "m",
            "-o",
            "x.tar",
            "--platform",
            "wasm",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("invalid platform"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = wasmkube(&["--version"], dir.path());
    assert!(o.status.success());
    assert_eq!(
        text(&o.stdout).trim(),
        format!("wasmkube {}", env!("CARGO_PKG_VERSION"))
    );
    let o = wasmkube(&["pack", "--help"], dir.path());
    assert!(o.status.success());
    let help = text(&o.stdout);
    assert!(help.contains("ctr images import --all-platforms"), "{help}");
    assert!(help.contains("--layout"), "{help}");
}
