//! Command-line interface (clap). The verbs are in [`crate::install`], [`crate::uninstall`] and
//! [`crate::status`].
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::flavour::Flavour;
use crate::restart::RestartMode;
use crate::shim_install::{SHIM_HOST_DIR, SHIM_NAME};

/// Where the installer image keeps the wasm check module.
pub const CHECK_MODULE: &str = "/usr/local/share/wasmkube/check.wasm";

/// Provisions a node's containerd with the wasmkube shim: parse, back up, patch, restart,
/// verify, report. Everything it touches is under --host-root.
#[derive(Debug, Parser)]
#[command(name = "wasmkube-node-installer", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub options: Options,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Install the shim and the `wasmkube` runtime, restart containerd, verify.
    Install,
    /// Remove the runtime and the shim, restart containerd, verify the handler is gone.
    Uninstall,
    /// Report what is installed; change nothing.
    Status,
    /// Do nothing until SIGTERM/SIGINT: the installer pod's long-running container, which keeps
    /// the pod (and the init container's result) around without another image.
    Idle,
    /// Run only the wasm check (see `install`), N times, against the node's containerd, and
    /// report each run; changes nothing else. For a person debugging a node.
    Check {
        /// How many times to run it.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
    },
}

/// The verbs that look at or change the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Install,
    Uninstall,
    Status,
}

impl Command {
    /// The node verb, or `None` for `idle` and `check`.
    pub fn verb(self) -> Option<Verb> {
        match self {
            Command::Install => Some(Verb::Install),
            Command::Uninstall => Some(Verb::Uninstall),
            Command::Status => Some(Verb::Status),
            Command::Idle | Command::Check { .. } => None,
        }
    }
}

/// `--flavour`
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlavourChoice {
    Auto,
    Containerd,
    Kind,
    K3s,
    Rke2,
    Microk8s,
    K0s,
}

impl FlavourChoice {
    pub fn forced(self) -> Option<Flavour> {
        match self {
            FlavourChoice::Auto => None,
            FlavourChoice::Containerd => Some(Flavour::Containerd),
            FlavourChoice::Kind => Some(Flavour::Kind),
            FlavourChoice::K3s => Some(Flavour::K3s),
            FlavourChoice::Rke2 => Some(Flavour::Rke2),
            FlavourChoice::Microk8s => Some(Flavour::Microk8s),
            FlavourChoice::K0s => Some(Flavour::K0s),
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct Options {
    /// The host's root filesystem as mounted in this container.
    #[arg(long, global = true, default_value = "/host")]
    pub host_root: PathBuf,
    /// The shim binary to install [default: containerd-shim-wasmkube-v1 beside this binary].
    #[arg(long, global = true)]
    pub shim: Option<PathBuf>,
    /// How to restart containerd after a config change.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub restart: RestartMode,
    /// Run this shell command to restart containerd instead (overrides --restart auto|systemd).
    #[arg(long, global = true)]
    pub restart_cmd: Option<String>,
    /// Override the detected containerd flavour.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub flavour: FlavourChoice,
    /// Print the config diff and what would be done; change nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Where to write the JSON result (the pod's termination message).
    #[arg(long, global = true, default_value = "/dev/termination-log")]
    pub result_file: PathBuf,
    /// containerd's socket as seen from here [default: the flavour's socket under --host-root].
    #[arg(long, global = true)]
    pub containerd_address: Option<PathBuf>,
    /// The shim's path as containerd sees it, written as `runtime_path`.
    #[arg(long, global = true, default_value_t = format!("{SHIM_HOST_DIR}/{SHIM_NAME}"))]
    pub runtime_path: String,
    /// Host directory on containerd's PATH for a symlink to the shim (containerd 1.6 ignores
    /// `runtime_path` for pod sandboxes and looks the shim up by name); empty: no link.
    #[arg(long, global = true, default_value = "/usr/local/bin", value_parser = path_or_empty)]
    pub path_link: PathBuf,
    /// Seconds to wait for containerd to come back after a restart.
    #[arg(long, global = true, default_value_t = 60)]
    pub timeout: u64,
    /// The wasm module of the wasm check: once CRI serves the `wasmkube` handler, a container
    /// in containerd namespace `wasmkube-check` runs it with that handler's runtime and must
    /// exit with the code it is asked for (see `wasm_check`). A local file; the installer
    /// image carries it.
    #[arg(long, global = true, default_value = CHECK_MODULE)]
    pub check_module: PathBuf,
    /// Do not run the wasm check (dry runs, machines without a containerd to ask; a node is
    /// then verified by its CRI config alone, and the report says so).
    #[arg(long, global = true)]
    pub skip_wasm_check: bool,
    /// The host root as containerd sees it: `/` on a node, where containerd runs in the host's
    /// `/`. The wasm check's rootfs, made under --host-root, is given to containerd under it.
    #[arg(long, global = true, default_value = "/")]
    pub host_root_for_containerd: PathBuf,
    /// Do not ask containerd anything (for dry runs against a directory that has no daemon).
    #[arg(long, global = true)]
    pub skip_verify: bool,
    /// containerd's version when containerd is not asked (--skip-verify, or not reachable before
    /// the run): decides whether the PATH link is needed (1.6) and the schema of a new config.
    #[arg(long, global = true)]
    pub containerd_version: Option<String>,
    /// Seconds to wait for another installer run on this node to finish (host-side lock
    /// `/run/wasmkube/installer.lock`).
    #[arg(long, global = true, default_value_t = 120)]
    pub lock_timeout: u64,
}

/// A path where the empty string is allowed (clap's `PathBuf` parser refuses it), for
/// `--path-link ''`.
fn path_or_empty(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

impl Options {
    /// The shim to install.
    pub fn shim_source(&self) -> PathBuf {
        self.shim.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join(SHIM_NAME)))
                .unwrap_or_else(|| PathBuf::from(SHIM_NAME))
        })
    }

