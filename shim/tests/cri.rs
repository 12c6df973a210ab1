//! The shim through containerd's CRI, as a kubelet drives it: RunPodSandbox (the pause
//! sandbox runs natively through our runtime handler) → CreateContainer → StartContainer →
//! CRI log file → StopContainer → StopPodSandbox/RemovePodSandbox.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use wasmkube_test_harness::cri::{BridgeCni, ContainerSpec};
use wasmkube_test_harness::{missing_prerequisites, skip_unless};

mod support;
use support::{node, node_with, pod};

#[test]
fn cri_runs_a_wasm_container_in_a_host_network_pod() {
    skip_unless!(missing_prerequisites());
    let (_ctd, mut cri, work) = node(&[
        ("hello", "docker.io/wasmkube/hello:cri"),
        ("trap", "docker.io/wasmkube/trap:cri"),
    ]);
    assert!(
        cri.status_info()
            .expect("status")
            .contains("io.containerd.wasmkube.v1"),
        "handler configured"
    );
    let pod = pod("hello", true, work.path());
    let pod_id = cri
        .run_pod(&pod)
        .expect("RunPodSandbox with the wasmkube handler");

    let spec = ContainerSpec {
        name: "hello".into(),
        image: "docker.io/wasmkube/hello:cri".into(),
        args: vec!["from-cri".into()],
        env: vec![("WK_POD".into(), "yes".into())],
        ..Default::default()
    };
    let hello = cri
        .run_to_exit(&pod_id, &pod, &spec, Duration::from_secs(30))
        .expect("hello runs to exit");
    assert_eq!(hello.code, 0);
    let out = hello.stream("stdout");
    assert!(
        out.starts_with("hello from wasm\narg[0]=/hello.wasm\narg[1]=from-cri\n"),
        "{out}"
    );
    assert!(out.contains("env WK_POD=yes"), "{out}");
    assert_eq!(hello.stream("stderr"), "to stderr\n");

    // A trapping module: non-zero exit, the trap in the container's log.
    let spec = ContainerSpec {
        name: "trap".into(),
        image: "docker.io/wasmkube/trap:cri".into(),
        ..Default::default()
    };
    let trap = cri
        .run_to_exit(&pod_id, &pod, &spec, Duration::from_secs(30))
        .expect("trap runs to exit");
    assert_eq!(trap.code, 134);
    let err = trap.stream("stderr");
    assert!(
        err.contains("wasmkube: wasm trap") && err.contains("unreachable"),
        "{err}"
    );
    cri.remove_pod(&pod_id).expect("remove pod");
}

#[test]
fn cri_memory_limit_from_the_pod_spec_bounds_the_guest() {
    skip_unless!(missing_prerequisites());
    let (_ctd, mut cri, work) = node(&[("memhog", "docker.io/wasmkube/memhog:cri")]);
    let pod = pod("hog", true, work.path());
    let pod_id = cri.run_pod(&pod).expect("RunPodSandbox");
    let spec = ContainerSpec {
        name: "hog".into(),
        image: "docker.io/wasmkube/memhog:cri".into(),
        env: vec![("WK_HOG_MIB".into(), "512".into())],
        memory_limit: Some(96 << 20),
        ..Default::default()
    };
    let hog = cri
        .run_to_exit(&pod_id, &pod, &spec, Duration::from_secs(60))
        .expect("memhog runs to exit");
    assert_eq!(hog.code, 137);
    let err = hog.stream("stderr");
    assert!(err.contains("guest exceeded the memory limit"), "{err}");
    cri.remove_pod(&pod_id).expect("remove pod");
}

