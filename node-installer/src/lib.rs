//! wasmkube node installer: provisions a node's containerd with the bundled shim — parse, back
//! up, patch, restart, verify, report, and undo all of it on `uninstall`.
//!
//! Everything it touches is under `--host-root`, so it runs unchanged against a temp directory
//! that plays the host. See `README.md` for the flags, flavours, guarantees and exit codes.
pub mod atomic_write;
pub mod cli;
pub mod config_patch;
pub mod flavour;
pub mod idle;
pub mod install;
pub mod k3s_template;
pub mod node;
pub mod report;
pub mod restart;
pub mod shim_install;
pub mod status;
pub mod uninstall;
pub mod verify;
pub mod wasm_check;

pub use cli::{Cli, Command, Options, Verb};
pub use report::{Report, State};

/// Runs one verb.
pub fn run(verb: Verb, options: &Options) -> Report {
    match verb {
        Verb::Install => install::install(options),
        Verb::Uninstall => uninstall::uninstall(options),
        Verb::Status => status::status(options),
    }
}
