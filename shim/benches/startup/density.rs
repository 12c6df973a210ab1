//! Row (h): density. The total PSS of every shim-related process (shim daemons, brokers,
//! zygotes, container processes) with 1, 5 and 20 idle wasi:http instances of one app, each in
//! its own container, after each served one request; and the slope, the memory each further
//! idle instance adds. For the Rust guest and a real componentize-js component. PSS divides
//! pages shared between processes among them, so the sum counts each page once.
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use wasmkube_test_harness::containerd::rootfs_with;
use wasmkube_test_harness::{free_port, unique_id, Containerd, CtrRun};

use crate::measure::{mb, mem_of, shim_tree, wait_for_idle_brokers, wait_http, Table};

/// Instance counts measured.
const COUNTS: [usize; 3] = [1, 5, 20];

/// Total PSS (kB) of the process trees of `n` idle instances of `wasm`.
fn idle_pss(ctd: &Containerd, wasm: &Path, n: usize) -> u64 {
    let root = rootfs_with(&[("http.wasm", wasm)]);
    let mut running: Vec<(String, Child)> = Vec::new();
    for _ in 0..n {
        let port = free_port();
        let id = unique_id("dense");
        let mut run = CtrRun::rootfs(&id, root.path(), &["/http.wasm"])
            .env(&format!("WASMKUBE_HTTP_ADDR=127.0.0.1:{port}"));
        run.net_host = true;
        let child = ctd.spawn_run(&run);
        wait_http(port); // one request served: loaded, instantiated once, idle again
        running.push((id, child));
    }
    std::thread::sleep(Duration::from_secs(1));
    let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
    wait_for_idle_brokers(&ids);
    let total = running
        .iter()
        .flat_map(|(id, _)| shim_tree(id))
        .map(|(pid, _)| mem_of(pid).2)
        .sum();
    for (id, mut child) in running {
        ctd.ctr(&["tasks", "kill", &id]);
        let _ = child.wait();
    }
    total
}

pub fn rows(ctd: &Containerd, apps: &[(&str, &Path)], table: &mut Table) {
    for (name, wasm) in apps {
        // Idle instances of an app whose optimised code is cached (a node's steady state): the
        // first start's background tier-up is not counted.
        idle_pss(ctd, wasm, 1);
        super::measure::wait_for_tier_ups();
        let totals: Vec<u64> = COUNTS.iter().map(|&n| idle_pss(ctd, wasm, n)).collect();
        for (n, kb) in COUNTS.iter().zip(&totals) {
            println!(
                "  (h) {name}: {n:>2} idle instance(s): {:.1} MB PSS in all, {:.1} MB each",
                mb(*kb),
                mb(*kb) / *n as f64
            );
        }
        let slope = (mb(totals[2]) - mb(totals[1])) / (COUNTS[2] - COUNTS[1]) as f64;
        table.row(
            &format!("(h) {name}: one idle instance, all its processes, PSS (runwasi 20.7 MB)"),
            &format!("{:.1} MB", mb(totals[0])),
            "20.7 MB",
            mb(totals[0]) / 20.7,
            "<= 10 MB",
        );
        table.row(
            &format!("(h') {name}: each further idle instance (5 -> 20), PSS"),
            &format!("{slope:.1} MB"),
            &format!("{:.1} MB", mb(totals[0])),
            slope / mb(totals[0]).max(0.1),
            "<= 5 MB",
        );
    }
}
