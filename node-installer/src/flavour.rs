//! Which containerd the host runs, and where its config, socket and service live.
//!
//! Everything here is a path *on the host*; callers resolve it under `--host-root` with
//! [`crate::host_path`] (symlinks are taken as the host sees them).
use std::path::{Path, PathBuf};

use crate::host_path;

/// A containerd distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// Plain containerd: `/etc/containerd/config.toml`.
    Containerd,
    /// A kind node: plain containerd inside the node container (`/kind` exists).
    Kind,
    /// k3s: a `config.toml.tmpl` built on k3s' own "base" template.
    K3s,
    /// rke2: like k3s, under `/var/lib/rancher/rke2`.
    Rke2,
    /// microk8s: `containerd-template.toml` in the snap's args.
    Microk8s,
    /// k0s: a drop-in under `/etc/k0s/containerd.d/`.
    K0s,
}

/// How the runtime reaches containerd's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    /// A TOML file we patch in place.
    Toml,
    /// A Go template (k3s/rke2) we own or extend; `rendered` is the file the distribution writes
    /// from it (read for the schema and the cgroup driver, never written).
    Template { rendered: PathBuf },
    /// A drop-in file we own entirely; `main` is the distribution's config (read for its schema).
    DropIn { main: PathBuf },
}

/// Where things are for one flavour, as host paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub flavour: Flavour,
    /// The file the installer writes.
    pub config: PathBuf,
    pub kind: ConfigKind,
    /// containerd's gRPC socket (CRI is served there).
    pub socket: PathBuf,
    /// systemd units that run this containerd, most likely first.
    pub units: &'static [&'static str],
}

/// `host_root` + an absolute host path, joined as text (no symlink is looked at): for paths the
/// caller itself makes under a temp root. Anything that reads or writes the host goes through
/// [`host_path::resolve`].
pub fn on_host(host_root: &Path, host_path: &Path) -> PathBuf {
    host_root.join(host_path.strip_prefix("/").unwrap_or(host_path))
}

const K3S_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";
const RKE2_DIR: &str = "/var/lib/rancher/rke2/agent/etc/containerd";
const MICROK8S_TEMPLATE: &str = "/var/snap/microk8s/current/args/containerd-template.toml";
const K0S_MAIN: &str = "/etc/k0s/containerd.toml";
const K0S_DROPIN: &str = "/etc/k0s/containerd.d/wasmkube.toml";
const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// Detects the flavour from files under `host_root` (or takes `force`), and lays it out.
pub fn detect(host_root: &Path, force: Option<Flavour>) -> Layout {
    let exists = |p: &str| host_path::exists(host_root, Path::new(p));
    let flavour = force.unwrap_or_else(|| {
        if exists(&format!("{K3S_DIR}/config.toml")) || exists("/etc/rancher/k3s") {
            Flavour::K3s
        } else if exists(&format!("{RKE2_DIR}/config.toml")) || exists("/etc/rancher/rke2") {
            Flavour::Rke2
        } else if exists(MICROK8S_TEMPLATE) {
            Flavour::Microk8s
        } else if exists(K0S_MAIN) || exists("/etc/k0s/containerd.d") {
            Flavour::K0s
        } else if exists("/kind/version") || exists("/kind/product_name") {
            Flavour::Kind
        } else {
            Flavour::Containerd
        }
    });
    layout(host_root, flavour)
}

fn rancher(host_root: &Path, dir: &str, flavour: Flavour) -> Layout {
    let rendered = PathBuf::from(format!("{dir}/config.toml"));
    // containerd 2 based releases render `version = 3` and read `config-v3.toml.tmpl`.
    let v3_template = PathBuf::from(format!("{dir}/config-v3.toml.tmpl"));
    let rendered_v3 = host_path::follow(host_root, &rendered)
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
        .and_then(|d| d.get("version").and_then(toml_edit::Item::as_integer))
        == Some(3);
    let config = if rendered_v3 || host_path::exists(host_root, &v3_template) {
        v3_template
    } else {
        PathBuf::from(format!("{dir}/config.toml.tmpl"))
    };
    let units: &'static [&'static str] = if flavour == Flavour::K3s {
        &["k3s", "k3s-agent"]
    } else {
        &["rke2-server", "rke2-agent"]
    };
    Layout {
        flavour,
        config,
        kind: ConfigKind::Template { rendered },
        socket: "/run/k3s/containerd/containerd.sock".into(),
        units,
    }
}

/// The layout of a given flavour.
pub fn layout(host_root: &Path, flavour: Flavour) -> Layout {
    match flavour {
        Flavour::Containerd | Flavour::Kind => Layout {
            flavour,
            config: CONTAINERD_CONFIG.into(),
            kind: ConfigKind::Toml,
            socket: "/run/containerd/containerd.sock".into(),
            units: &["containerd"],
        },
        Flavour::K3s => rancher(host_root, K3S_DIR, flavour),
        Flavour::Rke2 => rancher(host_root, RKE2_DIR, flavour),
        Flavour::Microk8s => Layout {
            flavour,
            config: MICROK8S_TEMPLATE.into(),
            kind: ConfigKind::Toml,
            socket: "/var/snap/microk8s/common/run/containerd.sock".into(),
            units: &["snap.microk8s.daemon-containerd"],
        },
        Flavour::K0s => Layout {
            flavour,
            config: K0S_DROPIN.into(),
            kind: ConfigKind::DropIn {
                main: K0S_MAIN.into(),
            },
            socket: "/run/k0s/containerd.sock".into(),
            units: &["k0sworker", "k0scontroller"],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (p, text) in files {
            let path = on_host(dir.path(), Path::new(p));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    type Files<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn detects_each_flavour_from_its_files() {
        let cases: &[(Files, Flavour, &str)] = &[
            (&[], Flavour::Containerd, CONTAINERD_CONFIG),
            (
                &[(CONTAINERD_CONFIG, "version = 2\n")],
                Flavour::Containerd,
                CONTAINERD_CONFIG,
            ),
            (
                &[(CONTAINERD_CONFIG, ""), ("/kind/version", "v1.31.0")],
                Flavour::Kind,
                CONTAINERD_CONFIG,
            ),
            (
                &[(
                    "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
                    "version = 2\n",
                )],
                Flavour::K3s,
                "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
            ),
            (
                &[(
                    "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
                    "version = 3\n",
                )],
                Flavour::K3s,
                "/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl",
            ),
            (
                &[(
                    "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
                    "version = 2\n",
                )],
                Flavour::Rke2,
                "/var/lib/rancher/rke2/agent/etc/containerd/config.toml.tmpl",
            ),
            (
                &[(MICROK8S_TEMPLATE, "version = 2\n")],
                Flavour::Microk8s,
                MICROK8S_TEMPLATE,
            ),
            (&[(K0S_MAIN, "version = 2\n")], Flavour::K0s, K0S_DROPIN),
        ];
        for (files, flavour, config) in cases {
            let h = host(files);
            let l = detect(h.path(), None);
            assert_eq!(l.flavour, *flavour, "{files:?}");
            assert_eq!(l.config, Path::new(config), "{files:?}");
        }
    }

    #[test]
    fn forced_flavour_wins() {
        let h = host(&[("/kind/version", "x")]);
        assert_eq!(detect(h.path(), Some(Flavour::K0s)).flavour, Flavour::K0s);
    }
}