/// `curl` inside a network namespace, on that namespace's loopback.
fn curl_in_netns(netns: &str, url: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["curl", "-sS", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn cri_http_app_in_a_pod_network_serves_and_stops_promptly() {
    skip_unless!(missing_prerequisites());
    skip_unless!(wasmkube_test_harness::which("curl")
        .is_none()
        .then(|| "curl (apt-get install -y curl)".to_string()));
    skip_unless!((!Path::new("/usr/lib/cni/bridge").exists()).then(|| {
        "CNI plugins in /usr/lib/cni (apt-get install -y containernetworking-plugins)".to_string()
    }));
    let (ctd, mut cri, work) = node(&[("http_hello", "docker.io/wasmkube/hello-http:cri")]);
    let net = BridgeCni::write(&ctd.dir().join("cni"));
    let pod = pod("web", false, work.path());
    let pod_id = cri.run_pod(&pod).expect("RunPodSandbox with pod network");
    let spec = ContainerSpec {
        name: "web".into(),
        image: "docker.io/wasmkube/hello-http:cri".into(),
        env: vec![("WK_GREETING".into(), "hello pod".into())],
        ..Default::default()
    };
    let id = cri
        .create_container(&pod_id, &pod, &spec)
        .expect("CreateContainer");
    cri.start_container(&id).expect("StartContainer");

    let (ip, netns) = cri.pod_network(&pod_id).expect("pod status");
    assert!(
        ip.starts_with(net.prefix()),
        "pod IP from the CNI bridge {}: {ip:?}",
        net.subnet
    );
    // Reach the app on the pod's own loopback (the default listen address is [::]:8080).
    let start = Instant::now();
    let body = loop {
        if let Some(b) = curl_in_netns(&netns, "http://127.0.0.1:8080/env") {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "app never answered in the pod"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(body, "hello pod\n");
    assert_eq!(
        curl_in_netns(&netns, "http://127.0.0.1:8080/x?y=1").as_deref(),
        Some("hello from wasi:http, path=/x?y=1\n")
    );
    // The default address is dual-stack: the pod's IPv4 address and IPv6 loopback both work.
    assert_eq!(
        curl_in_netns(&netns, &format!("http://{ip}:8080/v4")).as_deref(),
        Some("hello from wasi:http, path=/v4\n")
    );
    assert_eq!(
        curl_in_netns(&netns, "http://[::1]:8080/v6").as_deref(),
        Some("hello from wasi:http, path=/v6\n")
    );

    // Pod deletion: StopContainer sends SIGTERM; the server drains and exits 0 well before
    // the grace period.
    let t = Instant::now();
    cri.stop_container(&id, 30).expect("StopContainer");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "StopContainer took {:?}",
        t.elapsed()
    );
    assert_eq!(cri.wait_exit(&id, Duration::from_secs(5)).expect("exit"), 0);
    cri.remove_container(&id).expect("RemoveContainer");
    cri.remove_pod(&pod_id).expect("remove pod");
    drop(net);
}

/// A request socket for the broker: one end goes to the broker in an `SCM_RIGHTS` message on
/// `broker`; the other is returned.
fn hand_over(broker: &std::os::fd::OwnedFd) -> std::os::fd::OwnedFd {
    use rustix::net::{
        sendmsg, socketpair, AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
        SocketFlags, SocketType,
    };
    use std::os::fd::AsFd;
    let (mine, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    let fds = [theirs.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    sendmsg(
        broker,
        &[std::io::IoSlice::new(&[1])],
        &mut control,
        SendFlags::empty(),
    )
    .expect("hand a request to the broker");
    mine
}

/// A client of the pod's compile broker that sends an empty record, leaves a request
/// half-sent, and floods it with 300 more that never send a byte (all held open) cannot stop or
/// wedge it: the pod's next container still gets its module compiled by the broker at once
/// (well within the 60 s a worker waits for a stalled request), not in its own process.
#[test]
fn cri_a_flooding_client_cannot_stop_or_wedge_the_pods_broker() {
    skip_unless!(missing_prerequisites());
    use wasmkube_test_harness::procs::{seqpacket_fds, shim_roles};
    let (ctd, mut cri, work) = node(&[("hello", "docker.io/wasmkube/hello:flood")]);
    let pod = pod("flood", true, work.path());
    let pod_id = cri.run_pod(&pod).expect("RunPodSandbox");
    let roles = shim_roles(&ctd.address(), &pod_id).expect("the pod's shim daemon");
    // The broker's client end, taken from the shim daemon as a process of the pod could hold it:
    // of the daemon's two SEQPACKET sockets (it keeps the server end to start brokers on
    // demand), the one with the clients' send timeout.
    let fds = seqpacket_fds(roles.daemon);
    assert_eq!(
        fds.len(),
        2,
        "both ends of the broker's socket in the daemon: {fds:?}"
    );
    let daemon = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(i32::try_from(roles.daemon).expect("pid")).expect("pid"),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("pidfd_open");
    let mut ends: Vec<_> = fds
        .iter()
        .map(|&fd| {
            rustix::process::pidfd_getfd(&daemon, fd, rustix::process::PidfdGetfdFlags::empty())
                .expect("pidfd_getfd")
        })
        .collect();
    ends.retain(|end| {
        rustix::net::sockopt::socket_timeout(end, rustix::net::sockopt::Timeout::Send)
            .expect("SO_SNDTIMEO")
            .is_some()
    });
    assert_eq!(ends.len(), 1, "one end has the clients' send timeout");
    let client = ends.remove(0);

    // An empty record (it used to read as the end of the stream).
    rustix::net::send(&client, &[], rustix::net::SendFlags::empty()).expect("empty record");
    // A request that never finishes sending: a tag byte, then nothing.
    let stalled = hand_over(&client);
    rustix::io::write(&stalled, &[1]).expect("one byte");
    // Hundreds more that never send a byte.
    let held: Vec<_> = (0..300).map(|_| hand_over(&client)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let broker = shim_roles(&ctd.address(), &pod_id)
        .and_then(|r| r.broker)
        .expect("a broker runs (the requests started one, or the running one kept going)");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        std::fs::metadata(format!("/proc/{broker}")).is_ok(),
        "the broker is still running"
    );

    let spec = ContainerSpec {
        name: "hello".into(),
        image: "docker.io/wasmkube/hello:flood".into(),
        ..Default::default()
    };
    // Which shim daemons exist while hello runs: the pod's containers share the pod's daemon
    // (runwasi groups them by sandbox id), so the broker that serves hello is the flooded one.
    let address = ctd.address();
    let watching = std::sync::atomic::AtomicBool::new(true);
    let (hello, daemons) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut ids = std::collections::BTreeSet::new();
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                ids.extend(wasmkube_test_harness::procs::shim_ids(&address));
                std::thread::sleep(Duration::from_millis(5));
            }
            ids
        });
        let started = Instant::now();
        let hello = cri.run_to_exit(&pod_id, &pod, &spec, Duration::from_secs(45));
        println!("hello ran in {:?} beside the flood", started.elapsed());
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        (hello, watcher.join().expect("watcher"))
    });
    let hello = hello.expect("hello runs to exit while the flood is held open");
    assert_eq!(
        daemons.into_iter().collect::<Vec<_>>(),
        vec![pod_id.clone()],
        "one shim daemon, the pod's, served hello"
    );
    assert_eq!(hello.code, 0, "{:?}", hello.log);
    assert!(hello.stream("stdout").starts_with("hello from wasm"));
    let err = hello.stream("stderr");
    assert!(
        !err.contains("compiling in the container process"),
        "the broker served it: {err}"
    );
    assert!(!ctd.cache_entries().is_empty(), "compiled by a worker");
    drop((stalled, held, client));
    cri.remove_pod(&pod_id).expect("remove pod");
}