    /// The wasm check these options ask for.
    pub fn wasm_check(&self) -> crate::wasm_check::WasmCheck {
        crate::wasm_check::WasmCheck {
            module: self.check_module.clone(),
            host_root: self.host_root.clone(),
            host_root_for_containerd: self.host_root_for_containerd.clone(),
        }
    }

    /// Defaults for tests and library users: host root `dir`, no restart, no verify, no wasm
    /// check.
    pub fn for_host_root(dir: impl Into<PathBuf>) -> Self {
        Options {
            host_root: dir.into(),
            shim: None,
            restart: RestartMode::None,
            restart_cmd: None,
            flavour: FlavourChoice::Auto,
            dry_run: false,
            result_file: PathBuf::from("/dev/null"),
            containerd_address: None,
            runtime_path: format!("{SHIM_HOST_DIR}/{SHIM_NAME}"),
            path_link: PathBuf::from("/usr/local/bin"),
            timeout: 60,
            check_module: PathBuf::from(CHECK_MODULE),
            skip_wasm_check: true,
            host_root_for_containerd: PathBuf::from("/"),
            skip_verify: true,
            containerd_version: None,
            lock_timeout: 120,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_path_link_means_none() {
        let cli = Cli::try_parse_from(["x", "install", "--path-link", ""]).expect("parses");
        assert!(cli.options.path_link.as_os_str().is_empty());
        let cli = Cli::try_parse_from(["x", "install"]).expect("parses");
        assert_eq!(cli.options.path_link, PathBuf::from("/usr/local/bin"));
    }

    #[test]
    fn the_wasm_check_is_on_by_default_and_check_repeats() {
        let cli = Cli::try_parse_from(["x", "install"]).expect("parses");
        assert!(!cli.options.skip_wasm_check);
        assert_eq!(cli.options.check_module, PathBuf::from(CHECK_MODULE));
        assert_eq!(cli.options.host_root_for_containerd, PathBuf::from("/"));
        let cli = Cli::try_parse_from(["x", "check", "--repeat", "50"]).expect("parses");
        assert_eq!(cli.command, Command::Check { repeat: 50 });
        assert_eq!(cli.command.verb(), None);
        assert!(Cli::try_parse_from(["x", "check", "--repeat", "0"]).is_err());
        let cli = Cli::try_parse_from(["x", "check"]).expect("parses");
        assert_eq!(cli.command, Command::Check { repeat: 1 });
    }
}
