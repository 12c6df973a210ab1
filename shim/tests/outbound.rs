//! `spec.outbound` enforced in the guest, through containerd's CRI: a wasi:http guest
//! (`http-outbound`) in a host-network pod asks for loopback servers the test runs, with and
//! without grants. Refused attempts get the guest's own error, never reach the server, and are
//! logged once per destination.
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmkube_contract::{Grants, Outbound, GRANTS_ENV};
use wasmkube_test_harness::containerd::Containerd;
use wasmkube_test_harness::cri::{read_log, ContainerSpec, Cri, PodSpec};
use wasmkube_test_harness::{free_port, missing_prerequisites, skip_unless};

mod support;
use support::{ask, node, pod, serve};

const IMAGE: &str = "docker.io/wasmkube/http-outbound:cri";

/// A loopback server answering every connection with an HTTP 200 and `body`; counts them.
struct Server {
    port: u16,
    hits: Arc<AtomicUsize>,
}

fn server(body: &'static str) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Server { port, hits }
}

/// An `http-outbound` container serving on `port` of the host's loopback, with `grants`.
fn start(
    ctd: &Containerd,
    cri: &mut Cri,
    pod_id: &str,
    spec: &PodSpec,
    name: &str,
    port: u16,
    grants: Option<&Grants>,
) -> String {
    // Names resolve as in a pod: the kubelet mounts an /etc/hosts into every container.
    let hosts = spec.log_dir.with_extension(format!("{name}.hosts"));
    std::fs::write(&hosts, "127.0.0.1 localhost\n::1 localhost\n").expect("write hosts");
    let mut env = vec![(
        "WASMKUBE_HTTP_ADDR".to_string(),
        format!("127.0.0.1:{port}"),
    )];
    if let Some(g) = grants {
        env.push((GRANTS_ENV.to_string(), g.to_env_value()));
    }
    serve(
        ctd,
        cri,
        pod_id,
        spec,
        &ContainerSpec {
            name: name.into(),
            image: IMAGE.into(),
            env,
            mounts: vec![(hosts, "/etc/hosts".into())],
            ..Default::default()
        },
        port,
    )
}

fn grants(allowed: &[String], blocked: &[&str]) -> Grants {
    Grants {
        outbound: Some(Outbound {
            allowed_hosts: allowed.to_vec(),
            blocked_networks: blocked.iter().map(|s| s.to_string()).collect(),
        }),
        ..Grants::none()
    }
}

