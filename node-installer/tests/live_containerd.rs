//! The installer against a LIVE containerd: a temp directory plays the host root, the test's
//! containerd runs on `<host>/etc/containerd/config.toml`, and `--restart-cmd` is the harness's
//! restart script (stop by pid file, start again with the same arguments). Needs root,
//! containerd and runc; see `wasmkube_test_harness::skip_unless!`.
#[path = "support/host.rs"]
mod host;
#[path = "support/live_host.rs"]
mod live_host;

use std::time::Duration;

use host::NodeSnapshot;
use live_host::{busybox_rootfs, runc_shim, Host};
use wasmkube_test_harness::containerd::runc_root;
use wasmkube_test_harness::cri::Cri;
use wasmkube_test_harness::{
    missing_prerequisites, shim_binary, skip_unless, unique_id, Containerd,
};

fn task_pid(ctd: &Containerd, id: &str) -> Option<String> {
    ctd.ctr(&["tasks", "ls"])
        .stdout
        .lines()
        .find(|l| l.starts_with(id) && l.contains("RUNNING"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
}

#[test]
fn install_serves_wasm_pods_keeps_containers_running_is_idempotent_and_uninstalls_cleanly() {
    skip_unless!(missing_prerequisites());
    // Everything slow comes first (the shim's release build and the guest's build can wait
    // minutes on a cargo lock shared with other builds): the runc container below must only
    // have to outlive the installer, and the install's time must be the installer's.
    let _ = shim_binary();
    let host = Host::start();
    assert!(!host.serves_handler(), "handler present before install");
    let work = host.import_pod_images();

    // A runc container started before the install. It sleeps "forever" (it is killed at the
    // end): a fixed `sleep 600` ended by itself once, when the builds above ran inside the
    // install's timing, and looked like a container killed by the restart. Its runc state is
    // in this daemon's own runc root, not /run/containerd/runc/default.
    let rootfs = busybox_rootfs();
    let runc_id = unique_id("runc-survivor");
    host.ctd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            "io.containerd.runc.v2",
            "--runc-root",
            &runc_root(host.ctd.dir()).display().to_string(),
            "--rootfs",
            &rootfs.path().display().to_string(),
            &runc_id,
            "/busybox",
            "sleep",
            "2147483647",
        ])
        .ok();
    host.ctd
        .wait_task_running(&runc_id, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the runc container never ran: {e}"));
    let runc_pid = task_pid(&host.ctd, &runc_id).expect("runc pid");
    let daemon_before = host.ctd.pid();

    // Install.
    let (code, r, took) = host.installer("install", &host.restart_cmd(), &[]);
    eprintln!("first install took {took:?}: {r}");
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["state"], "installed", "{r}");
    assert!(
        r["wasmCheck"].as_str().is_some_and(|c| c
            .starts_with("a wasm container ran /check.wasm through the wasmkube handler's runtime io.containerd.wasmkube.v1")
            && c.contains("in containerd namespace wasmkube-check and exited 42")),
        "{r}"
    );
    assert_check_left_nothing(&host);
    assert!(
        !host.root.path().join("var/lib/wasmkube").exists(),
        "the check left the directory it created above its own"
    );
    assert_eq!(r["flavour"], "containerd");
    assert_eq!(r["configPath"], "/etc/containerd/config.toml");
    assert_eq!(r["restarted"], true);
    assert_eq!(r["verified"], true);
    assert_eq!(r["shimVersion"], "0.1.0");
    assert!(
        r["containerdVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.") || v.starts_with("v1.") || v.starts_with('2')),
        "{r}"
    );
    let sha = wasmkube_node_installer::shim_install::sha256_file(&shim_binary()).expect("sha");
    assert_eq!(r["shimSha256"], sha.as_str());
    for step in ["detect", "copy", "patch", "restart", "verify", "total"] {
        assert!(r["timings"][step].is_u64(), "timing {step} missing: {r}");
    }
    assert_eq!(host.ctd.restart_count(), 1);
    assert_ne!(
        host.ctd.pid(),
        daemon_before,
        "containerd was not restarted"
    );
    let info = host.status_info();
    assert!(
        info.contains("io.containerd.wasmkube.v1"),
        "handler not served: {info}"
    );
    let installed = std::fs::read(host.config()).expect("config");
    assert_eq!(
        std::fs::read(wasmkube_node_installer::atomic_write::backup_path(
            &host.config()
        ))
        .expect("backup"),
        host.original
    );

    // The runc container survived the restart, same process.
    assert_eq!(
        task_pid(&host.ctd, &runc_id).as_deref(),
        Some(runc_pid.as_str()),
        "runc container did not survive"
    );

    // A CRI pod with runtime_handler wasmkube runs the hello guest.
    host.run_hello_pod(&work.path().join("logs"), "installed");

    // Second install: nothing written, no restart, fast.
    let mtime = std::fs::metadata(host.config())
        .expect("stat")
        .modified()
        .expect("mtime");
    let (code, r, took) = host.installer("install", &host.restart_cmd(), &[]);
    eprintln!("re-install took {took:?}: {r}");
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["state"], "unchanged", "{r}");
    assert_eq!(r["restarted"], false);
    assert_eq!(r["verified"], true);
    assert!(
        r["wasmCheck"]
            .as_str()
            .is_some_and(|c| c.contains("exited 42")),
        "the re-run checks wasm too: {r}"
    );
    assert_eq!(
        host.ctd.restart_count(),
        1,
        "second install restarted containerd"
    );
    assert_eq!(std::fs::read(host.config()).expect("config"), installed);
    assert_eq!(
        std::fs::metadata(host.config())
            .expect("stat")
            .modified()
            .expect("mtime"),
        mtime
    );
    // How fast the re-run is belongs to bench/installer.sh (ratios, not a timed test): here
    // only that it wrote nothing and restarted nothing.
    let _ = took;

    // The `check` verb, after an earlier check "crashed": its container in the check's
    // namespace and its directory are removed first, then every run passes.
    let stale = "wasmkube-check-stale";
    host.ctd
        .ctr(&[
            "-n",
            "wasmkube-check",
            "containers",
            "create",
            "--runtime",
            "io.containerd.wasmkube.v1",
            "--rootfs",
            &rootfs.path().display().to_string(),
            stale,
            "/busybox",
        ])
        .ok();
    let stale_dir = host
        .root
        .path()
        .join("var/lib/wasmkube/check")
        .join(stale)
        .join("rootfs");
    std::fs::create_dir_all(&stale_dir).expect("stale dir");
    let (code, lines, r) = host.check(3, &[]);
    eprintln!("check --repeat 3: {lines:#?}\n{r}");
    assert_eq!(code, 0, "{lines:#?} {r}");
    assert_eq!(r["state"], "checked", "{r}");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(
        lines.iter().filter(|l| l.contains(": passed: ")).count(),
        3,
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"check 1/3: removed 2 leftovers of earlier checks first".to_string()),
        "{lines:#?}"
    );
    assert!(lines
        .last()
        .is_some_and(|l| l.starts_with("3 of 3 wasm checks passed")));
    assert_check_left_nothing(&host);
    assert_eq!(host.ctd.restart_count(), 1, "check restarted containerd");

    // status
    let (code, r, _) = host.installer("status", &host.restart_cmd(), &[]);
    assert_eq!((code, r["state"].as_str()), (0, Some("installed")), "{r}");

    // Uninstall: handler gone, original bytes back, shim and backup gone.
    let (code, r, took) = host.installer("uninstall", &host.restart_cmd(), &[]);
    eprintln!("uninstall took {took:?}: {r}");
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["state"], "uninstalled", "{r}");
    assert_eq!(r["restarted"], true);
    assert_eq!(r["verified"], true);
    assert_eq!(host.ctd.restart_count(), 2);
    assert!(!host.serves_handler(), "handler still served");
    assert_eq!(std::fs::read(host.config()).expect("config"), host.original);
    assert!(!host.shim_dest().exists());
    assert!(!host.root.path().join("opt/wasmkube").exists());
    assert!(!host
        .root
        .path()
        .join("usr/local/bin/containerd-shim-wasmkube-v1")
        .exists());
    assert!(!wasmkube_node_installer::atomic_write::backup_path(&host.config()).exists());
    assert_eq!(
        task_pid(&host.ctd, &runc_id).as_deref(),
        Some(runc_pid.as_str()),
        "runc container did not survive the second restart"
    );
    host.ctd.ctr(&["tasks", "kill", "-s", "SIGKILL", &runc_id]);
}

