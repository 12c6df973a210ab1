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

/// Builds every guest (once) and returns the directory holding `wasm32-wasip1/release` and
/// `wasm32-wasip2/release`.
fn build_all() -> &'static Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = target_dir();
        for (target, packages) in [
            (
                "wasm32-wasip1",
                &["hello", "trap", "busyloop", "memhog", "fileio"][..],
            ),
            (
                "wasm32-wasip2",
                &["http-hello", "http-limits", "cli-component"][..],
            ),
        ] {
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.current_dir(repo_root().join("tests/guests"))
                .args(["build", "--release", "--quiet", "--target", target])
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
    let target = if matches!(name, "http_hello" | "http_limits" | "cli-component") {
        "wasm32-wasip2"
    } else {
        "wasm32-wasip1"
    };
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
