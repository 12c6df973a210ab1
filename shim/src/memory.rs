//! The container's memory limit, read from its cgroup, and the store limiter that enforces it.
//!
//! runwasi hands the guest only args, env and the entrypoint, so the OCI
//! `linux.resources.memory.limit` is read back from the cgroup the runtime applied it to, via
//! `/proc/self/cgroup` and the container's `/sys/fs/cgroup` (v2 `memory.max`, v1
//! `memory.limit_in_bytes`). The wasm store gets that limit minus what the process already uses
//! and a safety margin, so a guest that allocates too much traps with a clear message instead of
//! the kernel OOM-killing the whole container.
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use wasmtime::ResourceLimiter;

use crate::error::ShimError;

/// Kept free for the runtime itself (stacks, host allocations during calls).
pub const SAFETY_MARGIN: u64 = 4 << 20;

/// The cgroup membership of a process, from `/proc/self/cgroup`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// cgroup v1 `memory` controller path.
    pub v1_memory: Option<String>,
    /// cgroup v2 unified path.
    pub v2: Option<String>,
}

/// Parses `/proc/self/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> CgroupPaths {
    let mut out = CgroupPaths::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            out.v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "memory") {
            out.v1_memory = Some(path.to_string());
        }
    }
    out
}

/// Parses a limit file: `max` (v2) or a v1 value at or above 2^62 means unlimited.
pub fn parse_limit(text: &str) -> Option<u64> {
    let v = text.trim();
    if v == "max" {
        return None;
    }
    v.parse::<u64>().ok().filter(|&n| n < (1 << 62))
}

/// `(limit, usage)` files to try, relative to a cgroupfs root, most specific first. Inside a
/// container the cgroup mount usually shows the container's own cgroup at its root (cgroup
/// namespace, or runtimes that bind-mount it there); from the host root, the path in
/// `/proc/self/cgroup` names it.
pub fn candidate_files(paths: &CgroupPaths) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let join = |dir: &str, file: &str| {
        let dir = dir.trim_matches('/');
        if dir.is_empty() {
            file.to_string()
        } else {
            format!("{dir}/{file}")
        }
    };
    if let Some(p) = &paths.v2 {
        out.push((join(p, "memory.max"), join(p, "memory.current")));
        out.push(("memory.max".into(), "memory.current".into()));
    }
    if let Some(p) = &paths.v1_memory {
        let dir = format!("memory/{}", p.trim_matches('/'));
        out.push((
            join(&dir, "memory.limit_in_bytes"),
            join(&dir, "memory.usage_in_bytes"),
        ));
        out.push((
            "memory/memory.limit_in_bytes".into(),
            "memory/memory.usage_in_bytes".into(),
        ));
    }
    out
}

