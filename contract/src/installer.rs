//! The node installer's result, as the installer writes it (its termination message) and the
//! operator reads it: the states, failure kinds and reasons both sides name.
use serde::{Deserialize, Serialize};

/// The environment variable that makes the installer SIGKILL itself at a named step (its crash
/// points, node-installer/src/crash_point.rs), for the tests that prove a killed run loses nothing.
pub const CRASH_AT_ENV: &str = "WASMKUBE_INSTALLER_CRASH_AT";

/// What an installer run did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallerState {
    /// Something was written (shim, config) or containerd restarted; the handler is verified.
    Installed,
    /// Everything was already in place; nothing written, nothing restarted.
    Unchanged,
    /// Our runtime and shim are gone and the handler is no longer served.
    Uninstalled,
    /// `status`: nothing of ours is on the node.
    NotInstalled,
    /// `status`: some of it is there (see the message).
    Partial,
    /// `--dry-run`: the diff was printed, nothing changed.
    DryRun,
    /// `check`: every wasm check run passed (see the message).
    Checked,
    /// It did not work; see `message`, `reason` and the exit code.
    Failed,
    /// A state a newer installer reports (read only, never written).
    #[serde(other)]
    Unknown,
}

/// How a failed run left the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallerFailure {
    /// Refused or failed before changing anything (exit 1).
    NothingChanged,
    /// Changed, failed verification, and was rolled back (exit 3).
    RolledBack,
    /// Changed, failed, and the rollback failed too: the node needs a human (exit 4).
    RollbackFailed,
    /// Changed, failed, and someone else edited the config meanwhile: their edit is kept, so the
    /// config was not rolled back and the node needs a human (exit 4).
    RollbackConflict,
    /// A kind a newer installer reports (read only, never written).
    #[serde(other)]
    Unknown,
}

impl InstallerFailure {
    /// Whether the node needs a person whatever the reason: no retry can mend it.
    pub fn needs_a_person(self) -> bool {
        matches!(
            self,
            InstallerFailure::RollbackFailed | InstallerFailure::RollbackConflict
        )
    }
}

/// The `reason` values the installer reports (each error's `fn reason` in `node-installer/src`)
/// and the operator classifies (`operator/src/install_failure.rs`).
pub mod reasons {
    // Refusals of the config or the host: the same input gives the same answer.
    /// containerd's config is not valid TOML.
    pub const PARSE_ERROR: &str = "ParseError";
    /// A version 1 config (containerd before 1.6's schema).
    pub const SCHEMA_V1: &str = "SchemaV1";
    /// A config `version` this installer does not know.
    pub const UNSUPPORTED_VERSION: &str = "UnsupportedVersion";
    /// A key the patch must descend through is not a table.
    pub const NOT_A_TABLE: &str = "NotATable";
    /// The handler's name is taken by someone else's runtime.
    pub const FOREIGN_RUNTIME: &str = "ForeignRuntime";
    /// The patched config did not read back as intended.
    pub const SELF_CHECK: &str = "SelfCheck";
    /// A k3s/RKE2 template the installer cannot extend.
    pub const TEMPLATE_CONFLICT: &str = "TemplateConflict";
    /// The config is not UTF-8.
    pub const NOT_UTF8: &str = "NotUtf8";
    /// A host path escapes the host's root or cannot be resolved.
    pub const HOST_PATH: &str = "HostPath";
    /// No way to restart containerd on this node (flavour, `--restart`, `--restart-cmd`).
    pub const RESTART_PLAN: &str = "RestartPlan";
    // Conditions of the moment: another attempt may pass.
    /// Another installer holds the node's lock.
    pub const LOCKED: &str = "Locked";
    /// The lock file could not be taken.
    pub const LOCK_ERROR: &str = "LockError";
    /// The config could not be read.
    pub const READ_ERROR: &str = "ReadError";
    /// Copying the shim onto the host failed.
    pub const SHIM_COPY: &str = "ShimCopy";
    /// Linking the shim into containerd's PATH failed.
    pub const SHIM_LINK: &str = "ShimLink";
    /// Backing up the original config failed.
    pub const BACKUP: &str = "Backup";
    /// The backup of the original config could not be read (uninstall).
    pub const READ_BACKUP: &str = "ReadBackup";
    /// Writing the config failed.
    pub const WRITE_CONFIG: &str = "WriteConfig";
    /// containerd did not restart.
    pub const RESTART_FAILED: &str = "RestartFailed";
    /// containerd's CRI socket did not answer.
    pub const CONTAINERD_UNREACHABLE: &str = "ContainerdUnreachable";
    /// A CRI call failed.
    pub const CRI_CALL_FAILED: &str = "CriCallFailed";
    /// CRI did not report the handler in time.
    pub const VERIFY_TIMEOUT: &str = "VerifyTimeout";
    /// The wasm container did not run as expected.
    pub const WASM_CHECK_FAILED: &str = "WasmCheckFailed";
    /// What a killed earlier run left (temp files) could not be removed.
    pub const LEFTOVERS: &str = "Leftovers";
    /// Uninstall: the config is reverted but the shim (or its PATH link) could not be removed.
    pub const REMOVE_SHIM: &str = "RemoveShim";
    /// Uninstall: done but the config backup could not be removed.
    pub const REMOVE_BACKUP: &str = "RemoveBackup";
    /// Uninstall: done but the compiled-module cache could not be removed.
    pub const REMOVE_CACHE: &str = "RemoveCache";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kebab_case_and_unknown_ones_read_as_unknown() {
        let text = serde_json::to_string(&InstallerFailure::RollbackConflict).expect("json");
        assert_eq!(text, "\"rollback-conflict\"");
        let f: InstallerFailure = serde_json::from_str("\"rollback-conflict\"").expect("read");
        assert!(f.needs_a_person());
        let f: InstallerFailure = serde_json::from_str("\"something-new\"").expect("read");
        assert_eq!(f, InstallerFailure::Unknown);
        let s: InstallerState = serde_json::from_str("\"not-installed\"").expect("read");
        assert_eq!(s, InstallerState::NotInstalled);
        let s: InstallerState = serde_json::from_str("\"later\"").expect("read");
        assert_eq!(s, InstallerState::Unknown);
    }
}
