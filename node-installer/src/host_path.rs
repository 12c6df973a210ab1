//! Host paths resolved as the host sees them: every symlink on the way — absolute ones included
//! — is taken relative to `--host-root`, and `..` never climbs above it.
//!
//! The installer runs in a pod with the host's `/` mounted at `/host`. A host symlink
//! `/etc/containerd/config.toml -> /etc/containerd/real/config.toml` means
//! `/host/etc/containerd/real/config.toml` to us, not the pod's own `/etc/...`; and a link
//! `../../../../etc/passwd` ends at `/host/etc/passwd`, never outside the host root. This is the
//! kernel's `openat2(RESOLVE_IN_ROOT)` rule, done as a component walk so that it also resolves
//! paths whose tail does not exist yet (a config to create, `/opt/wasmkube/bin` on a fresh
//! node, a link that dangles until we write its target). The tests compare it with the kernel.
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

/// The kernel's limit on symlinks followed in one lookup (`MAXSYMLINKS`).
const MAX_LINKS: u32 = 40;

/// Whether the last component is followed when it is a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Last {
    /// Follow it: the file itself is what we read or rewrite (a config, a template).
    Follow,
    /// Keep it: the name is what we own and replace (the shim, our PATH link, the cache dir).
    Keep,
}

/// Why a host path could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {} under the host root {}: {op} {}: {source}", host_path.display(), root.display(), at.display())]
    Io {
        host_path: PathBuf,
        root: PathBuf,
        op: &'static str,
        at: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot resolve {} under the host root {}: more than {MAX_LINKS} symlinks (a loop?)", host_path.display(), root.display())]
    Loop { host_path: PathBuf, root: PathBuf },
    #[error("cannot resolve {} under the host root {}: {} is not a directory", host_path.display(), root.display(), at.display())]
    NotADirectory {
        host_path: PathBuf,
        root: PathBuf,
        at: PathBuf,
    },
}

impl ResolveError {
    pub fn reason(&self) -> &'static str {
        wasmkube_contract::installer::reasons::HOST_PATH
    }
}

/// `host_path` (absolute or not, always taken from the host's `/`) resolved under `root`.
///
/// The result is `root` joined with a path none of whose existing components is a symlink
/// (except the last one with [`Last::Keep`]); components that do not exist are kept as they
/// are (they are created later, and a new directory is no symlink).
pub fn resolve(root: &Path, host_path: &Path, last: Last) -> Result<PathBuf, ResolveError> {
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, host_path);
    // Components already resolved, relative to `root`.
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    // Once a component is missing, nothing below it can be a symlink.
    let mut missing = false;
    // `todo` is a stack: its last element is the next component.
    while let Some(name) = todo.pop() {
        // `.` and `..` are kept until here so that what precedes them is checked to be a
        // directory, as the kernel does.
        if name == "." {
            continue;
        }
        let at = join(root, &done).join(&name);
        if name == ".." {
            if missing {
                // Like the kernel: a missing directory has no `..`.
                return Err(io_err(
                    root,
                    host_path,
                    "stat",
                    at,
                    io::ErrorKind::NotFound.into(),
                ));
            }
            done.pop();
            continue;
        }
        if missing {
            done.push(name);
            continue;
        }
        let is_last = todo.is_empty();
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing = true;
                done.push(name);
                continue;
            }
            Err(source) => return Err(io_err(root, host_path, "stat", at, source)),
        };
        if meta.file_type().is_symlink() && (!is_last || last == Last::Follow) {
            links += 1;
            if links > MAX_LINKS {
                return Err(ResolveError::Loop {
                    host_path: host_path.to_path_buf(),
                    root: root.to_path_buf(),
                });
            }
            let target = std::fs::read_link(&at)
                .map_err(|source| io_err(root, host_path, "readlink", at.clone(), source))?;
            if target.has_root() {
                done.clear();
            }
            push_components(&mut todo, &target);
            continue;
        }
        if !is_last && !meta.is_dir() {
            return Err(ResolveError::NotADirectory {
                host_path: host_path.to_path_buf(),
                root: root.to_path_buf(),
                at,
            });
        }
        done.push(name);
    }
    Ok(join(root, &done))
}

