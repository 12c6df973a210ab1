//! The installer SIGKILLed at every step of `install` and `uninstall`, against a LIVE containerd
//! (Debian's 1.6; the harness's restart script plays systemd): after each kill, containerd's
//! config is the original bytes or the complete patched file (never half-written, always valid
//! TOML), the backup holds the original bytes, and the next run of either verb converges — to a
//! node that runs wasm, or to the original config with nothing of wasmkube left (no shim, link,
//! backup, temp file, kept previous shim, check container or check directory).
//! The kills are the installer's own crash points (`WASMKUBE_INSTALLER_CRASH_AT`, see
//! `src/crash_point.rs`): a real SIGKILL at a step chosen exactly, not a race.
#[path = "support/live_host.rs"]
mod live_host;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use live_host::Host;
use wasmkube_node_installer::atomic_write::{absent_marker, backup_path};
use wasmkube_node_installer::crash_point::ENV;
use wasmkube_test_harness::containerd::containerd2_bin_dir;
use wasmkube_test_harness::{missing_prerequisites, shim_binary, skip_unless};

const INSTALL_POINTS: &[&str] = &[
    "after-backup",
    "shim-copy",
    "after-config-write",
    "restart",
    "wasm-check",
    "before-commit",
];
const UNINSTALL_POINTS: &[&str] = &[
    "after-config-write",
    "restart",
    "after-shim-removed",
    "before-commit",
];

/// Runs `verb` with the crash point `point` set; asserts that it died by SIGKILL there.
fn killed_at(host: &Host, verb: &str, point: &str) {
    let restarts = host.ctd.restart_count();
    let out = host
        .installer_command(verb, &host.restart_cmd(), &[])
        .env(ENV, point)
        .output()
        .expect("run installer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{verb} was to die by SIGKILL at {point}: {:?}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(&format!("crash point {point} reached")),
        "{stderr}"
    );
    if point == "restart" {
        // Killed during the restart, the restart command goes on without it (as `systemctl
        // restart` would): let it finish (the script counts its restarts at its end), as a
        // node's would before the DaemonSet's next pod starts.
        wait_until(
            Duration::from_secs(60),
            "the orphaned restart to finish",
            || host.ctd.restart_count() > restarts && !restart_running(&host.restart_cmd()),
        );
    }
}

fn restart_running(script: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|p| {
            std::fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(script))
        })
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What every kill must leave: the config whole (the original or a complete patched file, valid
/// TOML either way) and the backup, when there is one, the original bytes.
fn assert_whole(host: &Host, after: &str) {
    let config = std::fs::read(host.config()).expect("config is there");
    let text = String::from_utf8(config.clone()).expect("utf-8");
    text.parse::<toml_edit::DocumentMut>()
        .unwrap_or_else(|e| panic!("after {after}: config is not valid TOML: {e}\n{text}"));
    if config != host.original {
        assert!(
            text.contains("io.containerd.wasmkube.v1"),
            "after {after}: config is neither the original nor patched:\n{text}"
        );
    }
    if let Ok(backup) = std::fs::read(backup_path(&host.config())) {
        assert_eq!(
            backup, host.original,
            "after {after}: the backup is not the original bytes"
        );
    }
}

/// Files of ours in `dir` that only a killed run leaves.
fn debris(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.contains(".wasmkube-tmp-") || name.ends_with(".wasmkube-prev")
        })
        .collect()
}

fn assert_installed(host: &Host, after: &str) {
    let (code, r, _) = host.installer("install", &host.restart_cmd(), &[]);
    assert_eq!(
        code,
        0,
        "install after {after}: {r}\npid file: {:?}, alive: {:?}, restarts {}\n{}",
        std::fs::read_to_string(host.ctd.pid_file()),
        host.ctd.pid(),
        host.ctd.restart_count(),
        host.ctd.log_tail()
    );
    assert!(
        r["state"] == "installed" || r["state"] == "unchanged",
        "install after {after}: {r}"
    );
    assert_eq!(r["verified"], true, "install after {after}: {r}");
    assert!(
        r["wasmCheck"]
            .as_str()
            .is_some_and(|c| c.contains("exited 42")),
        "install after {after}: {r}"
    );
    assert!(host.serves_handler(), "after {after}");
    assert_eq!(
        std::fs::read(backup_path(&host.config())).expect("backup"),
        host.original
    );
    let shim = host.shim_dest();
    assert_eq!(
        std::fs::read(&shim).expect("shim"),
        std::fs::read(shim_binary()).expect("built shim"),
        "after {after}: the installed shim is not the built one"
    );
    for dir in [
        shim.parent().expect("dir").to_path_buf(),
        host.config().parent().expect("dir").to_path_buf(),
    ] {
        assert_eq!(debris(&dir), Vec::<PathBuf>::new(), "after {after}");
    }
}

