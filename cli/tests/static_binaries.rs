//! The shipped binaries are fully static and run with nothing else around them, and the
//! images built from them run under containerd.
//!
//! Uses what `scripts/images.sh` builds (the test script runs it before `cargo test`):
//! `$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/{containerd-shim-wasmkube-v1,
//! wasmkube-node-installer,wasmkube-operator}` and `$CARGO_TARGET_DIR/images/*.tar`. Without
//! them, or without root, each test prints `SKIP <test>: missing …` and passes — unless
//! `WASMKUBE_REQUIRE_CONTAINERD=1` (CI), where it fails.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use wasmkube_test_harness::{
    missing_prerequisites, skip_unless, unique_id, which, Containerd, CtrRun,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn static_binary(name: &str) -> PathBuf {
    target_dir()
        .join("x86_64-unknown-linux-gnu/release")
        .join(name)
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// What a test needs and lacks, or `None`.
fn lacking(files: &[PathBuf], root: bool) -> Option<String> {
    let mut missing: Vec<String> = files
        .iter()
        .filter(|f| !f.is_file())
        .map(|f| format!("{} (scripts/images.sh builds it)", f.display()))
        .collect();
    if root && !is_root() {
        missing.push("root (chroot needs it)".to_owned());
    }
    if root && which("chroot").is_none() {
        missing.push("`chroot` on PATH (coreutils)".to_owned());
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// `skip_unless!` with the test's name on the terminal: libtest hides a passing test's
/// `eprintln!`, but not a direct write to stderr.
macro_rules! skip_unless_named {
    ($name:expr, $missing:expr) => {{
        let missing: Option<String> = $missing;
        if let Some(m) = &missing {
            if std::env::var("WASMKUBE_REQUIRE_CONTAINERD").as_deref() != Ok("1") {
                let _ = writeln!(std::io::stderr(), "SKIP {}: missing {m}", $name);
            }
        }
        skip_unless!(missing);
    }};
}

/// The ELF facts that make a binary run anywhere: no `PT_INTERP` (dynamic loader) and no
/// `DT_NEEDED` (shared libraries). Returns what is wrong, if anything.
fn dynamic_dependencies(elf: &[u8]) -> Result<Vec<String>, String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not a little-endian ELF64 file".to_owned());
    }
    let bad = || "truncated ELF header".to_owned();
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(0x38).ok_or_else(bad)? as usize;
    let mut found = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = elf
            .get(ph..ph + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(bad)?;
        let offset = u64_at(ph + 8).ok_or_else(bad)? as usize;
        let size = u64_at(ph + 32).ok_or_else(bad)? as usize;
        match p_type {
            3 => found.push("PT_INTERP (a dynamic loader)".to_owned()),
            2 => {
                for entry in (offset..offset + size).step_by(16) {
                    match u64_at(entry) {
                        Some(0) | None => break,
                        Some(1) => found.push("DT_NEEDED (a shared library)".to_owned()),
                        Some(_) => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Copies `binary` alone into an empty directory and runs it there with `chroot`.
fn run_alone(binary: &Path, args: &[&str]) -> (bool, String) {
    let root = tempfile::Builder::new()
        .prefix("wk-empty-root-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let name = binary.file_name().expect("file name");
    let inside = root.path().join(name);
    wasmkube_test_harness::procs::copy_file(binary, &inside);
    let entries: Vec<_> = fs::read_dir(root.path()).expect("read_dir").collect();
    assert_eq!(entries.len(), 1, "the root holds only the binary");
    let chroot = which("chroot").expect("chroot on PATH");
    let out = Command::new(chroot)
        .arg(root.path())
        .arg(Path::new("/").join(name))
        .args(args)
        .env_clear()
        .output()
        .expect("run chroot");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn check_static_and_runs_alone(test: &str, name: &str, runs: &[(&[&str], &str)]) {
    let binary = static_binary(name);
    skip_unless_named!(test, lacking(std::slice::from_ref(&binary), true));
    let elf = fs::read(&binary).expect("read binary");
    let deps = dynamic_dependencies(&elf).unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    assert!(
        deps.is_empty(),
        "{} is not static: {deps:?}",
        binary.display()
    );
    for (args, expected) in runs {
        let (ok, output) = run_alone(&binary, args);
        assert!(ok, "chroot EMPTY /{name} {args:?} failed:\n{output}");
        assert!(
            output.contains(expected),
            "chroot EMPTY /{name} {args:?}: expected {expected:?} in:\n{output}"
        );
    }
}

#[test]
fn elf_check_tells_static_from_dynamic() {
    // Debian's `ls` is dynamic (PT_INTERP, libc): the check must say so.
    let ls = fs::read("/bin/ls").expect("read /bin/ls");
    let deps = dynamic_dependencies(&ls).expect("ELF");
    assert!(deps.iter().any(|d| d.starts_with("PT_INTERP")), "{deps:?}");
    assert!(deps.iter().any(|d| d.starts_with("DT_NEEDED")), "{deps:?}");
    // This test binary is built like the shipped ones (.cargo/config.toml: crt-static).
    let me = fs::read(std::env::current_exe().expect("current exe")).expect("read self");
    assert_eq!(dynamic_dependencies(&me), Ok(vec![]));
    assert!(dynamic_dependencies(b"#!/bin/sh\n").is_err());
}

#[test]
fn static_shim_runs_from_an_empty_rootfs() {
    check_static_and_runs_alone(
        "static_shim_runs_from_an_empty_rootfs",
        "containerd-shim-wasmkube-v1",
        &[(&["-v"], VERSION)],
    );
}

#[test]
fn static_installer_runs_from_an_empty_rootfs() {
    check_static_and_runs_alone(
        "static_installer_runs_from_an_empty_rootfs",
        "wasmkube-node-installer",
        &[(
            &["--version"],
            &format!("wasmkube-node-installer {VERSION}"),
        )],
    );
}

#[test]
fn static_operator_runs_from_an_empty_rootfs() {
    check_static_and_runs_alone(
        "static_operator_runs_from_an_empty_rootfs",
        "wasmkube-operator",
        &[
            (&["--version"], &format!("wasmkube-operator {VERSION}")),
            (&["crd"], "kind: CustomResourceDefinition"),
        ],
    );
}

/// The built archives import into containerd 1.6 and their binaries run from the image under
/// runc: the installer, the shim it bundles, and every program its restart path runs.
#[test]
fn images_import_into_containerd_and_their_binaries_run() {
    const TEST: &str = "images_import_into_containerd_and_their_binaries_run";
    let images = target_dir().join("images");
    let installer = images.join("node-installer.tar");
    let operator = images.join("operator.tar");
    let mut missing: Vec<String> = lacking(&[installer.clone(), operator.clone()], false)
        .into_iter()
        .collect();
    missing.extend(missing_prerequisites());
    skip_unless_named!(TEST, (!missing.is_empty()).then(|| missing.join(", ")));

    let ctd = Containerd::builder().start();
    ctd.import("default", &installer).ok();
    ctd.import("default", &operator).ok();
    let listed = ctd.ctr(&["images", "ls", "-q"]).ok().stdout;
    for name in [
        "docker.io/wasmkube/node-installer:0.1.0",
        "docker.io/wasmkube/operator:0.1.0",
    ] {
        assert!(listed.lines().any(|l| l == name), "{name} in:\n{listed}");
    }
    let run = |image: &str, args: &[&str]| {
        let r = CtrRun {
            runtime: Some("io.containerd.runc.v2".to_owned()),
            ..CtrRun::image(unique_id("img"), image, args)
        };
        ctd.run(&r).ok().stdout
    };
    let installer_ref = "docker.io/wasmkube/node-installer:0.1.0";
    let out = run(
        installer_ref,
        &["/usr/local/bin/wasmkube-node-installer", "--version"],
    );
    assert!(
        out.contains(&format!("wasmkube-node-installer {VERSION}")),
        "{out}"
    );
    let out = run(
        installer_ref,
        &["/usr/local/bin/containerd-shim-wasmkube-v1", "-v"],
    );
    assert!(out.contains(VERSION), "{out}");
    // The restart path: `sh -c` for --restart-cmd, `nsenter` for systemd, found on PATH.
    let out = run(
        installer_ref,
        &["/bin/sh", "-c", "nsenter --help 2>&1; echo rc=$?"],
    );
    assert!(out.contains("Usage: nsenter"), "{out}");
    assert!(out.trim_end().ends_with("rc=0"), "{out}");
    // `chroot` for the host restart hook on hosts without systemd.
    let out = run(
        installer_ref,
        &["/bin/sh", "-c", "chroot / /bin/sh -c 'echo chrooted'"],
    );
    assert!(out.contains("chrooted"), "{out}");
    let out = run(
        "docker.io/wasmkube/operator:0.1.0",
        &["/usr/local/bin/wasmkube-operator", "--version"],
    );
    assert!(
        out.contains(&format!("wasmkube-operator {VERSION}")),
        "{out}"
    );
}
