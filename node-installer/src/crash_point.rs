//! Crash points: the installer SIGKILLs itself at a named step when `WASMKUBE_INSTALLER_CRASH_AT`
//! names it, so the tests can prove that a run killed at any step (a node losing power, the pod
//! evicted, an OOM kill) leaves containerd's config whole and the next run converging.
//!
//! A SIGKILL, not a panic or an error: nothing unwinds, no destructor runs, no rollback happens,
//! exactly as when the kernel kills the process. The points are compiled into the shipped binary
//! (the tests exercise the binary users run, not a special build); unset, the variable costs one
//! `getenv` per point. Whoever can set the installer pod's environment can already run anything
//! as root on the node, so the variable gives nobody a new power.
//!
//! The points, in the order a run reaches them: `after-backup`, `shim-copy` (mid-copy, after the
//! first MiB is on disk), `after-config-write`, `restart` (the restart command started, not
//! finished), `wasm-check` (the check's task running), `before-commit` (verified, not committed),
//! and in `uninstall` `after-shim-removed`.

/// The environment variable naming the point to die at.
pub const ENV: &str = wasmkube_contract::installer::CRASH_AT_ENV;

/// Dies by SIGKILL here when [`ENV`] names `point`.
pub fn crash_point(point: &str) {
    if std::env::var_os(ENV).is_some_and(|v| v == point) {
        eprintln!("wasmkube-node-installer: crash point {point} reached: SIGKILL");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // The signal is delivered before kill returns for the calling thread; never go on.
        loop {
            std::thread::park();
        }
    }
}
