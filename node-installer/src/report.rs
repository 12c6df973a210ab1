//! The result of a run: one JSON object to `--result-file` (the pod's termination message) and
//! stdout, and the matching exit code.
use std::collections::BTreeMap;
use std::path::Path;

use crate::flavour::Flavour;

/// Kubernetes truncates termination messages at 4096 bytes; we stay under it.
pub const MAX_RESULT_BYTES: usize = 4096;

/// What happened, and how a failure left the node (which decides the exit code): the types
/// the operator reads back (`wasmkube-contract`).
pub use wasmkube_contract::installer::{InstallerFailure as Failure, InstallerState as State};

/// The JSON result.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub state: State,
    pub flavour: Option<Flavour>,
    /// The host path of the file we manage.
    pub config_path: Option<String>,
    pub containerd_version: Option<String>,
    pub shim_version: Option<String>,
    pub shim_sha256: Option<String>,
    pub restarted: bool,
    /// Whether containerd was asked over CRI and confirmed the outcome.
    pub verified: bool,
    /// The wasm check (see `wasm_check`): what ran, or why it failed; absent when containerd
    /// was not asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasm_check: Option<String>,
    pub message: String,
    /// A stable name for the failure cause (`SchemaV1`, `ParseError`, `VerifyTimeout`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// What this run did to the node, in order (`config-restored`, `shim-removed`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<&'static str>,
    /// Milliseconds per step: `detect`, `copy`, `patch`, `restart`, `verify`, `total`.
    pub timings: BTreeMap<&'static str, u64>,
}

impl Report {
    pub fn new(state: State) -> Self {
        Report {
            state,
            flavour: None,
            config_path: None,
            containerd_version: None,
            shim_version: None,
            shim_sha256: None,
            restarted: false,
            verified: false,
            wasm_check: None,
            message: String::new(),
            reason: None,
            failure: None,
            changes: Vec::new(),
            timings: BTreeMap::new(),
        }
    }

    /// Marks the report failed.
    pub fn fail(&mut self, failure: Failure, reason: &str, message: impl Into<String>) {
        self.state = State::Failed;
        self.failure = Some(failure);
        self.reason = Some(reason.to_string());
        self.message = message.into();
    }

    /// 0 for success states, 1/3/4 for failures (see [`Failure`]).
    pub fn exit_code(&self) -> i32 {
        match (self.state, self.failure) {
            (State::Failed, Some(Failure::RolledBack)) => 3,
            (State::Failed, Some(Failure::RollbackFailed | Failure::RollbackConflict)) => 4,
            (State::Failed, _) => 1,
            _ => 0,
        }
    }

    /// The JSON, with `message` shortened until it fits in [`MAX_RESULT_BYTES`].
    pub fn to_json(&self) -> String {
        let mut r = self.clone();
        loop {
            let json = serde_json::to_string(&r).unwrap_or_else(|e| {
                format!("{{\"state\":\"failed\",\"message\":\"cannot encode result: {e}\"}}")
            });
            if json.len() < MAX_RESULT_BYTES || r.message.is_empty() {
                return json;
            }
            let over = json.len() - MAX_RESULT_BYTES + 16;
            let mut keep = r.message.len().saturating_sub(over.max(64));
            while !r.message.is_char_boundary(keep) {
                keep -= 1;
            }
            r.message.truncate(keep);
            r.message.push_str(" [...]");
        }
    }

    /// Writes the JSON to `path` (best effort: the stdout copy always happens).
    pub fn write_result_file(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json())
    }

    /// Prints the JSON on stdout, writes it to `result_file` (not for a dry run) and returns the
    /// exit code. A result file that cannot be written is logged to stderr and never changes
    /// the exit code: the code says what happened to the node, and the stdout copy is there.
    pub fn publish(&self, result_file: &Path) -> i32 {
        println!("{}", self.to_json());
        if self.state != State::DryRun {
            if let Err(e) = self.write_result_file(result_file) {
                eprintln!(
                    "wasmkube-node-installer: cannot write the result to {}: {e} (the exit code \
                     and the JSON on stdout still stand)",
                    result_file.display()
                );
            }
        }
        self.exit_code()
    }

    pub fn time(&mut self, step: &'static str, since: std::time::Instant) {
        let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        *self.timings.entry(step).or_insert(0) += ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_size_limit() {
        let mut r = Report::new(State::Installed);
        r.flavour = Some(Flavour::K3s);
        r.shim_sha256 = Some("ab".repeat(32));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
        for k in [
            "state",
            "flavour",
            "configPath",
            "containerdVersion",
            "shimVersion",
            "shimSha256",
            "restarted",
            "message",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        assert_eq!(v["state"], "installed");
        assert_eq!(v["flavour"], "k3s");
        r.fail(Failure::RolledBack, "VerifyTimeout", "é".repeat(10_000));
        let json = r.to_json();
        assert!(json.len() < MAX_RESULT_BYTES, "{}", json.len());
        assert!(serde_json::from_str::<serde_json::Value>(&json).is_ok());
        assert_eq!(r.exit_code(), 3);
    }

    #[test]
    fn an_unwritable_result_file_keeps_the_exit_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nowhere = dir.path().join("no/such/dir/result.json");
        for (failure, code) in [
            (Failure::NothingChanged, 1),
            (Failure::RolledBack, 3),
            (Failure::RollbackFailed, 4),
            (Failure::RollbackConflict, 4),
        ] {
            let mut r = Report::new(State::Installed);
            r.fail(failure, "X", "y");
            assert_eq!(r.publish(&nowhere), code, "{failure:?}");
        }
        assert_eq!(Report::new(State::Installed).publish(&nowhere), 0);
        let ok = dir.path().join("result.json");
        assert_eq!(Report::new(State::Uninstalled).publish(&ok), 0);
        assert!(std::fs::read_to_string(&ok)
            .expect("written")
            .contains("uninstalled"));
    }
}
