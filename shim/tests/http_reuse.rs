//! Opt-in instance reuse of the wasi:http server under a real containerd (`ctr run`, host
//! network), with the `http-limits` guest: `/count` answers `instance <id> request <n>` (its
//! instance's random id and how many requests that instance served), `/panic` traps, `/alloc`
//! holds memory, `/loop` never returns. Off by default; on with
//! `WASMKUBE_HTTP_REUSE_MAX_REQUESTS` (what `spec.http.instanceReuse` sets). Needs root,
//! containerd and runc.
use std::collections::BTreeMap;
use std::time::Duration;

use support::http_server::{get, start_server, start_server_with, status, stop, together};
use support::SHIM;
use wasmkube_contract::http::{
    REUSE_IDLE_TIMEOUT_ENV, REUSE_MAX_CONCURRENT_ENV, REUSE_MAX_REQUESTS_ENV,
};
use wasmkube_test_harness::{missing_prerequisites, skip_unless, unique_id, Containerd};

mod support;

/// `/count`'s answer: (instance id, requests that instance served).
fn count(port: u16, path: &str) -> (String, u32) {
    let resp = get(port, path).expect("answer");
    assert_eq!(status(&resp), 200, "{resp}");
    parse_count(&resp)
}

fn parse_count(resp: &str) -> (String, u32) {
    let line = resp
        .lines()
        .find(|l| l.starts_with("instance "))
        .unwrap_or_else(|| panic!("no count in {resp:?}"));
    let mut words = line.split_whitespace();
    let id = words.nth(1).unwrap_or_default().to_string();
    let n = words.nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    (id, n)
}

fn env(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn instances_are_fresh_by_default_and_serve_max_requests_each_when_reused() {
    skip_unless!(missing_prerequisites());
    let ctd = Containerd::builder().shim(SHIM).start();

    // Off: every request a new instance.
    let id = unique_id("reuse-off");
    let (port, mut child, _root) = start_server(&ctd, &id, &[]);
    let runs: Vec<_> = (0..5).map(|_| count(port, "/count")).collect();
    assert!(runs.iter().all(|(_, n)| *n == 1), "{runs:?}");
    let ids: std::collections::BTreeSet<_> = runs.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 5, "five fresh instances: {runs:?}");
    let stderr = stop(&ctd, &id, &mut child);
    assert!(!stderr.contains("instance reuse on"), "{stderr}");

    // On, 3 requests per instance, one instance: 1 2 3, then a new instance.
    let id = unique_id("reuse-on");
    let vars = env(&[
        (REUSE_MAX_REQUESTS_ENV, "3"),
        (REUSE_MAX_CONCURRENT_ENV, "1"),
    ]);
    let (port, mut child, _root) = start_server(&ctd, &id, &refs(&vars));
    let runs: Vec<_> = (0..9).map(|_| count(port, "/count")).collect();
    // The first instance also served start_server's readiness requests: start at the second.
    let second = runs
        .iter()
        .position(|(id, _)| *id != runs[0].0)
        .unwrap_or_else(|| panic!("one instance served nine requests: {runs:?}"));
    assert!(second <= 3, "{runs:?}");
    let served: Vec<u32> = runs[second..second + 6].iter().map(|(_, n)| *n).collect();
    assert_eq!(served, vec![1, 2, 3, 1, 2, 3], "{runs:?}");
    let ids: Vec<&str> = runs[second..second + 6]
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(
        ids[0] == ids[2] && ids[3] == ids[5] && ids[0] != ids[3],
        "three requests per instance: {runs:?}"
    );
    let stderr = stop(&ctd, &id, &mut child);
    assert!(
        stderr.contains(
            "instance reuse on: up to 3 requests per instance, 1 reusable instances, idle ones \
             dropped after 60s"
        ),
        "{stderr}"
    );
}

