//! The shim under a real containerd, driven by `ctr run` (rootfs and imported images).
//! Needs root, containerd and runc; see `wasmkube_test_harness::skip_unless!`.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use wasmkube_test_harness::containerd::wait_child;
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::{
    free_port, missing_prerequisites, skip_unless, unique_id, Containerd, CtrRun,
};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-wasmkube-v1");

fn containerd() -> Containerd {
    Containerd::builder().shim(SHIM).start()
}

fn rootfs(files: &[(&str, &Path)]) -> tempfile::TempDir {
    wasmkube_test_harness::containerd::rootfs_with(files)
}

#[test]
fn hello_module_gets_args_env_stdio_and_exit_code() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let hello = guest("hello");
    let root = rootfs(&[("hello.wasm", &hello)]);
    let run = CtrRun::rootfs(
        unique_id("hello"),
        root.path(),
        &["/hello.wasm", "one", "two words"],
    )
    .env("WK_B=2")
    .env("WK_A=1")
    .env("OTHER=hidden");
    let out = ctd.run(&run).ok();
    assert_eq!(
        out.stdout.replace("\r\n", "\n"),
        "hello from wasm\narg[0]=/hello.wasm\narg[1]=one\narg[2]=two words\nenv WK_A=1\nenv WK_B=2\ncwd=/\n"
    );
    assert!(out.stderr.contains("to stderr"), "{out:#?}");

    let out = ctd
        .run(&CtrRun::rootfs(unique_id("hello"), root.path(), &["/hello.wasm"]).env("WK_EXIT=7"));
    assert_eq!(out.code, Some(7), "{out:#?}");
}

#[test]
fn second_start_uses_the_compiled_module_cache_and_survives_corruption() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs(&[("hello.wasm", &guest("hello"))]);
    let entries = || ctd.cache_entries();
    assert!(entries().is_empty());
    ctd.run(&CtrRun::rootfs(
        unique_id("cache"),
        root.path(),
        &["/hello.wasm"],
    ))
    .ok();
    let first = entries();
    assert_eq!(
        first.len(),
        1,
        "one compiled artefact after the first start"
    );
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"));
    let before = ino(&first[0]);
    ctd.run(&CtrRun::rootfs(
        unique_id("cache"),
        root.path(),
        &["/hello.wasm"],
    ))
    .ok();
    assert_eq!(entries(), first);
    assert_eq!(
        ino(&first[0]),
        before,
        "a cache hit must not rewrite the entry"
    );

    // A corrupt entry is discarded and rebuilt; the container still runs.
    std::fs::write(&first[0], b"WKC1 definitely not a compiled module").expect("corrupt");
    let out = ctd
        .run(&CtrRun::rootfs(
            unique_id("cache"),
            root.path(),
            &["/hello.wasm"],
        ))
        .ok();
    assert!(out.stdout.starts_with("hello from wasm"));
    assert!(
        std::fs::metadata(&first[0]).expect("rebuilt").len() > 1000,
        "entry rebuilt"
    );
}

#[test]
fn an_entrypoint_can_name_the_export_to_run() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let dir = tempfile::tempdir().expect("tmp");
    let wat = dir.path().join("exports.wat");
    // `_start` and `greet` each write their own line to stdout with fd_write.
    std::fs::write(
        &wat,
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "from _start\n")
  (data (i32.const 32) "from greet\n")
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (call $print (i32.const 16) (i32.const 12)))
  (func (export "greet") (call $print (i32.const 32) (i32.const 11))))"#,
    )
    .expect("write");
    let root = rootfs(&[("exports.wat", &wat)]);
    for (entry, line) in [
        ("/exports.wat", "from _start\n"),
        ("/exports.wat#greet", "from greet\n"),
    ] {
        let out = ctd
            .run(&CtrRun::rootfs(unique_id("export"), root.path(), &[entry]))
            .ok();
        assert_eq!(out.stdout.replace("\r\n", "\n"), line, "{entry}");
    }
}

