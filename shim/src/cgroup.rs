//! Where a process's cgroups are: `/proc/<pid>/cgroup`, read relative to a cgroupfs root (the
//! container's own view inside a container, the host's in a compile-broker worker). Shared by
//! [`crate::memory`] and [`crate::cpu`].

/// Where cgroupfs is mounted (in a container: its own view; in a broker worker: the host's).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup membership of a process, from `/proc/<pid>/cgroup`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// cgroup v1 `memory` controller path.
    pub v1_memory: Option<String>,
    /// cgroup v1 `cpu` controller path (alone or co-mounted as `cpu,cpuacct`).
    pub v1_cpu: Option<String>,
    /// cgroup v2 unified path.
    pub v2: Option<String>,
}

/// Parses `/proc/<pid>/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> CgroupPaths {
    let mut out = CgroupPaths::default();
    for (id, controllers, path) in proc_cgroup_lines(text) {
        if id == "0" && controllers.is_empty() {
            out.v2 = Some(path.to_string());
            continue;
        }
        for c in controllers.split(',') {
            match c {
                "memory" => out.v1_memory = Some(path.to_string()),
                "cpu" => out.v1_cpu = Some(path.to_string()),
                _ => {}
            }
        }
    }
    out
}

/// The `(hierarchy id, controllers, path)` of each well-formed line of a `/proc/<pid>/cgroup`
/// (`0`, empty, path for the unified hierarchy).
pub fn proc_cgroup_lines(text: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        Some((parts.next()?, parts.next()?, parts.next()?))
    })
}

/// `dir/file` relative to a cgroupfs root (`file` alone for the root itself).
pub fn join(dir: &str, file: &str) -> String {
    let dir = dir.trim_matches('/');
    if dir.is_empty() {
        file.to_string()
    } else {
        format!("{dir}/{file}")
    }
}

/// This process's cgroups.
pub fn own() -> Option<CgroupPaths> {
    std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .map(|t| parse_proc_cgroup(&t))
}

/// A file relative to this process's view of cgroupfs.
pub fn read_own_view(rel: &str) -> Option<String> {
    std::fs::read_to_string(std::path::Path::new(CGROUP_ROOT).join(rel)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_hybrid_and_v2() {
        let v1 = "12:pids:/k8s/pod1/c1\n4:memory:/k8s/pod1/c1\n11:cpu,cpuacct:/k8s/pod1/c1\n1:name=systemd:/k8s/pod1/c1\n0::/\n";
        let p = parse_proc_cgroup(v1);
        assert_eq!(p.v1_memory.as_deref(), Some("/k8s/pod1/c1"));
        assert_eq!(p.v1_cpu.as_deref(), Some("/k8s/pod1/c1"));
        assert_eq!(p.v2.as_deref(), Some("/"));
        let v2 = parse_proc_cgroup("0::/kubepods/burstable/pod1/c1\n");
        assert_eq!(
            v2,
            CgroupPaths {
                v2: Some("/kubepods/burstable/pod1/c1".into()),
                ..Default::default()
            }
        );
        let combined = parse_proc_cgroup("7:cpu,memory:/x\n");
        assert_eq!(combined.v1_memory.as_deref(), Some("/x"));
        assert_eq!(combined.v1_cpu.as_deref(), Some("/x"));
        assert!(parse_proc_cgroup("2:cpuacct:/x\n").v1_cpu.is_none());
        assert_eq!(join("/", "memory.max"), "memory.max");
        assert_eq!(join("/a/b/", "memory.max"), "a/b/memory.max");
    }
}