#[test]
fn trapped_timed_out_idle_and_silent_instances_are_never_reused() {
    skip_unless!(missing_prerequisites());
    let ctd = Containerd::builder().shim(SHIM).start();
    let id = unique_id("reuse-trap");
    let vars = env(&[
        (REUSE_MAX_REQUESTS_ENV, "100"),
        (REUSE_MAX_CONCURRENT_ENV, "1"),
        (REUSE_IDLE_TIMEOUT_ENV, "1500ms"),
        (wasmkube_shim::limits::REQUEST_TIMEOUT_ENV, "1s"),
    ]);
    let (port, mut child, _root) = start_server(&ctd, &id, &refs(&vars));
    // start_server's readiness probe (`/ready`) ran on the first instance: count from there.
    let (first, n) = count(port, "/count");
    assert!(n >= 1);
    assert_eq!(count(port, "/count"), (first.clone(), n + 1), "reused");

    // A trap retires the instance: the next request runs on a new one.
    let resp = get(port, "/panic").expect("answer");
    assert_eq!(status(&resp), 500, "{resp}");
    let (second, n) = count(port, "/count");
    assert!(
        second != first && n == 1,
        "after a trap: {second} request {n}"
    );

    // So does a request that ran past its deadline.
    let resp = get(port, "/loop").expect("answer");
    assert_eq!(status(&resp), 504, "{resp}");
    let (third, n) = count(port, "/count");
    assert!(
        third != second && n == 1,
        "after a deadline: {third} request {n}"
    );
    assert_eq!(
        count(port, "/count"),
        (third.clone(), 2),
        "kept while in use"
    );

    // Idle past the idle timeout: dropped.
    std::thread::sleep(Duration::from_millis(2500));
    let (fourth, n) = count(port, "/count");
    assert!(
        fourth != third && n == 1,
        "after 2.5 s idle: {fourth} request {n}"
    );

    // An instance that returns without answering (keeping its response-outparam) gets its
    // client a 500 at once, not at the deadline, and is retired; a reused one that does so
    // turns reuse off (the app cannot serve two requests on one instance).
    let resp = get(port, "/panic").expect("answer");
    assert_eq!(status(&resp), 500, "{resp}");
    let t = std::time::Instant::now();
    let resp = get(port, "/silent").expect("answer");
    assert_eq!(status(&resp), 500, "{resp}");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let (fifth, n) = count(port, "/count");
    assert!(
        fifth != fourth && n == 1,
        "after no answer: {fifth} request {n}"
    );
    assert_eq!(
        count(port, "/count"),
        (fifth.clone(), 2),
        "a fresh instance's silence keeps reuse on"
    );
    let resp = get(port, "/silent").expect("answer");
    assert_eq!(status(&resp), 500, "{resp}");
    let (a, n) = count(port, "/count");
    let (b, m) = count(port, "/count");
    assert!(
        a != b && n == 1 && m == 1,
        "reuse off: {a} request {n}, {b} request {m}"
    );

    let stderr = stop(&ctd, &id, &mut child);
    assert!(stderr.contains("/panic failed"), "{stderr}");
    assert_eq!(
        stderr.matches("instance reuse turned off").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn reusable_instances_stay_within_max_concurrent_and_the_memory_budget() {
    skip_unless!(missing_prerequisites());
    let ctd = Containerd::builder().shim(SHIM).start();
    let id = unique_id("reuse-conc");
    let vars = env(&[
        (REUSE_MAX_REQUESTS_ENV, "1000"),
        (REUSE_MAX_CONCURRENT_ENV, "2"),
    ]);
    let limit = 160u64 << 20;
    let (port, mut child, _root) = start_server_with(&ctd, &id, &refs(&vars), Some(limit));

    // Four requests at once, twice: only two instances are kept, so in the second round
    // exactly two requests run on an instance that served before.
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let answers: Vec<(String, u32)> = together(port, "/count?ms=600", 4)
            .into_iter()
            .map(|h| {
                let (resp, _) = h.join().expect("request thread");
                assert_eq!(status(&resp), 200, "{resp}");
                parse_count(&resp)
            })
            .collect();
        rounds.push(answers);
    }
    let reused = rounds[1].iter().filter(|(_, n)| *n > 1).count();
    assert_eq!(
        reused, 2,
        "two reusable instances, two one-shot: {rounds:?}"
    );
    let per_instance: BTreeMap<&str, u32> = rounds
        .iter()
        .flatten()
        .map(|(id, n)| (id.as_str(), *n))
        .collect();
    assert!(per_instance.values().all(|&n| n <= 3), "{per_instance:?}");

    // Two instances go idle holding 40 MiB each; a request for 100 MiB then needs the memory
    // the other idle one holds: the budget drops idle instances rather than refuse it.
    for h in together(port, "/alloc?mb=40&ms=600", 2) {
        let (resp, _) = h.join().expect("alloc thread");
        assert_eq!(status(&resp), 200, "{resp}");
    }
    let resp = get(port, "/alloc?mb=100&ms=0").expect("answer");
    assert_eq!(
        status(&resp),
        200,
        "idle instances gave their memory back: {resp}"
    );
    let (_, n) = count(port, "/count");
    assert!(n >= 1);
    assert!(child.try_wait().expect("wait").is_none(), "container died");
    let stderr = stop(&ctd, &id, &mut child);
    assert!(!stderr.contains("memory limit reached"), "{stderr}");
}
