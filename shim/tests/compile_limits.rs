//! The node-wide compile limit and the compile's cgroup charge, through containerd's CRI: eight
//! containers in four pods, each with a module of its own, on a node limited to two compiles.
use std::time::Duration;

use wasmkube_test_harness::cri::ContainerSpec;
use wasmkube_test_harness::images::pack;
use wasmkube_test_harness::{missing_prerequisites, skip_unless};

mod support;
use support::{node_with, pod};

/// What a sampler saw of the node's compilers while containers started.
#[derive(Default)]
struct Compiles {
    /// Most compilers running at once.
    most_at_once: usize,
    /// The memory cgroup of each compiler seen at work (its module read, its seccomp filter
    /// on), with the highest `max_usage_in_bytes` (or `memory.peak`) read from it.
    cgroups: std::collections::HashMap<String, u64>,
    /// The cgroup v1 `cpu` cgroup of each compiler seen at work (none on cgroup v2).
    cpu_cgroups: std::collections::BTreeSet<String>,
    seen: std::collections::BTreeSet<u32>,
}

/// The cgroup of `pid` in the v1 hierarchy of `controller`.
fn cgroup_of(pid: u32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

/// Whether `pid` has begun to exit (`PF_EXITING` in its `/proc/<pid>/stat` flags) or is gone.
/// On cgroup v1 the kernel shows an exiting task in the root cgroup of every hierarchy, so a
/// cgroup read is only evidence when the task was still short of exiting after the read.
fn exiting(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // Fields after the command (which may hold spaces) in parentheses: state is the first,
    // flags the seventh.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return true;
    };
    let flags = rest
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok());
    flags.is_none_or(|f| f & PF_EXITING != 0)
}

fn peak_memory(cgroup: &str) -> Option<u64> {
    let rel = cgroup.trim_start_matches('/');
    [
        format!("/sys/fs/cgroup/memory/{rel}/memory.max_usage_in_bytes"),
        format!("/sys/fs/cgroup/{rel}/memory.peak"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok()?.trim().parse().ok())
}

#[test]
fn cri_eight_containers_in_four_pods_compile_within_the_node_limit_charged_to_their_pods() {
    skip_unless!(missing_prerequisites());
    // A node limit of 2, and this node's own slots (a run directory no other test uses).
    let run_dir = tempfile::tempdir().expect("tmp");
    let run_dir_text = run_dir.path().display().to_string();
    let work_modules = tempfile::tempdir().expect("tmp");
    let mut images = Vec::new();
    for i in 0..8 {
        // Distinct modules (no cache hit between them), each seconds of compiling.
        let path = work_modules.path().join(format!("big{i}.wasm"));
        std::fs::write(
            &path,
            wasmkube_test_harness::wasm_gen::big_module((8 << 20) + i * 10_000, false),
        )
        .expect("write");
        images.push((path, format!("docker.io/wasmkube/big{i}:cri")));
    }
    let (ctd, mut cri, work) = node_with(
        &[
            ("WASMKUBE_NODE_COMPILES", "2"),
            ("WASMKUBE_RUN_DIR", run_dir_text.as_str()),
        ],
        &[],
    );
    for (i, (path, reference)) in images.iter().enumerate() {
        let archive = work.path().join(format!("big{i}.tar"));
        pack(path, reference, &archive);
        ctd.import("k8s.io", &archive).ok();
    }
    let address = ctd.address();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = Compiles::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = wasmkube_test_harness::procs::compilers(&address);
                c.most_at_once = c.most_at_once.max(now.len());
                for pid in now {
                    c.seen.insert(pid);
                    // At work: it has read the module (the worker charges it to the container
                    // before sending it), so its seccomp filter is on.
                    let at_work = wasmkube_test_harness::procs::status(pid)
                        .get("Seccomp")
                        .is_some_and(|m| m == "2");
                    if !at_work {
                        continue;
                    }
                    let cpu = cgroup_of(pid, "cpu");
                    let memory = cgroup_of(pid, "memory");
                    if exiting(pid) {
                        continue;
                    }
                    if let Some(cg) = cpu {
                        c.cpu_cgroups.insert(cg);
                    }
                    if let Some(cg) = memory {
                        let peak = peak_memory(&cg).unwrap_or(0);
                        let e = c.cgroups.entry(cg).or_default();
                        *e = (*e).max(peak);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            c
        })
    };
    let mut pods = Vec::new();
    let mut containers = Vec::new();
    for p in 0..4 {
        let mut spec = pod(&format!("compile{p}"), true, work.path());
        // Each pod its own cgroup, as the kubelet makes them.
        spec.cgroup_parent = Some(format!("/wasmkube-test/{}", spec.name));
        let pod_id = cri.run_pod(&spec).expect("RunPodSandbox");
        for c in 0..2 {
            let image = &images[p * 2 + c].1;
            let id = cri
                .create_container(
                    &pod_id,
                    &spec,
                    &ContainerSpec {
                        name: format!("big{c}"),
                        image: image.clone(),
                        ..Default::default()
                    },
                )
                .expect("CreateContainer");
            containers.push(id);
        }
        pods.push(pod_id);
    }
    for id in &containers {
        cri.start_container(id).expect("StartContainer");
    }
    for id in &containers {
        let code = cri
            .wait_exit(id, Duration::from_secs(600))
            .expect("the container ran to its end");
        assert_eq!(code, 0, "container {id}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let compiles = sampler.join().expect("sampler");
    println!(
        "{} compilers seen, at most {} at once; their memory cgroups and peaks: {:?}; cpu \
         cgroups: {:?}",
        compiles.seen.len(),
        compiles.most_at_once,
        compiles.cgroups,
        compiles.cpu_cgroups
    );
    assert!(
        compiles.seen.len() >= 2,
        "the sampler saw compilers at work (else this proves nothing)"
    );
    assert!(
        compiles.most_at_once <= 2,
        "{} compiles at once on a node limited to 2",
        compiles.most_at_once
    );
    // Each compiler compiled in the memory and cpu cgroups of a container it compiled for.
    assert!(
        !compiles.cgroups.is_empty(),
        "no compiler was seen at work (else this proves nothing)"
    );
    for cgroup in compiles.cgroups.keys().chain(&compiles.cpu_cgroups) {
        assert!(
            containers.iter().any(|id| cgroup.ends_with(id.as_str())),
            "a compiler ran in {cgroup}, not in one of the containers' cgroups {containers:?}"
        );
    }
    for pod_id in pods {
        cri.remove_pod(&pod_id).expect("remove pod");
    }
    // The pods' parent cgroups the runtime made (best effort: empty directories).
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let parent = h.path().join("wasmkube-test");
            if let Ok(pods) = std::fs::read_dir(&parent) {
                for p in pods.flatten() {
                    let _ = std::fs::remove_dir(p.path());
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
}
