//! What the wasm check ([`crate::wasm_check`]) hands containerd: a host directory that becomes
//! the container's root (bind-mounted read-only) and the OCI runtime spec (the runtime options
//! are [`crate::runtime_options`]).
//!
//! The directory is ours: `/var/lib/wasmkube/check/<id>/` on the host (resolved inside
//! `--host-root`), created root-only (0700) for one run and removed after it, with every
//! directory the run created above it. It holds `rootfs/` (the module at `/check.wasm` and the
//! empty mount points the spec needs, since a read-only root cannot get them later) and the
//! container's `stdout`/`stderr` files.
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

use crate::host_path::{self, Last, ResolveError};
use crate::rollback::missing_dirs;

/// The host directory holding one directory per check run (emptied after each run).
pub const CHECK_HOST_DIR: &str = "/var/lib/wasmkube/check";
/// The module's path inside the check container.
pub const MODULE_IN_ROOTFS: &str = "/check.wasm";
/// The exit code the module is asked for (`WK_EXIT`): only a module that ran returns it.
pub const EXPECTED_EXIT: i32 = 42;
/// Run directories are named `<prefix><pid>-<nanos>`; only such names are cleaned up.
pub const ID_PREFIX: &str = "wasmkube-check-";
/// The `\0asm` magic every wasm binary (module or component) starts with.
const WASM_MAGIC: &[u8; 4] = b"\0asm";
/// Mount points of the spec's mounts (`/dev/*` and `/sys/fs/cgroup` lie on those mounts).
const MOUNT_POINTS: &[&str] = &["proc", "dev", "sys"];
/// How much of the container's output a failure message quotes.
const OUTPUT_TAIL: u64 = 600;
/// The type URL containerd registers for an OCI runtime spec (JSON-encoded).
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Why the check's bundle could not be made (or unmade).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read the check module {}: {source}", path.display())]
    Module {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the check module {} is not a wasm binary (no \\0asm header)", path.display())]
    NotWasm { path: PathBuf },
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("{} is not the installer's check directory: {why}", path.display())]
    Foreign { path: PathBuf, why: &'static str },
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the check's OCI spec: {0}")]
    Spec(String),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The base directory under the host root, after refusing anything there that is not a plain
/// directory (a symlink could send our removals elsewhere).
pub fn base_dir(host_root: &Path) -> Result<PathBuf, BundleError> {
    let base = host_path::resolve(host_root, Path::new(CHECK_HOST_DIR), Last::Keep)?;
    match fs::symlink_metadata(&base) {
        Ok(m) if m.file_type().is_symlink() => Err(BundleError::Foreign {
            path: base,
            why: "it is a symlink",
        }),
        Ok(m) if !m.is_dir() => Err(BundleError::Foreign {
            path: base,
            why: "it is not a directory",
        }),
        _ => Ok(base),
    }
}

/// Removes run directories an earlier check left in `base` (it crashed, or was killed, before
/// its cleanup); returns their names. Only names the check gives its runs are touched.
pub fn remove_leftovers(base: &Path) -> Result<Vec<String>, BundleError> {
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", base)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(ID_PREFIX) {
            continue;
        }
        let path = entry.path();
        // std's remove_dir_all never follows a symlink inside the tree (nor this one).
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        gone.map_err(io_err("remove", &path))?;
        removed.push(name);
    }
    Ok(removed)
}

/// One run's directory on the host.
#[derive(Debug)]
pub struct CheckDir {
    /// `<host root>/var/lib/wasmkube/check/<id>`, as the installer sees it.
    pub dir: PathBuf,
    /// The same directory as containerd sees it.
    pub for_containerd: PathBuf,
    /// The base directory, then the directories above it this run created, deepest first:
    /// removed again when empty.
    created: Vec<PathBuf>,
}

