//! `spec.volumes` and `spec.config` enforced in the guest, through containerd's CRI: an
//! `http-grants` guest in a host-network pod, with the mounts a kubelet gives a WasmApp's pod
//! (`/etc/hosts`, a granted volume, a volume the app does not grant, a ConfigMap and a Secret
//! where the operator mounts them) and the grants document the operator writes.

use wasmkube_contract::{Config, ConfigSource, ConfigSourceKind, Grants, Volume, GRANTS_ENV};
use wasmkube_test_harness::cri::{read_log, ContainerSpec};
use wasmkube_test_harness::kubelet::kubelet_volume;
use wasmkube_test_harness::{free_port, missing_prerequisites, skip_unless};

mod support;
use support::{ask, granted_app, node, pod, serve};

const IMAGE: &str = "docker.io/wasmkube/http-grants:cri";
const SECRET_VALUE: &str = "s3cr3t-value-7f0e";

#[test]
fn cri_the_guest_sees_its_image_granted_volumes_and_config_nothing_else() {
    skip_unless!(missing_prerequisites());
    skip_unless!(wasmkube_test_harness::which("curl")
        .is_none()
        .then(|| "curl (apt-get install -y curl)".to_string()));
    let (ctd, mut cri, work) = node(&[("http_grants", IMAGE)]);
    let spec = pod("grants", true, work.path());
    let pod_id = cri.run_pod(&spec).expect("RunPodSandbox");

    let host = |name: &str| {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).expect("host dir");
        dir
    };
    let hosts = work.path().join("hosts");
    std::fs::write(&hosts, "10.9.9.9 from-the-kubelet\n").expect("hosts");
    let data = host("data");
    std::fs::write(data.join("x.txt"), "granted volume").expect("data");
    let private = host("private");
    std::fs::write(private.join("secret.txt"), "not granted").expect("private");
    let config_map = host("configmap");
    kubelet_volume(
        &config_map,
        "..gen1",
        &[("greeting", "hello"), ("color", "blue")],
    );
    let secret = host("secret");
    kubelet_volume(
        &secret,
        "..gen1",
        &[("token", SECRET_VALUE), ("color", "red")],
    );

    let source = |kind, name: &str, index| ConfigSource {
        kind,
        name: name.into(),
        mount_path: ConfigSource::mount_path_for(index),
    };
    let grants = Grants {
        volumes: vec![Volume {
            mount_path: "/data".into(),
            read_only: true,
        }],
        config: Some(Config {
            values: [("inline".to_string(), "yes".to_string())].into(),
            sources: vec![
                source(ConfigSourceKind::ConfigMap, "app", 0),
                source(ConfigSourceKind::Secret, "app-secret", 1),
            ],
        }),
        ..Grants::none()
    };
    let port = free_port();
    let id = serve(
        &ctd,
        &mut cri,
        &pod_id,
        &spec,
        &ContainerSpec {
            mounts: vec![
                (hosts, "/etc/hosts".into()),
                (data, "/data".into()),
                (private, "/private".into()),
                (config_map.clone(), ConfigSource::mount_path_for(0)),
                (secret, ConfigSource::mount_path_for(1)),
            ],
            ..granted_app(IMAGE, port, &grants)
        },
        port,
    );
    let get = |path: &str| ask(port, path).unwrap_or_else(|| panic!("no answer to {path}"));

    // The granted volume, and nothing else the container has mounted.
    assert_eq!(get("/file?/data/x.txt"), "granted volume");
    let not_granted = get("/file?/private/secret.txt");
    assert!(not_granted.starts_with("error="), "{not_granted}");
    // The runtime made an empty file in the image to mount the kubelet's over; the guest sees
    // that, not the mount.
    let hosts = get("/file?/etc/hosts");
    assert!(
        !hosts.contains("from-the-kubelet"),
        "the kubelet's /etc/hosts is not the guest's: {hosts}"
    );
    for path in ["/proc/self/environ", "/proc/self/mem", "/dev/null"] {
        let got = get(&format!("/file?{path}"));
        assert!(got.starts_with("error="), "{path}: {got}");
    }
    for dir in ["/proc", "/dev", "/private"] {
        let listed = get(&format!("/ls?{dir}"));
        assert!(
            listed.is_empty() || listed.starts_with("error="),
            "{dir} holds nothing for the guest: {listed}"
        );
    }
    let root = get("/ls?/");
    assert!(
        root.contains("http_grants.wasm"),
        "the image's files: {root}"
    );

    // wasi:config: inline values, then the ConfigMap, then the Secret.
    assert_eq!(get("/config/greeting"), "hello");
    assert_eq!(
        get("/config/color"),
        "red",
        "the Secret comes last and wins"
    );
    assert_eq!(get("/config/token"), SECRET_VALUE);
    assert_eq!(get("/config/inline"), "yes");
    assert_eq!(get("/config/nope"), "missing");
    let all = get("/config");
    assert_eq!(
        all,
        format!("color=red\ngreeting=hello\ninline=yes\ntoken={SECRET_VALUE}")
    );

    // The kubelet updates the ConfigMap: the next instance (the next request) sees it.
    kubelet_volume(
        &config_map,
        "..gen2",
        &[("greeting", "bonjour"), ("color", "blue")],
    );
    assert_eq!(get("/config/greeting"), "bonjour");

    // The Secret reaches the guest only through wasi:config.
    let env = get("/env");
    assert!(!env.contains(SECRET_VALUE), "{env}");
    assert!(!env.contains(GRANTS_ENV), "{env}");
    cri.stop_container(&id, 10).expect("StopContainer");
    for (stream, line) in read_log(&spec.log_dir.join("app.log")) {
        assert!(!line.contains(SECRET_VALUE), "{stream}: {line}");
    }
    let containerd_log = std::fs::read_to_string(ctd.log_path()).unwrap_or_default();
    assert!(
        !containerd_log.contains(SECRET_VALUE),
        "the Secret's value is not in containerd's log (the shim's logs go there)"
    );
}
