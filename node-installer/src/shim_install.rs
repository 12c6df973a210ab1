//! Installing the shim binary: never a half-written executable at the final path.
//!
//! Copied by the one atomic writer ([`crate::atomic_write::copy_atomic`]): a temp file beside the
//! target, fsynced, its sha256 re-read from disk and compared with the source's, chmod 0755,
//! renamed, the directory fsynced. When the target already has the
//! source's sha256 nothing is written. A shim that is replaced is kept (hard link, else a copy)
//! at [`previous_path`] until the run succeeds, so a rollback puts it back byte for byte.
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::atomic_write::{copy_atomic, symlink_atomic, sync_dir, WriteError};
use crate::crash_point::crash_point;

/// The shim's file name: containerd derives it from runtime_type `io.containerd.wasmkube.v1`.
pub const SHIM_NAME: &str = wasmkube_contract::names::SHIM_BINARY;
/// Where the shim goes on the host.
pub const SHIM_HOST_DIR: &str = "/opt/wasmkube/bin";

/// Why the shim was not installed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the shim was not installed: {0}")]
    Write(#[source] WriteError),
    #[error("the shim to install ({}) is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "{} exists and is not our link to {target}; refusing to replace another \
         containerd-shim-wasmkube-v1 on containerd's PATH", path.display()
    )]
    NameTaken { path: PathBuf, target: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ShimError + 'a {
    move |source| ShimError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The outcome of [`install_shim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    pub path: PathBuf,
    pub sha256: String,
    /// Whether the file was (re)written.
    pub changed: bool,
    /// The shim this run replaced, kept at [`previous_path`] for a rollback.
    pub previous: Option<PathBuf>,
}

/// Where a replaced shim is kept during a run: `.containerd-shim-wasmkube-v1.wasmkube-prev`
/// beside it.
pub fn previous_path(dest: &Path) -> PathBuf {
    dest.with_file_name(format!(".{SHIM_NAME}.wasmkube-prev"))
}

/// Keeps what is at `dest` (file or link) at [`previous_path`]: a hard link to the same inode,
/// which the rename of the new shim leaves untouched; a copy where hard links are refused.
fn keep_previous(dest: &Path) -> Result<Option<PathBuf>, ShimError> {
    if fs::symlink_metadata(dest).is_err() {
        return Ok(None);
    }
    let prev = previous_path(dest);
    match fs::remove_file(&prev) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove stale", &prev)(e)),
    }
    if fs::hard_link(dest, &prev).is_err() {
        fs::copy(dest, &prev).map_err(io_err("keep a copy of the previous shim at", &prev))?;
    }
    Ok(Some(prev))
}

/// Puts the shim kept by [`install_shim`] back at `dest` (rollback).
pub fn restore_previous(prev: &Path, dest: &Path) -> Result<(), ShimError> {
    fs::rename(prev, dest).map_err(io_err("put back the previous shim from", prev))?;
    let dir = dest.parent().unwrap_or(Path::new("/"));
    sync_dir(dir).map_err(ShimError::Write)
}

/// Forgets the shim kept by [`install_shim`] (the run succeeded).
pub fn drop_previous(prev: &Path) -> Result<(), ShimError> {
    match fs::remove_file(prev) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", prev)(e)),
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Installs `src` at `dest` (see the module docs). Idempotent.
pub fn install_shim(src: &Path, dest: &Path) -> Result<Installed, ShimError> {
    let meta = fs::metadata(src).map_err(io_err("stat", src))?;
    if !meta.is_file() {
        return Err(ShimError::NotAFile {
            path: src.to_path_buf(),
        });
    }
    let want = sha256_file(src).map_err(io_err("read", src))?;
    // Not followed: a symlink at our path is replaced by the shim, never compared through.
    if let Ok(m) = fs::symlink_metadata(dest) {
        let executable = m.permissions().mode() & 0o111 == 0o111;
        if m.is_file() && executable && m.len() == meta.len() {
            if let Ok(have) = sha256_file(dest) {
                if have == want {
                    return Ok(Installed {
                        path: dest.to_path_buf(),
                        sha256: want,
                        changed: false,
                        previous: None,
                    });
                }
            }
        }
    }
    // Kept first (a hard link the rename leaves alone): a failed copy drops it again.
    let previous = keep_previous(dest)?;
    let copied = copy_atomic(
        src,
        dest,
        0o755,
        || crash_point("shim-copy"),
        |tmp| {
            // Check what is on disk, not what we meant to write.
            let got = sha256_file(tmp).map_err(|source| WriteError::Io {
                op: "read back",
                path: tmp.to_path_buf(),
                source,
            })?;
            if got == want {
                Ok(())
            } else {
                Err(WriteError::Invalid {
                    path: dest.to_path_buf(),
                    reason: format!("the copy has sha256 {got}, the source {want}"),
                })
            }
        },
    );
    if let Err(e) = copied {
        if let Some(prev) = &previous {
            let _ = drop_previous(prev);
        }
        return Err(ShimError::Write(e));
    }
    Ok(Installed {
        path: dest.to_path_buf(),
        sha256: want,
        changed: true,
        previous,
    })
}

/// Removes the installed shim and the directories we created when they are left empty.
/// `Ok(false)` when it was not there.
pub fn remove_shim(dest: &Path) -> Result<bool, ShimError> {
    let removed = match fs::remove_file(dest) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err("remove", dest)(e)),
    };
    // `/opt/wasmkube/bin`, then `/opt/wasmkube`: only if empty (remove_dir refuses otherwise).
    if let Some(bin) = dest.parent() {
        if fs::remove_dir(bin).is_ok() {
            if let Some(top) = bin.parent() {
                let _ = fs::remove_dir(top);
            }
        }
    }
    Ok(removed)
}

/// Puts a symlink `link` → `target` (the shim as containerd sees it), so containerd finds the shim
/// by name on its `PATH`: containerd 1.6 ignores `runtime_path` when it starts a pod sandbox.
/// Idempotent; refuses to replace anything that is not already our link. Returns whether it
/// was created.
pub fn link_shim(link: &Path, target: &str) -> Result<bool, ShimError> {
    match fs::read_link(link) {
        Ok(t) if t == Path::new(target) => return Ok(false),
        Ok(_) => {
            return Err(ShimError::NameTaken {
                path: link.to_path_buf(),
                target: target.into(),
            })
        }
        Err(_) if fs::symlink_metadata(link).is_ok() => {
            return Err(ShimError::NameTaken {
                path: link.to_path_buf(),
                target: target.into(),
            })
        }
        Err(_) => {}
    }
    symlink_atomic(link, Path::new(target)).map_err(ShimError::Write)?;
    Ok(true)
}

/// Removes `link` when it is our link to `target`. Returns whether it was removed.
pub fn unlink_shim(link: &Path, target: &str) -> Result<bool, ShimError> {
    match fs::read_link(link) {
        Ok(t) if t == Path::new(target) => {
            fs::remove_file(link).map_err(io_err("remove", link))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The shim's version, from `<shim> -v` (`Version: x.y.z`), when it runs here.
pub fn shim_version(path: &Path) -> Option<String> {
    let out = std::process::Command::new(path)
        .arg("-v")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.trim()
            .strip_prefix("Version:")
            .map(|v| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_then_is_unchanged_and_removes_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("shim");
        fs::write(&src, b"#!/bin/sh\necho Version: 9.9.9\n").expect("write");
        let dest = dir.path().join("host/opt/wasmkube/bin").join(SHIM_NAME);
        let a = install_shim(&src, &dest).expect("install");
        assert!(a.changed);
        assert_eq!(a.sha256, sha256_file(&src).expect("hash"));
        assert_eq!(
            fs::metadata(&dest).expect("stat").permissions().mode() & 0o777,
            0o755
        );
        let b = install_shim(&src, &dest).expect("again");
        assert!(!b.changed);
        assert_eq!(b.previous, None);
        let old = fs::read(&dest).expect("read");
        fs::write(&src, b"#!/bin/sh\necho Version: 10.0.0\n").expect("write");
        let up = install_shim(&src, &dest).expect("upgrade");
        assert!(up.changed);
        assert_eq!(shim_version(&dest).as_deref(), Some("10.0.0"));
        // The replaced shim is kept byte for byte, and goes back on rollback.
        let prev = up.previous.expect("previous kept");
        assert_eq!(fs::read(&prev).expect("prev"), old);
        restore_previous(&prev, &dest).expect("restore");
        assert_eq!(fs::read(&dest).expect("read"), old);
        assert!(!prev.exists());
        let up = install_shim(&src, &dest).expect("upgrade again");
        drop_previous(&up.previous.expect("kept")).expect("drop");
        assert!(!previous_path(&dest).exists());
        let link = dir.path().join("host/usr/local/bin").join(SHIM_NAME);
        let target = dest.display().to_string();
        assert!(link_shim(&link, &target).expect("link"));
        assert!(!link_shim(&link, &target).expect("link again"));
        assert!(matches!(
            link_shim(&link, "/elsewhere"),
            Err(ShimError::NameTaken { .. })
        ));
        assert!(!unlink_shim(&link, "/elsewhere").expect("not ours"));
        assert!(unlink_shim(&link, &target).expect("unlink"));
        assert!(!link.exists());
        assert!(remove_shim(&dest).expect("remove"));
        assert!(!dir.path().join("host/opt/wasmkube").exists());
        assert!(!remove_shim(&dest).expect("remove again"));
    }
}
