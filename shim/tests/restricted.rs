//! Wasm containers as a Pod Security `restricted` pod gets them, under a real containerd: a
//! numeric non-root user (65532), no capabilities (`"capabilities": {}`, which is what
//! containerd writes for `drop: [ALL]`), no new privileges, the runtime's default seccomp
//! profile and a read-only rootfs. Needs root, containerd and runc; see
//! `wasmkube_test_harness::skip_unless!`.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasmkube_test_harness::containerd::{wait_child, RUNTIME_TYPE};
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::{free_port, missing_prerequisites, skip_unless, unique_id, Containerd};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-wasmkube-v1");
const UID: u32 = 65532;

fn containerd() -> Containerd {
    Containerd::builder().shim(SHIM).start()
}

/// A rootfs holding `files`, world-readable like an image's (the container user is not root).
fn rootfs(files: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = wasmkube_test_harness::containerd::rootfs_with(files);
    set_mode(dir.path(), 0o755);
    for (name, _) in files {
        set_mode(&dir.path().join(name), 0o644);
    }
    dir
}

fn set_mode(path: &Path, mode: u32) {
    let perms = std::os::unix::fs::PermissionsExt::from_mode(mode);
    std::fs::set_permissions(path, perms).expect("chmod");
}

/// The OCI spec of a restricted container: what `ctr` makes with a read-only rootfs, the
/// default seccomp profile and the host network, then the user and capabilities a kubelet asks
/// for in a `restricted` pod. Returns the directory holding `config.json`.
fn restricted_spec(
    ctd: &Containerd,
    root: &Path,
    args: &[&str],
    env: &[String],
) -> tempfile::TempDir {
    let id = unique_id("spec");
    let mut argv: Vec<String> = [
        "containers",
        "create",
        "--rootfs",
        "--read-only",
        "--seccomp",
        "--net-host",
    ]
    .map(String::from)
    .to_vec();
    argv.push(format!("--runtime={RUNTIME_TYPE}"));
    argv.extend(env.iter().map(|e| format!("--env={e}")));
    argv.push(root.display().to_string());
    argv.push(id.clone());
    argv.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    ctd.ctr(&argv).ok();
    let text = ctd.ctr(&["containers", "info", "--spec", &id]).ok().stdout;
    ctd.ctr(&["containers", "delete", &id]).ok();
    let mut spec: Value = serde_json::from_str(&text).expect("spec JSON");
    spec["process"]["user"] = json!({"uid": UID, "gid": UID});
    spec["process"]["capabilities"] = json!({});
    assert_eq!(spec["process"]["noNewPrivileges"], true, "{spec}");
    assert_eq!(spec["root"]["readonly"], true, "{spec}");
    assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("config.json"), spec.to_string()).expect("write spec");
    dir
}

/// `/hello.wasm x` with `WK_A=1` in a restricted container, to completion.
fn run_hello(ctd: &Containerd, root: &Path) -> wasmkube_test_harness::Output {
    let spec = restricted_spec(ctd, root, &["/hello.wasm", "x"], &["WK_A=1".into()]);
    let argv = run_argv(spec.path(), &unique_id("rhello"));
    ctd.ctr(&argv.iter().map(String::as_str).collect::<Vec<_>>())
}

fn run_argv(spec: &Path, id: &str) -> Vec<String> {
    vec![
        "run".into(),
        "--rm".into(),
        format!("--runtime={RUNTIME_TYPE}"),
        "--config".into(),
        spec.join("config.json").display().to_string(),
        id.into(),
    ]
}

/// `/proc/<pid>/task/<tid>/status` of every thread of `pid`.
fn thread_status(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        out.push(std::fs::read_to_string(t.path().join("status")).unwrap_or_default());
    }
    out
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .unwrap_or("")
}

/// What a restricted guest process must look like, thread by thread.
fn assert_restricted(pid: u32) {
    let threads = thread_status(pid);
    assert!(!threads.is_empty(), "no threads for pid {pid}");
    for s in &threads {
        let want = UID.to_string();
        for ids in ["Uid:", "Gid:"] {
            let all: Vec<&str> = field(s, ids).split_whitespace().collect();
            assert!(
                all.len() == 4 && all.iter().all(|id| *id == want),
                "{ids} real, effective, saved, fs must all be {UID}:\n{s}"
            );
        }
        for set in ["CapEff:", "CapPrm:", "CapAmb:"] {
            assert_eq!(field(s, set), "0000000000000000", "{set} of a thread:\n{s}");
        }
        assert_eq!(field(s, "NoNewPrivs:"), "1", "{s}");
        assert_eq!(field(s, "Seccomp:"), "2", "seccomp filter mode:\n{s}");
    }
}

