//! `spec.keyValue` enforced in the guest, through containerd's CRI: `http-grants` guests in
//! host-network pods keep data in a Redis the test starts (Debian's `redis-server`), in a file
//! store and in memory, with the grants and mounts the operator gives a WasmApp's pod.
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmkube_contract::{Grants, KeyValueBackend, KeyValueStore};
use wasmkube_test_harness::containerd::Containerd;
use wasmkube_test_harness::cri::{read_log, ContainerSpec, Cri, PodSpec};
use wasmkube_test_harness::{free_port, missing_prerequisites, skip_unless};

mod support;
use support::{ask, granted_app, node, pod, serve};

const IMAGE: &str = "docker.io/wasmkube/http-grants:cri";

/// A `redis-server` on a loopback port, without persistence; killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis never listened"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis { port, child }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing_redis() -> Option<String> {
    wasmkube_test_harness::which("redis-server")
        .is_none()
        .then(|| "redis-server (apt-get install -y redis-server)".to_string())
}

/// The grants and the read-only and writable mounts a WasmApp `app` with stores `default`
/// (Redis at `redis_url`, timeout 500 ms), `shared` (the same Redis, shared as `visits`),
/// `local` (a file store in `file_dir`) and `cache` (memory) gets from the operator.
type Mounts = Vec<(PathBuf, String)>;
fn app_grants(
    app: &str,
    work: &Path,
    redis_url: &str,
    file_dir: &Path,
) -> (Grants, Mounts, Mounts) {
    let secret = work.join(format!("{app}-redis-secret"));
    std::fs::create_dir_all(&secret).expect("secret dir");
    std::fs::write(secret.join("url"), redis_url).expect("url");
    let store = |name: &str, backend, key_prefix: String| KeyValueStore {
        name: name.into(),
        backend,
        key_prefix,
        timeout_ms: 500,
    };
    let grants = Grants {
        key_value: vec![
            store(
                "default",
                KeyValueBackend::Redis {
                    url_file: format!("{}/url", KeyValueStore::mount_path_for(0)),
                },
                format!("t/{app}/default/"),
            ),
            store(
                "shared",
                KeyValueBackend::Redis {
                    url_file: format!("{}/url", KeyValueStore::mount_path_for(1)),
                },
                "t/shared/visits/".into(),
            ),
            store(
                "local",
                KeyValueBackend::File {
                    dir: KeyValueStore::mount_path_for(2),
                },
                format!("t/{app}/local/"),
            ),
            store("cache", KeyValueBackend::Memory, format!("t/{app}/cache/")),
        ],
        ..Grants::none()
    };
    let mounts = vec![
        (secret.clone(), KeyValueStore::mount_path_for(0)),
        (secret, KeyValueStore::mount_path_for(1)),
    ];
    let writable = vec![(file_dir.to_path_buf(), KeyValueStore::mount_path_for(2))];
    (grants, mounts, writable)
}

/// Starts the `http-grants` app `name` in its own pod on `port`.
#[allow(clippy::too_many_arguments)]
fn start_app(
    ctd: &Containerd,
    cri: &mut Cri,
    work: &Path,
    name: &str,
    app: &str,
    port: u16,
    redis_url: &str,
    file_dir: &Path,
) -> (String, String, PodSpec) {
    let spec = pod(name, true, work);
    let pod_id = cri.run_pod(&spec).expect("RunPodSandbox");
    let (grants, mounts, writable_mounts) = app_grants(app, work, redis_url, file_dir);
    let id = serve(
        ctd,
        cri,
        &pod_id,
        &spec,
        &ContainerSpec {
            mounts,
            writable_mounts,
            ..granted_app(IMAGE, port, &grants)
        },
        port,
    );
    (pod_id, id, spec)
}