/// Resolves and joins: the path to use for a host path's file (see [`resolve`]).
pub fn follow(root: &Path, host_path: &Path) -> Result<PathBuf, ResolveError> {
    resolve(root, host_path, Last::Follow)
}

/// Whether `host_path` exists on the host (symlinks followed inside the host root).
pub fn exists(root: &Path, host_path: &Path) -> bool {
    follow(root, host_path).is_ok_and(|p| p.exists())
}

/// Pushes `path`'s components onto the stack `todo` so that the first one is popped first.
/// Split by hand: `Path::components` drops inner `.`s, which still require a directory.
fn push_components(todo: &mut Vec<OsString>, path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let parts = path
        .as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
        .map(|p| std::ffi::OsStr::from_bytes(p).to_os_string());
    let mut parts: Vec<OsString> = parts.collect();
    parts.reverse();
    todo.extend(parts);
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

fn io_err(
    root: &Path,
    host_path: &Path,
    op: &'static str,
    at: PathBuf,
    source: io::Error,
) -> ResolveError {
    ResolveError::Io {
        host_path: host_path.to_path_buf(),
        root: root.to_path_buf(),
        op,
        at,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("etc/containerd/real")).expect("mkdir");
        d
    }

    #[test]
    fn absolute_links_are_taken_inside_the_root() {
        let r = root();
        let link = r.path().join("etc/containerd/config.toml");
        symlink("/etc/containerd/real/config.toml", &link).expect("symlink");
        let want = r.path().join("etc/containerd/real/config.toml");
        let got = follow(r.path(), Path::new("/etc/containerd/config.toml")).expect("resolve");
        assert_eq!(
            got, want,
            "dangling absolute link resolves to its target in the root"
        );
        let kept = resolve(
            r.path(),
            Path::new("/etc/containerd/config.toml"),
            Last::Keep,
        )
        .expect("resolve");
        assert_eq!(kept, link, "Last::Keep keeps the link itself");
    }

    #[test]
    fn dot_dot_and_absolute_targets_never_leave_the_root() {
        let r = root();
        symlink(
            "../../../../../../../../etc/passwd",
            r.path().join("etc/containerd/config.toml"),
        )
        .expect("symlink");
        let got = follow(r.path(), Path::new("/etc/containerd/config.toml")).expect("resolve");
        assert_eq!(got, r.path().join("etc/passwd"));
        let got = follow(r.path(), Path::new("/../../etc/./containerd/../x")).expect("resolve");
        assert_eq!(got, r.path().join("etc/x"));
    }

    #[test]
    fn a_directory_link_in_the_middle_is_followed() {
        let r = root();
        std::fs::create_dir_all(r.path().join("var/usrlocal/bin")).expect("mkdir");
        std::fs::create_dir_all(r.path().join("usr")).expect("mkdir");
        // Fedora CoreOS: /usr/local -> ../var/usrlocal
        symlink("../var/usrlocal", r.path().join("usr/local")).expect("symlink");
        let got = resolve(
            r.path(),
            Path::new("/usr/local/bin/containerd-shim-wasmkube-v1"),
            Last::Keep,
        )
        .expect("resolve");
        assert_eq!(
            got,
            r.path()
                .join("var/usrlocal/bin/containerd-shim-wasmkube-v1")
        );
    }

    #[test]
    fn loops_and_files_in_the_middle_are_errors() {
        let r = root();
        symlink("/etc/b", r.path().join("etc/a")).expect("symlink");
        symlink("/etc/a", r.path().join("etc/b")).expect("symlink");
        assert!(matches!(
            follow(r.path(), Path::new("/etc/a")),
            Err(ResolveError::Loop { .. })
        ));
        std::fs::write(r.path().join("etc/file"), "").expect("write");
        assert!(matches!(
            follow(r.path(), Path::new("/etc/file/x")),
            Err(ResolveError::NotADirectory { .. })
        ));
    }
}
