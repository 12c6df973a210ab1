//! A wasi:http guest served by `ctr run` on the host network, and plain HTTP/1.1 requests to it
//! (the http_limits and http_reuse tests).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use wasmkube_test_harness::containerd::wait_child;
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::{free_port, Containerd, CtrRun};

/// Sends `raw` and reads until the server closes; `None` if the server cannot be reached.
pub fn exchange(port: u16, raw: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    // The server may answer (413) and close before reading all of a body: ignore write errors.
    let _ = s.write_all(raw);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    Some(String::from_utf8_lossy(&resp).into_owned())
}

pub fn get(port: u16, path: &str) -> Option<String> {
    exchange(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// The status code of a response (0 when there is none).
pub fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Starts http-limits with `env` on a free port; returns the port and the `ctr run` child once
/// the server answers.
pub fn start_server(ctd: &Containerd, id: &str, env: &[&str]) -> (u16, Child, tempfile::TempDir) {
    start_server_with(ctd, id, env, None)
}

/// As [`start_server`], with a memory limit.
pub fn start_server_with(
    ctd: &Containerd,
    id: &str,
    env: &[&str],
    memory_limit: Option<u64>,
) -> (u16, Child, tempfile::TempDir) {
    let root =
        wasmkube_test_harness::containerd::rootfs_with(&[("http.wasm", &guest("http_limits"))]);
    let port = free_port();
    let mut run = CtrRun::rootfs(id, root.path(), &["/http.wasm"])
        .env(&format!("WASMKUBE_HTTP_ADDR=127.0.0.1:{port}"));
    for kv in env {
        run = run.env(kv);
    }
    run.net_host = true;
    run.memory_limit = memory_limit;
    let child = ctd.spawn_run(&run);
    let start = Instant::now();
    while get(port, "/ready").map(|r| status(&r)) != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (port, child, root)
}

/// `n` requests for `path` released together; each yields its response and how long it took.
pub fn together(
    port: u16,
    path: &str,
    n: usize,
) -> Vec<std::thread::JoinHandle<(String, Duration)>> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(n));
    (0..n)
        .map(|_| {
            let (start, path) = (start.clone(), path.to_string());
            std::thread::spawn(move || {
                start.wait();
                let t = Instant::now();
                (get(port, &path).unwrap_or_default(), t.elapsed())
            })
        })
        .collect()
}

/// SIGTERM; the container must exit 0. Returns its stderr.
pub fn stop(ctd: &Containerd, id: &str, child: &mut Child) -> String {
    ctd.ctr(&["tasks", "kill", id]).ok();
    let exit = wait_child(child, Duration::from_secs(15)).expect("server did not stop");
    assert_eq!(exit.code(), Some(0), "graceful stop exits 0");
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut err);
    }
    err
}
