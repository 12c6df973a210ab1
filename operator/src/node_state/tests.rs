//! The decision table's unit tests.

use super::*;

const NOW: &str = "2026-11-25T10:00:00Z";
const EARLIER: &str = "2026-11-25T09:00:00Z";

fn rt(state: Option<&str>, shim: Option<&str>, reason: Option<&str>) -> NodeRuntime {
    NodeRuntime {
        state: state.map(String::from),
        shim_version: shim.map(String::from),
        reason: reason.map(String::from),
        attempts: None,
        since: Some(EARLIER.to_string()),
    }
}

fn attempts(mut r: NodeRuntime, n: Option<u32>) -> NodeRuntime {
    r.attempts = n;
    r
}

fn since(mut r: NodeRuntime, s: Option<&str>) -> NodeRuntime {
    r.since = s.map(String::from);
    r
}

fn seen(opted_in: bool) -> Observed {
    Observed {
        opted_in,
        slot_free: true,
        now: NOW.to_string(),
        ..Observed::default()
    }
}

fn installed(v: &str) -> Option<Outcome> {
    Some(Outcome::Installed {
        shim_version: v.to_string(),
    })
}

/// A permanent failure (a refused config, a missing pod).
fn failed(m: &str) -> Option<Outcome> {
    Some(Outcome::Failed(Failure {
        reason: None,
        message: m.to_string(),
        retry: Retry::Permanent,
        attempt: Some(1),
    }))
}

/// A failure the kubelet's next attempt may fix, on `attempt`.
fn retryable(m: &str, attempt: u32) -> Option<Outcome> {
    Some(Outcome::Failed(Failure {
        reason: Some("WasmCheckFailed".to_string()),
        message: format!("WasmCheckFailed: {m}"),
        retry: Retry::Retryable,
        attempt: Some(attempt),
    }))
}

fn install(outcome: Option<Outcome>) -> Observed {
    Observed {
        install: outcome,
        ..seen(true)
    }
}

fn reason(e: Option<NodeEvent>) -> Option<&'static str> {
    e.map(|e| e.reason)
}

#[test]
fn opt_in_waits_for_a_slot_then_installs() {
    let clean = NodeRuntime::default();
    // A free slot: straight to pending, since = now.
    let (n, e) = decide(&clean, &seen(true));
    assert_eq!(n, since(rt(Some(PENDING), None, None), Some(NOW)));
    assert_eq!(reason(e), Some(reasons::PROVISIONING));
    // No slot: queued (since = now, the queue's order), and it stays queued quietly.
    let busy = Observed {
        slot_free: false,
        ..seen(true)
    };
    let (q, e) = decide(&clean, &busy);
    assert_eq!(q, since(rt(Some(QUEUED), None, None), Some(NOW)));
    assert_eq!(reason(e), Some(reasons::QUEUED));
    assert_eq!(decide(&q, &busy), (q.clone(), None));
    // A slot frees: pending.
    assert_eq!(decide(&q, &seen(true)).0.state.as_deref(), Some(PENDING));
}

#[test]
fn installer_results_move_pending_ready_failed() {
    let cur = rt(Some(PENDING), None, None);
    assert_eq!(decide(&cur, &seen(true)), (cur.clone(), None));
    let ok = Observed {
        install: installed("0.1.0@sha256:ab"),
        ..seen(true)
    };
    let (n, e) = decide(&cur, &ok);
    assert_eq!(n, rt(Some(READY), Some("0.1.0@sha256:ab"), None));
    assert_eq!(reason(e), Some(reasons::READY));
    assert_eq!(decide(&n, &ok), (n.clone(), None), "ready + same result");
    let bad = Observed {
        install: failed("no config"),
        ..seen(true)
    };
    let (f, e) = decide(&cur, &bad);
    assert_eq!(
        f,
        attempts(rt(Some(FAILED), None, Some("no config")), Some(1))
    );
    assert_eq!(
        e.map(|e| (e.type_, e.reason)),
        Some((EventType::Warning, reasons::INSTALL_FAILED))
    );
    assert_eq!(
        decide(&f, &bad).1,
        None,
        "the same failure is reported once"
    );
    // A retry's success clears the reason and keeps the run's since.
    assert_eq!(
        decide(&f, &ok).0,
        rt(Some(READY), Some("0.1.0@sha256:ab"), None)
    );
}

