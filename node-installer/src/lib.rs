//! wasmkube node installer: provisions a node's containerd with the bundled shim — parse, back
//! up, patch, restart, verify, report, and undo all of it on `uninstall`.
//!
//! Everything it touches is under `--host-root`, so it runs unchanged against a temp directory
//! that plays the host. See `README.md` for the flags, flavours, guarantees and exit codes.
pub mod atomic_write;
pub mod check;
pub mod check_bundle;
pub mod cli;
pub mod config_patch;
pub mod crash_point;
pub mod flavour;
pub mod host_lock;
pub mod host_path;
pub mod idle;
pub mod install;
pub mod k3s_template;
pub mod node;
pub mod report;
pub mod restart;
pub mod rollback;
pub mod runtime_options;
pub mod shim_cache;
pub mod shim_install;
pub mod status;
pub mod transaction;
pub mod uninstall;
pub mod verify;
pub mod wasm_check;

pub use cli::{Cli, Command, Options, Verb};
pub use report::{Report, State};

/// Runs one verb, holding the node's installer lock (see [`host_lock`]) for all of it, so the
/// config is read, changed and (if need be) rolled back by one run at a time.
pub fn run(verb: Verb, options: &Options) -> Report {
    let t = std::time::Instant::now();
    let name = match verb {
        Verb::Install => "install",
        Verb::Uninstall => "uninstall",
        Verb::Status => "status",
    };
    let wait = std::time::Duration::from_secs(options.lock_timeout);
    let lock = match host_lock::HostLock::acquire(&options.host_root, name, wait) {
        Ok(l) => Some(l),
        // A run that writes nothing may go on where the lock file cannot be made (a read-only
        // host root): it has nothing to serialise against another reader.
        Err(host_lock::LockError::Io { .. }) if verb == Verb::Status || options.dry_run => None,
        Err(e) => {
            let mut r = Report::new(State::Failed);
            r.fail(report::Failure::NothingChanged, e.reason(), e.to_string());
            r.time("lock", t);
            r.time("total", t);
            return r;
        }
    };
    let waited = t.elapsed();
    let mut r = match verb {
        Verb::Install => install::install(options),
        Verb::Uninstall => uninstall::uninstall(options),
        Verb::Status => status::status(options),
    };
    drop(lock);
    let waited = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    r.timings.insert("lock", waited);
    *r.timings.entry("total").or_insert(0) += waited;
    r
}
