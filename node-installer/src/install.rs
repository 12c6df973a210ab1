//! `install`: copy the shim, patch the config, restart containerd, verify, report — and roll
//! back when containerd does not come back serving the handler.
use std::path::Path;
use std::time::Instant;

use crate::atomic_write::{self, backup_once, write_atomic};
use crate::cli::Options;
use crate::node::{unified_diff, Node};
use crate::report::{Failure, Report, State};
use crate::restart::{self, RestartPlan};
use crate::shim_install::{
    install_shim, link_shim, remove_shim, sha256_file, shim_version, unlink_shim,
};
use crate::verify;
use crate::wasm_check;

/// Runs `install`. Never panics; every outcome is in the report.
pub fn install(o: &Options) -> Report {
    let total = Instant::now();
    let mut r = Report::new(State::Installed);
    run(o, &mut r);
    r.time("total", total);
    r
}

fn run(o: &Options, r: &mut Report) {
    let t = Instant::now();
    let node = Node::new(o);
    r.flavour = Some(node.layout.flavour);
    r.config_path = Some(node.layout.config.display().to_string());
    let shim_src = o.shim_source();
    r.shim_version = shim_version(&shim_src);
    // A dry run restarts nothing, so it does not need a way to restart.
    let plan = match restart::plan(
        o.restart,
        o.restart_cmd.as_deref(),
        &node.layout,
        &node.host_root,
    ) {
        Ok(p) => p,
        Err(_) if o.dry_run => RestartPlan::None,
        Err(e) => return r.fail(Failure::NothingChanged, "RestartPlan", e.to_string()),
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
    let desired = match node.desired_install(current.as_deref(), major) {
        Ok(d) => d,
        Err(e) => return r.fail(Failure::NothingChanged, e.reason(), e.to_string()),
    };
    r.time("detect", t);
    let config_changed = current.as_deref() != Some(desired.as_str());

    if o.dry_run {
        let diff = unified_diff(&node.layout.config, current.as_deref(), Some(&desired));
        print!("{diff}");
        let shim_same = sha256_file(&shim_src)
            .ok()
            .is_some_and(|a| sha256_file(&node.shim_dest).ok() == Some(a));
        r.state = State::DryRun;
        r.message = format!(
            "dry run: config {}; shim {} at {}; nothing changed",
            if config_changed {
                "would change (diff above)"
            } else {
                "already in place"
            },
            if shim_same {
                "already installed"
            } else {
                "would be installed"
            },
            node.shim_dest.display()
        );
        return;
    }

    let t = Instant::now();
    let shim_existed = node.shim_dest.exists();
    let shim = match install_shim(&shim_src, &node.shim_dest) {
        Ok(s) => s,
        Err(e) => return r.fail(Failure::NothingChanged, "ShimCopy", e.to_string()),
    };
    let linked = match &node.shim_link {
        None => false,
        Some(link) => match link_shim(link, &node.runtime_path) {
            Ok(created) => created,
            Err(e) => {
                undo_shim_fn(&node, shim_existed);
                return r.fail(Failure::NothingChanged, "ShimLink", e.to_string());
            }
        },
    };
    r.shim_sha256 = Some(shim.sha256.clone());
    r.time("copy", t);
    // Undo for a failure before containerd was restarted: the shim we added.
    let undo_shim = |r: &mut Report| {
        undo_shim_fn(&node, shim_existed);
        r.shim_sha256 = None;
    };

    let t = Instant::now();
    let mut backup_taken = false;
    if config_changed {
        match backup_once(&node.config_file, current.as_deref().map(str::as_bytes)) {
            Ok(taken) => backup_taken = taken,
            Err(e) => {
                undo_shim(r);
                return r.fail(Failure::NothingChanged, "Backup", e.to_string());
            }
        }
        if let Err(e) = write_atomic(
            &node.config_file,
            desired.as_bytes(),
            0o644,
            node.validator(true),
        ) {
            undo_shim(r);
            if backup_taken {
                let _ = atomic_write::drop_backup(&node.config_file);
            }
            return r.fail(Failure::NothingChanged, "WriteConfig", e.to_string());
        }
    }
    r.time("patch", t);

    let loaded = before.as_ref().is_some_and(|s| node.serves_handler(s));
    let need_restart = config_changed || (!o.skip_verify && !loaded);
    let changed_anything = config_changed || shim.changed || linked;
    if !need_restart {
        r.verified = loaded;
        if loaded {
            if let Err(e) = wasm_check(o, &node, r) {
                let (failure, what) = if changed_anything {
                    // The shim was replaced in place and the old one is not kept.
                    (
                        Failure::RollbackFailed,
                        "; the updated shim stays in place and the previous one is not kept: \
                         the node needs attention",
                    )
                } else {
                    (Failure::NothingChanged, "")
                };
                return r.fail(failure, e.reason(), format!("{e}{what}"));
            }
        }
        r.state = if changed_anything {
            State::Installed
        } else {
            State::Unchanged
        };
        r.message = if changed_anything {
            "shim updated; containerd already serves the wasmkube handler".into()
        } else if o.skip_verify {
            "already installed (not verified: --skip-verify)".into()
        } else {
            "already installed; containerd serves the wasmkube handler".into()
        };
        return;
    }
    if plan == RestartPlan::None {
        r.state = State::Installed;
        r.message = "installed; containerd was not restarted (--restart none), so the wasmkube \
                     handler is active only after its next restart"
            .into();
        return;
    }

    let t = Instant::now();
    let restarted = plan.run();
    r.time("restart", t);
    if let Err(e) = restarted {
        return rollback(
            r,
            &node,
            &plan,
            current.as_deref(),
            backup_taken,
            "RestartFailed",
            e.to_string(),
            || undo_shim_fn(&node, shim_existed),
        );
    }
    r.restarted = true;
    if o.skip_verify {
        r.message = "installed and containerd restarted (not verified: --skip-verify)".into();
        return;
    }
    let t = Instant::now();
    let verified = verify::wait_for(&node.socket, node.timeout, "the wasmkube handler", |s| {
        node.serves_handler(s)
    });
    r.time("verify", t);
    let verified = verified
        .map_err(|e| (e.reason(), e.to_string()))
        .and_then(|s| {
            wasm_check(o, &node, r)
                .map(|()| s)
                .map_err(|e| (e.reason(), e.to_string()))
        });
    match verified {
        Ok(s) => {
            r.containerd_version = Some(s.version);
            r.verified = true;
            r.state = State::Installed;
            r.message = format!(
                "installed; containerd serves runtime handler wasmkube ({})",
                node.runtime_path
            );
        }
        Err((reason, message)) => rollback(
            r,
            &node,
            &plan,
            current.as_deref(),
            backup_taken,
            reason,
            message,
            || undo_shim_fn(&node, shim_existed),
        ),
    }
}

/// Runs the wasm check when one was asked for (`--check-image`), recording the outcome.
fn wasm_check(o: &Options, node: &Node, r: &mut Report) -> Result<(), wasm_check::CheckError> {
    let Some(image) = &o.check_image else {
        r.wasm_check = Some("not requested (no --check-image)".to_string());
        return Ok(());
    };
    let check = wasm_check::WasmCheck {
        image: image.clone(),
        module: o.check_module.clone(),
    };
    let t = Instant::now();
    let outcome = wasm_check::run(&node.socket, &check);
    r.time("wasmCheck", t);
    match &outcome {
        Ok(took) => {
            r.wasm_check = Some(format!(
            "a wasm pod ran {} from {image} through the wasmkube handler and exited {} in {} ms",
            check.module,
            wasm_check::EXPECTED_EXIT,
            took.as_millis()
        ))
        }
        Err(e) => r.wasm_check = Some(format!("failed: {e}")),
    }
    outcome.map(|_| ())
}

fn undo_shim_fn(node: &Node, existed: bool) {
    if !existed {
        if let Some(link) = &node.shim_link {
            let _ = unlink_shim(link, &node.runtime_path);
        }
        let _ = remove_shim(&node.shim_dest);
    }
}

/// Puts the previous config back, restarts again, and records how that went.
#[allow(clippy::too_many_arguments)]
fn rollback(
    r: &mut Report,
    node: &Node,
    plan: &RestartPlan,
    previous: Option<&str>,
    backup_taken: bool,
    reason: &str,
    cause: String,
    undo_shim: impl FnOnce(),
) {
    let restored = restore(&node.config_file, previous).and_then(|()| {
        plan.run().map_err(|e| e.to_string())?;
        verify::wait_for(
            &node.socket,
            node.timeout,
            "containerd after rollback",
            |_| true,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    match restored {
        Ok(()) => {
            undo_shim();
            if backup_taken {
                let _ = atomic_write::drop_backup(&node.config_file);
            }
            r.shim_sha256 = None;
            r.fail(
                Failure::RolledBack,
                reason,
                format!("{cause}; rolled back to the previous config and restarted containerd"),
            );
        }
        Err(e) => r.fail(
            Failure::RollbackFailed,
            reason,
            format!(
                "{cause}; ROLLBACK FAILED: {e}; the original config is kept at {}",
                atomic_write::backup_path(&node.config_file).display()
            ),
        ),
    }
}

/// Writes `previous` back to `path` (or removes it when there was none).
pub(crate) fn restore(path: &Path, previous: Option<&str>) -> Result<(), String> {
    match previous {
        Some(text) => {
            write_atomic(path, text.as_bytes(), 0o644, |_| Ok(())).map_err(|e| e.to_string())
        }
        None => atomic_write::remove(path)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}
