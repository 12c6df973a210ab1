//! The one transaction of `install` and `uninstall`: **begin** (resolve the node, plan the
//! restart, ask containerd, read the config, sweep what a killed run left) → **plan** (the verb
//! decides the config it wants and the files it puts in place) → **apply** with an undo record →
//! **restart** containerd → **verify** the goal (our handler served and a wasm container run, or
//! the handler gone) → **commit** (the verb's last steps), or **roll back** exactly what was
//! applied ([`crate::rollback`]).
//!
//! ## A run killed at any step
//! Every file goes through the one atomic writer ([`crate::atomic_write`]), so a SIGKILL leaves
//! each file old or new, never half-written; the backup of the original config is written (and
//! fsynced) before the config is first changed and is never overwritten, so it always holds the
//! original bytes. A killed run's only debris are temp files (swept by [`begin`] under the
//! installer lock), a kept previous shim (dropped at the next commit) and a wasm-check container
//! (removed by the next check). The next run of either verb starts from what is on disk, not
//! from a journal: whatever step the last run died at, `install` converges to installed and
//! `uninstall` to the original config. `node-installer/tests/crash_points.rs` kills the binary at
//! each [`crate::crash_point`] against a live containerd and proves it.
use std::path::PathBuf;
use std::time::Instant;

use crate::atomic_write::{self, backup_once, write_atomic};
use crate::cli::Options;
use crate::crash_point::crash_point;
use crate::node::Node;
use crate::report::{Failure, Report};
use crate::restart::{self, RestartPlan};
use crate::rollback::{missing_dirs, rollback, ConfigUndo, ShimUndo, Undo};
use crate::shim_install::{install_shim, link_shim, previous_path};
use crate::verify::{self, CriState};
use crate::wasm_check;
use wasmkube_contract::installer::reasons;

/// What [`begin`] found.
pub struct Begun {
    pub node: Node,
    pub restart: RestartPlan,
    /// What CRI said before anything changed (`None`: not asked, or it did not answer).
    pub before: Option<CriState>,
    /// The managed config's text (`None`: no file).
    pub current: Option<String>,
}

/// The preamble both verbs share. `None` when the run cannot start (the failure is in `r`).
pub fn begin(o: &Options, r: &mut Report) -> Option<Begun> {
    let node = Node::for_report(o, r)?;
    r.config_path = Some(node.layout.config.display().to_string());
    // A dry run restarts nothing, so it does not need a way to restart.
    let restart = match restart::plan(
        o.restart,
        o.restart_cmd.as_deref(),
        &node.layout,
        &node.host_root,
    ) {
        Ok(p) => p,
        Err(_) if o.dry_run => RestartPlan::None,
        Err(e) => {
            r.fail(
                Failure::NothingChanged,
                reasons::RESTART_PLAN,
                e.to_string(),
            );
            return None;
        }
    };
    if !o.dry_run {
        if let Err(e) = sweep(&node) {
            r.fail(Failure::NothingChanged, reasons::LEFTOVERS, e.to_string());
            return None;
        }
    }
    let before = if o.skip_verify {
        None
    } else {
        verify::probe(&node.socket).ok()
    };
    r.containerd_version = before.as_ref().map(|s| s.version.clone());
    match node.read_config() {
        Ok(current) => Some(Begun {
            node,
            restart,
            before,
            current,
        }),
        Err(e) => {
            r.fail(Failure::NothingChanged, e.reason(), e.to_string());
            None
        }
    }
}

/// Removes the temp files a killed run left beside every file the installer writes.
fn sweep(node: &Node) -> Result<(), atomic_write::WriteError> {
    let config = &node.config_file;
    let targets = [
        Some(config.clone()),
        Some(atomic_write::backup_path(config)),
        Some(atomic_write::absent_marker(config)),
        Some(node.shim_dest.clone()),
        node.shim_link.clone(),
    ];
    for target in targets.iter().flatten() {
        for p in atomic_write::sweep_leftovers(target)? {
            tracing::warn!(leftover = %p.display(), "removed what a killed installer run left");
        }
    }
    Ok(())
}

