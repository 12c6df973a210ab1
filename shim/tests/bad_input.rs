//! Bad input under a real containerd (`ctr run`): each case fails with the exit code of the
//! README's table and a `wasmkube: …` message on stderr that names the cause, never a hang or a
//! panic. Needs root, containerd and runc; see `wasmkube_test_harness::skip_unless!`.
use std::path::Path;

use wasmkube_test_harness::containerd::rootfs_with;
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::{missing_prerequisites, skip_unless, unique_id, Containerd, CtrRun};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-wasmkube-v1");

fn containerd() -> Containerd {
    Containerd::builder().shim(SHIM).start()
}

/// Runs `args` in `root` and checks the exit code and that stderr holds every `messages` entry.
fn assert_fails(
    ctd: &Containerd,
    root: &Path,
    args: &[&str],
    env: &[&str],
    code: i32,
    messages: &[&str],
) {
    let mut run = CtrRun::rootfs(unique_id("bad"), root, args);
    for kv in env {
        run = run.env(kv);
    }
    let out = ctd.run(&run);
    assert_eq!(out.code, Some(code), "{args:?}: {out:#?}");
    for message in messages {
        assert!(
            out.stderr.contains(message),
            "{args:?}: expected {message:?} on stderr: {out:#?}"
        );
    }
    assert!(
        !out.stderr.contains("panicked"),
        "{args:?}: the shim must not panic: {out:#?}"
    );
}

#[test]
fn missing_and_invalid_modules_fail_with_127_or_126_naming_the_cause() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let dir = tempfile::tempdir().expect("tmp");
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "this is not wasm\n").expect("write");
    let truncated = dir.path().join("truncated.wasm");
    let hello = std::fs::read(guest("hello")).expect("read");
    std::fs::write(&truncated, &hello[..hello.len() / 2]).expect("write");
    let import = dir.path().join("import.wat");
    std::fs::write(
        &import,
        r#"(module (import "env" "missing_fn" (func)) (func (export "_start")))"#,
    )
    .expect("write");
    // Threads (shared memories) are outside the shim's Wasmtime build (README, "What runs").
    let shared = dir.path().join("shared.wat");
    std::fs::write(
        &shared,
        r#"(module (memory 1 1 shared) (func (export "_start")))"#,
    )
    .expect("write");
    // A component built for Spin's host (it imports Spin's variables interface).
    let spin = dir.path().join("spin.wat");
    std::fs::write(
        &spin,
        r#"(component (import "fermyon:spin/variables@2.0.0" (instance (export "get" (func (param "name" string) (result string))))))"#,
    )
    .expect("write");
    let root = rootfs_with(&[
        ("spin.wat", &spin),
        ("text.wasm", &text),
        ("truncated.wasm", &truncated),
        ("import.wat", &import),
        ("shared.wat", &shared),
        ("hello.wasm", &guest("hello")),
    ]);

    let cases: [(&str, i32, &[&str]); 7] = [
        (
            "/spin.wat",
            126,
            &["wasmkube: /spin.wat imports fermyon:spin/variables@2.0.0, which only Spin's host provides"],
        ),
        (
            "/absent.wasm",
            127,
            &["wasmkube: module not found: /absent.wasm"],
        ),
        (
            "/text.wasm",
            126,
            &["wasmkube: /text.wasm is not a WebAssembly module or component"],
        ),
        (
            "/truncated.wasm",
            126,
            &["wasmkube: invalid WebAssembly in /truncated.wasm"],
        ),
        (
            "/import.wat",
            126,
            &[
                "wasmkube: cannot instantiate /import.wat: ",
                "unknown import: `env::missing_fn`",
            ],
        ),
        (
            "/shared.wat",
            126,
            &["wasmkube: invalid WebAssembly in /shared.wat", "threads"],
        ),
        (
            "/hello.wasm#no_such_export",
            126,
            &["wasmkube: /hello.wasm has no exported function `no_such_export`"],
        ),
    ];
    for (entry, code, messages) in cases {
        assert_fails(&ctd, root.path(), &[entry], &[], code, messages);
    }
}

#[test]
fn a_precompiled_wasmtime_artefact_fails_with_126() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    // What `wasmtime compile` writes: native code for this host and this exact Wasmtime.
    let engine = wasmtime::Engine::default();
    let dir = tempfile::tempdir().expect("tmp");
    let module = dir.path().join("app.cwasm");
    let wasm = std::fs::read(guest("hello")).expect("read hello");
    let cwasm = engine.precompile_module(&wasm).expect("precompile module");
    std::fs::write(&module, cwasm).expect("write");
    let component = dir.path().join("cli.cwasm");
    let wasm = std::fs::read(guest("cli-component")).expect("read component");
    let cwasm = engine
        .precompile_component(&wasm)
        .expect("precompile component");
    std::fs::write(&component, cwasm).expect("write");
    let root = rootfs_with(&[("app.cwasm", &module), ("cli.cwasm", &component)]);

    for entry in ["/app.cwasm", "/cli.cwasm"] {
        let message = format!(
            "wasmkube: {entry} is a precompiled Wasmtime artefact; images must carry portable .wasm"
        );
        assert_fails(&ctd, root.path(), &[entry], &[], 126, &[&message]);
    }
}

#[test]
fn a_malformed_http_limit_fails_with_126_naming_the_variable() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs_with(&[("http.wasm", &guest("http_hello"))]);
    for (var, value) in [
        ("WASMKUBE_HTTP_REQUEST_TIMEOUT", "soon"),
        ("WASMKUBE_HTTP_MAX_CONCURRENT", "lots"),
        ("WASMKUBE_HTTP_HEADER_TIMEOUT", "-1s"),
        ("WASMKUBE_HTTP_MAX_BODY", "16Zi"),
    ] {
        let kv = format!("{var}={value}");
        let message = format!("wasmkube: invalid {var}={value:?}");
        assert_fails(&ctd, root.path(), &["/http.wasm"], &[&kv], 126, &[&message]);
    }
}
