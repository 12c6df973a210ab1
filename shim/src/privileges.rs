//! The guest process's capabilities, as `execve` would have left them.
//!
//! runc ends a container's set-up by exec'ing its program, and the kernel recomputes the
//! capabilities at that exec: a non-root process keeps only its ambient set. A wasm container
//! never execs: the guest runs in the container's init process with whatever libcontainer left
//! there. And libcontainer (youki 0.6) changes a capability set only when the spec lists it:
//! for `capabilities.drop: [ALL]` containerd writes empty lists, JSON drops them
//! (`"capabilities": {}`), and a non-root guest of a Pod Security `restricted` pod would keep
//! every capability of the shim — more than a default pod gets.
//!
//! So before the guest runs, the shim applies the exec rule itself: a non-root process keeps
//! its ambient set only; root keeps its permitted set within the bounding set (which
//! libcontainer did apply when the spec lists it). [`drop_as_exec_would`] must run while the
//! process has one thread: capabilities are per thread, and threads inherit them when created.
//! runwasi builds the sandbox (`Default`) in the container's init process right after
//! libcontainer switched to the spec's user and before anything starts a thread — see
//! [`crate::shim::WasmkubeSandbox`].
use std::sync::OnceLock;

use rustix::thread::{CapabilitySet, CapabilitySets};

/// The capability sets a process would have after `execve` of a file without file
/// capabilities (capabilities(7), "Transformation of capabilities during execve()"), limited
/// to what it holds now (a process can only lower its sets).
pub fn after_exec(
    root: bool,
    current: CapabilitySets,
    bounding: CapabilitySet,
    ambient: CapabilitySet,
) -> CapabilitySets {
    let permitted = if root {
        // A root process's program counts as having every file capability.
        current.permitted & (current.inheritable | bounding)
    } else {
        current.permitted & ambient
    };
    CapabilitySets {
        effective: permitted,
        permitted,
        inheritable: current.inheritable,
    }
}

/// The calling thread's set, read capability by capability with `read` (a capability the
/// kernel does not know reads as absent).
fn read_set(read: impl Fn(CapabilitySet) -> rustix::io::Result<bool>) -> CapabilitySet {
    (0..64)
        .map(|bit| CapabilitySet::from_bits_retain(1u64 << bit))
        .filter(|cap| CapabilitySet::all().contains(*cap))
        .filter(|cap| read(*cap).unwrap_or(false))
        .fold(CapabilitySet::empty(), |set, cap| set | cap)
}

/// Lowers the calling thread's capabilities to [`after_exec`]'s; returns the sets now held.
pub fn drop_as_exec_would() -> rustix::io::Result<CapabilitySets> {
    let current = rustix::thread::capabilities(None)?;
    let bounding = read_set(rustix::thread::capability_is_in_bounding_set);
    let ambient = read_set(rustix::thread::capability_is_in_ambient_set);
    let root = rustix::process::geteuid().is_root();
    let target = after_exec(root, current, bounding, ambient);
    if target != current {
        rustix::thread::set_capabilities(None, target)?;
    }
    Ok(target)
}

static DROPPED: OnceLock<Result<(), String>> = OnceLock::new();

/// Runs [`drop_as_exec_would`] once per process and remembers the outcome.
pub fn drop_for_guest() {
    DROPPED.get_or_init(|| match drop_as_exec_would() {
        Ok(held) => {
            tracing::debug!(effective = ?held.effective, "guest capabilities after the exec rule");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    });
}

/// Why the capabilities could not be lowered, if they could not (`None` also before
/// [`drop_for_guest`] ran).
pub fn drop_failure() -> Option<String> {
    DROPPED.get().and_then(|r| r.as_ref().err().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: CapabilitySet = CapabilitySet::CHOWN
        .union(CapabilitySet::DAC_OVERRIDE)
        .union(CapabilitySet::NET_BIND_SERVICE)
        .union(CapabilitySet::KILL);

    fn sets(p: CapabilitySet, i: CapabilitySet) -> CapabilitySets {
        CapabilitySets {
            effective: p,
            permitted: p,
            inheritable: i,
        }
    }

    #[test]
    fn a_non_root_guest_keeps_its_ambient_set_only() {
        let empty = CapabilitySet::empty();
        // `capabilities: {}` (drop ALL): libcontainer left everything, bounding included.
        let after = after_exec(
            false,
            sets(CapabilitySet::all(), empty),
            CapabilitySet::all(),
            empty,
        );
        assert_eq!(after, sets(empty, empty));
        // Default capabilities for a non-root user: gone, as after runc's exec.
        assert_eq!(
            after_exec(false, sets(DEFAULTS, empty), DEFAULTS, empty),
            sets(empty, empty)
        );
        // An ambient capability survives exec.
        let ambient = CapabilitySet::NET_BIND_SERVICE;
        assert_eq!(
            after_exec(false, sets(DEFAULTS, ambient), DEFAULTS, ambient),
            sets(ambient, ambient)
        );
    }

    #[test]
    fn root_keeps_its_permitted_set_within_the_bounding_set() {
        let empty = CapabilitySet::empty();
        assert_eq!(
            after_exec(true, sets(DEFAULTS, empty), DEFAULTS, empty),
            sets(DEFAULTS, empty),
            "the default set of a root container is unchanged"
        );
        let bounding = CapabilitySet::KILL | CapabilitySet::CHOWN;
        assert_eq!(
            after_exec(true, sets(DEFAULTS, empty), bounding, empty),
            sets(bounding, empty)
        );
        // Effective follows permitted for root (the kernel's rule for a root exec).
        let mut lowered = sets(DEFAULTS, empty);
        lowered.effective = CapabilitySet::empty();
        assert_eq!(
            after_exec(true, lowered, DEFAULTS, empty),
            sets(DEFAULTS, empty)
        );
    }

    #[test]
    fn the_bounding_and_ambient_sets_read_as_the_kernel_reports_them() {
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .expect("field")
        };
        let known = CapabilitySet::all().bits();
        assert_eq!(
            read_set(rustix::thread::capability_is_in_bounding_set).bits(),
            field("CapBnd:") & known
        );
        assert_eq!(
            read_set(rustix::thread::capability_is_in_ambient_set).bits(),
            field("CapAmb:") & known
        );
    }
}
