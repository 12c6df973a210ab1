//! `check [--repeat N]`: only the wasm check ([`crate::wasm_check`]), N times, against the
//! node's containerd; each run is reported on its own line, then the usual JSON result. It
//! changes nothing on the node but the check's own directory and containerd namespace, which
//! every run removes again.
//!
//! Each run first asks CRI for the handler (as `install` does before its check), so a run also
//! fails when containerd stops serving `wasmkube`. Each run holds the node's installer lock,
//! so a check never races an install on the same node (whose check would remove this run's
//! container as a leftover), and an install waits for one run, not for all N.
use std::time::{Duration, Instant};

use crate::cli::Options;
use crate::host_lock::HostLock;
use crate::node::Node;
use crate::report::{Failure, Report, State};
use crate::verify;
use crate::wasm_check;

/// Runs the check `repeat` times; `line` gets one human line per run.
pub fn check(o: &Options, repeat: u32, mut line: impl FnMut(&str)) -> Report {
    let total = Instant::now();
    let mut r = Report::new(State::Checked);
    let Some(node) = Node::for_report(o, &mut r) else {
        r.time("total", total);
        return r;
    };
    let mut took: Vec<Duration> = Vec::new();
    let mut first_failure: Option<String> = None;
    for n in 1..=repeat {
        match once(o, &node, &mut r) {
            Ok(passed) => {
                line(&format!(
                    "check {n}/{repeat}: passed: {}",
                    passed.describe()
                ));
                if passed.leftovers > 0 {
                    line(&format!(
                        "check {n}/{repeat}: removed {} leftovers of earlier checks first",
                        passed.leftovers
                    ));
                }
                r.wasm_check = Some(passed.describe());
                took.push(passed.took);
            }
            Err(e) => {
                tracing::warn!(run = n, "wasm check failed: {e}");
                line(&format!("check {n}/{repeat}: FAILED: {e}"));
                first_failure.get_or_insert_with(|| format!("run {n}: {e}"));
            }
        }
    }
    let passed = took.len();
    let failed = repeat as usize - passed;
    took.sort();
    let stats = match (took.get(took.len() / 2), took.last()) {
        (Some(median), Some(max)) => format!(
            " (median {} ms, max {} ms)",
            median.as_millis(),
            max.as_millis()
        ),
        _ => String::new(),
    };
    let summary = format!("{passed} of {repeat} wasm checks passed{stats}");
    line(&summary);
    match first_failure {
        None => {
            r.verified = true;
            r.message = summary;
        }
        Some(first) => r.fail(
            Failure::NothingChanged,
            wasmkube_contract::installer::reasons::WASM_CHECK_FAILED,
            format!("{failed} of {repeat} wasm checks failed; first: {first}; {summary}"),
        ),
    }
    r.time("total", total);
    r
}

/// Why one run failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    Lock(#[from] crate::host_lock::LockError),
    #[error(transparent)]
    Cri(#[from] verify::VerifyError),
    #[error(transparent)]
    Check(#[from] wasm_check::CheckError),
}

fn once(o: &Options, node: &Node, r: &mut Report) -> Result<wasm_check::Passed, RunError> {
    let t = Instant::now();
    let lock = HostLock::acquire(&o.host_root, "check", Duration::from_secs(o.lock_timeout))?;
    r.time("lock", t);
    let t = Instant::now();
    let cri = verify::probe(&node.socket)?;
    r.containerd_version = Some(cri.version.clone());
    let passed = wasm_check::run(&node.socket, &cri, &o.wasm_check());
    r.time("wasmCheck", t);
    drop(lock);
    Ok(passed?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_containerd_every_run_fails_and_says_why() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut o = Options::for_host_root(root.path());
        o.containerd_address = Some(root.path().join("no.sock"));
        let mut lines = Vec::new();
        let r = check(&o, 2, |l| lines.push(l.to_string()));
        assert_eq!(r.exit_code(), 1);
        assert_eq!(r.reason.as_deref(), Some("WasmCheckFailed"));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("check 1/2: FAILED: "), "{lines:?}");
        assert_eq!(lines[2], "0 of 2 wasm checks passed");
        assert!(r
            .message
            .starts_with("2 of 2 wasm checks failed; first: run 1: "));
    }
}
