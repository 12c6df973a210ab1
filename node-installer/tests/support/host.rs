//! Temp host roots and "is the node as before" snapshots, shared by the installer's tests.
#![allow(dead_code)] // each test crate uses part of it

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use wasmkube_node_installer::flavour::on_host;
use wasmkube_node_installer::Options;

/// The default config path on a plain containerd host.
pub const CONFIG: &str = "/etc/containerd/config.toml";
/// Where the shim goes, and our PATH link, as host paths.
pub const SHIM: &str = "/opt/wasmkube/bin/containerd-shim-wasmkube-v1";
pub const LINK: &str = "/usr/local/bin/containerd-shim-wasmkube-v1";

/// One entry of a host tree: kind, permission bits, and the bytes or the link target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(PathBuf),
}

/// Everything under `root` except `run/` (the installer's lock lives there), keyed by path.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// What the installer may touch under a host root that also holds a live containerd's state:
/// `etc/`, `opt/` and `usr/`.
pub fn snapshot_node(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    for top in ["etc", "opt", "usr"] {
        let dir = root.join(top);
        if dir.exists() {
            out.insert(PathBuf::from(top), Entry::Dir(0));
            walk(root, &dir, &mut out);
        }
    }
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .collect();
    entries.sort_by_key(std::fs::DirEntry::path);
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).expect("under root").to_path_buf();
        if rel.starts_with("run") {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).expect("lstat");
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            out.insert(
                rel,
                Entry::Link(std::fs::read_link(&path).expect("readlink")),
            );
        } else if meta.is_dir() {
            out.insert(rel, Entry::Dir(mode));
            walk(root, &path, out);
        } else {
            out.insert(rel, Entry::File(mode, std::fs::read(&path).expect("read")));
        }
    }
}

/// Asserts two snapshots are equal, naming the paths that differ.
pub fn assert_same(before: &BTreeMap<PathBuf, Entry>, after: &BTreeMap<PathBuf, Entry>) {
    let mut diffs = Vec::new();
    for (p, e) in before {
        match after.get(p) {
            None => diffs.push(format!("gone: {}", p.display())),
            Some(a) if a != e => diffs.push(format!("changed: {}", p.display())),
            Some(_) => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        diffs.push(format!("new: {}", p.display()));
    }
    assert!(
        diffs.is_empty(),
        "the node is not as before:\n{}",
        diffs.join("\n")
    );
}

/// "The node is as before": the installer's part of a host tree ([`snapshot_node`]: `etc/`,
/// `opt/`, `usr/` — bytes, modes, link targets), taken before a run and compared after it.
pub struct NodeSnapshot {
    root: PathBuf,
    tree: BTreeMap<PathBuf, Entry>,
}

impl NodeSnapshot {
    pub fn take(root: &Path) -> NodeSnapshot {
        NodeSnapshot {
            root: root.to_path_buf(),
            tree: snapshot_node(root),
        }
    }

    /// Asserts the tree is as it was, naming every path that differs.
    pub fn assert_unchanged(&self) {
        assert_same(&self.tree, &snapshot_node(&self.root));
    }
}

/// A temp host root with `files` (host path, text), plus a directory outside it for the test's
/// own scripts and a fake shim printing `Version: <version>`.
pub struct TestHost {
    pub root: tempfile::TempDir,
    pub aux: tempfile::TempDir,
}

impl TestHost {
    pub fn new(files: &[(&str, &str)]) -> TestHost {
        let root = tempfile::tempdir().expect("tempdir");
        for (p, text) in files {
            let path = on_host(root.path(), Path::new(p));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        TestHost {
            root,
            aux: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, host_path: &str) -> PathBuf {
        on_host(self.root.path(), Path::new(host_path))
    }

    /// An executable shell script in the aux directory.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.aux.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("script");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// A fake shim (a script that prints its version) in the aux directory.
    pub fn shim(&self, version: &str) -> PathBuf {
        self.script(
            &format!("shim-{version}"),
            &format!("echo 'Version: {version}'"),
        )
    }

    /// Options for this host: `shim`, no daemon (`--skip-verify`), restart by `restart_cmd`.
    pub fn options(&self, shim: &Path, restart_cmd: Option<&str>) -> Options {
        let mut o = Options::for_host_root(self.root.path());
        o.shim = Some(shim.to_path_buf());
        if let Some(cmd) = restart_cmd {
            o.restart = wasmkube_node_installer::restart::RestartMode::Auto;
            o.restart_cmd = Some(cmd.to_string());
        }
        o
    }

    /// A restart command that fails the first time it runs and succeeds afterwards: a
    /// containerd that does not come back on the new config, then does on the old one.
    pub fn restart_failing_once(&self) -> String {
        let marker = self.aux.path().join("restarted-once");
        let _ = std::fs::remove_file(&marker);
        self.script(
            "restart-failing-once",
            &format!(
                "if [ -e '{m}' ]; then exit 0; fi\ntouch '{m}'\necho 'containerd did not come back' >&2\nexit 1",
                m = marker.display()
            ),
        )
        .display()
        .to_string()
    }
}

/// `dir` made read-only for this process: a read-only bind mount when we may mount (root),
/// else mode 0555. `None` when neither stops us writing (root without mount rights).
pub struct ReadOnly(PathBuf, bool);

impl ReadOnly {
    pub fn make(dir: &Path) -> Option<ReadOnly> {
        std::fs::create_dir_all(dir).expect("mkdir");
        let d = dir.to_str().expect("utf8");
        let mounted = std::process::Command::new("mount")
            .args(["--bind", d, d])
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            let ro = std::process::Command::new("mount")
                .args(["-o", "remount,bind,ro", d])
                .status()
                .is_ok_and(|s| s.success());
            let guard = ReadOnly(dir.to_path_buf(), true);
            return ro.then_some(guard);
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        let guard = ReadOnly(dir.to_path_buf(), false);
        std::fs::write(dir.join(".probe"), "")
            .is_err()
            .then_some(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        } else {
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        }
    }
}
