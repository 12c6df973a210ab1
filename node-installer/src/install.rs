//! `install`: the transaction ([`crate::transaction`]) with the goal "containerd serves the
//! wasmkube handler and runs wasm": copy the shim (and on containerd 1.6 link it on the PATH),
//! back up and patch the config, restart, verify, report — rolled back when containerd does not
//! come back serving the handler.
use std::time::Instant;

use crate::cli::Options;
use crate::node::unified_diff;
use crate::report::{Failure, Report, State};
use crate::shim_install::{sha256_file, shim_version};
use crate::transaction::{self, Goal, Outcome, Plan};
use crate::verify;

/// Runs `install`. Never panics; every outcome is in the report.
pub fn install(o: &Options) -> Report {
    let total = Instant::now();
    let mut r = Report::new(State::Installed);
    run(o, &mut r);
    r.time("total", total);
    r
}

fn run(o: &Options, r: &mut Report) {
    let t = Instant::now();
    let shim_src = o.shim_source();
    r.shim_version = shim_version(&shim_src);
    let Some(b) = transaction::begin(o, r) else {
        return;
    };
    let node = &b.node;
    // What containerd said, else what we were told (`--containerd-version`).
    let version = r
        .containerd_version
        .clone()
        .or_else(|| o.containerd_version.clone());
    let major = version
        .as_deref()
        .and_then(verify::major_minor)
        .map(|(major, _)| major);
    // Only containerd 1.6 needs the shim on its PATH: leave `--path-link` alone otherwise.
    let link = node
        .shim_link
        .clone()
        .filter(|_| verify::needs_path_link(version.as_deref()));
    let desired = match node.desired_install(b.current.as_deref(), major) {
        Ok(d) => d,
        Err(e) => return r.fail(Failure::NothingChanged, e.reason(), e.to_string()),
    };
    r.time("detect", t);

    if o.dry_run {
        let config_changed = b.current.as_deref() != Some(desired.as_str());
        let diff = unified_diff(&node.layout.config, b.current.as_deref(), Some(&desired));
        print!("{diff}");
        let shim_same = sha256_file(&shim_src)
            .ok()
            .is_some_and(|a| sha256_file(&node.shim_dest).ok() == Some(a));
        r.state = State::DryRun;
        r.message = format!(
            "dry run: config {}; shim {} at {}; {}; nothing changed",
            if config_changed {
                "would change (diff above)"
            } else {
                "already in place"
            },
            if shim_same {
                "already installed"
            } else {
                "would be installed"
            },
            node.shim_dest.display(),
            match &link {
                Some(l) => format!("PATH link {} wanted", l.display()),
                None => "no PATH link needed".to_string(),
            }
        );
        return;
    }

    let plan = Plan {
        goal: Goal::Serves,
        desired: Some(desired),
        config_change: "config-written",
        backup: true,
        shim_src: Some(shim_src),
        link,
    };
    let Some(done) = transaction::run(o, r, &b, plan) else {
        return;
    };
    transaction::commit(node, done.undo);
    r.state = State::Installed;
    r.message = match done.outcome {
        Outcome::NoRestartNeeded if !r.changes.is_empty() => {
            "shim updated; containerd already serves the wasmkube handler".into()
        }
        Outcome::NoRestartNeeded => {
            r.state = State::Unchanged;
            if o.skip_verify {
                "already installed (not verified: --skip-verify)".into()
            } else {
                "already installed; containerd serves the wasmkube handler".into()
            }
        }
        Outcome::NotRestarted => "installed; containerd was not restarted (--restart none), so \
                                  the wasmkube handler is active only after its next restart"
            .into(),
        Outcome::Restarted(None) => {
            "installed and containerd restarted (not verified: --skip-verify)".into()
        }
        Outcome::Restarted(Some(_)) => format!(
            "installed; containerd serves runtime handler wasmkube ({})",
            node.runtime_path
        ),
    };
}