impl CheckDir {
    /// Creates `<base>/<id>/` (0700) with the module copied to `rootfs/check.wasm` and empty
    /// `stdout`/`stderr` files. `root_for_containerd` is the host root as containerd sees it
    /// (`/` on a node).
    pub fn create(
        host_root: &Path,
        root_for_containerd: &Path,
        id: &str,
        module: &Path,
    ) -> Result<CheckDir, BundleError> {
        let wasm = read_module(module)?;
        let base = base_dir(host_root)?;
        let dir = base.join(id);
        let relative = dir
            .strip_prefix(host_root)
            .map_err(|_| BundleError::Foreign {
                path: dir.clone(),
                why: "it resolves outside the host root",
            })?;
        // The base is ours by name and always goes when empty; what this run creates above it
        // (`/var/lib/wasmkube` on a fresh node) goes too, deepest first.
        let mut created = base.parent().map(missing_dirs).unwrap_or_default();
        created.reverse();
        created.insert(0, base.clone());
        let check = CheckDir {
            for_containerd: root_for_containerd.join(relative),
            dir,
            created,
        };
        match check.fill(&base, &wasm) {
            Ok(()) => Ok(check),
            Err(e) => {
                let _ = check.remove();
                Err(e)
            }
        }
    }

    fn fill(&self, base: &Path, wasm: &[u8]) -> Result<(), BundleError> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(base).map_err(io_err("create", base))?;
        fs::set_permissions(base, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", base))?;
        builder.recursive(false);
        builder
            .create(&self.dir)
            .map_err(io_err("create", &self.dir))?;
        let rootfs = self.dir.join("rootfs");
        builder.create(&rootfs).map_err(io_err("create", &rootfs))?;
        for point in MOUNT_POINTS {
            let p = rootfs.join(point);
            builder
                .mode(0o755)
                .create(&p)
                .map_err(io_err("create", &p))?;
        }
        let module = rootfs.join(MODULE_IN_ROOTFS.trim_start_matches('/'));
        write_new(&module, wasm, 0o644)?;
        for out in ["stdout", "stderr"] {
            write_new(&self.dir.join(out), b"", 0o600)?;
        }
        Ok(())
    }

    /// The rootfs directory as containerd sees it (the bind mount's source).
    pub fn rootfs(&self) -> PathBuf {
        self.for_containerd.join("rootfs")
    }

    /// The container's stdout (`stdout`) or stderr (`stderr`) file as containerd sees it.
    pub fn output_path(&self, which: &str) -> PathBuf {
        self.for_containerd.join(which)
    }

    /// The end of what the container wrote, for failure messages.
    pub fn output(&self) -> String {
        let mut all = String::new();
        for which in ["stdout", "stderr"] {
            let Ok(mut f) = fs::File::open(self.dir.join(which)) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let mut buf = Vec::new();
            let skip = len.saturating_sub(OUTPUT_TAIL);
            let _ = io::copy(&mut (&mut f).take(skip), &mut io::sink());
            let _ = f.take(OUTPUT_TAIL).read_to_end(&mut buf);
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim();
            if !text.is_empty() {
                all.push_str(&format!("{which}: {text:?}; "));
            }
        }
        all.trim_end_matches("; ").to_string()
    }

    /// Removes the run's directory and the empty directories this run created above it.
    pub fn remove(self) -> Result<(), BundleError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &self.dir)(e)),
        }
        for dir in &self.created {
            // Only when empty: another run's directory (or anything else) keeps it.
            if fs::remove_dir(dir).is_err() {
                break;
            }
        }
        Ok(())
    }
}

fn read_module(path: &Path) -> Result<Vec<u8>, BundleError> {
    let wasm = fs::read(path).map_err(|source| BundleError::Module {
        path: path.to_path_buf(),
        source,
    })?;
    if !wasm.starts_with(WASM_MAGIC) {
        return Err(BundleError::NotWasm {
            path: path.to_path_buf(),
        });
    }
    Ok(wasm)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BundleError> {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))
}

/// The check container's OCI spec: oci-spec's defaults (runc's: the usual namespaces, mounts,
/// masked paths, capabilities) with our process, root `rootfs` (read-only) and cgroups path
/// (`/<namespace>/<id>` like `ctr`'s, or `system.slice:<namespace>:<id>` under systemd).
pub fn spec(namespace: &str, id: &str, systemd: bool) -> Result<Spec, BundleError> {
    let mut spec = Spec::default();
    let mut process = Process::default();
    process.set_args(Some(vec![MODULE_IN_ROOTFS.to_string()]));
    process.set_env(Some(vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("WK_EXIT={EXPECTED_EXIT}"),
    ]));
    process.set_cwd(PathBuf::from("/"));
    spec.set_process(Some(process));
    spec.set_hostname(Some(namespace.to_string()));
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| BundleError::Spec("oci-spec's default has no linux section".into()))?;
    linux.set_cgroups_path(Some(PathBuf::from(if systemd {
        format!("system.slice:{namespace}:{id}")
    } else {
        format!("/{namespace}/{id}")
    })));
    Ok(spec)
}

