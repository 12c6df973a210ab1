//! Crash-safe file replacement and the one-time backup of the original config.
//!
//! A write goes to a temp file in the same directory, is fsynced, read back and checked, then
//! renamed over the target, and the directory is fsynced: a reader sees the old file or the new
//! one, never a half-written one.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} did not read back as written; left untouched", path.display())]
    Readback { path: PathBuf },
    #[error("{} would not be valid: {reason}; left untouched", path.display())]
    Invalid { path: PathBuf, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.wasmkube-tmp-{}", std::process::id()))
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Replaces `path` with `bytes` atomically. `validate` runs on the bytes read back from the temp
/// file before the rename; an `Err` leaves `path` untouched. The new file keeps the old file's
/// permissions (or gets `mode` when there was none). Parent directories are created.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    validate: impl Fn(&[u8]) -> Result<(), String>,
) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let mode = fs::metadata(path).map_or(mode, |m| m.permissions().mode() & 0o7777);
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        let back = fs::read(&tmp).map_err(io_err("read back", &tmp))?;
        if back != bytes {
            return Err(WriteError::Readback {
                path: path.to_path_buf(),
            });
        }
        validate(&back).map_err(|reason| WriteError::Invalid {
            path: path.to_path_buf(),
            reason,
        })?;
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a file (and fsyncs its directory). `Ok(false)` when it was not there.
pub fn remove(path: &Path) -> Result<bool, WriteError> {
    match fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path.parent().unwrap_or(Path::new("/")))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// The original config as it was before our first install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backup {
    /// Its bytes (kept at `<config>.wasmkube.orig`).
    Bytes(Vec<u8>),
    /// There was no file (recorded by an empty `<config>.wasmkube.absent`).
    Absent,
}

/// `<config>.wasmkube.orig`
pub fn backup_path(config: &Path) -> PathBuf {
    with_suffix(config, ".wasmkube.orig")
}

/// `<config>.wasmkube.absent`
pub fn absent_marker(config: &Path) -> PathBuf {
    with_suffix(config, ".wasmkube.absent")
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The recorded backup, if any.
pub fn read_backup(config: &Path) -> Result<Option<Backup>, WriteError> {
    let orig = backup_path(config);
    match fs::read(&orig) {
        Ok(b) => return Ok(Some(Backup::Bytes(b))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", &orig)(e)),
    }
    Ok(absent_marker(config).exists().then_some(Backup::Absent))
}

/// Records `original` as the backup unless one exists already (the first install's original
/// wins: a later install must not overwrite it with an already patched file).
/// Returns whether a backup was written now.
pub fn backup_once(config: &Path, original: Option<&[u8]>) -> Result<bool, WriteError> {
    if read_backup(config)?.is_some() {
        return Ok(false);
    }
    match original {
        Some(bytes) => write_atomic(&backup_path(config), bytes, 0o600, |_| Ok(()))?,
        None => write_atomic(&absent_marker(config), b"", 0o600, |_| Ok(()))?,
    }
    Ok(true)
}

/// Forgets the backup (after a clean uninstall).
pub fn drop_backup(config: &Path) -> Result<(), WriteError> {
    remove(&backup_path(config))?;
    remove(&absent_marker(config))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_keeps_mode_and_refuses_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("etc/containerd/config.toml");
        write_atomic(&p, b"a = 1\n", 0o640, |_| Ok(())).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"a = 1\n");
        assert_eq!(
            fs::metadata(&p).expect("stat").permissions().mode() & 0o777,
            0o640
        );
        let err =
            write_atomic(&p, b"broken", 0o644, |_| Err("nope".into())).expect_err("must fail");
        assert!(matches!(err, WriteError::Invalid { .. }));
        assert_eq!(fs::read(&p).expect("read"), b"a = 1\n", "untouched");
        write_atomic(&p, b"b = 2\n", 0o644, |_| Ok(())).expect("write");
        assert_eq!(
            fs::metadata(&p).expect("stat").permissions().mode() & 0o777,
            0o640
        );
        let leftovers: Vec<_> = fs::read_dir(p.parent().expect("dir"))
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("wasmkube-tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn backup_is_taken_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("config.toml");
        assert!(backup_once(&p, Some(b"original")).expect("backup"));
        assert!(!backup_once(&p, Some(b"patched")).expect("backup"));
        assert_eq!(
            read_backup(&p).expect("read"),
            Some(Backup::Bytes(b"original".to_vec()))
        );
        drop_backup(&p).expect("drop");
        assert_eq!(read_backup(&p).expect("read"), None);
        assert!(backup_once(&p, None).expect("backup"));
        assert_eq!(read_backup(&p).expect("read"), Some(Backup::Absent));
    }
}
