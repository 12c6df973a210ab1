//! Shim benchmarks against a private containerd (run as root: `bench/shim.sh`, which fetches
//! the real-world modules and the `wasmtime` CLI first). Interleaved A/B runs, medians, ratios:
//!
//! (a) `ctr run --rm` hello: wasm shim vs runc + static busybox `echo`;
//! (b) a ~1 MB real-world module (graphviz, C): its first start on a node (Winch), second and
//!     third start (Cranelift's code, from the background tier-up), and a first start with
//!     Winch off, each vs runc + busybox;
//! (c) first vs second start of a large module (Yosys, 69 MB): the compiled-module cache;
//! (d) memory of one idle wasi:http instance (shim + container processes);
//! (e) HTTP requests/s through the shim vs `wasmtime serve`, same component, same `wrk` load;
//! (f) memory of the first instance of a 20 MB module on a node (cold cache: compiled by the
//!     compile broker) vs the next one (warm): the compiler's memory must not stay with it;
//! (g) HTTP requests/s with opt-in instance reuse vs `wasmtime serve`: the Rust guest and a real
//!     componentize-js component (and that component without reuse), see `http_rate`;
//! (h) density: total PSS of 1, 5 and 20 idle wasi:http instances and the slope, for the Rust
//!     guest and the componentize-js component, see `density`;
//! (i) throughput of Winch code vs Cranelift code on a compute-bound guest (`busyloop <rounds>`:
//!     generate, sort and hash 1 MiB per round, timed inside the guest), through the shim.
//!
//! Environment: `BENCH_N` (default 10), `BENCH_BIG_N` (default 3), `BENCH_ASSETS` (dir with
//! graphviz.wasm, yosys.wasm, js-hello.wasm, wasmtime), `BENCH_ONLY` (comma list of
//! a,b,c,d,e,f,g,h,i), `BENCH_HOLD_SECS` (keep (d)'s idle instance that long after measuring,
//! to profile its processes by hand).
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmkube_test_harness::containerd::rootfs_with;
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::wasm_gen::big_module;
use wasmkube_test_harness::{free_port, missing_prerequisites, unique_id, Containerd, CtrRun};

mod density;
mod http_rate;
mod measure;
use measure::{
    clear_cache, curl, env_usize, mb, median, mem_of, shim_tree, timed, wait_for_tier_ups,
    wait_http, Table,
};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-wasmkube-v1");

