//! `uninstall`: the transaction ([`crate::transaction`]) with the goal "containerd no longer has
//! the wasmkube handler": take our runtime out of the config (the original bytes when nothing
//! else changed since install), restart containerd, verify the handler is gone; its commit
//! removes the PATH link, the shim, the backup and the compiled-module cache.
use std::time::Instant;

use crate::atomic_write::{self, read_backup, Backup};
use crate::cli::Options;
use crate::crash_point::crash_point;
use crate::node::unified_diff;
use crate::report::{Failure, Report, State};
use crate::rollback::describe;
use crate::shim_cache::{self, Removal};
use crate::shim_install::{remove_shim, shim_version, unlink_shim};
use crate::transaction::{self, Goal, Outcome, Plan};
use crate::verify;
use crate::wasm_check;
use wasmkube_contract::installer::reasons;

/// Runs `uninstall`. Never panics; every outcome is in the report.
pub fn uninstall(o: &Options) -> Report {
    let total = Instant::now();
    let mut r = Report::new(State::Uninstalled);
    run(o, &mut r);
    r.time("total", total);
    r
}

fn run(o: &Options, r: &mut Report) {
    let t = Instant::now();
    let Some(b) = transaction::begin(o, r) else {
        return;
    };
    let node = &b.node;
    r.shim_version = shim_version(&node.shim_dest);
    let major = b.before.as_ref().and_then(verify::CriState::major);
    let backup = match read_backup(&node.config_file) {
        Ok(b) => b,
        Err(e) => return r.fail(Failure::NothingChanged, reasons::READ_BACKUP, e.to_string()),
    };
    let desired = match node.desired_uninstall(b.current.as_deref(), backup.as_ref(), major) {
        Ok(d) => d,
        Err(e) => return r.fail(Failure::NothingChanged, e.reason(), e.to_string()),
    };
    r.time("detect", t);
    let config_changed = b.current != desired;
    if o.dry_run {
        print!(
            "{}",
            unified_diff(
                &node.layout.config,
                b.current.as_deref(),
                desired.as_deref()
            )
        );
        r.state = State::DryRun;
        r.message = format!(
            "dry run: config {}; shim at {} {}; nothing changed",
            if config_changed {
                "would change (diff above)"
            } else {
                "has no wasmkube runtime"
            },
            node.shim_dest.display(),
            if node.shim_dest.exists() {
                "would be removed"
            } else {
                "is absent"
            },
        );
        return;
    }

    let original = match &backup {
        Some(Backup::Bytes(b)) => Some(b.as_slice()),
        Some(Backup::Absent) | None => None,
    };
    let config_change = match &desired {
        None => "config-removed",
        Some(text) if original == Some(text.as_bytes()) => "config-restored",
        Some(_) => "runtime-removed",
    };
    let plan = Plan {
        goal: Goal::Gone,
        desired,
        config_change,
        backup: false,
        shim_src: None,
        link: None,
    };
    let Some(done) = transaction::run(o, r, &b, plan) else {
        return;
    };
    transaction::commit(node, done.undo);
    let config_changed = done.config_changed;
    let not_restarted = matches!(done.outcome, Outcome::NotRestarted);

    // containerd no longer starts new wasmkube pods: the shim and the backup can go, and what a
    // killed install's wasm check left (while the shim is still there to stop its task).
    let t = Instant::now();
    match wasm_check::remove_leftovers(&node.socket, &node.host_root) {
        Ok(0) => {}
        Ok(_) => r.changes.push("check-leftovers-removed"),
        Err(e) => tracing::warn!("what earlier wasm checks left stays: {e}"),
    }
    if let Some(link) = &node.shim_link {
        match unlink_shim(link, &node.runtime_path) {
            Ok(true) => r.changes.push("link-removed"),
            Ok(false) => {}
            Err(e) => {
                return r.fail(
                    Failure::NothingChanged,
                    reasons::REMOVE_SHIM,
                    format!("config reverted but {e}"),
                )
            }
        }
    }
    let shim_removed = match remove_shim(&node.shim_dest) {
        Ok(removed) => {
            if removed {
                r.changes.push("shim-removed");
            }
            removed
        }
        Err(e) => {
            return r.fail(
                Failure::NothingChanged,
                reasons::REMOVE_SHIM,
                format!("config reverted but {e}"),
            )
        }
    };
    crash_point("after-shim-removed");
    if let Err(e) = atomic_write::drop_backup(&node.config_file) {
        return r.fail(
            Failure::NothingChanged,
            reasons::REMOVE_BACKUP,
            format!("uninstalled but {e}"),
        );
    }
    if backup.is_some() {
        r.changes.push("backup-dropped");
    }
    let mut kept = String::new();
    match shim_cache::remove(&node.cache_dir, shim_cache::SHIM_OWNER_UID) {
        Ok(Removal::Removed) => r.changes.push("cache-removed"),
        Ok(Removal::Absent) => {}
        Ok(Removal::Kept(why)) => {
            tracing::warn!(cache = %node.cache_dir.display(), "kept: {why}");
            kept = format!("; kept {}: {why}", node.cache_dir.display());
        }
        Err(e) => {
            return r.fail(
                Failure::NothingChanged,
                reasons::REMOVE_CACHE,
                format!("uninstalled but {e}"),
            )
        }
    }
    r.time("copy", t);
    r.state = State::Uninstalled;
    let removed_any = config_changed || shim_removed || r.changes.contains(&"cache-removed");
    let outcome = match (removed_any, r.restarted, not_restarted) {
        (false, false, _) => "nothing of wasmkube was installed",
        (_, _, true) => {
            "containerd was not restarted (--restart none) and serves the handler until its \
             next restart"
        }
        _ if o.skip_verify => "not verified (--skip-verify)",
        _ => "containerd no longer serves the wasmkube handler",
    };
    r.message = if r.changes.is_empty() {
        format!("uninstalled; {outcome}{kept}")
    } else {
        format!("uninstalled: {}; {outcome}{kept}", describe(&r.changes))
    };
}
