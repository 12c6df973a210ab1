//! Only needed changes, on a LIVE containerd 2.x (built by `scripts/containerd2.sh`): it honours
//! `runtime_path` for pod sandboxes, so the installer makes no PATH link, and a read-only
//! `/usr/local` on such a host does not fail the install — a wasm pod still runs through CRI.
//! (On containerd 1.6 the link is needed and made: `live_containerd.rs`.)
#[path = "support/host.rs"]
mod host;
#[path = "support/live_host.rs"]
mod live_host;

use host::ReadOnly;
use live_host::Host;
use wasmkube_test_harness::containerd::containerd2_bin_dir;
use wasmkube_test_harness::{missing_prerequisites, skip_unless};

fn missing() -> Option<String> {
    let mut missing: Vec<String> = missing_prerequisites().into_iter().collect();
    if containerd2_bin_dir().is_none() {
        missing.push(
            "containerd 2.x (scripts/containerd2.sh, or WASMKUBE_CONTAINERD2_BIN)".to_string(),
        );
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

#[test]
fn containerd2_gets_no_path_link_and_a_read_only_usr_local_does_not_fail_the_install() {
    skip_unless!(missing());
    let bin = containerd2_bin_dir().expect("checked above");
    // containerd must not find a shim by name anywhere else (this machine may have one in its
    // own /usr/local/bin): the shim is reachable through runtime_path only.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<_> = std::env::split_paths(&path)
        .filter(|d| !d.join("containerd-shim-wasmkube-v1").exists())
        .collect();
    std::env::set_var("PATH", std::env::join_paths(dirs).expect("PATH"));
    let mut ro = None;
    let host = Host::start_containerd2(bin, |root| {
        ro = ReadOnly::make(&root.join("usr/local/bin"));
    });
    assert!(ro.is_some(), "cannot make <host>/usr/local/bin read-only");
    let work = host.import_pod_images();
    let (code, r, took) = host.installer("install", &host.restart_cmd(), &[]);
    eprintln!("containerd 2.x install with a read-only /usr/local took {took:?}: {r}");
    assert_eq!(code, 0, "{r}\n{}", host.ctd.log_tail());
    assert_eq!(r["state"], "installed", "{r}");
    assert!(
        r["containerdVersion"]
            .as_str()
            .is_some_and(|v| v.trim_start_matches('v').starts_with('2')),
        "{r}"
    );
    // The wasm check ran with the shim found through runtime_path alone.
    assert!(
        r["wasmCheck"]
            .as_str()
            .is_some_and(|c| c.contains("exited 42")),
        "{r}"
    );
    assert!(
        !r["changes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "link-created")),
        "{r}"
    );
    let link = host
        .root
        .path()
        .join("usr/local/bin/containerd-shim-wasmkube-v1");
    assert!(std::fs::symlink_metadata(&link).is_err(), "a link was made");
    // And a CRI pod (its sandbox included) finds the shim through runtime_path alone.
    host.run_hello_pod(&work.path().join("logs"), "no-link");
    let (code, r, _) = host.installer("uninstall", &host.restart_cmd(), &[]);
    assert_eq!((code, r["state"].as_str()), (0, Some("uninstalled")), "{r}");
    assert_eq!(std::fs::read(host.config()).expect("config"), host.original);
    drop(ro);
}
