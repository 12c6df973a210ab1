//! The tier-up process (`--wasmkube-tier-up`): after a program's first start on a node got
//! baseline code (Winch), its worker starts one to compile the optimised code (Cranelift) for
//! the next start, and answers its container without waiting. It works like a worker's cache
//! miss (a node-wide compile slot, a confined compiler, the entry stored under the key derived
//! from the bytes it forwarded), but in the background:
//!
//! - it is charged to no container (it may outlive the one that caused it: a runtime cannot
//!   remove a cgroup that still holds a task) and runs at a lower CPU priority;
//! - one at a time per module on the node (an `flock` under the run directory): a Deployment's
//!   pods starting together cause one optimised compile, not one each;
//! - it ends when its module is compiled, or after the worker's ten minutes.
//!
//! It is the worker's child, which exits at once: the shim daemon (a subreaper) reaps it.
use std::io::BufReader;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::cache::{ArtifactCache, CacheConfig};
use crate::engine::Tier;

use super::protocol::Request;
use super::worker::{self, Charge};
use super::{confine, TIER_UP_ARG};

/// The CPU niceness of a tier-up and its compiler.
const NICENESS: i32 = 10;

/// Starts a tier-up for `(what, wasm)` and hands it the module; does not wait for it.
pub fn start(what: &str, wasm: &[u8]) -> std::io::Result<()> {
    let mut child = Command::new("/proc/self/exe")
        .arg(TIER_UP_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no pipe to the tier-up"))?;
    Request::Load {
        what: what.into(),
        wasm: wasm.into(),
    }
    .write_to(&mut stdin)
}

/// Compiles the module on stdin to optimised code and caches it; returns the exit code.
pub fn run() -> i32 {
    if let Err(e) = confine::worker_gives_up_privileges() {
        eprintln!("wasmkube tier-up: cannot drop privileges: {e}");
        return 1;
    }
    worker::limit_lifetime("tier-up");
    let (what, wasm) = match Request::decode(&mut BufReader::new(std::io::stdin().lock())) {
        Ok(Request::Load { what, wasm }) => (what, wasm),
        Ok(Request::Limits) => {
            eprintln!("wasmkube tier-up: asked for limits, not a compile");
            return 1;
        }
        Err(e) => {
            eprintln!("wasmkube tier-up: {e}");
            return 1;
        }
    };
    let cache = match CacheConfig::from_env().map(|c| c.map(|c| ArtifactCache::open(&c))) {
        Ok(Some(Ok(cache))) => cache,
        Ok(None) => return 0,
        Ok(Some(Err(e))) => {
            eprintln!("wasmkube tier-up: {e}");
            return 1;
        }
        Err(e) => {
            eprintln!("wasmkube tier-up: {e}");
            return 1;
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    let Some(_lock) = one_per_module(&confine::run_dir(env), &wasm) else {
        return 0;
    };
    let _ = rustix::process::setpriority_process(None, NICENESS);
    let mut notes = Vec::new();
    let mut compile = |what: &str, wasm: &[u8], tiers: &[Tier], notes: &mut Vec<String>| {
        worker::compile_confined(Charge::Nobody, what, wasm, tiers, notes)
    };
    let done = worker::artefact(
        &what,
        &wasm,
        &[Tier::Optimized],
        Some(&cache),
        &mut notes,
        &mut compile,
    );
    for note in notes {
        eprintln!("wasmkube tier-up: {what}: {note}");
    }
    match done {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("wasmkube tier-up: {what}: no optimised code: {e}");
            1
        }
    }
}

/// An exclusive lock for this module's tier-up, or `None` when another process holds it (or
/// it cannot be taken: the tier-up is an optimisation, never worth a second compile).
fn one_per_module(run_dir: &std::path::Path, wasm: &[u8]) -> Option<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = run_dir.join("tier-up");
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let name = format!("{}.lock", &hex::encode(Sha256::digest(wasm))[..32]);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(name))
        .ok()?;
    rustix::fs::flock(
        file.as_fd(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .ok()?;
    Some(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tier_up_per_module_at_a_time() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = one_per_module(dir.path(), b"module one");
        assert!(
            first.is_some(),
            "the first tier-up of a module takes the lock"
        );
        assert!(
            one_per_module(dir.path(), b"module one").is_none(),
            "a second tier-up of the same module is not started"
        );
        assert!(
            one_per_module(dir.path(), b"module two").is_some(),
            "another module's tier-up is independent"
        );
        drop(first);
        assert!(
            one_per_module(dir.path(), b"module one").is_some(),
            "free again once the first ended"
        );
    }
}
