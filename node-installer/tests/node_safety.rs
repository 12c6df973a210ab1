//! The node is left as the report says, against temp host roots (no daemon): exit codes survive
//! an unwritable result file, uninstall says what it did, a failed install or upgrade puts back
//! every byte, runs are serialised by the host lock, a concurrent edit is never overwritten by a
//! rollback, and the PATH link is made only for containerd 1.6.
#[path = "support/host.rs"]
mod host;

use std::process::Command;
use std::time::{Duration, Instant};

use host::{assert_same, snapshot, ReadOnly, TestHost, CONFIG, LINK, SHIM};
use wasmkube_node_installer::host_lock::HostLock;
use wasmkube_node_installer::report::Failure;
use wasmkube_node_installer::{run, State, Verb};

const INSTALLER: &str = env!("CARGO_BIN_EXE_wasmkube-node-installer");
const DEFAULT_16: &str = include_str!("configs/containerd-1.6-default.toml");
const STALE: &str = include_str!("configs/stale-install.toml");

fn installer(host: &TestHost, args: &[&str]) -> std::process::Output {
    Command::new(INSTALLER)
        .args(args)
        .arg("--host-root")
        .arg(host.root.path())
        .output()
        .expect("run installer")
}

#[test]
fn an_unwritable_result_file_does_not_change_the_exit_code() {
    let host = TestHost::new(&[(CONFIG, DEFAULT_16)]);
    let shim = host.shim("1.0.0");
    let nowhere = host.aux.path().join("no/such/dir/termination-log");
    let common = [
        "--shim",
        shim.to_str().expect("utf8"),
        "--skip-verify",
        "--result-file",
        nowhere.to_str().expect("utf8"),
    ];
    // Success stays 0.
    let out = installer(
        &host,
        &[&["install", "--restart", "none"], &common[..]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("cannot write the result"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"state\":\"installed\""));
    // A rolled-back failure stays 3.
    run(Verb::Uninstall, &host.options(&shim, None));
    let restart = host.restart_failing_once();
    let out = installer(
        &host,
        &[&["install", "--restart-cmd", restart.as_str()], &common[..]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("cannot write the result"), "{stderr}");
}

#[test]
fn uninstall_reports_what_it_did() {
    let host = TestHost::new(&[(CONFIG, DEFAULT_16)]);
    let shim = host.shim("1.0.0");
    let o = host.options(&shim, Some("true"));
    let r = run(Verb::Install, &o);
    assert_eq!(r.state, State::Installed, "{r:?}");
    assert_eq!(
        r.changes,
        [
            "shim-installed",
            "link-created",
            "config-written",
            "containerd-restarted"
        ]
    );
    let u = run(Verb::Uninstall, &o);
    assert_eq!(u.state, State::Uninstalled, "{u:?}");
    assert_eq!(
        u.changes,
        [
            "config-restored",
            "containerd-restarted",
            "link-removed",
            "shim-removed",
            "backup-dropped"
        ]
    );
    for words in [
        "restored the config as it was before",
        "restarted containerd",
        "removed the shim's PATH link",
        "removed the shim",
    ] {
        assert!(
            u.message.contains(words),
            "{words:?} not in {:?}",
            u.message
        );
    }
    let json = u.to_json();
    assert!(json.contains("\"changes\":[\"config-restored\""), "{json}");
    // Nothing left to do: the report says so.
    let again = run(Verb::Uninstall, &o);
    assert!(again.changes.is_empty(), "{again:?}");
    assert!(again.message.contains("nothing of wasmkube was installed"));
}

/// The shim's compiled-module cache (`/var/lib/wasmkube/cache`, the shim's default) goes with
/// the shim: reported as `cache-removed`, and a second uninstall finds nothing to do. A cache
/// path that is a symlink is left alone, and so is what it points at.
#[test]
fn uninstall_removes_the_shims_module_cache_once() {
    const CACHE: &str = "/var/lib/wasmkube/cache";
    let root_user = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let host = TestHost::new(&[
        (CONFIG, DEFAULT_16),
        ("/var/lib/wasmkube/cache/v1/0a1b.cwasm", "artefact"),
        ("/var/lib/other/keep", "not ours"),
    ]);
    let shim = host.shim("1.0.0");
    let o = host.options(&shim, Some("true"));
    assert_eq!(run(Verb::Install, &o).state, State::Installed);
    let u = run(Verb::Uninstall, &o);
    assert_eq!(u.state, State::Uninstalled, "{u:?}");
    if root_user {
        assert_eq!(u.changes.last(), Some(&"cache-removed"), "{u:?}");
        assert!(
            u.message
                .contains("removed the shim's compiled-module cache"),
            "{}",
            u.message
        );
        assert!(
            !host.path("/var/lib/wasmkube").exists(),
            "cache left behind"
        );
    } else {
        // Not root: the cache belongs to this user, not to the shim's root; kept and said so.
        assert!(!u.changes.contains(&"cache-removed"), "{u:?}");
        assert!(
            u.message.contains("not to the shim's uid 0"),
            "{}",
            u.message
        );
        std::fs::remove_dir_all(host.path(CACHE)).expect("rm");
    }
    assert_eq!(
        std::fs::read_to_string(host.path("/var/lib/other/keep")).expect("neighbour"),
        "not ours"
    );
    let again = run(Verb::Uninstall, &o);
    assert_eq!(again.state, State::Uninstalled, "{again:?}");
    assert!(again.changes.is_empty(), "{again:?}");

    // A symlink where the cache would be: kept, its target untouched.
    std::fs::create_dir_all(host.path("/srv/data")).expect("mkdir");
    std::fs::write(host.path("/srv/data/precious"), "keep").expect("write");
    std::fs::create_dir_all(host.path("/var/lib/wasmkube")).expect("mkdir");
    std::os::unix::fs::symlink("/srv/data", host.path(CACHE)).expect("symlink");
    let u = run(Verb::Uninstall, &o);
    assert_eq!(u.state, State::Uninstalled, "{u:?}");
    assert!(!u.changes.contains(&"cache-removed"), "{u:?}");
    assert!(u.message.contains("it is a symlink"), "{}", u.message);
    assert!(std::fs::read_link(host.path(CACHE)).is_ok(), "link kept");
    assert_eq!(
        std::fs::read_to_string(host.path("/srv/data/precious")).expect("target"),
        "keep"
    );
}

/// A failure after the copy (containerd does not come back) leaves the node as before.
fn failed_install_leaves_the_node_as_before(host: &TestHost) {
    let shim = host.shim("2.0.0");
    let before = snapshot(host.root.path());
    let r = run(
        Verb::Install,
        &host.options(&shim, Some(&host.restart_failing_once())),
    );
    assert_eq!(r.failure, Some(Failure::RolledBack), "{r:?}");
    assert_eq!(r.exit_code(), 3);
    assert!(r.message.contains("rolled back"), "{}", r.message);
    assert_same(&before, &snapshot(host.root.path()));
}

#[test]
fn a_failed_fresh_install_leaves_the_node_as_before() {
    failed_install_leaves_the_node_as_before(&TestHost::new(&[(CONFIG, DEFAULT_16)]));
    // No config at all before: none after.
    failed_install_leaves_the_node_as_before(&TestHost::new(&[]));
}

#[test]
fn a_failed_upgrade_puts_back_the_previous_shim_and_keeps_an_existing_link() {
    // An earlier version is installed: its shim, its link, a stale runtime entry.
    let host = TestHost::new(&[
        (CONFIG, STALE),
        (SHIM, "#!/bin/sh\necho 'Version: 1.0.0'\n"),
    ]);
    std::fs::set_permissions(
        host.path(SHIM),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .expect("chmod");
    std::fs::create_dir_all(host.path("/usr/local/bin")).expect("mkdir");
    std::os::unix::fs::symlink(SHIM, host.path(LINK)).expect("link");
    failed_install_leaves_the_node_as_before(&host);
    // Without the link beforehand: the link this run made goes again.
    std::fs::remove_file(host.path(LINK)).expect("unlink");
    failed_install_leaves_the_node_as_before(&host);
}

#[test]
fn a_failed_shim_only_upgrade_is_rolled_back_not_left_half_done() {
    // The shim changes while the config is already in place; a failure then (here: the link
    // cannot be made) must put the previous shim back.
    let host = TestHost::new(&[(CONFIG, DEFAULT_16)]);
    let o = host.options(&host.shim("1.0.0"), Some("true"));
    assert_eq!(run(Verb::Install, &o).state, State::Installed);
    std::fs::remove_file(host.path(LINK)).expect("unlink");
    std::fs::write(host.path(LINK), "someone else's file").expect("squat");
    let before = snapshot(host.root.path());
    let r = run(
        Verb::Install,
        &host.options(&host.shim("2.0.0"), Some("true")),
    );
    assert_eq!(r.reason.as_deref(), Some("ShimLink"), "{r:?}");
    assert_eq!(r.exit_code(), 1, "{r:?}");
    assert_same(&before, &snapshot(host.root.path()));
}

#[test]
fn a_run_waits_for_the_lock_and_a_busy_lock_names_its_holder() {
    let host = TestHost::new(&[(CONFIG, DEFAULT_16)]);
    let shim = host.shim("1.0.0");
    let held = HostLock::acquire(host.root.path(), "test", Duration::ZERO).expect("lock");
    // Busy past the bound: refused, nothing touched, the holder named.
    let mut o = host.options(&shim, Some("true"));
    o.lock_timeout = 0;
    let before = snapshot(host.root.path());
    let r = run(Verb::Install, &o);
    assert_eq!(r.reason.as_deref(), Some("Locked"), "{r:?}");
    assert_eq!(r.exit_code(), 1);
    assert!(
        r.message
            .contains(&format!("pid {} (test)", std::process::id())),
        "{}",
        r.message
    );
    assert!(
        r.message.contains("run/wasmkube/installer.lock"),
        "{}",
        r.message
    );
    assert_same(&before, &snapshot(host.root.path()));
    // Within the bound: it waits, and reads the config only once the holder is done.
    o.lock_timeout = 30;
    let waiter = std::thread::spawn(move || run(Verb::Install, &o));
    std::thread::sleep(Duration::from_millis(500));
    assert_same(&before, &snapshot(host.root.path()));
    std::fs::write(host.path(CONFIG), "version = 2\n").expect("holder's edit");
    drop(held);
    let r = waiter.join().expect("thread");
    assert_eq!(r.state, State::Installed, "{r:?}");
    assert!(r.timings["lock"] >= 400, "{:?}", r.timings);
    let config = std::fs::read_to_string(host.path(CONFIG)).expect("config");
    assert!(
        config.starts_with("version = 2\n") && config.contains("runtimes.wasmkube"),
        "the run did not re-read the config under the lock:\n{config}"
    );
    assert!(!config.contains("[plugins.\"io.containerd.grpc.v1.cri\".cni]"));
}

#[test]
fn two_installer_processes_run_one_after_the_other() {
    let host = TestHost::new(&[(CONFIG, DEFAULT_16)]);
    let shim = host.shim("1.0.0");
    let log = host.aux.path().join("restarts.log");
    let restart = host.script(
        "slow-restart",
        &format!(
            "echo begin >> '{l}'; sleep 1; echo end >> '{l}'",
            l = log.display()
        ),
    );
    let spawn = |verb: &str| {
        Command::new(INSTALLER)
            .args([verb, "--skip-verify", "--result-file", "/dev/null"])
            .arg("--host-root")
            .arg(host.root.path())
            .arg("--shim")
            .arg(&shim)
            .arg("--restart-cmd")
            .arg(&restart)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let start = Instant::now();
    let first = spawn("install");
    std::thread::sleep(Duration::from_millis(300));
    let second = spawn("uninstall");
    let first = first.wait_with_output().expect("first");
    let second = second.wait_with_output().expect("second");
    assert_eq!(first.status.code(), Some(0));
    assert_eq!(second.status.code(), Some(0));
    let r: serde_json::Value = serde_json::from_slice(&second.stdout).expect("json");
    assert_eq!(r["state"], "uninstalled", "{r}");
    assert!(r["timings"]["lock"].as_u64() >= Some(500), "{r}");
    // The restarts did not overlap, and the uninstall saw (and undid) the whole install.
    let log = std::fs::read_to_string(&log).expect("log");
    assert_eq!(log, "begin\nend\nbegin\nend\n");
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert_eq!(
        std::fs::read_to_string(host.path(CONFIG)).expect("config"),
        DEFAULT_16
    );
    assert!(!host.path(SHIM).exists());
}

#[test]
fn a_rollback_never_overwrites_a_concurrent_edit() {
    let host = TestHost::new(&[(CONFIG, DEFAULT_16)]);
    let shim = host.shim("1.0.0");
    // Someone edits the config while containerd restarts, and the restart fails.
    let edit = "\n# added by an admin during the install\n";
    let restart = host.script(
        "edit-and-fail",
        &format!(
            "printf '{}' >> '{}'; exit 1",
            edit.replace('\n', "\\n"),
            host.path(CONFIG).display()
        ),
    );
    let r = run(
        Verb::Install,
        &host.options(&shim, Some(&restart.display().to_string())),
    );
    assert_eq!(r.failure, Some(Failure::RollbackConflict), "{r:?}");
    assert_eq!(r.exit_code(), 4);
    assert!(
        r.message.contains("changed by someone else"),
        "{}",
        r.message
    );
    let config = std::fs::read_to_string(host.path(CONFIG)).expect("config");
    assert!(config.ends_with(edit), "the edit was lost:\n{config}");
    assert!(config.contains("runtimes.wasmkube"));
    // The shim the kept config refers to stays, and the original is still backed up.
    assert!(host.path(SHIM).exists());
    assert_eq!(
        std::fs::read_to_string(wasmkube_node_installer::atomic_write::backup_path(
            &host.path(CONFIG)
        ))
        .expect("backup"),
        DEFAULT_16
    );
}

#[test]
fn the_path_link_is_made_only_for_containerd_1_6_and_a_read_only_usr_local_is_fine_otherwise() {
    for version in ["1.7.24", "v2.0.0"] {
        let host = TestHost::new(&[(CONFIG, DEFAULT_16)]);
        let shim = host.shim("1.0.0");
        let Some(_ro) = ReadOnly::make(&host.path("/usr/local/bin")) else {
            panic!(
                "cannot make {} read-only here",
                host.path("/usr/local/bin").display()
            );
        };
        let mut o = host.options(&shim, Some("true"));
        o.containerd_version = Some(version.into());
        let r = run(Verb::Install, &o);
        assert_eq!(r.state, State::Installed, "{version}: {r:?}");
        assert!(!r.changes.contains(&"link-created"), "{r:?}");
        assert!(std::fs::symlink_metadata(host.path(LINK)).is_err());
        let u = run(Verb::Uninstall, &o);
        assert_eq!(u.state, State::Uninstalled, "{version}: {u:?}");
        assert_eq!(
            std::fs::read_to_string(host.path(CONFIG)).expect("config"),
            DEFAULT_16
        );
    }
    // containerd 1.6 needs the link: made when it can be, and a clean refusal when not.
    let host = TestHost::new(&[(CONFIG, DEFAULT_16)]);
    let mut o = host.options(&host.shim("1.0.0"), Some("true"));
    o.containerd_version = Some("1.6.20~ds1".into());
    let r = run(Verb::Install, &o);
    assert!(r.changes.contains(&"link-created"), "{r:?}");
    assert_eq!(
        std::fs::read_link(host.path(LINK)).expect("link"),
        std::path::Path::new(SHIM)
    );
    let host = TestHost::new(&[(CONFIG, DEFAULT_16)]);
    let ro = ReadOnly::make(&host.path("/usr/local/bin")).expect("read-only");
    let before = snapshot(host.root.path());
    let mut o = host.options(&host.shim("1.0.0"), Some("true"));
    o.containerd_version = Some("1.6.20".into());
    let r = run(Verb::Install, &o);
    assert_eq!(r.reason.as_deref(), Some("ShimLink"), "{r:?}");
    assert_eq!(r.exit_code(), 1);
    drop(ro);
    assert_same(&before, &snapshot(host.root.path()));
}
