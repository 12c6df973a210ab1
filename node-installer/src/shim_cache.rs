//! The shim's compiled-module cache on the host (`/var/lib/wasmkube/cache`, see
//! [`crate::node::SHIM_CACHE_HOST_DIR`]): `uninstall` removes it with the shim.
//!
//! Only a real directory owned by the shim's user (root) is removed. A symlink there, a file, or
//! a directory someone else owns is not something the shim made: it is left alone and reported.
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The user the shim runs as on a node, and so the owner of the cache it creates.
pub const SHIM_OWNER_UID: u32 = 0;

/// What [`remove`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The directory and everything in it are gone.
    Removed,
    /// There was nothing there.
    Absent,
    /// Something is there that the shim did not make; kept, for this reason.
    Kept(String),
}

/// Why the cache could not be removed.
#[derive(Debug, thiserror::Error)]
#[error("cannot remove the shim's module cache {}: {source}", path.display())]
pub struct CacheError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Removes the cache directory `dir` (a path whose last component is not followed) when it is a
/// real directory owned by `owner`, then its parent (`/var/lib/wasmkube`) when that is left
/// empty. Idempotent: a second call finds nothing and returns [`Removal::Absent`].
pub fn remove(dir: &Path, owner: u32) -> Result<Removal, CacheError> {
    let err = |source| CacheError {
        path: dir.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Absent),
        Err(e) => return Err(err(e)),
    };
    if meta.file_type().is_symlink() {
        return Ok(Removal::Kept(
            "it is a symlink, not the shim's directory".into(),
        ));
    }
    if !meta.is_dir() {
        return Ok(Removal::Kept("it is not a directory".into()));
    }
    if meta.uid() != owner {
        return Ok(Removal::Kept(format!(
            "it belongs to uid {}, not to the shim's uid {owner}",
            meta.uid()
        )));
    }
    // std's remove_dir_all never follows a symlink inside the tree.
    std::fs::remove_dir_all(dir).map_err(err)?;
    if let Some(parent) = dir.parent() {
        // Only when empty: remove_dir refuses a directory that holds anything else.
        let _ = std::fs::remove_dir(parent);
    }
    tracing::info!(cache = %dir.display(), "removed the shim's compiled-module cache");
    Ok(Removal::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> u32 {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .expect("stat /proc/self")
    }

    #[test]
    fn removes_a_real_directory_of_the_owner_once() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = root.path().join("var/lib/wasmkube/cache");
        std::fs::create_dir_all(cache.join("modules")).expect("mkdir");
        std::fs::write(cache.join("modules/abc.cwasm"), b"artefact").expect("write");
        assert_eq!(remove(&cache, me()).expect("remove"), Removal::Removed);
        assert!(!cache.exists());
        assert!(
            !root.path().join("var/lib/wasmkube").exists(),
            "the empty parent goes too"
        );
        assert!(root.path().join("var/lib").exists(), "but nothing above it");
        assert_eq!(remove(&cache, me()).expect("again"), Removal::Absent);
    }

    #[test]
    fn keeps_a_symlink_a_file_and_a_directory_of_another_user() {
        let root = tempfile::tempdir().expect("tempdir");
        let elsewhere = root.path().join("precious");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        std::fs::write(elsewhere.join("data"), b"keep").expect("write");
        let cache = root.path().join("var/lib/wasmkube/cache");
        std::fs::create_dir_all(cache.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, &cache).expect("symlink");
        assert!(matches!(remove(&cache, me()), Ok(Removal::Kept(_))));
        assert!(std::fs::symlink_metadata(&cache).is_ok(), "link kept");
        assert_eq!(
            std::fs::read(elsewhere.join("data")).expect("read"),
            b"keep"
        );

        std::fs::remove_file(&cache).expect("rm link");
        std::fs::write(&cache, b"a file").expect("write");
        assert!(matches!(remove(&cache, me()), Ok(Removal::Kept(_))));
        assert!(cache.is_file());

        std::fs::remove_file(&cache).expect("rm file");
        std::fs::create_dir(&cache).expect("mkdir");
        let other = me().wrapping_add(1);
        match remove(&cache, other).expect("remove") {
            Removal::Kept(why) => assert!(why.contains(&format!("uid {}", me())), "{why}"),
            r => panic!("removed a directory of another user: {r:?}"),
        }
        assert!(cache.is_dir());
    }
}
