//! Crash-safe file replacement and the one-time backup of the original config: the installer's
//! one atomic writer (config, backup, shim binary, PATH link all go through here).
//!
//! A write goes to a temp file in the same directory (`tempfile`'s `NamedTempFile`, named
//! `.<name>.wasmkube-tmp-<random>`), is fsynced, checked on what is on disk, then renamed over the
//! target, and the directory is fsynced: a reader sees the old file or the new one, never a
//! half-written one. A run killed mid-write (SIGKILL runs no destructor) leaves only such a temp
//! file, which [`sweep_leftovers`] removes at the start of the next run (under the node's
//! installer lock, so never a live run's file).
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
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

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The name prefix of every temp file made beside `path`: `.<name>.wasmkube-tmp-`.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    format!(".{name}.wasmkube-tmp-")
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
    let mode = fs::metadata(path).map_or(mode, |m| m.permissions().mode() & 0o7777);
    replace_with(
        path,
        mode,
        |f| f.write_all(bytes),
        |tmp| {
            let back = fs::read(tmp).map_err(io_err("read back", tmp))?;
            if back != bytes {
                return Err(WriteError::Readback {
                    path: path.to_path_buf(),
                });
            }
            validate(&back).map_err(|reason| WriteError::Invalid {
                path: path.to_path_buf(),
                reason,
            })
        },
    )
}

/// Replaces `path` atomically with what `fill` writes, with exactly `mode`. `check` gets the
/// fsynced temp file's path (to check what is on disk, not what was meant); an `Err` from
/// `fill` or `check` leaves `path` untouched and removes the temp file. Parent directories are
/// created.
pub fn replace_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
    check: impl FnOnce(&Path) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(path))
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_err("create a temp file in", dir))?;
    let tmp_path = tmp.path().to_path_buf();
    fill(tmp.as_file_mut()).map_err(io_err("write", &tmp_path))?;
    let f = tmp.as_file();
    // The umask applied at creation: set the mode itself.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", &tmp_path))?;
    f.sync_all().map_err(io_err("fsync", &tmp_path))?;
    check(&tmp_path)?;
    tmp.persist(path)
        .map_err(|e| io_err("rename into place", path)(e.error))?;
    sync_dir(dir)
}

/// Copies `src` to `dest` atomically with `mode`, in chunks; `check` as for [`replace_with`].
/// `after_first_chunk` runs once, mid-copy (the installer's crash point).
pub fn copy_atomic(
    src: &Path,
    dest: &Path,
    mode: u32,
    after_first_chunk: impl FnOnce(),
    check: impl FnOnce(&Path) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    let mut from = File::open(src).map_err(io_err("open", src))?;
    let mut after = Some(after_first_chunk);
    replace_with(
        dest,
        mode,
        |to| {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = from.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                to.write_all(&buf[..n])?;
                if let Some(f) = after.take() {
                    to.sync_data()?;
                    f();
                }
            }
        },
        check,
    )
}

/// Points the symlink `link` at `target` atomically (a temp link renamed over it).
pub fn symlink_atomic(link: &Path, target: &Path) -> Result<(), WriteError> {
    let dir = link.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    let tmp = dir.join(format!("{}{}", temp_prefix(link), std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_err("symlink", &tmp))?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("rename into place", link)(e));
    }
    sync_dir(dir)
}

/// Removes the temp files a killed run left beside `path` (see the module docs). Only call it
/// holding the installer lock. Returns what was removed.
pub fn sweep_leftovers(path: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let Some(dir) = path.parent() else {
        return Ok(Vec::new());
    };
    let prefix = temp_prefix(path);
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let p = entry.path();
            fs::remove_file(&p).map_err(io_err("remove the leftover", &p))?;
            removed.push(p);
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
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
    fn copies_and_sweeps_what_a_killed_run_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        fs::write(&src, vec![7u8; 3 << 20]).expect("write");
        let dest = dir.path().join("bin/shim");
        let mut reached = false;
        copy_atomic(&src, &dest, 0o755, || reached = true, |_| Ok(())).expect("copy");
        assert!(reached);
        assert_eq!(fs::read(&dest).expect("read"), fs::read(&src).expect("src"));
        assert_eq!(
            fs::metadata(&dest).expect("stat").permissions().mode() & 0o777,
            0o755
        );
        // A refused check leaves the old file and no temp file.
        let err = copy_atomic(
            &src,
            &dest,
            0o755,
            || {},
            |_| Err(WriteError::Readback { path: dest.clone() }),
        )
        .expect_err("refused");
        assert!(matches!(err, WriteError::Readback { .. }));
        // What a SIGKILLed run leaves: a temp file with our prefix; others' files stay.
        let left = dir.path().join("bin/.shim.wasmkube-tmp-Xy12");
        fs::write(&left, b"half").expect("write");
        fs::write(dir.path().join("bin/.other.wasmkube-tmp-1"), b"x").expect("write");
        assert_eq!(sweep_leftovers(&dest).expect("sweep"), vec![left.clone()]);
        assert!(!left.exists());
        assert!(dir.path().join("bin/.other.wasmkube-tmp-1").exists());
        assert_eq!(
            sweep_leftovers(&dest).expect("again"),
            Vec::<PathBuf>::new()
        );
        let link = dir.path().join("usr/bin/shim");
        symlink_atomic(&link, &dest).expect("link");
        assert_eq!(fs::read_link(&link).expect("readlink"), dest);
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
