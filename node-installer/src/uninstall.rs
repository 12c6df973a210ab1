//! `uninstall`: take our runtime out of the config (the original bytes when nothing else changed
//! since install), restart containerd, verify the handler is gone, then remove the shim and the
//! backup.
use std::time::Instant;

use crate::atomic_write::{self, read_backup, write_atomic, Backup};
use crate::cli::Options;
use crate::node::{unified_diff, Node};
use crate::report::{Failure, Report, State};
use crate::restart::{self, RestartPlan};
use crate::rollback::{describe, rollback, ConfigUndo, Undo};
use crate::shim_cache::{self, Removal};
use crate::shim_install::{remove_shim, shim_version, unlink_shim};
use crate::verify;
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
    let Some(node) = Node::for_report(o, r) else {
        return;
    };
    r.config_path = Some(node.layout.config.display().to_string());
    r.shim_version = shim_version(&node.shim_dest);
    // A dry run restarts nothing, so it does not need a way to restart.
    let plan = match restart::plan(
        o.restart,
        o.restart_cmd.as_deref(),
        &node.layout,
        &node.host_root,
    ) {
        Ok(p) => p,
        Err(_) if o.dry_run => RestartPlan::None,
        Err(e) => {
            return r.fail(
                Failure::NothingChanged,
                reasons::RESTART_PLAN,
                e.to_string(),
            )
        }
    };
    let before = if o.skip_verify {
        None
    } else {
        verify::probe(&node.socket).ok()
    };
    r.containerd_version = before.as_ref().map(|s| s.version.clone());
    let major = before.as_ref().and_then(verify::CriState::major);
    let current = match node.read_config() {
        Ok(c) => c,
        Err(e) => return r.fail(Failure::NothingChanged, e.reason(), e.to_string()),
    };
    let backup = match read_backup(&node.config_file) {
        Ok(b) => b,
        Err(e) => return r.fail(Failure::NothingChanged, reasons::READ_BACKUP, e.to_string()),
    };
    let desired = match node.desired_uninstall(current.as_deref(), backup.as_ref(), major) {
        Ok(d) => d,
        Err(e) => return r.fail(Failure::NothingChanged, e.reason(), e.to_string()),
    };
    r.time("detect", t);
    let config_changed = current != desired;
    if o.dry_run {
        print!(
            "{}",
            unified_diff(&node.layout.config, current.as_deref(), desired.as_deref())
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

    let t = Instant::now();
    if config_changed {
        let written = match &desired {
            Some(text) => write_atomic(
                &node.config_file,
                text.as_bytes(),
                0o644,
                node.validator(false),
            )
            .map_err(|e| e.to_string()),
            None => atomic_write::remove(&node.config_file)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            return r.fail(Failure::NothingChanged, reasons::WRITE_CONFIG, e);
        }
        let original = match &backup {
            Some(Backup::Bytes(b)) => Some(b.as_slice()),
            Some(Backup::Absent) | None => None,
        };
        r.changes.push(match &desired {
            None => "config-removed",
            Some(text) if original == Some(text.as_bytes()) => "config-restored",
            Some(_) => "runtime-removed",
        });
    }
    r.time("patch", t);
    let undo = Undo {
        config: config_changed.then(|| ConfigUndo {
            previous: current.clone(),
            written: desired.clone(),
        }),
        ..Undo::default()
    };

    let still_served = before.as_ref().is_some_and(|s| s.handler.is_some());
    let need_restart = config_changed || still_served;
    if need_restart && plan != RestartPlan::None {
        let t = Instant::now();
        let restarted = plan.run();
        r.time("restart", t);
        if let Err(e) = restarted {
            return rollback(
                r,
                &node,
                &plan,
                &undo,
                reasons::RESTART_FAILED,
                e.to_string(),
            );
        }
        r.restarted = true;
        r.changes.push("containerd-restarted");
        if !o.skip_verify {
            let t = Instant::now();
            let gone = verify::wait_for(
                &node.socket,
                node.timeout,
                "removal of the wasmkube handler",
                |s| s.handler.is_none(),
            );
            r.time("verify", t);
            match gone {
                Ok(s) => {
                    r.containerd_version = Some(s.version);
                    r.verified = true;
                }
                Err(e) => return rollback(r, &node, &plan, &undo, e.reason(), e.to_string()),
            }
        }
    } else if !o.skip_verify && !still_served && before.is_some() {
        r.verified = true;
    }

    // containerd no longer starts new wasmkube pods: the shim and the backup can go.
    let t = Instant::now();
    if let Some(link) = &node.shim_link {
        match unlink_shim(link, &node.runtime_path) {
            Ok(true) => r.changes.push("link-removed"),
            Ok(false) => {}
            Err(e) => {
                return r.fail(
                    Failure::NothingChanged,
                    "RemoveShim",
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
                "RemoveShim",
                format!("config reverted but {e}"),
            )
        }
    };
    if let Err(e) = atomic_write::drop_backup(&node.config_file) {
        return r.fail(
            Failure::NothingChanged,
            "RemoveBackup",
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
                "RemoveCache",
                format!("uninstalled but {e}"),
            )
        }
    }
    r.time("copy", t);
    r.state = State::Uninstalled;
    let removed_any = config_changed || shim_removed || r.changes.contains(&"cache-removed");
    let outcome = match (removed_any, r.restarted, plan == RestartPlan::None) {
        (false, false, _) => "nothing of wasmkube was installed",
        (_, _, true) if need_restart => {
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
