//! What the CRI tests share: a containerd with the shim as its `wasmkube` handler, and pods.
#![allow(dead_code)]
use std::path::Path;

use std::time::{Duration, Instant};
use wasmkube_test_harness::containerd::HANDLER;

use wasmkube_test_harness::cri::{ContainerSpec, Cri, PodSpec};
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::images::{pack, pause_archive};
use wasmkube_test_harness::{unique_id, Containerd};

pub mod http_server;

pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-wasmkube-v1");

/// A containerd with the pause image and the named guests imported into `k8s.io`.
pub fn node(guests: &[(&str, &str)]) -> (Containerd, Cri, tempfile::TempDir) {
    node_with(&[], guests)
}

/// [`node`], with `env` in containerd's (and so the shim's) environment.
pub fn node_with(
    env: &[(&str, &str)],
    guests: &[(&str, &str)],
) -> (Containerd, Cri, tempfile::TempDir) {
    let mut builder = Containerd::builder().shim(SHIM);
    for (k, v) in env {
        builder = builder.env(k, v);
    }
    let ctd = builder.start();
    let pause = pause_archive().as_ref().unwrap_or_else(|e| panic!("{e}"));
    ctd.import("k8s.io", pause).ok();
    let work = tempfile::tempdir().expect("tmp");
    for (name, reference) in guests {
        let archive = work.path().join(format!("{name}.tar"));
        pack(&guest(name), reference, &archive);
        ctd.import("k8s.io", &archive).ok();
    }
    let mut cri = Cri::connect(&ctd.address()).expect("CRI connect");
    let (name, version) = cri.version().expect("CRI version");
    assert_eq!(name, "containerd");
    assert!(!version.is_empty());
    (ctd, cri, work)
}

pub fn pod(name: &str, host_network: bool, logs: &Path) -> PodSpec {
    PodSpec {
        name: unique_id(name),
        handler: HANDLER.into(),
        host_network,
        log_dir: logs.join(name),
        cgroup_parent: None,
    }
}

/// The container of the `image` wasi:http app on `port` of the host's loopback, holding
/// `grants` (mounts left to the caller).
pub fn granted_app(image: &str, port: u16, grants: &wasmkube_contract::Grants) -> ContainerSpec {
    ContainerSpec {
        name: "app".into(),
        image: image.into(),
        env: vec![
            ("WASMKUBE_HTTP_ADDR".into(), format!("127.0.0.1:{port}")),
            (wasmkube_contract::GRANTS_ENV.into(), grants.to_env_value()),
        ],
        ..Default::default()
    }
}

/// Creates and starts `container` in `pod_id`, a wasi:http guest listening on `port` of the
/// host's loopback (`spec` is a host-network pod), and waits until it answers `/`.
pub fn serve(
    ctd: &Containerd,
    cri: &mut Cri,
    pod_id: &str,
    spec: &PodSpec,
    container: &ContainerSpec,
    port: u16,
) -> String {
    let name = &container.name;
    let id = cri
        .create_container(pod_id, spec, container)
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", ctd.log_tail()));
    let started = Instant::now();
    while ask(port, "/").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let state = cri
                .container_status(&id)
                .map(|s| (s.state, s.exit_code, s.reason));
            let log =
                wasmkube_test_harness::cri::read_log(&spec.log_dir.join(format!("{name}.log")));
            panic!(
                "{name} never answered on {port}: container {state:?}, its log {log:?}\n{}",
                ctd.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    id
}

/// The guest's answer to `path`, by `curl` on the host.
pub fn ask(port: u16, path: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
