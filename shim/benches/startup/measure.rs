//! What the shim benchmarks measure with: medians, timed `ctr run`s, HTTP load from `wrk`, and
//! the memory of a shim's process tree.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wasmkube_test_harness::{Containerd, CtrRun};

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn timed(ctd: &Containerd, run: &CtrRun) -> f64 {
    let t = Instant::now();
    let out = ctd.run(run);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(out.code, Some(0), "benchmark run failed: {out:#?}");
    ms
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits (at most 5 min) until no background tier-up runs on this machine: the optimised code
/// of every first start so far is cached, and no compiler is using CPU or memory.
pub fn wait_for_tier_ups() {
    let running = || {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten().any(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .map(|c| c.split(|b| *b == 0).any(|a| a == b"--wasmkube-tier-up"))
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    let t = Instant::now();
    // A tier-up starts just before its container gets its answer.
    std::thread::sleep(Duration::from_millis(100));
    while running() && t.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (at most 30 s) until the shims of containers `ids` keep no compile broker: an idle
/// broker exits after a few seconds (`WASMKUBE_BROKER_IDLE_SECS`), so this is their steady state.
pub fn wait_for_idle_brokers(ids: &[String]) {
    let t = Instant::now();
    while ids.iter().any(|id| {
        shim_tree(id)
            .iter()
            .any(|(_, role)| role == "compile broker")
    }) && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn clear_cache(ctd: &Containerd) {
    if let Ok(d) = std::fs::read_dir(ctd.cache_dir()) {
        for e in d.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

pub struct Table(pub Vec<[String; 5]>);

impl Table {
    pub fn row(&mut self, what: &str, a: &str, b: &str, ratio: f64, target: &str) {
        self.0.push([
            what.into(),
            a.into(),
            b.into(),
            format!("{ratio:.2}x"),
            target.into(),
        ]);
    }
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub fn curl(port: u16) -> bool {
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

pub fn wait_http(port: u16) {
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
pub fn wrk(port: u16) -> f64 {
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
pub fn shim_tree(id: &str) -> Vec<(u32, String)> {
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
pub fn mem_of(pid: u32) -> (u64, u64, u64, u64) {
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

/// Where a process's PSS lies (kB): the shim binary's pages, cache entries mapped (the
/// artefact), anonymous memory, and everything else (libc-free static binary: mostly the
/// stack, vDSO and shared-memory mappings).
pub struct PssSplit {
    pub binary: u64,
    pub artefact: u64,
    pub anon: u64,
    pub other: u64,
    /// The binary's PSS by mapping permissions (`r-xp`, `r--p`, `rw-p`).
    pub binary_by_perms: std::collections::BTreeMap<String, u64>,
}

pub fn pss_split(pid: u32) -> PssSplit {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut split = PssSplit {
        binary: 0,
        artefact: 0,
        anon: 0,
        other: 0,
        binary_by_perms: Default::default(),
    };
    let mut path = String::new();
    let mut perms = String::new();
    for line in text.lines() {
        let head = line.split_whitespace().next().unwrap_or("");
        if head.contains('-') && !head.ends_with(':') {
            path = line.split_whitespace().nth(5).unwrap_or("").to_string();
            perms = line.split_whitespace().nth(1).unwrap_or("").to_string();
        } else if let Some(v) = line.strip_prefix("Pss:") {
            let kb: u64 = v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let slot = if path.contains("containerd-shim-wasmkube") {
                *split.binary_by_perms.entry(perms.clone()).or_default() += kb;
                &mut split.binary
            } else if path.ends_with(".cwasm") {
                &mut split.artefact
            } else if path.is_empty() || path == "[heap]" {
                &mut split.anon
            } else {
                &mut split.other
            };
            *slot += kb;
        }
    }
    split
}
