//! The shim under a real containerd, driven by `ctr run` (rootfs and imported images).
//! Needs root, containerd and runc; see `wasmkube_test_harness::skip_unless!`.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::{missing_prerequisites, skip_unless, unique_id, Containerd, CtrRun};

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
    let entries = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(ctd.cache_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                    .collect()
            })
            .unwrap_or_default()
    };
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
    assert!(out.stderr.contains("wasmkube: wasm trap"), "{out:#?}");
    assert!(out.stderr.contains("unreachable"), "{out:#?}");
}

#[test]
fn sigterm_stops_a_busy_loop_promptly() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs(&[("busyloop.wasm", &guest("busyloop"))]);
    let id = unique_id("busy");
    let mut child = ctd.spawn_run(&CtrRun::rootfs(&id, root.path(), &["/busyloop.wasm"]));
    assert!(
        ctd.wait_running(&id, Duration::from_secs(20)),
        "task never ran"
    );
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    ctd.ctr(&["tasks", "kill", &id]).ok();
    let status = wait_child(&mut child, Duration::from_secs(10))
        .expect("busy loop did not stop within 10 s");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        start.elapsed()
    );
    assert_eq!(status.code(), Some(128 + 15), "exit code for SIGTERM");
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
fn bind_mounts_are_preopened_at_the_same_path_with_their_mode() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs(&[("fileio.wasm", &guest("fileio"))]);
    std::fs::create_dir(root.path().join("data")).expect("mountpoint");
    let host = tempfile::tempdir().expect("host dir");
    std::fs::write(host.path().join("input.txt"), "from the host\n").expect("input");
    let mut run = CtrRun::rootfs(unique_id("fileio"), root.path(), &["/fileio.wasm", "/data"]);
    run.mounts
        .push((host.path().to_path_buf(), "/data".into(), false));
    let out = ctd.run(&run).ok();
    assert!(out.stdout.contains("read: from the host"), "{out:#?}");
    assert_eq!(
        std::fs::read_to_string(host.path().join("output.txt"))
            .expect("output written on the host"),
        "written by wasm: from the host"
    );

    std::fs::remove_file(host.path().join("output.txt")).expect("rm");
    let mut run = CtrRun::rootfs(unique_id("fileio"), root.path(), &["/fileio.wasm", "/data"]);
    run.mounts
        .push((host.path().to_path_buf(), "/data".into(), true));
    let out = ctd.run(&run);
    assert_eq!(
        out.code,
        Some(2),
        "writing to a read-only mount must fail: {out:#?}"
    );
    assert!(!host.path().join("output.txt").exists());
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
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
fn invalid_modules_fail_with_a_message_naming_the_cause() {
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
    let root = rootfs(&[
        ("text.wasm", &text),
        ("truncated.wasm", &truncated),
        ("import.wat", &import),
    ]);

    let cases = [
        (
            "/text.wasm",
            126,
            "/text.wasm is not a WebAssembly module or component",
        ),
        (
            "/truncated.wasm",
            126,
            "invalid WebAssembly in /truncated.wasm",
        ),
        ("/import.wat", 126, "env::missing_fn"),
        ("/absent.wasm", 127, "module not found: /absent.wasm"),
    ];
    for (entry, code, message) in cases {
        let out = ctd.run(&CtrRun::rootfs(unique_id("bad"), root.path(), &[entry]));
        assert_eq!(out.code, Some(code), "{entry}: {out:#?}");
        assert!(
            out.stderr.contains(message),
            "{entry}: expected {message:?} in {out:#?}"
        );
    }
}

#[test]
fn native_entrypoints_run_as_linux_containers() {
    skip_unless!(missing_prerequisites());
    let busybox = Path::new("/bin/busybox");
    skip_unless!((!busybox.exists())
        .then(|| "static busybox (apt-get install -y busybox-static)".to_string()));
    let ctd = containerd();
    let root = rootfs(&[("busybox", busybox)]);
    let out = ctd
        .run(&CtrRun::rootfs(
            unique_id("native"),
            root.path(),
            &["/busybox", "echo", "native", "linux"],
        ))
        .ok();
    assert_eq!(out.stdout.trim(), "native linux");
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

fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}
