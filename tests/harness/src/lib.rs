//! wasmkube's test harness: a private containerd in a temp dir, `ctr` and CRI helpers, and the
//! wasm test guests. Shared by the shim, node-installer and operator test suites.
//!
//! Tests that need root or containerd call [`skip_unless!`]: without them the test prints
//! `SKIP <test>: <what is missing>` and passes, unless `WASMKUBE_REQUIRE_CONTAINERD=1` (CI sets
//! it), in which case a missing prerequisite fails the test.

pub mod containerd;
pub mod cri;
pub mod guests;
pub mod images;
pub mod kubelet;
pub mod procs;
pub mod registry;
pub mod spin_image;
pub mod token_server;
pub mod wasm_gen;

pub use containerd::{Containerd, CtrRun, Output};

/// What a containerd test needs from the machine, or `None` when everything is there.
pub fn missing_prerequisites() -> Option<String> {
    let mut missing = Vec::new();
    // SAFETY-free: geteuid via std: /proc/self/status "Uid:" line.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .unwrap_or_default();
    if uid != "0" {
        missing.push("root (containerd and runc need it)".to_string());
    }
    for tool in ["containerd", "ctr", "runc"] {
        if which(tool).is_none() {
            missing.push(format!(
                "`{tool}` on PATH (apt-get install -y containerd runc)"
            ));
        }
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// A loopback TCP port that was free a moment ago (for a server a test is about to start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Full path of a program on `PATH`.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Prints a loud skip line and returns from the test when a prerequisite is missing; fails
/// instead when `WASMKUBE_REQUIRE_CONTAINERD=1`.
#[macro_export]
macro_rules! skip_unless {
    ($missing:expr) => {
        if let Some(missing) = $missing {
            if std::env::var("WASMKUBE_REQUIRE_CONTAINERD").as_deref() == Ok("1") {
                panic!("WASMKUBE_REQUIRE_CONTAINERD=1 but this test cannot run: missing {missing}");
            }
            // The test's own name, written past libtest's capture so a person sees the skip
            // even though the test passes.
            fn here() {}
            let name = std::any::type_name_of_val(&here).trim_end_matches("::here");
            {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr(), "SKIP {name}: missing {missing}");
            }
            return;
        }
    };
}

/// The shim binary, `containerd-shim-wasmkube-v1`, for test suites outside the shim package
/// (which cannot name it with `CARGO_BIN_EXE_*`).
///
/// `WASMKUBE_SHIM_BIN` names a binary the run already built (`scripts/test.sh` builds the
/// workspace once and sets it, so no test invokes cargo). Without it, the shim is built here
/// once per test process (`cargo build --release -p wasmkube-shim`, with the current `CARGO`,
/// `CARGO_TARGET_DIR` and the workspace's `.cargo/config.toml`), and cargo says where it put it.
pub fn shim_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<Result<std::path::PathBuf, String>> =
        std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        if let Some(bin) = std::env::var_os("WASMKUBE_SHIM_BIN") {
            let bin = std::path::PathBuf::from(bin);
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(format!("WASMKUBE_SHIM_BIN={} is not a file", bin.display()))
            };
        }
        let out =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(guests::repo_root())
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "--message-format=json",
                    "-p",
                    "wasmkube-shim",
                    "--bin",
                    "containerd-shim-wasmkube-v1",
                ])
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build -p wasmkube-shim failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|m| {
                (m["reason"] == "compiler-artifact"
                    && m["target"]["name"] == "containerd-shim-wasmkube-v1")
                    .then(|| m["executable"].as_str().map(std::path::PathBuf::from))
                    .flatten()
            })
            .filter(|p| p.is_file())
            .ok_or_else(|| "cargo built wasmkube-shim but named no executable".to_string())
    });
    match built {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A unique container or pod id: parallel tests share runwasi's state directory.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