#[test]
fn opt_out_drains_then_removes_then_cleans() {
    let ready = rt(Some(READY), Some("v"), None);
    let (d, e) = decide(&ready, &seen(false));
    assert_eq!(d, since(rt(Some(DRAINING), Some("v"), None), Some(NOW)));
    assert!(d.tainted());
    assert_eq!(reason(e), Some(reasons::DRAINING));
    // Wasm pods left: stay draining.
    assert_eq!(decide(&d, &seen(false)), (d.clone(), None));
    let drained = Observed {
        drained: true,
        ..seen(false)
    };
    let (r, e) = decide(&d, &drained);
    assert_eq!(r.state.as_deref(), Some(REMOVING));
    assert!(r.tainted());
    assert_eq!(reason(e), Some(reasons::REMOVING));
    // removing + failed → stays removing (so it retries), reason recorded once.
    let bad = Observed {
        uninstall: failed("busy"),
        ..seen(false)
    };
    let (rf, e) = decide(&r, &bad);
    assert_eq!(rf.reason.as_deref(), Some("busy"));
    assert_eq!(rf.state.as_deref(), Some(REMOVING));
    assert!(e.is_some());
    assert_eq!(decide(&rf, &bad).1, None);
    let done = Observed {
        uninstall: Some(Outcome::Uninstalled),
        ..seen(false)
    };
    let (clean, e) = decide(&rf, &done);
    assert_eq!(clean, NodeRuntime::default());
    assert!(!clean.tainted());
    assert_eq!(reason(e), Some(reasons::REMOVED));
}

#[test]
fn re_opt_in_while_draining_or_removing_installs_again() {
    for s in [DRAINING, REMOVING] {
        let cur = rt(Some(s), Some("v"), Some("busy"));
        let (n, e) = decide(&cur, &seen(true));
        assert_eq!(n, since(rt(Some(PENDING), Some("v"), None), Some(NOW)));
        assert!(!n.tainted());
        assert_eq!(reason(e), Some(reasons::PROVISIONING));
    }
}

#[test]
fn queued_opt_out_only_drains_when_a_shim_may_be_there() {
    let q = rt(Some(QUEUED), None, None);
    let (n, _) = decide(&q, &seen(false));
    assert_eq!(n, NodeRuntime::default());
    // Queued after a re-opt-in from draining: the old shim is still on the node.
    let q = rt(Some(QUEUED), Some("v"), None);
    assert_eq!(decide(&q, &seen(false)).0.state.as_deref(), Some(DRAINING));
}

#[test]
fn untouched_and_unknown() {
    assert_eq!(
        decide(&NodeRuntime::default(), &seen(false)),
        (NodeRuntime::default(), None)
    );
    // Someone wrote a value we do not know: treat as installed, drain and uninstall.
    let odd = rt(Some("weird"), None, None);
    assert_eq!(
        decide(&odd, &seen(false)).0.state.as_deref(),
        Some(DRAINING)
    );
}

#[test]
fn a_retryable_failure_stays_pending_with_its_attempt() {
    let cur = rt(Some(PENDING), None, None);
    let (p, e) = decide(&cur, &install(retryable("exited 143", 1)));
    assert_eq!(
        p,
        attempts(
            rt(Some(PENDING), None, Some("WasmCheckFailed: exited 143")),
            Some(1)
        )
    );
    let e = e.expect("an event per new failure");
    assert_eq!(
        (e.type_, e.reason),
        (EventType::Warning, reasons::INSTALL_RETRYING)
    );
    assert!(e.note.contains("attempt 1 of 5"), "{}", e.note);
    assert!(e.note.contains("will retry"), "{}", e.note);
    // The same attempt seen again (its retry is running): nothing new.
    assert_eq!(
        decide(&p, &install(retryable("exited 143", 1))),
        (p.clone(), None)
    );
    // The next attempt fails the same way: a new event, the count moves.
    let (p2, e) = decide(&p, &install(retryable("exited 143", 2)));
    assert_eq!(p2.attempts, Some(2));
    assert_eq!(p2.state.as_deref(), Some(PENDING));
    assert!(e.is_some_and(|e| e.note.contains("attempt 2 of 5")));
    // The pod is not "missing" while it is retried, and no slot changes hands: still pending.
    assert_eq!(decide(&p2, &seen(true)), (p2.clone(), None));
}