/// An idle pod keeps no compile broker and no process per container: once its containers are
/// loaded, the pod's shim daemon has one child of its own binary, runwasi's zygote (the pause
/// container runs its own binary). The broker exits when idle (here after 1 s) and the daemon
/// starts another when a request waits: the pod's next container gets its compiled module from
/// the cache through a worker, not by compiling in its own process. (Stopping a started
/// container, whose builder zygote is gone, is `cri_http_app_in_a_pod_network_serves_and_stops_promptly`.)
#[test]
fn cri_an_idle_pod_keeps_no_broker_and_its_next_container_is_still_served() {
    skip_unless!(missing_prerequisites());
    use wasmkube_test_harness::procs::{seqpacket_fds, shim_children, shim_roles};
    let (ctd, mut cri, work) = node_with(
        &[("WASMKUBE_BROKER_IDLE_SECS", "1")],
        &[("hello", "docker.io/wasmkube/hello:idle")],
    );
    let pod = pod("idle", true, work.path());
    let pod_id = cri.run_pod(&pod).expect("RunPodSandbox");
    let spec = ContainerSpec {
        name: "hello".into(),
        image: "docker.io/wasmkube/hello:idle".into(),
        ..Default::default()
    };
    let first = cri
        .run_to_exit(&pod_id, &pod, &spec, Duration::from_secs(30))
        .expect("hello runs");
    assert_eq!(first.code, 0, "{:?}", first.log);
    let entries = ctd.cache_entries().len();
    assert!(entries > 0, "compiled by a worker");

    let daemon = shim_roles(&ctd.address(), &pod_id)
        .expect("the pod's shim daemon")
        .daemon;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut children = shim_children(daemon);
    while children.len() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        children = shim_children(daemon);
    }
    assert_eq!(
        children.len(),
        1,
        "an idle pod's daemon keeps only its zygote: {children:?}"
    );
    assert!(
        !children[0].1.iter().any(|a| a.starts_with("--wasmkube")),
        "the one left is the zygote, not a broker: {children:?}"
    );
    // The zygote (and so every container process it forks) holds the broker's client end
    // only; the daemon holds both ends.
    let zygote = children[0].0;
    assert_eq!(
        seqpacket_fds(zygote).len(),
        1,
        "the zygote holds one end of the broker's socket"
    );
    assert_eq!(seqpacket_fds(daemon).len(), 2, "the daemon holds both");

    let second = cri
        .run_to_exit(&pod_id, &pod, &spec, Duration::from_secs(30))
        .expect("hello runs again");
    assert_eq!(second.code, 0, "{:?}", second.log);
    assert!(second.stream("stdout").starts_with("hello from wasm"));
    let err = second.stream("stderr");
    assert!(
        !err.contains("compiling in the container process"),
        "a broker started on demand served it: {err}"
    );
    assert_eq!(
        ctd.cache_entries().len(),
        entries,
        "served from the cache, not compiled again"
    );
    cri.remove_pod(&pod_id).expect("remove pod");
}
