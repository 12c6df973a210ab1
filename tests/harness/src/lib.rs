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

/// Builds the shim (`cargo build --release -p wasmkube-shim`, once per test process, with the
/// current `CARGO` and `CARGO_TARGET_DIR`) and returns the path of
/// `containerd-shim-wasmkube-v1`. For test suites outside the shim package, which cannot name
/// the binary with `CARGO_BIN_EXE_*`.
pub fn shim_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<Result<std::path::PathBuf, String>> =
        std::sync::OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = guests::repo_root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let out =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&root)
                .args(["build", "--release", "--quiet", "-p", "wasmkube-shim"])
                .env("CARGO_TARGET_DIR", &target)
                .output()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build -p wasmkube-shim failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let bin = target.join("release").join("containerd-shim-wasmkube-v1");
        if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("no shim at {} after the build", bin.display()))
        }
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
