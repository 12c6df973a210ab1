//! The container's CPU limit, read from its cgroup, for defaults that scale with it (see
//! [`crate::limits::default_max_concurrent`]).
//!
//! The OCI `linux.resources.cpu` quota (a pod's `resources.limits.cpu`, `ctr run --cpus`) is
//! read back from the container's cgroup as [`crate::memory`] reads the memory limit: v2
//! `cpu.max` (`"<quota> <period>"` or `"max <period>"`), v1 `cpu.cfs_quota_us` and
//! `cpu.cfs_period_us` (quota `-1`: none), through the container's own `/sys/fs/cgroup`, or,
//! on a cgroup v1 host that leaves it empty, through the compile broker, which reads the host's
//! cgroupfs. Without a quota, the CPUs the process may run on count.
use crate::cgroup::{join, CgroupPaths};

/// CPUs granted by a quota of `quota` per `period` (both in µs); `None` for no quota.
fn cpus(quota: i64, period: i64) -> Option<f64> {
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Parses v2 `cpu.max`: `"50000 100000"` → 0.5 CPU; `"max 100000"` → `None`.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?.parse::<i64>().ok()?;
    let period = fields
        .next()
        .map_or(Some(100_000), |p| p.parse::<i64>().ok())?;
    cpus(quota, period)
}

/// Parses v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`: `-1` is no quota.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    cpus(quota.trim().parse().ok()?, period.trim().parse().ok()?)
}

/// Where a CPU quota may be read, relative to a cgroupfs root.
#[derive(Debug, PartialEq, Eq)]
pub enum QuotaFile {
    /// v2 `cpu.max`.
    CpuMax(String),
    /// v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
    Cfs { quota: String, period: String },
}

/// Files to try, most specific first: inside a container the cgroup mount usually shows the
/// container's own cgroup at its root; from the host root, `/proc/self/cgroup` names it.
pub fn candidate_files(paths: &CgroupPaths) -> Vec<QuotaFile> {
    let mut out = Vec::new();
    if let Some(p) = &paths.v2 {
        out.push(QuotaFile::CpuMax(join(p, "cpu.max")));
        out.push(QuotaFile::CpuMax("cpu.max".into()));
    }
    if let Some(p) = &paths.v1_cpu {
        for dir in [format!("cpu/{}", p.trim_matches('/')), "cpu".to_string()] {
            out.push(QuotaFile::Cfs {
                quota: join(&dir, "cpu.cfs_quota_us"),
                period: join(&dir, "cpu.cfs_period_us"),
            });
        }
    }
    out
}

/// The first quota found through `read` (a file relative to a cgroupfs root).
pub fn quota_from(candidates: &[QuotaFile], read: &dyn Fn(&str) -> Option<String>) -> Option<f64> {
    candidates.iter().find_map(|file| match file {
        QuotaFile::CpuMax(f) => parse_cpu_max(&read(f)?),
        QuotaFile::Cfs { quota, period } => parse_cfs(&read(quota)?, &read(period)?),
    })
}

/// The container's CPU quota in CPUs, if it has one: through the container's own
/// `/sys/fs/cgroup`, or, when no quota file is readable there (a cgroup v1 host), as the host's
/// cgroupfs shows it, asked of the compile broker.
pub fn container_quota() -> Option<f64> {
    let candidates = candidate_files(&crate::cgroup::own()?);
    let read = crate::cgroup::read_own_view;
    let readable = candidates.iter().any(|f| match f {
        QuotaFile::CpuMax(f) => read(f).is_some(),
        QuotaFile::Cfs { quota, .. } => read(quota).is_some(),
    });
    if readable {
        quota_from(&candidates, &read)
    } else {
        crate::broker::client::host_limits().cpus
    }
}

/// CPUs this process may run on (its affinity mask), at least 1.
pub fn online_cpus() -> f64 {
    let count = rustix::thread::sched_getaffinity(None)
        .map(|set| set.count() as usize)
        .ok()
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    count as f64
}

/// The CPUs the container may use: its quota, never more than the CPUs it may run on; those
/// CPUs when there is no quota.
pub fn container_cpus() -> f64 {
    let online = online_cpus();
    match container_quota() {
        Some(quota) => quota.min(online),
        None => online,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::parse_proc_cgroup;

    #[test]
    fn parses_quotas_of_both_cgroup_versions() {
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("200000 100000"), Some(2.0));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(
            parse_cpu_max("150000"),
            Some(1.5),
            "period defaults to 100ms"
        );
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cpu_max("0 100000"), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("25000\n", "100000\n"), Some(0.25));
        assert_eq!(parse_cfs("300000", "100000"), Some(3.0));
        assert_eq!(parse_cfs("garbage", "100000"), None);
        assert_eq!(parse_cfs("50000", "0"), None);
    }

    #[test]
    fn finds_the_cpu_controller_and_prefers_the_process_cgroup() {
        let v1 = "11:cpu,cpuacct:/default/c1\n4:memory:/default/c1\n0::/\n";
        let paths = parse_proc_cgroup(v1);
        assert_eq!(paths.v1_cpu.as_deref(), Some("/default/c1"));
        assert_eq!(paths.v2.as_deref(), Some("/"));
        let c = candidate_files(&paths);
        assert_eq!(c[0], QuotaFile::CpuMax("cpu.max".into()));
        assert_eq!(
            c[2],
            QuotaFile::Cfs {
                quota: "cpu/default/c1/cpu.cfs_quota_us".into(),
                period: "cpu/default/c1/cpu.cfs_period_us".into()
            }
        );
        assert_eq!(
            c[3],
            QuotaFile::Cfs {
                quota: "cpu/cpu.cfs_quota_us".into(),
                period: "cpu/cpu.cfs_period_us".into()
            }
        );
        let v2 = candidate_files(&parse_proc_cgroup("0::/kubepods/p/c\n"));
        assert_eq!(v2[0], QuotaFile::CpuMax("kubepods/p/c/cpu.max".into()));
    }

    #[test]
    fn the_first_quota_found_wins_and_unlimited_levels_are_skipped() {
        let paths = parse_proc_cgroup("3:cpu:/default/c1\n0::/k/c\n");
        let files = candidate_files(&paths);
        let fs = |entries: &'static [(&'static str, &'static str)]| {
            move |rel: &str| {
                entries
                    .iter()
                    .find(|(name, _)| *name == rel)
                    .map(|(_, text)| text.to_string())
            }
        };
        let v2 = fs(&[
            ("k/c/cpu.max", "max 100000\n"),
            ("cpu.max", "50000 100000\n"),
        ]);
        assert_eq!(quota_from(&files, &v2), Some(0.5));
        let v1 = fs(&[
            ("cpu/default/c1/cpu.cfs_quota_us", "150000\n"),
            ("cpu/default/c1/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(quota_from(&files, &v1), Some(1.5));
        let none = fs(&[
            ("cpu/cpu.cfs_quota_us", "-1\n"),
            ("cpu/cpu.cfs_period_us", "100000\n"),
        ]);
        assert_eq!(quota_from(&files, &none), None);
        assert!(online_cpus() >= 1.0);
        assert!(container_cpus() > 0.0);
    }
}