#[test]
fn restricted_module_runs_without_capabilities_and_cannot_write_its_rootfs() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let input = tempfile::tempdir().expect("tmp");
    std::fs::write(input.path().join("input.txt"), "from the image\n").expect("input");
    let root = rootfs(&[
        ("hello.wasm", &guest("hello")),
        ("busyloop.wasm", &guest("busyloop")),
        ("fileio.wasm", &guest("fileio")),
        ("input.txt", &input.path().join("input.txt")),
    ]);

    let out = run_hello(&ctd, root.path()).ok();
    assert_eq!(
        out.stdout.replace("\r\n", "\n"),
        "hello from wasm\narg[0]=/hello.wasm\narg[1]=x\nenv WK_A=1\ncwd=/\n"
    );
    // The compile broker (host side, root) compiled and cached it for the non-root guest; the
    // entry is root's and writable by root only (readable, so that the guest can map the entry
    // it is handed; the directory is root's 0700), and the next start is served from it.
    let cached = ctd.cache_entries();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let meta = std::fs::metadata(&cached[0]).expect("stat");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o644), "{cached:?}");
    let out = run_hello(&ctd, root.path()).ok();
    assert!(out.stdout.starts_with("hello from wasm"), "{out:#?}");
    assert_eq!(ctd.cache_entries(), cached);
    assert_eq!(
        std::fs::metadata(&cached[0]).expect("stat").ino(),
        meta.ino(),
        "a cache hit for a non-root guest: the entry is not rewritten"
    );

    // The rootfs is read-only for the guest too.
    let spec = restricted_spec(&ctd, root.path(), &["/fileio.wasm", "/"], &[]);
    let argv = run_argv(spec.path(), &unique_id("rfileio"));
    let out = ctd.ctr(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stdout.contains("read: from the image"), "{out:#?}");
    assert!(out.stderr.contains("writing /output.txt"), "{out:#?}");
    assert!(!root.path().join("output.txt").exists());

    // While it runs: non-root, no capability in any thread, no new privileges, seccomp on.
    let spec = restricted_spec(&ctd, root.path(), &["/busyloop.wasm"], &[]);
    let id = unique_id("rbusy");
    let argv = run_argv(spec.path(), &id);
    let mut child = ctd
        .ctr_command(&argv.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctr run");
    assert!(ctd.wait_running(&id, Duration::from_secs(30)), "never ran");
    std::thread::sleep(Duration::from_millis(300));
    assert_restricted(ctd.task_pid(&id));
    ctd.ctr(&["tasks", "kill", &id]).ok();
    let status = wait_child(&mut child, Duration::from_secs(10)).expect("stopped");
    assert_eq!(status.code(), Some(128 + 15));
}

#[test]
fn restricted_http_component_serves_ipv4_and_ipv6_on_the_dual_stack_address() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs(&[("http.wasm", &guest("http_hello"))]);
    let port = free_port();
    let spec = restricted_spec(
        &ctd,
        root.path(),
        &["/http.wasm"],
        &[
            format!("WASMKUBE_HTTP_ADDR=[::]:{port}"),
            "WK_GREETING=restricted".into(),
        ],
    );
    let id = unique_id("rhttp");
    let argv = run_argv(spec.path(), &id);
    let mut child = ctd
        .ctr_command(&argv.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctr run");
    let start = Instant::now();
    let resp = loop {
        if let Some(r) = http_get(Ipv4Addr::LOCALHOST.into(), port, "/over/v4") {
            break r;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited ({status}): {}", drain(&mut child));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.ends_with("hello from wasi:http, path=/over/v4\n"),
        "{resp}"
    );
    let resp = http_get(Ipv6Addr::LOCALHOST.into(), port, "/over/v6").expect("IPv6 answer");
    assert!(
        resp.ends_with("hello from wasi:http, path=/over/v6\n"),
        "{resp}"
    );
    let resp = http_get(Ipv4Addr::LOCALHOST.into(), port, "/env").expect("env");
    assert!(resp.ends_with("restricted\n"), "{resp}");

    let pid = ctd.task_pid(&id);
    assert_restricted(pid);
    // A component is mapped by reopening the descriptor the broker handed over: a guest of a
    // non-root user does it too (its code pages are the page cache's, shared by every pod).
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let code: Vec<_> = maps
        .lines()
        .filter(|l| l.contains("/view/component-pooled-") && l.contains(" r-xp "))
        .collect();
    assert!(
        !code.is_empty(),
        "the component's code is mapped from the cache entry:\n{maps}"
    );
    let cached = ctd.cache_entries();
    assert!(
        cached.len() == 1
            && cached[0]
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("component-pooled-")),
        "the component was compiled by the broker for the pooling allocator: {cached:?}"
    );

    ctd.ctr(&["tasks", "kill", &id]).ok();
    let status = wait_child(&mut child, Duration::from_secs(10)).expect("server did not stop");
    assert_eq!(status.code(), Some(0), "graceful stop exits 0");
    let err = drain(&mut child);
    assert!(
        err.contains(&format!("serving wasi:http on http://[::]:{port}")),
        "{err}"
    );
    assert!(!err.contains("cannot map"), "{err}");
}

fn http_get(ip: IpAddr, port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect((ip, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    // The guest's body is short: one chunk, or a content-length body.
    Some(dechunk(&resp))
}

/// The response head plus its body, de-chunked when `transfer-encoding: chunked`.
fn dechunk(resp: &str) -> String {
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return resp.to_string();
    }
    let mut body = String::new();
    let mut rest = rest;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n + 2 {
            break;
        }
        body.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    format!("{head}\r\n\r\n{body}")
}

fn drain(child: &mut Child) -> String {
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}