fn read_at(dir: BorrowedFd<'_>, rel: &str) -> Option<String> {
    let fd = rustix::fs::openat(dir, rel, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The container's memory limit and current usage, if a limit is set: first through the
/// container's own `/sys/fs/cgroup`, then through the host cgroupfs opened before the fork.
pub fn container_memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let candidates = candidate_files(&parse_proc_cgroup(&text));
    let inside =
        |rel: &str| std::fs::read_to_string(Path::new(crate::host::CGROUP_ROOT).join(rel)).ok();
    let host = |rel: &str| crate::host::cgroup_dir().and_then(|d| read_at(d, rel));
    for read in [&inside as &dyn Fn(&str) -> Option<String>, &host] {
        for (limit_file, usage_file) in &candidates {
            let Some(limit) = read(limit_file) else {
                continue;
            };
            let usage = read(usage_file)
                .and_then(|u| u.trim().parse::<u64>().ok())
                .unwrap_or(0);
            match parse_limit(&limit) {
                Some(limit) => return Some((limit, usage)),
                // "max" at the most specific level means no limit; a parent's "max" proves nothing.
                None => continue,
            }
        }
    }
    None
}

/// Bytes of wasm memory a store may use under a container limit.
pub fn store_budget(limit: u64, usage: u64) -> usize {
    let budget = limit.saturating_sub(usage).saturating_sub(SAFETY_MARGIN);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// Store limiter: caps the total linear memory of a store and remembers a refusal so the
/// caller can report it as a memory-limit failure rather than a generic trap.
#[derive(Debug, Default)]
pub struct GuestLimiter {
    limit: Option<usize>,
    total: usize,
    refused: Option<(usize, usize)>,
}

impl GuestLimiter {
    pub fn new(limit: Option<usize>) -> Self {
        GuestLimiter {
            limit,
            total: 0,
            refused: None,
        }
    }

    /// The refused growth as `(desired total, limit)`, if the guest hit the limit.
    pub fn refused(&self) -> Option<ShimError> {
        self.refused
            .map(|(desired, limit)| ShimError::MemoryLimit { desired, limit })
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if let Some(limit) = self.limit {
            if total > limit {
                self.refused = Some((total, limit));
                // Trap right here: Rust/C guests abort on a failed grow anyway, and the trap
                // carries a message that names the limit.
                return Err(wasmtime::Error::msg(format!(
                    "memory limit reached: growing wasm memory to {total} bytes exceeds {limit}"
                )));
            }
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_hybrid_and_v2() {
        let v1 = "12:pids:/k8s/pod1/c1\n4:memory:/k8s/pod1/c1\n1:name=systemd:/k8s/pod1/c1\n0::/\n";
        let p = parse_proc_cgroup(v1);
        assert_eq!(p.v1_memory.as_deref(), Some("/k8s/pod1/c1"));
        assert_eq!(p.v2.as_deref(), Some("/"));
        let v2 = parse_proc_cgroup("0::/kubepods/burstable/pod1/c1\n");
        assert_eq!(
            v2,
            CgroupPaths {
                v1_memory: None,
                v2: Some("/kubepods/burstable/pod1/c1".into())
            }
        );
        let combined = parse_proc_cgroup("7:cpu,memory:/x\n");
        assert_eq!(combined.v1_memory.as_deref(), Some("/x"));
    }

    #[test]
    fn limits_and_unlimited_values() {
        assert_eq!(parse_limit("67108864\n"), Some(64 << 20));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712"), None);
        assert_eq!(parse_limit("garbage"), None);
    }

    #[test]
    fn candidates_prefer_the_process_cgroup() {
        let paths = CgroupPaths {
            v1_memory: Some("/default/c1".into()),
            v2: Some("/".into()),
        };
        let c = candidate_files(&paths);
        assert_eq!(
            c[0],
            ("memory.max".to_string(), "memory.current".to_string())
        );
        assert_eq!(c[2].0, "memory/default/c1/memory.limit_in_bytes");
        assert_eq!(c[2].1, "memory/default/c1/memory.usage_in_bytes");
        assert_eq!(c[3].0, "memory/memory.limit_in_bytes");
        let v2 = candidate_files(&CgroupPaths {
            v1_memory: None,
            v2: Some("/kubepods/p/c".into()),
        });
        assert_eq!(v2[0].0, "kubepods/p/c/memory.max");
    }

    #[test]
    fn budget_leaves_room_for_the_runtime() {
        assert_eq!(
            store_budget(64 << 20, 10 << 20),
            (64 << 20) - (10 << 20) - SAFETY_MARGIN as usize
        );
        assert_eq!(store_budget(1 << 20, 10 << 20), 0);
    }

    #[test]
    fn limiter_refuses_growth_past_the_limit_and_reports_it() {
        let mut l = GuestLimiter::new(Some(1 << 20));
        assert!(l.memory_growing(0, 512 << 10, None).expect("grow"));
        assert!(l.refused().is_none());
        assert!(l.memory_growing(512 << 10, 2 << 20, None).is_err());
        assert!(
            matches!(l.refused(), Some(ShimError::MemoryLimit { limit, .. }) if limit == 1 << 20)
        );
        let mut unlimited = GuestLimiter::new(None);
        assert!(unlimited.memory_growing(0, 1 << 30, None).expect("grow"));
    }
}