/// Wasm 3.0's exception handling and GC, as toolchains emit them (yowasp's Yosys throws C++
/// exceptions as wasm exceptions; Kotlin, Dart and OCaml target GC): a thrown exception is
/// caught with its payload, and a GC struct is allocated and read back. Exit 0 and the line
/// prove both ran.
#[test]
fn wasm_3_exceptions_and_gc_run() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let dir = tempfile::tempdir().expect("tmp");
    let wat = dir.path().join("wasm3.wat");
    std::fs::write(
        &wat,
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "caught 42, struct 7\n")
  (type $point (struct (field i32)))
  (tag $oops (param i32))
  (func $thrower (throw $oops (i32.const 42)))
  (func $caught (result i32)
    (block $handler (result i32)
      (try_table (catch $oops $handler) (call $thrower))
      (i32.const 0)))
  (func (export "_start")
    (if (i32.ne (call $caught) (i32.const 42)) (then unreachable))
    (if (i32.ne (struct.get $point 0 (struct.new $point (i32.const 7))) (i32.const 7))
      (then unreachable))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 20))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .expect("write");
    let root = rootfs(&[("wasm3.wat", &wat)]);
    let out = ctd.run(&CtrRun::rootfs(
        unique_id("wasm3"),
        root.path(),
        &["/wasm3.wat"],
    ));
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        out.stdout.replace("\r\n", "\n"),
        "caught 42, struct 7\n",
        "{out:#?}"
    );
}

#[test]
fn trap_exits_134_with_the_trap_in_stderr() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs(&[("trap.wasm", &guest("trap"))]);
    let out = ctd.run(&CtrRun::rootfs(
        unique_id("trap"),
        root.path(),
        &["/trap.wasm"],
    ));
    assert_eq!(out.code, Some(134), "{out:#?}");
    assert!(out.stdout.contains("about to trap"), "{out:#?}");
    assert!(out.stderr.contains("wasmkube: wasm trap: "), "{out:#?}");
    assert!(
        out.stderr
            .contains("wasm `unreachable` instruction executed"),
        "{out:#?}"
    );
}

#[test]
fn sigterm_and_sigint_stop_a_busy_loop_promptly_with_128_plus_signal() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs(&[("busyloop.wasm", &guest("busyloop"))]);
    for (signal, number) in [("SIGTERM", 15), ("SIGINT", 2)] {
        let id = unique_id("busy");
        let mut child = ctd.spawn_run(&CtrRun::rootfs(&id, root.path(), &["/busyloop.wasm"]));
        assert!(
            ctd.wait_running(&id, Duration::from_secs(20)),
            "task never ran"
        );
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        ctd.ctr(&["tasks", "kill", "-s", signal, &id]).ok();
        let status = wait_child(&mut child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("busy loop did not stop on {signal} within 10 s"));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{signal}: stop took {:?}",
            start.elapsed()
        );
        assert_eq!(status.code(), Some(128 + number), "exit code for {signal}");
    }
}

#[test]
fn memory_limit_bounds_the_store_with_a_clear_message() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs(&[("memhog.wasm", &guest("memhog"))]);
    let mut run =
        CtrRun::rootfs(unique_id("hog"), root.path(), &["/memhog.wasm"]).env("WK_HOG_MIB=512");
    run.memory_limit = Some(96 << 20);
    let out = ctd.run(&run);
    assert_eq!(out.code, Some(137), "{out:#?}");
    assert!(
        out.stdout.contains("allocated 16 MiB"),
        "the guest ran before hitting the limit: {out:#?}"
    );
    assert!(
        out.stderr
            .contains("wasmkube: guest exceeded the memory limit"),
        "{out:#?}"
    );

    // Under the limit the same guest completes.
    let mut run =
        CtrRun::rootfs(unique_id("hog"), root.path(), &["/memhog.wasm"]).env("WK_HOG_MIB=32");
    run.memory_limit = Some(96 << 20);
    let out = ctd.run(&run).ok();
    assert!(out.stdout.contains("done 32 MiB"), "{out:#?}");
}

