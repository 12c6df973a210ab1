//! Shim benchmarks against a private containerd (run as root: `bench/shim.sh`, which fetches
//! the real-world modules and the `wasmtime` CLI first). Interleaved A/B runs, medians, ratios:
//!
//! (a) `ctr run --rm` hello: wasm shim vs runc + static busybox `echo`;
//! (b) a ~1 MB real-world module (graphviz, C) from its second start, vs runc + busybox;
//! (c) first vs second start of a large module (Yosys, 69 MB): the compiled-module cache;
//! (d) memory of one idle wasi:http instance (shim + container processes);
//! (e) HTTP requests/s through the shim vs `wasmtime serve`, same component, same `wrk` load;
//! (f) memory of the first instance of a 20 MB module on a node (cold cache: compiled by the
//!     compile broker) vs the next one (warm): the compiler's memory must not stay with it.
//!
//! Environment: `BENCH_N` (default 10), `BENCH_BIG_N` (default 3), `BENCH_ASSETS` (dir with
//! graphviz.wasm, yosys.wasm, wasmtime), `BENCH_ONLY` (comma list of a,b,c,d,e,f).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmkube_test_harness::containerd::rootfs_with;
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::wasm_gen::big_module;
use wasmkube_test_harness::{free_port, missing_prerequisites, unique_id, Containerd, CtrRun};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-wasmkube-v1");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn timed(ctd: &Containerd, run: &CtrRun) -> f64 {
    let t = Instant::now();
    let out = ctd.run(run);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(out.code, Some(0), "benchmark run failed: {out:#?}");
    ms
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn clear_cache(ctd: &Containerd) {
    if let Ok(d) = std::fs::read_dir(ctd.cache_dir()) {
        for e in d.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

struct Table(Vec<[String; 5]>);

impl Table {
    fn row(&mut self, what: &str, a: &str, b: &str, ratio: f64, target: &str) {
        self.0.push([
            what.into(),
            a.into(),
            b.into(),
            format!("{ratio:.2}x"),
            target.into(),
        ]);
    }
}

fn main() {
    if let Some(missing) = missing_prerequisites() {
        eprintln!("SKIP shim benchmarks: missing {missing}");
        return;
    }
    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| "a,b,c,d,e,f".into());
    let wants = |k: &str| only.split(',').any(|o| o.trim() == k);
    let n = env_usize("BENCH_N", 10);
    let big_n = env_usize("BENCH_BIG_N", 3);
    let assets = PathBuf::from(
        std::env::var("BENCH_ASSETS").unwrap_or_else(|_| "/var/tmp/wasmkube-bench".into()),
    );
    let ctd = Containerd::builder().shim(SHIM).start();
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
        let mut first = Vec::new();
        for _ in 0..n.min(5) {
            clear_cache(&ctd);
            first.push(timed(&ctd, &run(unique_id("gv1"))));
        }
        let (mut second, mut native_ms) = (Vec::new(), Vec::new());
        for _ in 0..n {
            second.push(timed(&ctd, &run(unique_id("gv2"))));
            native_ms.push(timed(&ctd, &runc(unique_id("b"))));
        }
        let (f, s, r) = (median(first), median(second), median(native_ms));
        table.row(
            "(b) graphviz.wasm 933 KB, second start vs runc+busybox",
            &format!("{s:.1} ms"),
            &format!("{r:.1} ms"),
            s / r,
            "<= 1.00x",
        );
        table.row(
            "(b') graphviz.wasm first start (compile) vs second start",
            &format!("{f:.1} ms"),
            &format!("{s:.1} ms"),
            f / s,
            "(info)",
        );
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
        std::thread::sleep(Duration::from_millis(300));
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
        ctd.ctr(&["tasks", "kill", &id]);
        let _ = child.wait();
    }

    let wasmtime = assets.join("wasmtime");
    if wants("e") && wasmtime.is_file() && wasmkube_test_harness::which("wrk").is_some() {
        let root = rootfs_with(&[("http.wasm", &http)]);
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let port = free_port();
            let id = unique_id("rps");
            let mut run = CtrRun::rootfs(&id, root.path(), &["/http.wasm"])
                .env(&format!("WASMKUBE_HTTP_ADDR=127.0.0.1:{port}"));
            run.net_host = true;
            let mut child = ctd.spawn_run(&run);
            wait_http(port);
            ours.push(wrk(port));
            ctd.ctr(&["tasks", "kill", &id]);
            let _ = child.wait();

            let port = free_port();
            let mut serve = Command::new(&wasmtime)
                .args([
                    "serve",
                    "-S",
                    "cli=y",
                    "--addr",
                    &format!("127.0.0.1:{port}"),
                ])
                .arg(&http)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("wasmtime serve");
            wait_http(port);
            theirs.push(wrk(port));
            let _ = serve.kill();
            let _ = serve.wait();
        }
        let (o, t) = (median(ours), median(theirs));
        table.row(
            "(e) wasi:http req/s: shim vs wasmtime serve (wrk -t1 -c16 -d5s)",
            &format!("{o:.0}/s"),
            &format!("{t:.0}/s"),
            o / t,
            ">= 0.80x",
        );
    } else if wants("e") {
        println!(
            "SKIP (e): needs {} and wrk (bench/shim.sh installs both)",
            wasmtime.display()
        );
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

    println!();
    println!("| benchmark | wasmkube | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    for [a, b, c, d, e] in &table.0 {
        println!("| {a} | {b} | {c} | {d} | {e} |");
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn curl(port: u16) -> bool {
    Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "2",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_http(port: u16) {
    let t = Instant::now();
    while !curl(port) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "server on {port} never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests per second from `wrk` (loopback, bounded: 5 s).
fn wrk(port: u16) -> f64 {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", "-d5s", &format!("http://127.0.0.1:{port}/")])
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("Requests/sec:")
                .map(|v| v.trim().parse::<f64>().unwrap_or(0.0))
        })
        .unwrap_or(0.0)
}

/// The shim daemon serving container `id` and all its descendants, with a role name.
fn shim_tree(id: &str) -> Vec<(u32, String)> {
    let procs: Vec<(u32, u32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, ppid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect();
    let Some(shim) = procs.iter().find(|(_, _, c)| {
        c.contains("containerd-shim-wasmkube-v1 ") && c.contains(&format!("-id {id} "))
    }) else {
        return Vec::new();
    };
    let mut out = vec![(shim.0, "shim daemon".to_string())];
    let mut zygote_seen = false;
    let mut frontier = vec![shim.0];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, _) in &procs {
            if *ppid == p {
                let cmd = &procs
                    .iter()
                    .find(|q| q.0 == *pid)
                    .map(|q| q.2.as_str())
                    .unwrap_or("");
                let role = if cmd.contains("--wasmkube-compile-broker") {
                    "compile broker"
                } else if cmd.contains("--wasmkube-compile-worker") {
                    "compile worker"
                } else if !zygote_seen {
                    zygote_seen = true;
                    "shim child (zygote)"
                } else {
                    "container process"
                };
                out.push((*pid, role.to_string()));
                frontier.push(*pid);
            }
        }
    }
    out
}

/// (peak RSS, RSS, PSS, anonymous) in kB.
fn mem_of(pid: u32) -> (u64, u64, u64, u64) {
    let field = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (
        field(&status, "VmHWM:"),
        field(&status, "VmRSS:"),
        field(&rollup, "Pss:"),
        field(&rollup, "Anonymous:"),
    )
}
