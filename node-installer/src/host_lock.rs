//! One installer at a time on a node: an exclusive `flock` on
//! `<host-root>/run/wasmkube/installer.lock`, held for the whole run.
//!
//! A DaemonSet pod that is replaced while its predecessor still runs, or a person running the
//! installer by hand, must not interleave with another run: both would read the same config,
//! and one's rollback would overwrite the other's write. The lock lives on the host (not in the
//! pod), so it serialises every pod and every process that sees that host root. The holder writes
//! who it is into the file, so a waiter that gives up can name it.
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::host_path;

/// The lock file, as a host path.
pub const LOCK_HOST_PATH: &str = "/run/wasmkube/installer.lock";

/// How often a waiter retries.
const POLL: Duration = Duration::from_millis(50);

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another installer run holds {} ({holder}); gave up after {waited:?}",
        path.display()
    )]
    Busy {
        path: PathBuf,
        holder: String,
        waited: Duration,
    },
    #[error("the installer lock: {0}")]
    Resolve(#[source] host_path::ResolveError),
    #[error("cannot {op} the installer lock {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl LockError {
    pub fn reason(&self) -> &'static str {
        match self {
            LockError::Busy { .. } => wasmkube_contract::installer::reasons::LOCKED,
            LockError::Resolve(e) => e.reason(),
            LockError::Io { .. } => wasmkube_contract::installer::reasons::LOCK_ERROR,
        }
    }
}

/// The held lock; released when dropped (or when the process dies: `flock` goes with the file).
#[derive(Debug)]
pub struct HostLock {
    path: PathBuf,
    file: File,
}

impl HostLock {
    /// The lock file under `host_root` (resolved as the host sees it: `/run` may be a link).
    pub fn path(host_root: &Path) -> Result<PathBuf, LockError> {
        host_path::follow(host_root, Path::new(LOCK_HOST_PATH)).map_err(LockError::Resolve)
    }

    /// Takes the lock, waiting up to `wait` for another run to finish. `what` (e.g. `install`)
    /// is recorded for the next waiter to read.
    pub fn acquire(host_root: &Path, what: &str, wait: Duration) -> Result<HostLock, LockError> {
        let path = Self::path(host_root)?;
        let io_err = |op: &'static str| {
            let path = path.clone();
            move |source| LockError::Io { op, path, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create the directory of"))?;
        }
        // Never truncate before holding the lock: the holder's note is what a waiter reports.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open"))?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if start.elapsed() < wait => {
                    std::thread::sleep(POLL.min(wait.saturating_sub(start.elapsed())));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Busy {
                        holder: holder_note(&mut file),
                        path,
                        waited: start.elapsed(),
                    })
                }
                Err(TryLockError::Error(e)) => return Err(io_err("lock")(e)),
            }
        }
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let note = format!(
            "pid {} ({what}) since unix time {since}\n",
            std::process::id()
        );
        // The note is informative only; a failure to write it does not stop the run.
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(note.as_bytes()));
        Ok(HostLock { path, file })
    }

    /// Where the lock is.
    pub fn lock_path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        // Leave the file (removing it would race with a waiter that opened it); clear the note.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn holder_note(file: &mut File) -> String {
    let mut s = String::new();
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| file.take(512).read_to_string(&mut s));
    match read.map(|_| s.trim().to_string()) {
        Ok(note) if !note.is_empty() => format!("held by {note}"),
        _ => "holder unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_waits_then_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = HostLock::acquire(dir.path(), "install", Duration::ZERO).expect("lock");
        assert!(held.lock_path().ends_with("run/wasmkube/installer.lock"));
        let t = Instant::now();
        let err = HostLock::acquire(dir.path(), "uninstall", Duration::from_millis(300))
            .expect_err("busy");
        assert!(t.elapsed() >= Duration::from_millis(300));
        let msg = err.to_string();
        assert_eq!(err.reason(), "Locked");
        assert!(
            msg.contains(&format!("pid {} (install)", std::process::id())),
            "{msg}"
        );
        drop(held);
        HostLock::acquire(dir.path(), "status", Duration::ZERO).expect("free again");
    }
}
