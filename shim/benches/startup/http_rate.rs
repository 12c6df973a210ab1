//! Rows (e) and (g): wasi:http requests per second through the shim against `wasmtime serve`
//! (default settings: a fresh instance per request) on the same component under the same `wrk`
//! load, interleaved, three rounds, medians. (e): the Rust guest with the shim's defaults (a
//! fresh instance per request, every limit on). (g): opt-in instance reuse
//! (`spec.http.instanceReuse`) on a real componentize-js component and on the Rust guest, and
//! the JavaScript component without reuse.
use std::path::Path;
use std::process::{Command, Stdio};

use wasmkube_contract::http::REUSE_MAX_REQUESTS_ENV;
use wasmkube_test_harness::containerd::rootfs_with;
use wasmkube_test_harness::{free_port, unique_id, Containerd, CtrRun};

use crate::measure::{median, wait_http, wrk, Table};

/// What `measure` finds about `wasm` served by the shim with `env` (given its port).
fn served<T>(ctd: &Containerd, wasm: &Path, env: &[String], measure: impl FnOnce(u16) -> T) -> T {
    let root = rootfs_with(&[("http.wasm", wasm)]);
    let port = free_port();
    let id = unique_id("rps");
    let mut run = CtrRun::rootfs(&id, root.path(), &["/http.wasm"])
        .env(&format!("WASMKUBE_HTTP_ADDR=127.0.0.1:{port}"));
    for kv in env {
        run = run.env(kv);
    }
    run.net_host = true;
    let mut child = ctd.spawn_run(&run);
    wait_http(port);
    let found = measure(port);
    ctd.ctr(&["tasks", "kill", &id]);
    let _ = child.wait();
    found
}

/// req/s of `wasm` served by the shim with `env`.
fn shim_rate(ctd: &Containerd, wasm: &Path, env: &[String]) -> f64 {
    served(ctd, wasm, env, wrk)
}

/// req/s of `wasm` under `wasmtime serve` with its defaults (plus the wasi:cli imports the
/// components need).
fn wasmtime_rate(wasmtime: &Path, wasm: &Path) -> f64 {
    let port = free_port();
    let mut serve = Command::new(wasmtime)
        .args([
            "serve",
            "-S",
            "cli=y",
            "--addr",
            &format!("127.0.0.1:{port}"),
        ])
        .arg(wasm)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wasmtime serve");
    wait_http(port);
    let rate = wrk(port);
    let _ = serve.kill();
    let _ = serve.wait();
    rate
}

/// Medians of three interleaved rounds: (shim, wasmtime serve).
fn versus(ctd: &Containerd, wasmtime: &Path, wasm: &Path, env: &[String]) -> (f64, f64) {
    // As on a node in its steady state: the app's first start ran Winch code and its optimised
    // code is cached by now.
    served(ctd, wasm, env, |_| ());
    crate::measure::wait_for_tier_ups();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        ours.push(shim_rate(ctd, wasm, env));
        theirs.push(wasmtime_rate(wasmtime, wasm));
    }
    (median(ours), median(theirs))
}

fn row(table: &mut Table, what: &str, (ours, theirs): (f64, f64), target: &str) {
    table.row(
        what,
        &format!("{ours:.0}/s"),
        &format!("{theirs:.0}/s"),
        ours / theirs,
        target,
    );
}

pub fn rows(
    ctd: &Containerd,
    assets: &Path,
    wasmtime: &Path,
    rust_guest: &Path,
    wants: &dyn Fn(&str) -> bool,
    table: &mut Table,
) {
    if !wasmtime.is_file() || wasmkube_test_harness::which("wrk").is_none() {
        println!(
            "SKIP (e), (g): need {} and wrk (bench/shim.sh installs both)",
            wasmtime.display()
        );
        return;
    }
    let reuse = [format!("{REUSE_MAX_REQUESTS_ENV}=1000")];
    if wants("e") {
        row(
            table,
            "(e) wasi:http req/s: shim vs wasmtime serve (wrk -t1 -c16 -d5s)",
            versus(ctd, wasmtime, rust_guest, &[]),
            ">= 0.80x",
        );
    }
    if !wants("g") {
        return;
    }
    row(
        table,
        "(g) Rust guest, instanceReuse on: shim vs wasmtime serve",
        versus(ctd, wasmtime, rust_guest, &reuse),
        ">= 1.50x",
    );
    let js = assets.join("js-hello.wasm");
    if !js.is_file() {
        println!(
            "SKIP (g) JavaScript rows: {} missing (bench/shim.sh builds it with componentize-js)",
            js.display()
        );
        return;
    }
    let size = std::fs::metadata(&js).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    row(
        table,
        &format!("(g') componentize-js {size:.1} MB, instanceReuse on: shim vs wasmtime serve"),
        versus(ctd, wasmtime, &js, &reuse),
        ">= 3.00x",
    );
    row(
        table,
        "(g'') componentize-js, no reuse (default): shim vs wasmtime serve",
        versus(ctd, wasmtime, &js, &[]),
        ">= 0.80x",
    );
}