/// Every path under `p` (for a failure's message).
fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn assert_uninstalled(host: &Host, after: &str) {
    let (code, r, _) = host.installer("uninstall", &host.restart_cmd(), &[]);
    assert_eq!(code, 0, "uninstall after {after}: {r}");
    assert_eq!(r["state"], "uninstalled", "uninstall after {after}: {r}");
    assert_eq!(
        std::fs::read(host.config()).expect("config"),
        host.original,
        "uninstall after {after} did not restore the original bytes: {r}"
    );
    assert!(!host.serves_handler(), "after {after}: {r}");
    let root = host.root.path();
    for gone in [
        backup_path(&host.config()),
        absent_marker(&host.config()),
        root.join("opt/wasmkube"),
        root.join("usr/local/bin/containerd-shim-wasmkube-v1"),
        root.join("var/lib/wasmkube"),
    ] {
        assert!(
            std::fs::symlink_metadata(&gone).is_err(),
            "after {after}: {} is left: {:?} {r}",
            gone.display(),
            walk(&gone)
        );
    }
    assert_eq!(
        debris(host.config().parent().expect("dir")),
        Vec::<PathBuf>::new(),
        "after {after}"
    );
    let checks = host
        .ctd
        .ctr(&["-n", "wasmkube-check", "containers", "ls", "-q"]);
    assert_eq!(
        checks.stdout.trim(),
        "",
        "after {after}: check containers left"
    );
}

/// What the kill at `point` of an install must have left, so each case tests the step it names.
fn assert_died_where_told(host: &Host, point: &str) {
    let config = std::fs::read(host.config()).expect("config");
    let backup = std::fs::read(backup_path(&host.config())).ok();
    let shim_dir = host.shim_dest().parent().expect("dir").to_path_buf();
    match point {
        "after-backup" => {
            assert_eq!(backup.as_deref(), Some(host.original.as_slice()));
            assert_eq!(config, host.original, "config written before the backup?");
        }
        "shim-copy" => {
            assert!(
                !debris(&shim_dir).is_empty(),
                "no half-copied temp file: not killed mid-copy"
            );
            assert!(
                !host.shim_dest().exists(),
                "shim in place before its copy ended"
            );
            assert_eq!(config, host.original);
        }
        _ => {
            assert_ne!(config, host.original, "config not written before {point}");
            assert!(host.shim_dest().exists());
        }
    }
    if point == "wasm-check" {
        let checks = host
            .ctd
            .ctr(&["-n", "wasmkube-check", "containers", "ls", "-q"]);
        assert_ne!(
            checks.stdout.trim(),
            "",
            "no check container: not killed mid-check"
        );
    }
}

#[test]
fn a_run_killed_at_any_step_leaves_the_config_whole_and_the_next_run_converges() {
    skip_unless!(missing_prerequisites());
    let _ = shim_binary();
    kill_at_every_step(&Host::start());
}

#[test]
fn the_same_on_containerd_2() {
    let mut missing: Vec<String> = missing_prerequisites().into_iter().collect();
    if containerd2_bin_dir().is_none() {
        missing.push("containerd 2.x (scripts/containerd2.sh)".to_string());
    }
    skip_unless!((!missing.is_empty()).then(|| missing.join(", ")));
    let _ = shim_binary();
    let bin = containerd2_bin_dir().expect("checked above");
    kill_at_every_step(&Host::start_containerd2(bin, |_| {}));
}

fn kill_at_every_step(host: &Host) {
    for point in INSTALL_POINTS {
        let after = format!("install killed at {point}");
        eprintln!("== {after}");
        // Killed, then undone by `uninstall`…
        killed_at(host, "install", point);
        assert_whole(host, &after);
        assert_died_where_told(host, point);
        assert_uninstalled(host, &after);
        // …and killed again, then finished by the next `install`.
        killed_at(host, "install", point);
        assert_whole(host, &after);
        assert_installed(host, &after);
        assert_uninstalled(host, &format!("{after}, then installed"));
    }
    for point in UNINSTALL_POINTS {
        let after = format!("uninstall killed at {point}");
        eprintln!("== {after}");
        assert_installed(host, &format!("before {after}"));
        killed_at(host, "uninstall", point);
        assert_whole(host, &after);
        // Finished by the next `uninstall`…
        assert_uninstalled(host, &after);
        // …or taken back by an `install`.
        assert_installed(host, &format!("{after} (again)"));
        killed_at(host, "uninstall", point);
        assert_whole(host, &after);
        assert_installed(host, &format!("{after}, then install"));
        assert_uninstalled(host, &format!("{after}, then install"));
    }
}