fn main() {
    if let Some(missing) = missing_prerequisites() {
        eprintln!("SKIP shim benchmarks: missing {missing}");
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| "a,b,c,d,e,f,g,h,i".into());
    let wants = |k: &str| only.split(',').any(|o| o.trim() == k);
    let n = env_usize("BENCH_N", 10);
    let big_n = env_usize("BENCH_BIG_N", 3);
    let assets = PathBuf::from(
        std::env::var("BENCH_ASSETS").unwrap_or_else(|_| "/var/tmp/wasmkube-bench".into()),
    );
    // As on a node: first starts run Winch code and tier up in the background.
    let ctd = Containerd::builder()
        .shim(SHIM)
        .winch_first_starts()
        .start();
    let busybox = Path::new("/bin/busybox");
    let native = rootfs_with(&[("busybox", busybox)]);
    let runc = |id: String| {
        let mut r = CtrRun::rootfs(id, native.path(), &["/busybox", "echo", "hello"]);
        r.runtime = Some("io.containerd.runc.v2".into());
        r
    };
    let mut table = Table(Vec::new());
    println!(
        "shim benchmarks: N={n} interleaved runs per side, medians; containerd {}",
        ctd.ctr(&["version"])
            .stdout
            .lines()
            .nth(2)
            .unwrap_or("")
            .trim()
    );

    if wants("a") {
        let hello = rootfs_with(&[("hello.wasm", &guest("hello"))]);
        // Warm-up: compile once into the cache, fault in both runtimes.
        timed(
            &ctd,
            &CtrRun::rootfs(unique_id("warm"), hello.path(), &["/hello.wasm"]),
        );
        timed(&ctd, &runc(unique_id("warm")));
        let (mut wasm, mut native_ms) = (Vec::new(), Vec::new());
        for _ in 0..n {
            wasm.push(timed(
                &ctd,
                &CtrRun::rootfs(unique_id("a"), hello.path(), &["/hello.wasm"]),
            ));
            native_ms.push(timed(&ctd, &runc(unique_id("b"))));
        }
        let (w, r) = (median(wasm), median(native_ms));
        table.row(
            "(a) ctr run --rm hello: shim vs runc+busybox echo",
            &format!("{w:.1} ms"),
            &format!("{r:.1} ms"),
            w / r,
            "<= 0.80x",
        );
    }

    let graphviz = assets.join("graphviz.wasm");
    if wants("b") && graphviz.is_file() {
        let root = rootfs_with(&[("graphviz.wasm", &graphviz)]);
        let run = |id: String| CtrRun::rootfs(id, root.path(), &["/graphviz.wasm", "-V"]);
        // The same first start with Winch off: Cranelift compiles it while the start waits.
        let cranelift_only = Containerd::builder().shim(SHIM).start();
        let (mut first, mut second, mut third, mut no_winch, mut native_ms) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n.min(5) {
            clear_cache(&ctd);
            first.push(timed(&ctd, &run(unique_id("gv1"))));
            native_ms.push(timed(&ctd, &runc(unique_id("b"))));
            // A user's next start comes later than the tier-up (about a second here).
            wait_for_tier_ups();
            second.push(timed(&ctd, &run(unique_id("gv2"))));
            native_ms.push(timed(&ctd, &runc(unique_id("b"))));
            third.push(timed(&ctd, &run(unique_id("gv3"))));
            clear_cache(&cranelift_only);
            no_winch.push(timed(&cranelift_only, &run(unique_id("gv0"))));
        }
        let r = median(native_ms);
        for (what, ms, target) in [
            (
                "(b) graphviz.wasm 933 KB, first start on a node (Winch)",
                first,
                "<= 3.00x",
            ),
            (
                "(b') graphviz.wasm, second start (Cranelift code, cached)",
                second,
                "<= 1.00x",
            ),
            ("(b'') graphviz.wasm, third start", third, "<= 1.00x"),
            (
                "(b0) graphviz.wasm, first start with Winch off",
                no_winch,
                "(info)",
            ),
        ] {
            let ms = median(ms);
            table.row(
                &format!("{what} vs runc+busybox"),
                &format!("{ms:.1} ms"),
                &format!("{r:.1} ms"),
                ms / r,
                target,
            );
        }
    } else if wants("b") {
        println!(
            "SKIP (b): {} missing (bench/shim.sh downloads it)",
            graphviz.display()
        );
    }

    let yosys = assets.join("yosys.wasm");
    if wants("c") && yosys.is_file() {
        let root = rootfs_with(&[("yosys.wasm", &yosys)]);
        let run = |id: String| CtrRun::rootfs(id, root.path(), &["/yosys.wasm", "-V"]);
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for _ in 0..big_n {
            clear_cache(&ctd);
            first.push(timed(&ctd, &run(unique_id("py1"))));
            second.push(timed(&ctd, &run(unique_id("py2"))));
        }
        let (f, s) = (median(first), median(second));
        table.row(
            &format!("(c) yosys.wasm 69 MB: second start vs first start (N={big_n})"),
            &format!("{s:.0} ms"),
            &format!("{f:.0} ms"),
            s / f,
            "<= 0.10x",
        );
    } else if wants("c") {
        println!(
            "SKIP (c): {} missing (bench/shim.sh downloads it)",
            yosys.display()
        );
    }

    let http = guest("http_hello");
    if wants("d") {
        let root = rootfs_with(&[("http.wasm", &http)]);
        let port = free_port();
        let id = unique_id("rss");
        let mut run = CtrRun::rootfs(&id, root.path(), &["/http.wasm"])
            .env(&format!("WASMKUBE_HTTP_ADDR=127.0.0.1:{port}"));
        run.net_host = true;
        let mut child = ctd.spawn_run(&run);
        wait_http(port);
        // one request so the instance has served (still idle afterwards)
        let _ = curl(port);
        // A first start's tier-up is the shim daemon's child until it ends: not counted.
        wait_for_tier_ups();
        std::thread::sleep(Duration::from_millis(300));
        // The steady state: the idle broker has exited.
        measure::wait_for_idle_brokers(std::slice::from_ref(&id));
        let procs = shim_tree(&id);
        let (mut total_pss, mut total_hwm, mut total_anon) = (0, 0, 0);
        for (pid, role) in &procs {
            let (hwm, rss, pss, anon) = mem_of(*pid);
            total_pss += pss;
            total_hwm += hwm;
            total_anon += anon;
            println!(
                "  (d) {role:<22} pid {pid:>7}: peak RSS {:>6.1} MB, RSS {:>6.1} MB, PSS {:>6.1} MB, anonymous {:>6.1} MB",
                mb(hwm), mb(rss), mb(pss), mb(anon)
            );
            let split = measure::pss_split(*pid);
            println!(
                "      PSS: shim binary {:.1} MB {:?}, artefact {:.1} MB, anonymous {:.1} MB, other {:.1} MB",
                mb(split.binary), split.binary_by_perms, mb(split.artefact), mb(split.anon), mb(split.other)
            );
        }
        table.row(
            "(d) idle wasi:http instance, PSS (shim + container)",
            &format!("{:.1} MB", mb(total_pss)),
            "20.7 MB",
            mb(total_pss) / 20.7,
            "<= 10 MB",
        );
        table.row(
            "(d'') same, anonymous memory only (no shared file pages)",
            &format!("{:.1} MB", mb(total_anon)),
            "20.7 MB",
            mb(total_anon) / 20.7,
            "(info)",
        );
        table.row(
            "(d') same, sum of per-process peak RSS",
            &format!("{:.1} MB", mb(total_hwm)),
            "20.7 MB",
            mb(total_hwm) / 20.7,
            "(info)",
        );
        if let Ok(secs) = std::env::var("BENCH_HOLD_SECS") {
            println!("holding {secs} s");
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(0)));
        }
        ctd.ctr(&["tasks", "kill", &id]);
        let _ = child.wait();
    }

    let wasmtime = assets.join("wasmtime");
    if wants("e") || wants("g") {
        http_rate::rows(&ctd, &assets, &wasmtime, &http, &wants, &mut table);
    }

    if wants("h") {
        let js = assets.join("js-hello.wasm");
        let mut apps = vec![("Rust guest", http.as_path())];
        if js.is_file() {
            apps.push(("componentize-js", js.as_path()));
        } else {
            println!("SKIP (h) componentize-js: {} missing", js.display());
        }
        density::rows(&ctd, &apps, &mut table);
    }

    if wants("f") {
        let dir = tempfile::tempdir().expect("tmp");
        let wasm = dir.path().join("big.wasm");
        std::fs::write(&wasm, big_module(20 << 20, true)).expect("write");
        let root = rootfs_with(&[("big.wasm", &wasm)]);
        clear_cache(&ctd);
        let instance = |label: &str| -> (u64, u64) {
            let id = unique_id(label);
            let mut child = ctd.spawn_run(&CtrRun::rootfs(&id, root.path(), &["/big.wasm"]));
            ctd.wait_task_running(&id, Duration::from_secs(60))
                .expect("running");
            let t = Instant::now();
            while ctd.cache_entries().is_empty() && t.elapsed() < Duration::from_secs(300) {
                std::thread::sleep(Duration::from_millis(100));
            }
            // Past loading and instantiation: the guest spins.
            std::thread::sleep(Duration::from_secs(2));
            let (mut pss, mut hwm) = (0, 0);
            for (pid, role) in shim_tree(&id) {
                if role == "container process" {
                    let (h, _, p, _) = mem_of(pid);
                    pss += p;
                    hwm += h;
                }
            }
            ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
            let _ = child.wait();
            (pss, hwm)
        };
        let (first_pss, first_hwm) = instance("cold");
        let (warm_pss, warm_hwm) = instance("warm");
        table.row(
            "(f) 20 MB module, container process PSS: first instance (cold) vs next (warm)",
            &format!("{:.1} MB", mb(first_pss)),
            &format!("{:.1} MB", mb(warm_pss)),
            first_pss as f64 / warm_pss.max(1) as f64,
            "<= 2.00x",
        );
        table.row(
            "(f') same, peak RSS of the container process",
            &format!("{:.1} MB", mb(first_hwm)),
            &format!("{:.1} MB", mb(warm_hwm)),
            first_hwm as f64 / warm_hwm.max(1) as f64,
            "<= 2.00x",
        );
    }

    if wants("i") {
        let root = rootfs_with(&[("busyloop.wasm", &guest("busyloop"))]);
        let run = |id: String| CtrRun::rootfs(id, root.path(), &["/busyloop.wasm", "50"]);
        // "work 50: <hash> in <ms> ms"
        let compute_ms = |out: &str| -> f64 {
            out.split(" in ")
                .nth(1)
                .and_then(|t| t.trim().strip_suffix(" ms"))
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_else(|| panic!("no timing in {out:?}"))
        };
        let (mut winch, mut cranelift) = (Vec::new(), Vec::new());
        for _ in 0..n.min(5) {
            clear_cache(&ctd);
            winch.push(compute_ms(&ctd.run(&run(unique_id("iw"))).ok().stdout));
            wait_for_tier_ups();
            cranelift.push(compute_ms(&ctd.run(&run(unique_id("ic"))).ok().stdout));
        }
        let (w, c) = (median(winch), median(cranelift));
        table.row(
            "(i) compute-bound guest (busyloop 50: generate, sort, hash 50 MiB), Winch code vs \
             Cranelift code",
            &format!("{w:.0} ms"),
            &format!("{c:.0} ms"),
            w / c,
            "(info)",
        );
    }

    println!();
    println!("| benchmark | wasmkube | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    for [a, b, c, d, e] in &table.0 {
        println!("| {a} | {b} | {c} | {d} | {e} |");
    }
}