#[test]
fn cri_outbound_grants_allow_what_they_name_and_nothing_else() {
    skip_unless!(missing_prerequisites());
    skip_unless!(wasmkube_test_harness::which("curl")
        .is_none()
        .then(|| "curl (apt-get install -y curl)".to_string()));
    let allowed = server("allowed");
    let denied = server("denied");
    let raw = server("raw");
    let (ctd, mut cri, work) = node(&[("http_outbound", IMAGE)]);
    // One pod per case, as a WasmApp's pod holds one container.
    let spec = pod("outbound", true, work.path());
    let pod_id = cri.run_pod(&spec).expect("RunPodSandbox");

    // 1. Granted: one HTTP origin (by address and by name) and one raw TCP port.
    let granted = grants(
        &[
            format!("http://127.0.0.1:{}", allowed.port),
            format!("http://localhost:{}", allowed.port),
            format!("*://127.0.0.1:{}", raw.port),
        ],
        &[],
    );
    let port = free_port();
    let id = start(
        &ctd,
        &mut cri,
        &pod_id,
        &spec,
        "granted",
        port,
        Some(&granted),
    );
    let get = |path: String| ask(port, &path).unwrap_or_else(|| panic!("no answer to {path}"));
    assert_eq!(
        get(format!("/fetch?http://127.0.0.1:{}/", allowed.port)),
        "status=200 body=allowed"
    );
    assert_eq!(
        get(format!("/fetch?http://localhost:{}/", allowed.port)),
        "status=200 body=allowed"
    );
    // Another port, another origin: the guest's own error, and the server never sees them.
    for _ in 0..3 {
        assert_eq!(
            get(format!("/fetch?http://127.0.0.1:{}/", denied.port)),
            "error=HttpRequestDenied"
        );
    }
    assert_eq!(
        get(format!(
            "/fetch?http://not-granted.example:{}/",
            allowed.port
        )),
        "error=HttpRequestDenied"
    );
    // Raw TCP: the granted port connects, another is refused before connecting.
    assert_eq!(get(format!("/tcp?127.0.0.1:{}", raw.port)), "connected");
    let refused = get(format!("/tcp?127.0.0.1:{}", denied.port));
    assert!(refused.starts_with("error="), "{refused}");
    // The grants are the shim's, not the guest's: gone from its environment.
    let env = get("/env".into());
    assert!(
        env.contains("WASMKUBE_HTTP_ADDR") && !env.contains(GRANTS_ENV),
        "{env}"
    );
    // Something is granted, so names resolve.
    let found = get("/lookup?localhost".into());
    assert!(found.contains("127.0.0.1"), "{found}");
    assert_eq!(
        denied.hits.load(Ordering::SeqCst),
        0,
        "a refused destination was contacted"
    );
    assert!(raw.hits.load(Ordering::SeqCst) >= 1);
    cri.stop_container(&id, 10).expect("StopContainer");
    let log = read_log(&spec.log_dir.join("granted.log"));
    let stderr: Vec<&str> = log
        .iter()
        .filter(|(s, m)| s == "stderr" && m.contains("denied"))
        .map(|(_, m)| m.as_str())
        .collect();
    let http_denied = format!("http://127.0.0.1:{}", denied.port);
    let lines_for = |needle: &str| stderr.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        lines_for(&http_denied),
        1,
        "one line for three refusals: {stderr:#?}"
    );
    assert!(
        stderr
            .iter()
            .any(|l| l.contains(&http_denied) && l.contains("spec.outbound.allowedHosts")),
        "the line names the grant to add: {stderr:#?}"
    );
    assert_eq!(lines_for("not-granted.example"), 1, "{stderr:#?}");
    assert_eq!(
        lines_for(&format!("tcp/udp 127.0.0.1:{}", denied.port)),
        1,
        "{stderr:#?}"
    );

    // 2. No grants at all: nothing is reachable, names do not resolve.
    let port = free_port();
    cri.remove_pod(&pod_id).expect("remove pod");
    let spec = pod("outbound-none", true, work.path());
    let pod_id = cri.run_pod(&spec).expect("RunPodSandbox");
    let id2 = start(&ctd, &mut cri, &pod_id, &spec, "nothing", port, None);
    assert_eq!(
        ask(port, &format!("/fetch?http://127.0.0.1:{}/", allowed.port)).as_deref(),
        Some("error=HttpRequestDenied")
    );
    let tcp = ask(port, &format!("/tcp?127.0.0.1:{}", raw.port)).unwrap_or_default();
    assert!(tcp.starts_with("error="), "{tcp}");
    let lookup = ask(port, "/lookup?localhost").unwrap_or_default();
    assert!(lookup.starts_with("error="), "{lookup}");
    cri.stop_container(&id2, 10).expect("StopContainer");

    // 3. A granted name resolving only into a blocked network.
    let port = free_port();
    let blocked = grants(
        &[format!("http://localhost:{}", allowed.port)],
        &["127.0.0.0/8", "::1/128"],
    );
    cri.remove_pod(&pod_id).expect("remove pod");
    let spec = pod("outbound-blocked", true, work.path());
    let pod_id = cri.run_pod(&spec).expect("RunPodSandbox");
    let id3 = start(
        &ctd,
        &mut cri,
        &pod_id,
        &spec,
        "blocked",
        port,
        Some(&blocked),
    );
    let before = allowed.hits.load(Ordering::SeqCst);
    assert_eq!(
        ask(port, &format!("/fetch?http://localhost:{}/", allowed.port)).as_deref(),
        Some("error=HttpRequestDenied")
    );
    assert_eq!(
        allowed.hits.load(Ordering::SeqCst),
        before,
        "a blocked address was contacted"
    );
    cri.stop_container(&id3, 10).expect("StopContainer");
    let log = read_log(&spec.log_dir.join("blocked.log"));
    assert!(
        log.iter()
            .any(|(_, m)| m.contains("blocked networks") && m.contains("127.0.0.1")),
        "{log:#?}"
    );
    cri.remove_pod(&pod_id).expect("remove pod");
}
