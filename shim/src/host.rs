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

/// Creates (mode 0700) or opens the cache directory `path`, which must belong to this process's
/// user; a group or world bit on it is removed. Only processes that may write it use it (see
/// [`crate::cache::usable`]), so a non-root container neither reads nor leaves artefacts there.
pub fn prepare_cache_dir(path: &std::path::Path) -> Result<OwnedFd, String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let fd = open_dir(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let stat =
        rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    let me = rustix::process::geteuid();
    if stat.st_uid != me.as_raw() {
        return Err(format!(
            "{} belongs to uid {}, not to the shim's uid {}",
            path.display(),
            stat.st_uid,
            me.as_raw()
        ));
    }
    if stat.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
            .map_err(|e| format!("cannot make {} private: {e}", path.display()))?;
    }
    Ok(fd)
}

/// Opens (creating if needed) the cache directory, and the host cgroupfs (a container on a
/// cgroup v1 host often has an empty `/sys/fs/cgroup`, so its memory limit is only readable
/// from here). Failures only disable caching or limit detection.
pub fn open_host_handles() {
    CGROUP_DIR.get_or_init(|| open_dir(std::path::Path::new(CGROUP_ROOT)).ok());
    CACHE_DIR.get_or_init(|| {
        let path = cache_dir_path()?;
        match prepare_cache_dir(&path) {
            Ok(fd) => Some(fd),
            Err(err) => {
                tracing::warn!("compiled-module cache disabled: {err}");
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn the_cache_dir_is_created_private_and_made_private() {
        let tmp = tempfile::tempdir().expect("tmp");
        let fresh = tmp.path().join("a/cache");
        prepare_cache_dir(&fresh).expect("created");
        assert_eq!(mode(&fresh), 0o700);

        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).expect("mkdir");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        prepare_cache_dir(&loose).expect("tightened");
        assert_eq!(
            mode(&loose),
            0o700,
            "a 0755 cache from an earlier shim is made private"
        );
    }

    #[test]
    fn a_cache_dir_of_another_user_is_refused() {
        wasmkube_test_harness::skip_unless!((!rustix::process::geteuid().is_root())
            .then(|| "root (to chown a directory to another user)".to_string()));
        let tmp = tempfile::tempdir().expect("tmp");
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(65532), Some(65532)).expect("chown");
        let err = prepare_cache_dir(&theirs).expect_err("refused");
        assert!(err.contains("belongs to uid 65532"), "{err}");
        assert_eq!(
            std::fs::metadata(&theirs).expect("stat").uid(),
            65532,
            "left alone"
        );
    }
}