#[test]
fn cli_component_runs_and_reports_failure_as_1() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs(&[("cli.wasm", &guest("cli-component"))]);
    let out = ctd
        .run(&CtrRun::rootfs(
            unique_id("p2"),
            root.path(),
            &["/cli.wasm", "x"],
        ))
        .ok();
    assert!(
        out.stdout
            .contains("hello from a component\narg[0]=/cli.wasm\narg[1]=x"),
        "{out:#?}"
    );
    let out =
        ctd.run(&CtrRun::rootfs(unique_id("p2"), root.path(), &["/cli.wasm"]).env("WK_EXIT=3"));
    assert_eq!(out.code, Some(1), "{out:#?}");
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    Some(resp)
}

#[test]
fn http_component_serves_requests_and_stops_on_sigterm() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs(&[("http.wasm", &guest("http_hello"))]);
    let port = free_port();
    let id = unique_id("http");
    let mut run = CtrRun::rootfs(&id, root.path(), &["/http.wasm"])
        .env(&format!("WASMKUBE_HTTP_ADDR=127.0.0.1:{port}"))
        .env("WK_GREETING=hi from env");
    run.net_host = true;
    let mut child = ctd.spawn_run(&run);
    let start = Instant::now();
    let resp = loop {
        if let Some(r) = http_get(port, "/some/path?q=1") {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("content-type: text/plain"), "{resp}");
    assert_eq!(
        body_of(&resp),
        "hello from wasi:http, path=/some/path?q=1\n",
        "{resp}"
    );
    let resp = http_get(port, "/env").expect("env");
    assert_eq!(body_of(&resp), "hi from env\n", "{resp}");

    let t = Instant::now();
    ctd.ctr(&["tasks", "kill", &id]).ok();
    let status = wait_child(&mut child, Duration::from_secs(10)).expect("server did not stop");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        err.contains(&format!("serving wasi:http on http://127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn native_entrypoints_run_as_linux_containers() {
    skip_unless!(missing_prerequisites());
    let busybox = Path::new("/bin/busybox");
    skip_unless!((!busybox.exists())
        .then(|| "static busybox (apt-get install -y busybox-static)".to_string()));
    let ctd = containerd();
    let dir = tempfile::tempdir().expect("tmp");
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/busybox sh\necho \"from a script: $1\"\n").expect("script");
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&script, mode).expect("chmod");
    let root = rootfs(&[("busybox", busybox), ("script.sh", &script)]);
    let out = ctd
        .run(&CtrRun::rootfs(
            unique_id("native"),
            root.path(),
            &["/busybox", "echo", "native", "linux"],
        ))
        .ok();
    assert_eq!(out.stdout.trim(), "native linux");
    let out = ctd
        .run(&CtrRun::rootfs(
            unique_id("native"),
            root.path(),
            &["/script.sh", "x"],
        ))
        .ok();
    assert_eq!(out.stdout.trim(), "from a script: x");
}

#[test]
fn packed_image_runs_from_the_image_store() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let dir = tempfile::tempdir().expect("tmp");
    let archive = dir.path().join("hello.tar");
    let reference = "docker.io/wasmkube/hello-test:v1";
    wasmkube_test_harness::images::pack(&guest("hello"), reference, &archive);
    let out = ctd.import("default", &archive).ok();
    assert!(out.stdout.contains("hello-test"), "{out:#?}");
    let out = ctd
        .run(&CtrRun::image(unique_id("img"), reference, &[]).env("WK_A=img"))
        .ok();
    assert!(
        out.stdout
            .starts_with("hello from wasm\narg[0]=/hello.wasm\n"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("env WK_A=img"), "{out:#?}");
}

/// The body of an HTTP/1.1 response, de-chunked when `transfer-encoding: chunked`.
fn body_of(resp: &str) -> String {
    let (head, mut rest) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return rest.to_string();
    }
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    body
}
