//! One node as the installer sees it: the detected layout under the host root, and what the
//! managed file should contain for install and uninstall (pure decisions, no writes).
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::atomic_write::Backup;
use crate::cli::Options;
use crate::config_patch::{self, PatchError, RuntimeEntry, Schema, RUNTIME_TYPE};
use crate::flavour::{self, ConfigKind, Layout};
use crate::host_path::{self, Last, ResolveError};
use crate::k3s_template::{self, TemplateError};
use crate::shim_install::SHIM_NAME;
use crate::verify::CriState;

/// Comment heading the k0s drop-in we own.
pub const DROPIN_HEADER: &str =
    "# managed by wasmkube-node-installer: k0s merges this drop-in into its containerd config\n";

/// Why the managed file cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{}: {source}", path.display())]
    Patch {
        path: PathBuf,
        #[source]
        source: PatchError,
    },
    #[error("{}: {source}", path.display())]
    Template {
        path: PathBuf,
        #[source]
        source: TemplateError,
    },
    #[error("{} is not UTF-8 text, so it is not TOML; refusing to touch it", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Resolve {
        path: PathBuf,
        #[source]
        source: ResolveError,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PlanError {
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::Patch { source, .. } => source.reason(),
            PlanError::Template { .. } => wasmkube_contract::installer::reasons::TEMPLATE_CONFLICT,
            PlanError::NotUtf8 { .. } => wasmkube_contract::installer::reasons::NOT_UTF8,
            PlanError::Resolve { .. } => wasmkube_contract::installer::reasons::HOST_PATH,
            PlanError::Read { .. } => wasmkube_contract::installer::reasons::READ_ERROR,
        }
    }
}

/// The shim's compiled-module cache on the host: the shim's default (`DEFAULT_CACHE_DIR` in
/// `shim/src/host.rs`, duplicated here so the installer does not depend on the shim crate; keep
/// the two in step). `uninstall` removes it.
pub const SHIM_CACHE_HOST_DIR: &str = wasmkube_contract::names::CACHE_DIR;

/// The node under `--host-root`. Every path in it is resolved as the host sees it (see
/// [`host_path`]): a symlinked config is the file it points at, inside the host root.
#[derive(Clone, Debug)]
pub struct Node {
    pub host_root: PathBuf,
    pub layout: Layout,
    /// The managed file, under the host root, with symlinks followed: the file we patch, back
    /// up (`<it>.wasmkube.orig`) and restore; a link to it stays a link.
    pub config_file: PathBuf,
    /// Where the shim is installed, under the host root.
    pub shim_dest: PathBuf,
    /// The shim as containerd sees it.
    pub runtime_path: String,
    /// Our symlink to the shim in a directory on containerd's PATH, under the host root.
    pub shim_link: Option<PathBuf>,
    /// The shim's compiled-module cache directory (the name itself, not followed).
    pub cache_dir: PathBuf,
    /// containerd's CRI socket, as reachable from here.
    pub socket: PathBuf,
    pub timeout: Duration,
    /// `--skip-verify`: containerd is never asked (not even after a rollback).
    pub skip_verify: bool,
}

impl Node {
    /// [`Node::new`] for a command that reports: on failure the report says why (nothing was
    /// changed); on success it names the containerd flavour.
    pub fn for_report(o: &Options, r: &mut crate::report::Report) -> Option<Self> {
        match Node::new(o) {
            Ok(node) => {
                r.flavour = Some(node.layout.flavour);
                Some(node)
            }
            Err(e) => {
                r.fail(
                    crate::report::Failure::NothingChanged,
                    e.reason(),
                    e.to_string(),
                );
                None
            }
        }
    }

    /// Detects the layout and resolves its paths under `--host-root`.
    pub fn new(o: &Options) -> Result<Self, ResolveError> {
        let root = &o.host_root;
        let layout = flavour::detect(root, o.flavour.forced());
        let socket = match &o.containerd_address {
            Some(a) => a.clone(),
            None => host_path::follow(root, &layout.socket)?,
        };
        let shim_host = Path::new(crate::shim_install::SHIM_HOST_DIR).join(SHIM_NAME);
        let shim_link = if o.path_link.as_os_str().is_empty() {
            None
        } else {
            let link = o.path_link.join(SHIM_NAME);
            Some(host_path::resolve(root, &link, Last::Keep)?)
        };
        let node = Node {
            config_file: host_path::follow(root, &layout.config)?,
            shim_dest: host_path::resolve(root, &shim_host, Last::Keep)?,
            cache_dir: host_path::resolve(root, Path::new(SHIM_CACHE_HOST_DIR), Last::Keep)?,
            host_root: root.clone(),
            layout,
            runtime_path: o.runtime_path.clone(),
            shim_link,
            socket,
            timeout: Duration::from_secs(o.timeout),
            skip_verify: o.skip_verify,
        };
        tracing::debug!(
            config = %node.config_file.display(),
            shim = %node.shim_dest.display(),
            "host paths resolved inside the host root"
        );
        Ok(node)
    }

    /// The managed file's text; `None` when it does not exist.
    pub fn read_config(&self) -> Result<Option<String>, PlanError> {
        read_optional(&self.config_file)
    }

    fn patch_err(&self, source: PatchError) -> PlanError {
        PlanError::Patch {
            path: self.layout.config.clone(),
            source,
        }
    }

    fn template_err(&self, source: TemplateError) -> PlanError {
        PlanError::Template {
            path: self.layout.config.clone(),
            source,
        }
    }