/// The state containerd must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// CRI serves our handler, and a wasm container runs through it.
    Serves,
    /// CRI no longer has our handler.
    Gone,
}

/// What a verb wants, decided before anything is touched.
pub struct Plan {
    pub goal: Goal,
    /// The config's wanted text (`None`: no file).
    pub desired: Option<String>,
    /// The report's change name when the config is written (`config-written`, …).
    pub config_change: &'static str,
    /// Take the first backup of the current config before writing it (install).
    pub backup: bool,
    /// Install the shim from here (install).
    pub shim_src: Option<PathBuf>,
    /// Create the PATH link to the shim (install on containerd 1.6).
    pub link: Option<PathBuf>,
}

/// How far a run that did not fail got.
#[derive(Debug)]
pub enum Outcome {
    /// containerd already met the goal (or could not be asked): nothing restarted.
    NoRestartNeeded,
    /// A restart was needed but `--restart none` was given.
    NotRestarted,
    /// containerd was restarted; `Some` with what CRI reported once the goal was met, `None`
    /// with `--skip-verify`.
    Restarted(Option<CriState>),
}

/// A run that applied its plan and met its goal (or was told not to check it).
pub struct Applied {
    /// What a rollback would need: the verb commits it.
    pub undo: Undo,
    pub config_changed: bool,
    pub outcome: Outcome,
}

/// apply → restart → verify. `None` when a step failed: then everything applied was rolled back
/// (or the report says why not) and `r` holds the failure.
pub fn run(o: &Options, r: &mut Report, b: &Begun, plan: Plan) -> Option<Applied> {
    let node = &b.node;
    let config_changed = b.current != plan.desired;
    let mut undo = Undo::default();
    if let Err((reason, cause)) = apply_files(r, node, &b.current, &plan, config_changed, &mut undo)
    {
        abandon(r, node, &undo, reason, cause);
        return None;
    }

    let goal_met_before = match plan.goal {
        Goal::Serves => b.before.as_ref().is_some_and(|s| node.serves_handler(s)),
        Goal::Gone => b.before.as_ref().is_some_and(|s| s.handler.is_none()),
    };
    let need_restart = config_changed
        || match plan.goal {
            Goal::Serves => !o.skip_verify && !goal_met_before,
            // containerd that did not answer is not restarted to take something out.
            Goal::Gone => b.before.as_ref().is_some_and(|s| s.handler.is_some()),
        };
    let done = |undo, outcome| {
        crash_point("before-commit");
        Some(Applied {
            undo,
            config_changed,
            outcome,
        })
    };
    if !need_restart {
        r.verified = goal_met_before;
        if plan.goal == Goal::Serves {
            if let Some(cri) = b.before.as_ref().filter(|_| goal_met_before) {
                if let Err(e) = run_wasm_check(o, node, cri, r) {
                    // Only files changed: put them back, no restart needed.
                    rollback(
                        r,
                        node,
                        &RestartPlan::None,
                        &undo,
                        e.reason(),
                        e.to_string(),
                    );
                    return None;
                }
            }
        }
        return done(undo, Outcome::NoRestartNeeded);
    }
    if b.restart == RestartPlan::None {
        return done(undo, Outcome::NotRestarted);
    }

    let t = Instant::now();
    let restarted = b.restart.run();
    r.time("restart", t);
    if let Err(e) = restarted {
        rollback(
            r,
            node,
            &b.restart,
            &undo,
            reasons::RESTART_FAILED,
            e.to_string(),
        );
        return None;
    }
    r.restarted = true;
    r.changes.push("containerd-restarted");
    if o.skip_verify {
        return done(undo, Outcome::Restarted(None));
    }
    let t = Instant::now();
    let verified = match plan.goal {
        Goal::Serves => verify::wait_for(&node.socket, node.timeout, "the wasmkube handler", |s| {
            node.serves_handler(s)
        }),
        Goal::Gone => verify::wait_for(
            &node.socket,
            node.timeout,
            "removal of the wasmkube handler",
            |s| s.handler.is_none(),
        ),
    };
    r.time("verify", t);
    let verified = verified
        .map_err(|e| (e.reason(), e.to_string()))
        .and_then(|s| match plan.goal {
            Goal::Serves => run_wasm_check(o, node, &s, r)
                .map(|()| s)
                .map_err(|e| (e.reason(), e.to_string())),
            Goal::Gone => Ok(s),
        });
    match verified {
        Ok(s) => {
            r.containerd_version = Some(s.version.clone());
            r.verified = true;
            done(undo, Outcome::Restarted(Some(s)))
        }
        Err((reason, message)) => {
            rollback(r, node, &b.restart, &undo, reason, message);
            None
        }
    }
}