/// The wasm check leaves nothing: no container in its containerd namespace (nor the
/// namespace), none in the kubelet's `k8s.io`, no directory on the host.
fn assert_check_left_nothing(host: &Host) {
    let ns = host.ctd.ctr(&["namespaces", "ls", "-q"]).ok().stdout;
    assert!(
        !ns.lines().any(|l| l == "wasmkube-check"),
        "namespace left: {ns}"
    );
    let k8s = host
        .ctd
        .ctr(&["-n", "k8s.io", "containers", "ls", "-q"])
        .stdout;
    assert!(
        !k8s.contains("wasmkube-check"),
        "a check container in k8s.io: {k8s}"
    );
    assert!(
        !host.root.path().join("var/lib/wasmkube/check").exists(),
        "the check's directory left on the host"
    );
}

#[test]
fn a_restart_that_does_not_load_the_handler_is_rolled_back() {
    skip_unless!(missing_prerequisites());
    let host = Host::start();
    let before = NodeSnapshot::take(host.root.path());
    // "Restarts" without restarting: containerd keeps serving the old config, so the handler
    // never appears and verification must fail, roll back, and say so.
    let (code, r, _) = host.installer("install", "true", &["--timeout", "2"]);
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["state"], "failed");
    assert_eq!(r["failure"], "rolled-back");
    assert_eq!(r["reason"], "VerifyTimeout");
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("rolled back")),
        "{r}"
    );
    // Config bytes, no shim, no backup, no link: the node is as before.
    before.assert_unchanged();
    assert!(!host.serves_handler());
}

