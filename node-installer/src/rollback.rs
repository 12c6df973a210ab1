//! The one rollback of `install` and `uninstall`: put back exactly what this run changed — the
//! config (unless someone else edited it since this run wrote it), the previous shim, a PATH
//! link this run made, a backup this run took — restart containerd when the config went back,
//! and say in the report what was done.
use std::path::{Path, PathBuf};

use crate::atomic_write::{self, write_atomic};
use crate::node::{read_optional, Node};
use crate::report::{Failure, Report};
use crate::restart::RestartPlan;
use crate::shim_install::{drop_previous, remove_shim, restore_previous, unlink_shim};
use crate::verify;

/// The managed file before and after this run wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigUndo {
    /// Its text before this run (`None`: there was no file).
    pub previous: Option<String>,
    /// What this run left there (`None`: this run removed it).
    pub written: Option<String>,
}

/// What this run did to the shim binary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ShimUndo {
    /// Left as it was.
    #[default]
    Untouched,
    /// Installed where there was none: remove it.
    RemoveNew,
    /// Replaced another one, kept at this path: put it back.
    RestorePrevious(PathBuf),
}

/// Everything this run changed, recorded as it goes.
#[derive(Clone, Debug, Default)]
pub struct Undo {
    pub config: Option<ConfigUndo>,
    pub shim: ShimUndo,
    /// The PATH link this run created (one that existed before is never in here).
    pub link_created: Option<PathBuf>,
    /// Whether this run took the first backup of the config.
    pub backup_taken: bool,
    /// Directories this run created (for the shim, the link, the config), outermost first.
    pub dirs_created: Vec<PathBuf>,
}

/// The ancestors of `dir` (itself included) that do not exist yet, outermost first: what a
/// `create_dir_all(dir)` would create.
pub fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && std::fs::symlink_metadata(d).is_err())
        .map(Path::to_path_buf)
        .collect();
    missing.reverse();
    missing
}

impl Undo {
    /// The run succeeded: forget what a rollback would have needed (the kept previous shim).
    pub fn commit(self) {
        if let ShimUndo::RestorePrevious(prev) = &self.shim {
            let _ = drop_previous(prev);
        }
    }

    /// Puts back what this run changed on disk without restarting anything (a failure before
    /// containerd was restarted). Returns what it did.
    pub fn undo_files(&self, node: &Node) -> Result<Vec<&'static str>, String> {
        let mut done = Vec::new();
        match &self.shim {
            ShimUndo::Untouched => {}
            ShimUndo::RemoveNew => {
                remove_shim(&node.shim_dest).map_err(|e| e.to_string())?;
                done.push("shim-removed");
            }
            ShimUndo::RestorePrevious(prev) => {
                restore_previous(prev, &node.shim_dest).map_err(|e| e.to_string())?;
                done.push("shim-restored");
            }
        }
        if let Some(link) = &self.link_created {
            if unlink_shim(link, &node.runtime_path).map_err(|e| e.to_string())? {
                done.push("link-removed");
            }
        }
        if self.backup_taken {
            atomic_write::drop_backup(&node.config_file).map_err(|e| e.to_string())?;
            done.push("backup-dropped");
        }
        // Innermost first; a directory someone else put something in stays (remove_dir
        // refuses a non-empty one).
        for dir in self.dirs_created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(done)
    }
}

/// Human words for the report's `changes`.
pub fn describe(changes: &[&str]) -> String {
    let words: Vec<&str> = changes
        .iter()
        .map(|c| match *c {
            "config-restored" => "restored the config as it was before",
            "config-removed" => "removed the config file that install had created",
            "runtime-removed" => "removed our runtime table from the config",
            "config-written" => "wrote the config",
            "containerd-restarted" => "restarted containerd",
            "shim-removed" => "removed the shim",
            "shim-restored" => "put the previous shim back",
            "shim-installed" => "installed the shim",
            "link-created" => "linked the shim on containerd's PATH",
            "link-removed" => "removed the shim's PATH link",
            "backup-dropped" => "dropped the config backup",
            "cache-removed" => "removed the shim's compiled-module cache",
            "check-leftovers-removed" => "removed what an earlier wasm check left",
            other => other,
        })
        .collect();
    words.join(", ")
}

/// Rolls back `undo` after `cause` (reason `reason`), and records the outcome in `r`: what it
/// put back is appended to `r.changes` and named in the message.
pub fn rollback(
    r: &mut Report,
    node: &Node,
    plan: &RestartPlan,
    undo: &Undo,
    reason: &str,
    cause: String,
) {
    let mut done: Vec<&'static str> = Vec::new();
    if let Some(config) = &undo.config {
        // Never overwrite an edit made by someone else since this run wrote the file.
        let now = match read_optional(&node.config_file) {
            Ok(t) => t,
            Err(e) => {
                return r.fail(
                    Failure::RollbackFailed,
                    reason,
                    format!("{cause}; ROLLBACK FAILED: {e}"),
                )
            }
        };
        if now != config.written {
            return r.fail(
                Failure::RollbackConflict,
                reason,
                format!(
                    "{cause}; NOT rolled back: {} was changed by someone else after this run \
                     wrote it, and that edit is kept; the shim stays in place; the config from \
                     before our first install is at {}",
                    node.layout.config.display(),
                    atomic_write::backup_path(&node.config_file).display()
                ),
            );
        }
        let restored = match &config.previous {
            Some(text) => write_atomic(&node.config_file, text.as_bytes(), 0o644, |_| Ok(()))
                .map_err(|e| e.to_string()),
            None => atomic_write::remove(&node.config_file)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
        .and_then(|()| {
            done.push("config-restored");
            let restarted = plan.run().map_err(|e| e.to_string())?;
            if restarted {
                done.push("containerd-restarted");
            }
            if restarted && !node.skip_verify {
                verify::wait_for(
                    &node.socket,
                    node.timeout,
                    "containerd after rollback",
                    |_| true,
                )
                .map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        if let Err(e) = restored {
            r.changes.extend(done);
            return r.fail(
                Failure::RollbackFailed,
                reason,
                format!(
                    "{cause}; ROLLBACK FAILED: {e}; the original config is kept at {}",
                    atomic_write::backup_path(&node.config_file).display()
                ),
            );
        }
    }
    match undo.undo_files(node) {
        Ok(more) => {
            done.extend(more);
            r.shim_sha256 = None;
            let what = if done.is_empty() {
                "nothing to put back".to_string()
            } else {
                describe(&done)
            };
            r.changes.extend(done);
            r.fail(
                Failure::RolledBack,
                reason,
                format!("{cause}; rolled back: {what}"),
            );
        }
        Err(e) => {
            r.changes.extend(done);
            r.fail(
                Failure::RollbackFailed,
                reason,
                format!("{cause}; ROLLBACK FAILED: {e}"),
            );
        }
    }
}
