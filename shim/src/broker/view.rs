//! The broker's private mount namespace, with the compiled-module cache mounted read-only onto
//! its `view` subdirectory: workers open the entries they hand to containers through it, so a
//! container's descriptor of its artefact can never be used to write the file (see
//! [`crate::cache`], *Mapped entries*).
//!
//! The namespace is a slave of the host's: mounts and unmounts on the host still reach the
//! broker (it pins no pod's volume), and the read-only view never appears on the host, where
//! `view` stays an empty directory.
use std::os::fd::AsRawFd;

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, MountPropagationFlags};

use crate::cache::{ArtifactCache, CacheConfig, VIEW_DIR};

/// Why there is no read-only view (entries then travel as bytes, one private copy per
/// container).
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        source: rustix::io::Errno,
    },
}

fn step(step: &'static str) -> impl Fn(rustix::io::Errno) -> ViewError {
    move |source| ViewError::Step { step, source }
}

/// In the broker, before it starts any worker and while it has one thread: a private mount
/// namespace in which `<cache>/view` is the cache directory, read-only. `Ok(false)` when the
/// cache is off.
#[allow(unsafe_code)]
pub fn make_read_only_view() -> Result<bool, ViewError> {
    let Some(config) = CacheConfig::from_env()? else {
        return Ok(false);
    };
    // Creates the directory and its key if needed, and refuses an untrusted one.
    let cache = ArtifactCache::open(&config)?;
    if cache.has_view() {
        return Ok(true);
    }
    // SAFETY: `unshare` is unsafe in rustix because some flags (CLONE_FILES, CLONE_FS) change
    // what other code may assume about shared descriptor tables and working directories; a new
    // mount namespace changes neither for this single-threaded process.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(step("cannot make a private mount namespace"))?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
    )
    .map_err(step(
        "cannot make the mount namespace a slave of the host's",
    ))?;
    let dir = rustix::fs::open(
        cache.path(),
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(step("cannot open the cache directory"))?;
    match rustix::fs::mkdirat(&dir, VIEW_DIR, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(step("cannot create the view directory")(e)),
    }
    let view = rustix::fs::openat(
        &dir,
        VIEW_DIR,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(step("cannot open the view directory"))?;
    // Through the descriptors: the mount is of exactly the directories checked above.
    let source = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let target = format!("/proc/self/fd/{}", view.as_raw_fd());
    rustix::mount::mount_bind(source.as_str(), target.as_str())
        .map_err(step("cannot bind-mount the cache directory"))?;
    let target = cache.path().join(VIEW_DIR);
    rustix::mount::mount_remount(
        &target,
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .map_err(step("cannot make the view read-only"))?;
    if ArtifactCache::open(&config)?.has_view() {
        Ok(true)
    } else {
        Err(step(
            "the view is not the cache directory on a read-only mount",
        )(rustix::io::Errno::INVAL))
    }
}
