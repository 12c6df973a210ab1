//! The wasi:http server's limits under a real containerd (`ctr run`, host network): request
//! deadline, concurrency cap, header read timeout, body size limit, cancellation on client
//! disconnect, one memory budget for all concurrent requests, a drain of in-flight requests on
//! SIGTERM, and a stop that looping guests cannot hold up. Uses the `http-limits` test guest:
//! `/loop` spins forever, `/body` reads the body, `/alloc` holds memory, `/sleep` waits on a
//! timer. Needs root, containerd and runc.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::http_server::{
    exchange, get, start_server, start_server_with, status, stop, together,
};
use wasmkube_test_harness::containerd::wait_child;
use wasmkube_test_harness::{missing_prerequisites, skip_unless, unique_id, Containerd};

mod support;

use support::SHIM;

/// `n` `/loop` requests on their own threads; each yields its status and how long it took.
fn loops(port: u16, n: usize) -> Vec<std::thread::JoinHandle<(u16, Duration)>> {
    (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let resp = get(port, "/loop").unwrap_or_default();
                (status(&resp), t.elapsed())
            })
        })
        .collect()
}

/// The task's `oom_kill` count from its memory cgroup (`ctr`'s `/default/<id>`: v1
/// `memory.oom_control`, v2 `memory.events`), or `None` when the cgroup cannot be found.
fn oom_kills(id: &str) -> Option<u64> {
    let text = [
        format!("/sys/fs/cgroup/memory/default/{id}/memory.oom_control"),
        format!("/sys/fs/cgroup/default/{id}/memory.events"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok())?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[test]
fn looping_guests_hit_the_deadline_and_block_neither_other_requests_nor_sigterm() {
    skip_unless!(missing_prerequisites());
    let ctd = Containerd::builder().shim(SHIM).start();
    let id = unique_id("hlim");
    let (port, mut child, _root) = start_server(
        &ctd,
        &id,
        &[
            "WASMKUBE_HTTP_REQUEST_TIMEOUT=2s",
            "WASMKUBE_HTTP_MAX_CONCURRENT=5",
        ],
    );

    // Four spinning guests: more than the runtime's worker threads on a small node.
    let looping = loops(port, 4);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let resp = get(port, "/healthy").expect("healthy request");
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "healthy request took {:?}",
        t.elapsed()
    );

    // A fifth fills the cap: the next request is refused at once, not queued.
    let fifth = loops(port, 1);
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let resp = get(port, "/over-the-cap").expect("answer");
    assert_eq!(status(&resp), 503, "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 1"),
        "{resp}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "503 took {:?}",
        t.elapsed()
    );

    for handle in looping.into_iter().chain(fifth) {
        let (code, took) = handle.join().expect("loop thread");
        assert_eq!(code, 504, "a request past its deadline gets 504");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
            "deadline 2s, answered after {took:?}"
        );
    }
    let resp = get(port, "/after").expect("still serving");
    assert_eq!(status(&resp), 200, "{resp}");

    // SIGTERM with spinning guests in flight: the listener closes at once, and the container
    // exits once the in-flight requests hit their deadline.
    let looping = loops(port, 4);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    ctd.ctr(&["tasks", "kill", &id]).ok();
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "listener still open 1s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed_after = t.elapsed();
    let exit = wait_child(&mut child, Duration::from_secs(10)).expect("server did not stop");
    let stopped_after = t.elapsed();
    assert_eq!(exit.code(), Some(0), "graceful stop exits 0");
    assert!(
        stopped_after < Duration::from_secs(4),
        "stop took {stopped_after:?} (deadline 2s)"
    );
    for handle in looping {
        let (code, _) = handle.join().expect("loop thread");
        assert!(matches!(code, 504 | 0), "in-flight loop ended with {code}");
    }
    eprintln!(
        "listener closed {closed_after:?} and container exited {stopped_after:?} after SIGTERM"
    );
}