#[test]
fn cri_key_value_stores_share_persist_and_fail_fast() {
    skip_unless!(missing_prerequisites());
    skip_unless!(missing_redis());
    let redis = Redis::start(free_port());
    let url = format!("redis://127.0.0.1:{}/0", redis.port);
    let (ctd, mut cri, work) = node(&[("http_grants", IMAGE)]);
    let file_dir = work.path().join("kv-file");
    std::fs::create_dir_all(&file_dir).expect("file store dir");

    let (port_a, port_b, port_c) = (free_port(), free_port(), free_port());
    let (pod_a, id_a, _) = start_app(
        &ctd,
        &mut cri,
        work.path(),
        "kv-a",
        "counter",
        port_a,
        &url,
        &file_dir,
    );
    let other_dir = work.path().join("kv-file-b");
    std::fs::create_dir_all(&other_dir).expect("dir");
    // A second replica of the same app, and a different app, on the same Redis.
    let (pod_b, _, _) = start_app(
        &ctd,
        &mut cri,
        work.path(),
        "kv-b",
        "counter",
        port_b,
        &url,
        &other_dir,
    );
    let third_dir = work.path().join("kv-file-c");
    std::fs::create_dir_all(&third_dir).expect("dir");
    let (pod_c, _, _) = start_app(
        &ctd,
        &mut cri,
        work.path(),
        "kv-c",
        "other",
        port_c,
        &url,
        &third_dir,
    );
    let get = |port: u16, path: &str| {
        ask(port, path).unwrap_or_else(|| panic!("no answer to {path} on {port}"))
    };

    // Replicas of one app share a key; another app does not see it, unless both share a store.
    assert_eq!(get(port_a, "/kv/default/set/greeting?hello"), "ok");
    assert_eq!(get(port_b, "/kv/default/get/greeting"), "hello");
    assert_eq!(get(port_c, "/kv/default/get/greeting"), "missing");
    assert_eq!(get(port_a, "/kv/shared/incr/visits?1"), "1");
    assert_eq!(get(port_c, "/kv/shared/incr/visits?2"), "3");
    assert_eq!(get(port_b, "/count"), "visits=1", "`default` of counter");
    assert_eq!(get(port_a, "/count"), "visits=2");
    assert_eq!(get(port_b, "/kv/default/keys"), "greeting,visits");
    assert_eq!(
        get(port_b, "/kv/default/many?greeting,nope"),
        "greeting=hello,nope=missing"
    );
    // In Redis, under the app's prefix.
    let stored = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "GET",
            "t/counter/default/greeting",
        ])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&stored.stdout).trim(), "hello");

    // A store the app was not granted: the guest's error, one line naming it.
    let denied = get(port_a, "/kv/secret-store/get/x");
    assert_eq!(denied, "error=no-such-store");

    // File and memory stores; then a restart of the container.
    assert_eq!(get(port_a, "/kv/local/set/kept?on-disk"), "ok");
    assert_eq!(get(port_a, "/kv/cache/set/lost?in-memory"), "ok");
    assert_eq!(
        get(port_a, "/kv/cache/get/lost"),
        "in-memory",
        "shared by instances"
    );
    cri.stop_container(&id_a, 10).expect("StopContainer");
    let log = read_log(&work.path().join("kv-a").join("app.log"));
    let lines: Vec<&String> = log
        .iter()
        .map(|(_, l)| l)
        .filter(|l| l.contains("secret-store"))
        .collect();
    assert_eq!(lines.len(), 1, "{log:#?}");
    assert!(lines[0].contains("spec.keyValue"), "{}", lines[0]);
    cri.remove_pod(&pod_a).expect("remove pod");
    let port_a2 = free_port();
    let (pod_a2, _, _) = start_app(
        &ctd,
        &mut cri,
        work.path(),
        "kv-a2",
        "counter",
        port_a2,
        &url,
        &file_dir,
    );
    assert_eq!(get(port_a2, "/kv/local/get/kept"), "on-disk");
    assert_eq!(get(port_a2, "/kv/cache/get/lost"), "missing");
    assert_eq!(get(port_a2, "/kv/default/get/greeting"), "hello");

    // Redis gone: the call fails within the store's timeout and the app keeps serving.
    drop(redis);
    let asked = Instant::now();
    let failed = get(port_a2, "/kv/default/get/greeting");
    let took = asked.elapsed();
    assert!(
        failed.starts_with("error=other: key-value store \"default\""),
        "{failed}"
    );
    assert!(
        took < Duration::from_secs(10),
        "a hang, not a timeout: {took:?}"
    );
    assert!(
        !failed.contains("127.0.0.1"),
        "the message names the store, not the server's URL: {failed}"
    );
    assert_eq!(
        get(port_a2, "/kv/local/get/kept"),
        "on-disk",
        "still serving"
    );
    for p in [pod_a2, pod_b, pod_c] {
        cri.remove_pod(&p).expect("remove pod");
    }
}
