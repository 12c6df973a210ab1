//! Host handles opened by the shim process before runwasi forks its zygote.
//!
//! runwasi builds every container in a zygote process forked at shim start-up, and the guest
//! runs in a clone of that zygote *after* `pivot_root` into the container's rootfs. libcontainer
//! marks inherited descriptors close-on-exec rather than closing them, and a wasm guest never
//! execs, so a directory descriptor opened here stays usable inside the container, while native
//! containers (pause, ELF entrypoints) lose it at `execve`. Only the shim's own code uses it:
//! guests cannot name host descriptors.
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;

use rustix::fs::{Mode, OFlags};

/// Environment variable (in containerd's environment, which shims inherit) naming the
/// compiled-module cache directory. Empty or `off` disables the cache.
pub const CACHE_DIR_ENV: &str = "WASMKUBE_CACHE_DIR";
/// Default cache directory on a node.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/wasmkube/cache";

/// The host's cgroup filesystem root.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

static CACHE_DIR: OnceLock<Option<OwnedFd>> = OnceLock::new();
static CGROUP_DIR: OnceLock<Option<OwnedFd>> = OnceLock::new();

fn open_dir(path: &std::path::Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The cache directory path configured for this shim process, if caching is enabled.
pub fn cache_dir_path() -> Option<PathBuf> {
    match std::env::var(CACHE_DIR_ENV) {
        Ok(v) if v.is_empty() || v == "off" => None,
        Ok(v) => Some(PathBuf::from(v)),
        Err(_) => Some(PathBuf::from(DEFAULT_CACHE_DIR)),
    }
}

/// Opens (creating if needed) the cache directory, and the host cgroupfs (a container on a
/// cgroup v1 host often has an empty `/sys/fs/cgroup`, so its memory limit is only readable
/// from here). Failures only disable caching or limit detection.
pub fn open_host_handles() {
    CGROUP_DIR.get_or_init(|| open_dir(std::path::Path::new(CGROUP_ROOT)).ok());
    CACHE_DIR.get_or_init(|| {
        let path = cache_dir_path()?;
        if let Err(err) = std::fs::create_dir_all(&path) {
            tracing::warn!(
                "compiled-module cache disabled: cannot create {}: {err}",
                path.display()
            );
            return None;
        }
        match open_dir(&path) {
            Ok(fd) => Some(fd),
            Err(err) => {
                tracing::warn!(
                    "compiled-module cache disabled: cannot open {}: {err}",
                    path.display()
                );
                None
            }
        }
    });
}

/// The cache directory descriptor, valid in the shim, the zygote and wasm container processes.
pub fn cache_dir() -> Option<BorrowedFd<'static>> {
    CACHE_DIR
        .get()
        .and_then(|fd| fd.as_ref())
        .map(|fd| fd.as_fd())
}

/// The host cgroupfs root descriptor, if it could be opened.
pub fn cgroup_dir() -> Option<BorrowedFd<'static>> {
    CGROUP_DIR
        .get()
        .and_then(|fd| fd.as_ref())
        .map(|fd| fd.as_fd())
}