#[test]
fn a_retry_that_passes_makes_the_node_ready() {
    let retrying = attempts(
        rt(Some(PENDING), None, Some("WasmCheckFailed: exited 143")),
        Some(1),
    );
    let (n, e) = decide(&retrying, &install(installed("0.1.0@sha256:ab")));
    // Reason and attempts are cleared; the run's since is kept.
    assert_eq!(n, rt(Some(READY), Some("0.1.0@sha256:ab"), None));
    let e = e.expect("ready event");
    assert_eq!(e.reason, reasons::READY);
    assert!(
        e.note.ends_with("(attempt 2, after 1 failed)"),
        "{}",
        e.note
    );
}

#[test]
fn the_last_attempt_fails_the_node() {
    let cur = attempts(
        rt(Some(PENDING), None, Some("WasmCheckFailed: exited 143")),
        Some(4),
    );
    let (f, e) = decide(&cur, &install(retryable("exited 143", 5)));
    assert_eq!(f.state.as_deref(), Some(FAILED));
    assert_eq!(f.attempts, Some(5));
    assert_eq!(
        f.reason.as_deref(),
        Some("WasmCheckFailed: exited 143 (gave up after 5 attempts)")
    );
    assert_eq!(reason(e), Some(reasons::INSTALL_FAILED));
    // The kubelet keeps trying: later failures update the count quietly and stay failed.
    let (f6, e) = decide(&f, &install(retryable("exited 143", 6)));
    assert_eq!(f6.state.as_deref(), Some(FAILED));
    assert_eq!(f6.attempts, Some(6));
    assert_eq!(e, None);
    // And a late success still makes it ready.
    assert_eq!(
        decide(&f6, &install(installed("v"))).0.state.as_deref(),
        Some(READY)
    );
    // A lower limit ends sooner.
    let strict = Observed {
        max_install_attempts: 2,
        ..install(retryable("exited 143", 2))
    };
    assert_eq!(decide(&cur, &strict).0.state.as_deref(), Some(FAILED));
}

#[test]
fn a_permanent_failure_fails_at_once() {
    let cur = rt(Some(PENDING), None, None);
    let (f, e) = decide(&cur, &install(failed("ParseError: line 2")));
    assert_eq!(f.state.as_deref(), Some(FAILED));
    assert_eq!(f.reason.as_deref(), Some("ParseError: line 2"));
    let e = e.expect("event");
    assert_eq!(
        (e.type_, e.reason),
        (EventType::Warning, reasons::INSTALL_FAILED)
    );
    assert!(e.note.contains("needs attention"), "{}", e.note);
}

#[test]
fn a_ready_node_whose_new_run_fails_retryably_is_pending() {
    // An installer upgrade whose first attempt fails: the node is being worked on, not failed.
    let ready = rt(Some(READY), Some("v"), None);
    let (p, e) = decide(&ready, &install(retryable("exited 143", 1)));
    assert_eq!(p.state.as_deref(), Some(PENDING));
    assert_eq!(p.shim_version.as_deref(), Some("v"));
    assert_eq!(p.since.as_deref(), Some(EARLIER), "not a new run");
    assert_eq!(reason(e), Some(reasons::INSTALL_RETRYING));
    // A fresh pod after a permanent failure retries again as pending.
    let failed_node = attempts(rt(Some(FAILED), Some("v"), Some("ParseError: x")), Some(1));
    let (p, _) = decide(&failed_node, &install(retryable("locked", 1)));
    assert_eq!(p.state.as_deref(), Some(PENDING));
}
