//! The container's memory limit, read from its cgroup (enforced by [`crate::budget`]).
//!
//! runwasi hands the guest only args, env and the entrypoint, so the OCI
//! `linux.resources.memory.limit` is read back from the cgroup the runtime applied it to, via
//! `/proc/self/cgroup` and the container's `/sys/fs/cgroup` (v2 `memory.max`, v1
//! `memory.limit_in_bytes`). The wasm store gets that limit minus what the process already uses
//! and a safety margin, so a guest that allocates too much traps with a clear message instead of
//! the kernel OOM-killing the whole container.
use crate::cgroup::{join, CgroupPaths};

/// Kept free for the runtime itself (stacks, host allocations during calls).
pub const SAFETY_MARGIN: u64 = 4 << 20;

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

/// What a cgroupfs says about a memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `(limit, usage)` in bytes.
    Found(u64, u64),
    /// The process's own cgroup says `max`.
    Unlimited,
    /// No limit file could be read (e.g. an empty `/sys/fs/cgroup` on a cgroup v1 host).
    Unreadable,
}

impl Limit {
    pub fn found(self) -> Option<(u64, u64)> {
        match self {
            Limit::Found(limit, usage) => Some((limit, usage)),
            _ => None,
        }
    }
}

/// Reads the first limit among `candidates` through `read` (paths relative to a cgroupfs root).
pub fn limit_from(candidates: &[(String, String)], read: impl Fn(&str) -> Option<String>) -> Limit {
    let mut seen = false;
    for (limit_file, usage_file) in candidates {
        let Some(limit) = read(limit_file) else {
            continue;
        };
        seen = true;
        let usage = read(usage_file)
            .and_then(|u| u.trim().parse::<u64>().ok())
            .unwrap_or(0);
        match parse_limit(&limit) {
            Some(limit) => return Limit::Found(limit, usage),
            // "max" at the most specific level means no limit; a parent's "max" proves nothing.
            None => continue,
        }
    }
    if seen {
        Limit::Unlimited
    } else {
        Limit::Unreadable
    }
}

/// The container's memory limit and current usage, if a limit is set: through the container's
/// own `/sys/fs/cgroup`, or, when nothing there is readable, as the host's cgroupfs shows it,
/// asked of the compile broker (no host descriptor is kept in the container).
pub fn container_memory() -> Option<(u64, u64)> {
    let candidates = candidate_files(&crate::cgroup::own()?);
    match limit_from(&candidates, crate::cgroup::read_own_view) {
        Limit::Found(limit, usage) => Some((limit, usage)),
        Limit::Unlimited => None,
        Limit::Unreadable => crate::broker::client::host_limits().memory,
    }
}

/// Bytes of wasm memory a store may use under a container limit.
pub fn store_budget(limit: u64, usage: u64) -> usize {
    let budget = limit.saturating_sub(usage).saturating_sub(SAFETY_MARGIN);
    usize::try_from(budget).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ..Default::default()
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
            v2: Some("/kubepods/p/c".into()),
            ..Default::default()
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
}
