//! The Rust test guests in `tests/guests`, built once per test process.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("guests"),
        None => repo_root().join("target/guests"),
    }
}

/// `tests/guests/targets`: each WASI target and the guests built for it (one list, shared with
/// `scripts/build.sh`).
fn targets() -> impl Iterator<Item = (&'static str, Vec<&'static str>)> {
    include_str!("../../guests/targets")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.collect()))
        })
}

/// Builds every guest (once) and returns the directory holding `wasm32-wasip1/release` and
/// `wasm32-wasip2/release`. `WASMKUBE_GUESTS_DIR` names guests the run already built
/// (`scripts/test.sh`): then no cargo is invoked.
fn build_all() -> &'static Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("WASMKUBE_GUESTS_DIR") {
            return Ok(PathBuf::from(dir));
        }
        let dir = target_dir();
        for (target, packages) in targets() {
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.current_dir(repo_root().join("tests/guests"))
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "--locked",
                    "--target",
                    target,
                ])
                .env("CARGO_TARGET_DIR", &dir)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS");
            for p in packages {
                cmd.args(["-p", p]);
            }
            let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building test guests for {target} failed (is the target installed? \
                     `rustup target add {target}`):\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(dir)
    })
}

/// Path of a built guest: `hello`, `trap`, `busyloop`, `memhog`, `fileio` (preview1 modules),
/// `http_hello`, `http_limits` (test-only: `/loop` spins, `/body` counts), `cli-component`
/// (preview2 components).
pub fn guest(name: &str) -> PathBuf {
    let dir = match build_all() {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    // Packages are named with `-`, cdylib files with `_` (`http-hello` → `http_hello.wasm`).
    let target = targets()
        .find(|(_, packages)| {
            packages
                .iter()
                .any(|p| *p == name || p.replace('-', "_") == name)
        })
        .map(|(t, _)| t)
        .unwrap_or_else(|| panic!("{name} is not a guest in tests/guests/targets"));
    let path = dir
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "guest {name} not built at {}",
        path.display()
    );
    path
}