/// Puts the plan's files in place, recording each change in `undo` as it is made:
/// directories, shim, PATH link, backup, config, in that order.
fn apply_files(
    r: &mut Report,
    node: &Node,
    current: &Option<String>,
    plan: &Plan,
    config_changed: bool,
    undo: &mut Undo,
) -> Result<(), (&'static str, String)> {
    let shim_dest = plan.shim_src.as_ref().map(|_| &node.shim_dest);
    let config = config_changed.then_some(&node.config_file);
    for file in [shim_dest, plan.link.as_ref(), config]
        .into_iter()
        .flatten()
    {
        for dir in file.parent().map(missing_dirs).unwrap_or_default() {
            if !undo.dirs_created.contains(&dir) {
                undo.dirs_created.push(dir);
            }
        }
    }
    let t = Instant::now();
    if let Some(src) = &plan.shim_src {
        let shim =
            install_shim(src, &node.shim_dest).map_err(|e| (reasons::SHIM_COPY, e.to_string()))?;
        if shim.changed {
            r.changes.push("shim-installed");
            undo.shim = match &shim.previous {
                Some(prev) => ShimUndo::RestorePrevious(prev.clone()),
                None => ShimUndo::RemoveNew,
            };
        }
        r.shim_sha256 = Some(shim.sha256);
    }
    if let Some(link) = &plan.link {
        if link_shim(link, &node.runtime_path).map_err(|e| (reasons::SHIM_LINK, e.to_string()))? {
            r.changes.push("link-created");
            undo.link_created = Some(link.clone());
        }
    }
    if plan.shim_src.is_some() || plan.link.is_some() {
        r.time("copy", t);
    }
    let t = Instant::now();
    if !config_changed {
        r.time("patch", t);
        return Ok(());
    }
    if plan.backup {
        undo.backup_taken = backup_once(&node.config_file, current.as_deref().map(str::as_bytes))
            .map_err(|e| (reasons::BACKUP, e.to_string()))?;
        crash_point("after-backup");
    }
    match &plan.desired {
        Some(text) => write_atomic(
            &node.config_file,
            text.as_bytes(),
            0o644,
            node.validator(plan.goal == Goal::Serves),
        ),
        None => atomic_write::remove(&node.config_file).map(|_| ()),
    }
    .map_err(|e| (reasons::WRITE_CONFIG, e.to_string()))?;
    r.changes.push(plan.config_change);
    undo.config = Some(ConfigUndo {
        previous: current.clone(),
        written: plan.desired.clone(),
    });
    r.time("patch", t);
    crash_point("after-config-write");
    Ok(())
}

/// Commits a run: forgets what a rollback would have needed, and any shim a killed run kept.
pub fn commit(node: &Node, undo: Undo) {
    undo.commit();
    let _ = crate::shim_install::drop_previous(&previous_path(&node.shim_dest));
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
fn run_wasm_check(
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