#[test]
fn slow_headers_big_bodies_and_gone_clients_are_handled() {
    skip_unless!(missing_prerequisites());
    let ctd = Containerd::builder().shim(SHIM).start();
    let id = unique_id("hlim");
    let (port, mut child, _root) = start_server(
        &ctd,
        &id,
        &[
            "WASMKUBE_HTTP_HEADER_TIMEOUT=1s",
            "WASMKUBE_HTTP_MAX_BODY=1Ki",
            "WASMKUBE_HTTP_MAX_CONCURRENT=1",
        ],
    );

    // Slowloris: half a request head, then nothing. The server hangs up after ~1s.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        .expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let t = Instant::now();
    let mut rest = Vec::new();
    let closed = slow.read_to_end(&mut rest);
    let took = t.elapsed();
    assert!(
        closed.is_ok() || took < Duration::from_secs(8),
        "connection not closed: {closed:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "header timeout 1s, closed after {took:?}"
    );
    assert!(
        !String::from_utf8_lossy(&rest).contains(" 200 "),
        "no answer to half a head"
    );

    // Bodies: a declared length over the limit, a chunked body that grows past it, one within.
    let big = vec![b'x'; 2048];
    let mut declared = b"POST /body HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 2048\r\n\r\n".to_vec();
    declared.extend_from_slice(&big);
    let resp = exchange(port, &declared).expect("answer");
    assert_eq!(status(&resp), 413, "{resp}");
    let mut chunked = b"POST /body HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"258\r\n");
        chunked.extend_from_slice(&big[..600]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resp = exchange(port, &chunked).expect("answer");
    assert_eq!(status(&resp), 413, "{resp}");
    let mut small = b"POST /body HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 100\r\n\r\n".to_vec();
    small.extend_from_slice(&big[..100]);
    let resp = exchange(port, &small).expect("answer");
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(resp.contains("body 100 bytes\n"), "{resp}");

    // A client that leaves takes its guest with it: the one slot is free again long before the
    // 30 s default deadline.
    let mut gone = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    gone.write_all(b"GET /loop HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    let resp = get(port, "/busy").expect("answer");
    assert_eq!(
        status(&resp),
        503,
        "the looping guest holds the only slot: {resp}"
    );
    drop(gone);
    let t = Instant::now();
    loop {
        let resp = get(port, "/freed").expect("answer");
        if status(&resp) == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "slot still taken {:?} after the client left: {resp}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("slot freed {:?} after the client disconnected", t.elapsed());

    ctd.ctr(&["tasks", "kill", &id]).ok();
    let exit = wait_child(&mut child, Duration::from_secs(10)).expect("server did not stop");
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn concurrent_requests_share_the_memory_limit_without_an_oom_kill() {
    skip_unless!(missing_prerequisites());
    let ctd = Containerd::builder().shim(SHIM).start();
    let id = unique_id("hmem");
    let limit = 96u64 << 20;
    let (port, mut child, _root) = start_server_with(&ctd, &id, &[], Some(limit));

    // Six requests each holding 24 MiB (written, so resident) for 1.5 s: 144 MiB together, far
    // past the 96 MiB limit, while each alone fits. A store that had the whole budget to itself
    // would get the container OOM-killed.
    let held = "held 24 MiB for 1500 ms\n";
    let mut ok = 0;
    let mut refused = 0;
    for handle in together(port, "/alloc?mb=24&ms=1500", 6) {
        let (resp, _) = handle.join().expect("alloc thread");
        match status(&resp) {
            200 => {
                assert!(resp.contains(held), "{resp}");
                ok += 1;
            }
            503 => {
                assert!(resp.contains("memory limit"), "names the limit: {resp}");
                assert!(
                    resp.to_ascii_lowercase().contains("retry-after: 1"),
                    "{resp}"
                );
                refused += 1;
            }
            _ => {
                let ooms = oom_kills(&id);
                ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
                let out = child.wait_with_output().expect("ctr run output");
                panic!(
                    "neither served nor cleanly refused: {resp:?}; oom kills {ooms:?}; \
                     container {out:#?}"
                );
            }
        }
    }
    eprintln!("{ok} requests held their memory, {refused} were refused");
    assert!(ok >= 1, "at least one request fits the limit");
    assert!(refused >= 1, "not all six fit under {limit} bytes");

    // Everything was given back: the same request now succeeds, and the server still serves.
    let resp = get(port, "/alloc?mb=24&ms=0").expect("answer");
    assert_eq!(status(&resp), 200, "{resp}");
    let resp = get(port, "/healthy").expect("answer");
    assert_eq!(status(&resp), 200, "{resp}");
    assert!(child.try_wait().expect("wait").is_none(), "container died");
    assert!(
        ctd.wait_running(&id, Duration::from_secs(1)),
        "task not running"
    );
    match oom_kills(&id) {
        Some(n) => assert_eq!(n, 0, "the kernel OOM-killed in the container"),
        None => eprintln!("container memory cgroup not found: oom_kill not checked"),
    }

    let stderr = stop(&ctd, &id, &mut child);
    assert!(
        stderr.contains("/alloc?mb=24&ms=1500 failed: memory limit reached"),
        "the log names the memory limit: {stderr}"
    );
}

#[test]
fn sigterm_drains_an_in_flight_request_and_refuses_new_connections() {
    skip_unless!(missing_prerequisites());
    let ctd = Containerd::builder().shim(SHIM).start();
    let id = unique_id("hdrain");
    let (port, mut child, _root) = start_server(&ctd, &id, &[]);

    // A request blocked in a wasi:clocks timer (not spinning) when SIGTERM arrives.
    let slow = together(port, "/sleep?ms=1500", 1);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    ctd.ctr(&["tasks", "kill", &id]).ok();
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "listener still open 1s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = TcpStream::connect(("127.0.0.1", port)).expect_err("no new connections");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        child.try_wait().expect("wait").is_none(),
        "exited with a request in flight"
    );

    let (resp, took) = slow.into_iter().next().expect("one").join().expect("slow");
    assert_eq!(
        status(&resp),
        200,
        "the in-flight request completes: {resp}"
    );
    assert!(resp.contains("slept 1500 ms\n"), "{resp}");
    assert!(
        took >= Duration::from_millis(1500),
        "answered after {took:?}"
    );
    let exit = wait_child(&mut child, Duration::from_secs(10)).expect("server did not stop");
    assert_eq!(exit.code(), Some(0), "drained stop exits 0");
    eprintln!("drained and exited {:?} after SIGTERM", t.elapsed());
}