/// The spec as containerd stores it on a container (a JSON-encoded `Any`).
pub fn spec_any(spec: &Spec) -> Result<prost_types::Any, BundleError> {
    Ok(prost_types::Any {
        type_url: SPEC_TYPE_URL.to_string(),
        value: serde_json::to_vec(spec).map_err(|e| BundleError::Spec(e.to_string()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_runs_the_module_with_the_exit_code_it_must_return() {
        let s =
            serde_json::to_value(spec("wasmkube-check", "wasmkube-check-1", false).expect("spec"))
                .expect("json");
        assert_eq!(s["process"]["args"], serde_json::json!(["/check.wasm"]));
        assert!(s["process"]["env"]
            .as_array()
            .is_some_and(|e| e.contains(&serde_json::json!("WK_EXIT=42"))));
        assert_eq!(s["root"]["path"], "rootfs");
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(
            s["linux"]["cgroupsPath"],
            "/wasmkube-check/wasmkube-check-1"
        );
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        for want in ["pid", "network", "ipc", "uts", "mount"] {
            assert!(ns.contains(&want), "{ns:?}");
        }
        let s = serde_json::to_value(spec("n", "i", true).expect("spec")).expect("json");
        assert_eq!(s["linux"]["cgroupsPath"], "system.slice:n:i");
    }

    #[test]
    fn the_directory_is_made_private_and_leaves_nothing_behind() {
        let root = tempfile::tempdir().expect("tempdir");
        let module = root.path().join("m.wasm");
        fs::write(&module, b"\0asm\x01\0\0\0").expect("write");
        let id = format!("{ID_PREFIX}1");
        let dir = CheckDir::create(root.path(), Path::new("/seen"), &id, &module).expect("dir");
        assert_eq!(
            dir.rootfs(),
            Path::new("/seen/var/lib/wasmkube/check")
                .join(&id)
                .join("rootfs")
        );
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&dir.dir), 0o700);
        assert_eq!(mode(dir.dir.parent().expect("base")), 0o700);
        assert_eq!(
            fs::read(dir.dir.join("rootfs/check.wasm")).expect("module"),
            b"\0asm\x01\0\0\0"
        );
        for p in MOUNT_POINTS {
            assert!(dir.dir.join("rootfs").join(p).is_dir());
        }
        fs::write(dir.dir.join("stdout"), b"hello from wasm\n").expect("write");
        assert_eq!(dir.output(), "stdout: \"hello from wasm\"");
        dir.remove().expect("remove");
        assert!(!root.path().join("var").exists(), "created dirs stay");

        // A leftover of a crashed run goes; another name in the directory stays.
        let base = root.path().join("var/lib/wasmkube/check");
        fs::create_dir_all(base.join(format!("{ID_PREFIX}old/rootfs"))).expect("mkdir");
        fs::create_dir_all(base.join("someone-else")).expect("mkdir");
        assert_eq!(
            remove_leftovers(&base).expect("clean"),
            vec![format!("{ID_PREFIX}old")]
        );
        assert!(base.join("someone-else").exists());

        // Not wasm, a symlinked base: refused.
        let text = root.path().join("t");
        fs::write(&text, b"#!/bin/sh\n").expect("write");
        assert!(matches!(
            CheckDir::create(root.path(), Path::new("/"), "x", &text),
            Err(BundleError::NotWasm { .. })
        ));
        fs::remove_dir_all(&base).expect("rm");
        std::os::unix::fs::symlink("/etc", &base).expect("symlink");
        assert!(matches!(
            CheckDir::create(root.path(), Path::new("/"), "x", &module),
            Err(BundleError::Foreign { .. })
        ));
    }
}
