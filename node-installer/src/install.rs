//! `install`: copy the shim, patch the config, restart containerd, verify, report — and roll
//! back when containerd does not come back serving the handler.
use std::time::Instant;

use crate::atomic_write::{backup_once, write_atomic};
use crate::cli::Options;
use crate::node::{unified_diff, Node};
use crate::report::{Failure, Report, State};
use crate::restart::{self, RestartPlan};
use crate::rollback::{missing_dirs, rollback, ConfigUndo, ShimUndo, Undo};
use crate::shim_install::{install_shim, link_shim, sha256_file, shim_version};
use crate::verify::{self, CriState};
use crate::wasm_check;
use wasmkube_contract::installer::reasons;

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
    let Some(node) = Node::for_report(o, r) else {
        return;
    };
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
    // What containerd said, else what we were told (`--containerd-version`).
    let version = r
        .containerd_version
        .clone()
        .or_else(|| o.containerd_version.clone());
    let major = version
        .as_deref()
        .and_then(verify::major_minor)
        .map(|(major, _)| major);
    // Only containerd 1.6 needs the shim on its PATH: leave `--path-link` alone otherwise.
    let link = node
        .shim_link
        .as_ref()
        .filter(|_| verify::needs_path_link(version.as_deref()));
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
            "dry run: config {}; shim {} at {}; {}; nothing changed",
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
            node.shim_dest.display(),
            match link {
                Some(l) => format!("PATH link {} wanted", l.display()),
                None => "no PATH link needed".to_string(),
            }
        );
        return;
    }

    let t = Instant::now();
    let mut undo = Undo::default();
    for file in [Some(&node.shim_dest), link, Some(&node.config_file)]
        .into_iter()
        .flatten()
    {
        for dir in file.parent().map(missing_dirs).unwrap_or_default() {
            if !undo.dirs_created.contains(&dir) {
                undo.dirs_created.push(dir);
            }
        }
    }
    let shim = match install_shim(&shim_src, &node.shim_dest) {
        Ok(s) => s,
        Err(e) => return abandon(r, &node, &undo, reasons::SHIM_COPY, e.to_string()),
    };
    if shim.changed {
        r.changes.push("shim-installed");
        undo.shim = match &shim.previous {
            Some(prev) => ShimUndo::RestorePrevious(prev.clone()),
            None => ShimUndo::RemoveNew,
        };
    }
    r.shim_sha256 = Some(shim.sha256.clone());
    if let Some(link) = link {
        match link_shim(link, &node.runtime_path) {
            Ok(true) => {
                r.changes.push("link-created");
                undo.link_created = Some(link.clone());
            }
            Ok(false) => {}
            Err(e) => return abandon(r, &node, &undo, reasons::SHIM_LINK, e.to_string()),
        }
    }
    r.time("copy", t);

    let t = Instant::now();
    if config_changed {
        match backup_once(&node.config_file, current.as_deref().map(str::as_bytes)) {
            Ok(taken) => undo.backup_taken = taken,
            Err(e) => return abandon(r, &node, &undo, reasons::BACKUP, e.to_string()),
        }
        if let Err(e) = write_atomic(
            &node.config_file,
            desired.as_bytes(),
            0o644,
            node.validator(true),
        ) {
            return abandon(r, &node, &undo, reasons::WRITE_CONFIG, e.to_string());
        }
        r.changes.push("config-written");
        undo.config = Some(ConfigUndo {
            previous: current.clone(),
            written: Some(desired.clone()),
        });
    }
    r.time("patch", t);

    let loaded = before.as_ref().is_some_and(|s| node.serves_handler(s));
    let need_restart = config_changed || (!o.skip_verify && !loaded);
    let changed_anything = !r.changes.is_empty();
    if !need_restart {
        r.verified = loaded;
        if let Some(cri) = before.as_ref().filter(|_| loaded) {
            if let Err(e) = wasm_check(o, &node, cri, r) {
                // Only the shim (or the link) changed: put them back, no restart needed.
                return rollback(
                    r,
                    &node,
                    &RestartPlan::None,
                    &undo,
                    e.reason(),
                    e.to_string(),
                );
            }
        }
        undo.commit();
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
        undo.commit();
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
            &undo,
            reasons::RESTART_FAILED,
            e.to_string(),
        );
    }
    r.restarted = true;
    r.changes.push("containerd-restarted");
    if o.skip_verify {
        undo.commit();
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
            wasm_check(o, &node, &s, r)
                .map(|()| s)
                .map_err(|e| (e.reason(), e.to_string()))
        });
    match verified {
        Ok(s) => {
            undo.commit();
            r.containerd_version = Some(s.version);
            r.verified = true;
            r.state = State::Installed;
            r.message = format!(
                "installed; containerd serves runtime handler wasmkube ({})",
                node.runtime_path
            );
        }
        Err((reason, message)) => rollback(r, &node, &plan, &undo, reason, message),
    }
}

/// A failure before containerd was restarted: put back the files this run changed.
fn abandon(r: &mut Report, node: &Node, undo: &Undo, reason: &str, cause: String) {
    match undo.undo_files(node) {
        Ok(done) => {
            r.changes.extend(done);
            r.shim_sha256 = None;
            r.fail(Failure::NothingChanged, reason, cause);
        }
        Err(e) => r.fail(
            Failure::RollbackFailed,
            reason,
            format!("{cause}; ROLLBACK FAILED: {e}"),
        ),
    }
}

/// Runs the wasm check (unless `--skip-wasm-check`) with the handler as CRI reported it in
/// `cri`, recording the outcome.
fn wasm_check(
    o: &Options,
    node: &Node,
    cri: &CriState,
    r: &mut Report,
) -> Result<(), wasm_check::CheckError> {
    if o.skip_wasm_check {
        r.wasm_check = Some("not run (--skip-wasm-check)".to_string());
        return Ok(());
    }
    let t = Instant::now();
    let outcome = wasm_check::run(&node.socket, cri, &o.wasm_check());
    r.time("wasmCheck", t);
    r.wasm_check = Some(match &outcome {
        Ok(passed) => passed.describe(),
        Err(e) => format!("failed: {e}"),
    });
    outcome.map(|_| ())
}