#[test]
fn a_handler_that_does_not_run_the_wasm_check_is_rolled_back() {
    skip_unless!(missing_prerequisites());
    let host = Host::start();
    let before = NodeSnapshot::take(host.root.path());
    // containerd serves the handler, but its shim is runc's, which runs Linux containers and
    // not wasm: the check module cannot run, so the config alone must not make the node ready.
    let runc = runc_shim().display().to_string();
    let (code, r, _) = host.installer("install", &host.restart_cmd(), &["--shim", &runc]);
    eprintln!("{r}");
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["failure"], "rolled-back", "{r}");
    assert_eq!(r["reason"], "WasmCheckFailed", "{r}");
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(NOT_WASM)),
        "{r}"
    );
    before.assert_unchanged();
    assert_check_left_nothing(&host);
    assert!(!host.serves_handler());
}

/// How the check fails when the handler's shim does not run wasm (runc's shim cannot exec the
/// module).
const NOT_WASM: &str = "wasm check: containerd Tasks.Create failed";

#[test]
fn a_config_containerd_rejects_is_rolled_back_and_containerd_comes_back() {
    skip_unless!(missing_prerequisites());
    let host = Host::start();
    // The restart command breaks the daemon's startup only while our runtime is configured:
    // it refuses to start containerd when the config mentions wasmkube, like a containerd that
    // cannot load the new config.
    let guard = host.root.path().join("restart-guarded.sh");
    std::fs::write(
        &guard,
        format!(
            "#!/bin/sh\nif grep -q 'runtimes.wasmkube' '{config}'; then kill -TERM $(cat '{pid}'); sleep 0.5; exit 0; fi\nexec '{restart}'\n",
            config = host.config().display(),
            pid = host.ctd.pid_file().display(),
            restart = host.ctd.restart_script().display()
        ),
    )
    .expect("script");
    let (code, r, _) = host.installer(
        "install",
        &format!("sh {}", guard.display()),
        &["--timeout", "5"],
    );
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["failure"], "rolled-back", "{r}");
    assert_eq!(r["reason"], "VerifyTimeout", "{r}");
    assert_eq!(std::fs::read(host.config()).expect("config"), host.original);
    // containerd is back, on the original config.
    assert!(
        Cri::connect(&host.ctd.address())
            .and_then(|mut c| c.version())
            .is_ok(),
        "containerd not back"
    );
    assert!(!host.serves_handler());
}

