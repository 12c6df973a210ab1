//! The node installer's result, as the installer writes it (its termination message) and the
//! operator reads it: the states and failure kinds both sides name.
use serde::{Deserialize, Serialize};

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
