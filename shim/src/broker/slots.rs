//! Node-wide compile slots: at most [`node_limit`] compiles run at once on a node, whatever the
//! number of pods. A slot is an exclusive `flock` on one of `node_limit` files in a root-only
//! directory; the kernel releases it when the worker holding it exits, however it exits.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, Mode, OFlags};

/// Environment variable (containerd's, inherited by the shim) with the node's compile limit.
pub const NODE_COMPILES_ENV: &str = "WASMKUBE_NODE_COMPILES";
/// How often a waiting worker looks for a free slot.
const RETRY: Duration = Duration::from_millis(25);

/// Why no slot could be had.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("compile slots {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("compile slots {path} refused: {detail}")]
    Refused { path: PathBuf, detail: String },
    #[error("no compile slot became free within {0:?}")]
    TimedOut(Duration),
}

/// A held slot; dropping it (or exiting) frees it.
#[derive(Debug)]
pub struct Slot {
    _lock: File,
    pub index: usize,
}

/// Compiles a node runs at once: [`NODE_COMPILES_ENV`], else the number of CPUs.
pub fn node_limit(env: impl Fn(&str) -> Option<String>) -> usize {
    env(NODE_COMPILES_ENV)
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

/// Takes a free slot of `limit` under `dir`, waiting up to `patience`.
pub fn acquire(dir: &Path, limit: usize, patience: Duration) -> Result<Slot, SlotError> {
    let io = |source: std::io::Error| SlotError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir.parent().unwrap_or(Path::new("/"))).map_err(io)?;
    match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(io(e.into())),
    }
    let dirfd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    let st = rustix::fs::fstat(&dirfd).map_err(|e| io(e.into()))?;
    if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
        return Err(SlotError::Refused {
            path: dir.to_path_buf(),
            detail: format!(
                "owned by uid {} with mode {:o}; it must be this user's, mode 0700",
                st.st_uid,
                st.st_mode & 0o7777
            ),
        });
    }
    let files = (0..limit.max(1))
        .map(|i| {
            rustix::fs::openat(
                &dirfd,
                format!("slot-{i}"),
                OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::from_raw_mode(0o600),
            )
            .map(File::from)
            .map_err(|e| io(e.into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + patience;
    // Start at a different slot in each worker, so waiting workers do not all race for slot 0.
    let start = std::process::id() as usize % files.len();
    let mut files: Vec<Option<File>> = files.into_iter().map(Some).collect();
    loop {
        for k in 0..files.len() {
            let index = (start + k) % files.len();
            let Some(file) = files[index].as_ref() else {
                continue;
            };
            match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    if let Some(lock) = files[index].take() {
                        return Ok(Slot { _lock: lock, index });
                    }
                }
                Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io(e.into())),
            }
        }
        if Instant::now() >= deadline {
            return Err(SlotError::TimedOut(patience));
        }
        std::thread::sleep(RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_comes_from_the_environment_or_the_cpus() {
        assert_eq!(node_limit(|_| Some("3".into())), 3);
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        for unset in [None, Some("0".to_string()), Some("many".to_string())] {
            assert_eq!(node_limit(|_| unset.clone()), cpus);
        }
    }

    #[test]
    fn no_more_slots_than_the_limit_and_a_freed_one_is_taken_again() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("slots");
        let a = acquire(&dir, 2, Duration::ZERO).expect("first");
        let b = acquire(&dir, 2, Duration::ZERO).expect("second");
        assert_ne!(a.index, b.index);
        let third = acquire(&dir, 2, Duration::from_millis(100));
        assert!(matches!(third, Err(SlotError::TimedOut(_))), "{third:?}");
        let freed = a.index;
        drop(a);
        let c = acquire(&dir, 2, Duration::from_millis(100)).expect("freed slot");
        assert_eq!(c.index, freed);
    }

    #[test]
    fn a_directory_others_can_enter_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("slots");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let e = acquire(&dir, 1, Duration::ZERO).expect_err("refused");
        assert!(e.to_string().contains("mode 755"), "{e}");
    }
}