/// An earlier shim (the real one with bytes appended, so it differs and still runs) installed
/// with its PATH link, as a previous installer version left the node.
fn install_older_shim(host: &Host) -> std::path::PathBuf {
    let mut old = std::fs::read(shim_binary()).expect("shim");
    old.extend_from_slice(b"\0older build");
    let older = host.root.path().join("older-shim");
    std::fs::write(&older, old).expect("write");
    std::fs::set_permissions(&older, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    older
}

#[test]
fn a_failed_upgrade_puts_the_previous_shim_back_byte_for_byte() {
    skip_unless!(missing_prerequisites());
    let host = Host::start();
    let older = install_older_shim(&host);
    let older_arg = older.display().to_string();
    let (code, r, _) = host.installer("install", &host.restart_cmd(), &["--shim", &older_arg]);
    assert_eq!((code, r["state"].as_str()), (0, Some("installed")), "{r}");
    assert!(host.serves_handler());
    let before = NodeSnapshot::take(host.root.path());
    let restarts = host.ctd.restart_count();

    // The new shim (runc's: it does not run wasm) fails the wasm check: the old one comes
    // back, the link stays, no restart.
    let runc = runc_shim().display().to_string();
    let (code, r, _) = host.installer("install", &host.restart_cmd(), &["--shim", &runc]);
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["failure"], "rolled-back", "{r}");
    assert_eq!(r["reason"], "WasmCheckFailed", "{r}");
    assert!(
        r["wasmCheck"]
            .as_str()
            .is_some_and(|c| c.starts_with(&format!("failed: {NOT_WASM}"))),
        "{r}"
    );
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("put the previous shim back")),
        "{r}"
    );
    before.assert_unchanged();
    assert_eq!(host.ctd.restart_count(), restarts);
    assert!(host.serves_handler());

    // A config change in the same upgrade (a new runtime path; the link left alone) that
    // containerd never loads: config and shim go back.
    let (code, r, _) = host.installer(
        "install",
        "true",
        &[
            "--timeout",
            "2",
            "--runtime-path",
            "/opt/wasmkube/bin/elsewhere",
            "--path-link",
            "",
        ],
    );
    assert_eq!(code, 3, "{r}");
    assert_eq!(r["reason"], "VerifyTimeout", "{r}");
    before.assert_unchanged();
    assert!(host.serves_handler());
}

#[test]
fn a_symlinked_config_is_patched_at_its_target_and_restored_under_a_live_containerd() {
    skip_unless!(missing_prerequisites());
    let host = Host::start_symlinked();
    let link = host.root.path().join("etc/containerd/config.toml");
    let link_to = std::fs::read_link(&link).expect("a link");
    let work = host.import_pod_images();
    let (code, r, _) = host.installer("install", &host.restart_cmd(), &[]);
    assert_eq!(code, 0, "{r}\n{}", host.ctd.log_tail());
    assert_eq!(r["configPath"], "/etc/containerd/config.toml", "{r}");
    assert_eq!(
        std::fs::read_link(&link).ok(),
        Some(link_to.clone()),
        "link replaced"
    );
    // containerd reads the target: it serves the handler, and a wasm pod runs.
    assert!(host.serves_handler(), "{}", host.status_info());
    host.run_hello_pod(&work.path().join("logs"), "symlinked");
    assert_eq!(
        std::fs::read(wasmkube_node_installer::atomic_write::backup_path(
            &host.config()
        ))
        .expect("the backup is the target's"),
        host.original
    );

    let (code, r, _) = host.installer("uninstall", &host.restart_cmd(), &[]);
    assert_eq!((code, r["state"].as_str()), (0, Some("uninstalled")), "{r}");
    assert_eq!(std::fs::read(host.config()).expect("target"), host.original);
    assert_eq!(
        std::fs::read_link(&link).ok(),
        Some(link_to),
        "link replaced"
    );
    assert!(!host.serves_handler(), "handler still served");
    assert!(!wasmkube_node_installer::atomic_write::backup_path(&host.config()).exists());
}
