//! The installer against a LIVE containerd 2.x (2.4.2, built from its Go module by
//! `scripts/containerd2.sh`): a schema-4 config patched in place, containerd restarted, a wasm
//! pod through CRI, a re-run that changes nothing, and an uninstall that gives back the original
//! bytes. The same flow as `live_containerd.rs` runs on Debian's containerd 1.6.
#[path = "support/live_host.rs"]
mod live_host;

use live_host::Host;
use wasmkube_test_harness::containerd::containerd2_bin_dir;
use wasmkube_test_harness::{missing_prerequisites, skip_unless};

fn missing() -> Option<String> {
    let mut missing: Vec<String> = missing_prerequisites().into_iter().collect();
    if containerd2_bin_dir().is_none() {
        missing.push(
            "containerd 2.x (scripts/containerd2.sh builds it into /var/tmp/wasmkube-containerd2, \
             or set WASMKUBE_CONTAINERD2_BIN)"
                .to_string(),
        );
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[test]
fn containerd2_schema4_install_runs_a_wasm_pod_and_uninstalls_byte_exact() {
    skip_unless!(missing());
    let bin = containerd2_bin_dir().expect("checked above");
    let host = Host::start_containerd2(bin, |_| {});
    assert!(!host.serves_handler(), "handler present before install");
    let work = host.import_pod_images();

    let (code, r, took) = host.installer("install", &host.restart_cmd(), &[]);
    eprintln!("containerd 2.x install took {took:?}: {r}");
    assert_eq!(code, 0, "{r}\n{}", host.ctd.log_tail());
    assert_eq!(r["state"], "installed", "{r}");
    assert_eq!(r["verified"], true, "{r}");
    assert_eq!(r["restarted"], true, "{r}");
    assert!(
        r["containerdVersion"]
            .as_str()
            .is_some_and(|v| v.trim_start_matches('v').starts_with("2.")),
        "not containerd 2.x: {r}"
    );
    assert!(
        r["wasmCheck"]
            .as_str()
            .is_some_and(|c| c.contains("namespace wasmkube-check and exited 42")),
        "{r}"
    );
    assert_eq!(host.ctd.restart_count(), 1);
    let patched = std::fs::read_to_string(host.config()).expect("config");
    assert!(patched.starts_with("version = 4\n"), "{patched}");
    assert!(
        patched.contains(
            "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmkube]  # managed by wasmkube-node-installer"
        ),
        "{patched}"
    );
    assert!(
        host.serves_handler(),
        "containerd 2.x does not serve the handler"
    );

    // A CRI pod with runtime_handler wasmkube runs the hello guest on containerd 2.x.
    host.run_hello_pod(&work.path().join("logs"), "c2");

    // The `check` verb on containerd 2.x.
    let (code, lines, r) = host.check(3, &[]);
    assert_eq!(
        (code, r["state"].as_str()),
        (0, Some("checked")),
        "{lines:#?} {r}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(": passed: ")).count(),
        3,
        "{lines:#?}"
    );
    assert!(!host.root.path().join("var/lib/wasmkube").exists());

    // Re-run: nothing written, no restart.
    let (code, r, took) = host.installer("install", &host.restart_cmd(), &[]);
    eprintln!("containerd 2.x re-install took {took:?}: {r}");
    assert_eq!((code, r["state"].as_str()), (0, Some("unchanged")), "{r}");
    assert_eq!(
        host.ctd.restart_count(),
        1,
        "the re-run restarted containerd"
    );
    assert_eq!(
        std::fs::read_to_string(host.config()).expect("config"),
        patched
    );

    // Uninstall: the original bytes, the handler gone, no shim left.
    let (code, r, _) = host.installer("uninstall", &host.restart_cmd(), &[]);
    assert_eq!((code, r["state"].as_str()), (0, Some("uninstalled")), "{r}");
    assert_eq!(std::fs::read(host.config()).expect("config"), host.original);
    assert!(
        !host.serves_handler(),
        "handler still served after uninstall"
    );
    assert!(!host.shim_dest().exists());
    assert!(!host.root.path().join("opt/wasmkube").exists());
}