    /// Schema and default runtime cgroup setting of the distribution's own config, for the
    /// template and drop-in flavours.
    fn reference_config(&self, file: &Path) -> Result<(Schema, Option<bool>), PlanError> {
        let fallback = if self.layout.config.to_string_lossy().contains("-v3") {
            Schema::V3
        } else {
            Schema::V2
        };
        let resolved =
            host_path::follow(&self.host_root, file).map_err(|source| PlanError::Resolve {
                path: file.to_path_buf(),
                source,
            })?;
        let Some(text) = read_optional(&resolved)? else {
            return Ok((fallback, None));
        };
        match config_patch::analyze(&text) {
            Ok(a) => Ok((a.schema.unwrap_or(fallback), a.systemd_cgroup)),
            Err(e) => Err(PlanError::Patch {
                path: file.to_path_buf(),
                source: e,
            }),
        }
    }

    /// What the managed file should contain after install.
    pub fn desired_install(
        &self,
        current: Option<&str>,
        containerd_major: Option<u32>,
    ) -> Result<String, PlanError> {
        let empty_schema = Schema::for_containerd_major(containerd_major);
        match &self.layout.kind {
            ConfigKind::Toml => {
                config_patch::install(current.unwrap_or(""), &self.runtime_path, empty_schema)
                    .map(|p| p.text)
                    .map_err(|e| self.patch_err(e))
            }
            ConfigKind::Template { rendered } => {
                let (schema, cgroup) = self.reference_config(rendered)?;
                let entry = RuntimeEntry::ours(&self.runtime_path, cgroup);
                k3s_template::install(current, schema, &entry).map_err(|e| self.template_err(e))
            }
            ConfigKind::DropIn { main } => {
                let (schema, _) = self.reference_config(main)?;
                config_patch::install(DROPIN_HEADER, &self.runtime_path, schema)
                    .map(|p| p.text)
                    .map_err(|e| self.patch_err(e))
            }
        }
    }

    /// What the managed file should contain after uninstall (`None`: no file). The original
    /// bytes come back when the file is exactly what our install made of them.
    pub fn desired_uninstall(
        &self,
        current: Option<&str>,
        backup: Option<&Backup>,
        containerd_major: Option<u32>,
    ) -> Result<Option<String>, PlanError> {
        let Some(current) = current else {
            return Ok(None);
        };
        let original = match backup {
            Some(Backup::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Some(Backup::Absent) | None => None,
        };
        // Unchanged since our install: restore the exact original.
        if let Some(b) = backup {
            let ours = self
                .desired_install(original.as_deref(), containerd_major)
                .ok();
            if ours.as_deref() == Some(current) {
                return Ok(match b {
                    Backup::Bytes(_) => original,
                    Backup::Absent => None,
                });
            }
        }
        match &self.layout.kind {
            ConfigKind::Toml => config_patch::uninstall(current)
                .map(|p| Some(p.text))
                .map_err(|e| self.patch_err(e)),
            ConfigKind::Template { .. } => {
                k3s_template::uninstall(current).map_err(|e| self.template_err(e))
            }
            ConfigKind::DropIn { .. } => Ok(None),
        }
    }

    /// Whether the managed file carries our runtime.
    pub fn is_configured(&self, current: Option<&str>) -> Result<bool, PlanError> {
        let Some(current) = current else {
            return Ok(false);
        };
        match &self.layout.kind {
            ConfigKind::Template { .. } => Ok(k3s_template::is_installed(current)),
            ConfigKind::Toml | ConfigKind::DropIn { .. } => config_patch::analyze(current)
                .map(|a| a.entry.is_some_and(|e| e.runtime_type == RUNTIME_TYPE))
                .map_err(|e| self.patch_err(e)),
        }
    }

    /// The check a new file must pass before it is renamed into place: it parses, and carries
    /// our runtime exactly when `with_runtime`.
    pub fn validator(&self, with_runtime: bool) -> impl Fn(&[u8]) -> Result<(), String> + '_ {
        move |bytes| {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            let has = match &self.layout.kind {
                ConfigKind::Template { .. } => k3s_template::is_installed(text),
                ConfigKind::Toml | ConfigKind::DropIn { .. } => config_patch::analyze(text)
                    .map_err(|e| e.to_string())?
                    .entry
                    .is_some(),
            };
            if has == with_runtime {
                Ok(())
            } else if with_runtime {
                Err("it lacks the wasmkube runtime".into())
            } else {
                Err("it still has the wasmkube runtime".into())
            }
        }
    }

    /// Whether containerd serves our handler with our shim.
    pub fn serves_handler(&self, s: &CriState) -> bool {
        s.handler.as_ref().is_some_and(|h| {
            (h.runtime_type.is_empty() || h.runtime_type == RUNTIME_TYPE)
                && (h.runtime_path.is_empty() || h.runtime_path == self.runtime_path)
        })
    }
}

/// A file's text, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, PlanError> {
    match std::fs::read(path) {
        Ok(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|_| PlanError::NotUtf8 {
                path: path.to_path_buf(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PlanError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A unified diff of the managed file (`/dev/null` for a missing side).
pub fn unified_diff(path: &Path, old: Option<&str>, new: Option<&str>) -> String {
    let name = path.display().to_string();
    let a = if old.is_some() {
        format!("a{name}")
    } else {
        "/dev/null".into()
    };
    let b = if new.is_some() {
        format!("b{name}")
    } else {
        "/dev/null".into()
    };
    similar::TextDiff::from_lines(old.unwrap_or(""), new.unwrap_or(""))
        .unified_diff()
        .context_radius(3)
        .header(&a, &b)
        .to_string()
}
