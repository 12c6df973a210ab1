//! What the compiler process gives up before it reads a byte of tenant input, and what the
//! worker keeps so that it can start one.
//!
//! The compiler ([`super::compiler`]) starts as root with only `CAP_SETUID`, `CAP_SETGID` and
//! `CAP_SYS_CHROOT` (the worker left nothing else in the bounding set), then:
//! - **no host filesystem**: `chroot` into an empty, root-owned directory;
//! - **not root**: a dedicated uid and gid ([`compiler_id`]), no supplementary groups, hence no
//!   capabilities left, and `no_new_privs`;
//! - **not inspectable**: not dumpable, so another process of any uid needs `CAP_SYS_PTRACE` to
//!   open its `/proc/<pid>/mem`, `root` or `fd` (a container's root lacks it);
//! - **bounded**: no core dumps, no files written, few descriptors and processes, CPU time and
//!   address space capped ([`limit_compile`]);
//! - **few system calls**: a seccomp filter allows what reading, compiling and answering need
//!   ([`filter_system_calls`]); anything else fails with `EPERM`;
//! - **tied to its worker**: killed when the worker dies.
use std::path::{Path, PathBuf};

use rustix::process::{Resource, Rlimit};
use rustix::thread::CapabilitySet;

/// Environment variable (containerd's, inherited by the shim) with the compiler's uid and gid.
pub const COMPILER_ID_ENV: &str = "WASMKUBE_COMPILER_UID";
/// The compiler's uid and gid when [`COMPILER_ID_ENV`] is unset: no other process on a node is
/// expected to use it (pick another there if one does).
pub const DEFAULT_COMPILER_ID: u32 = 65530;
/// Environment variable naming the directory of the node-wide compile state (slots, the empty
/// root).
pub const RUN_DIR_ENV: &str = "WASMKUBE_RUN_DIR";
/// Default of [`RUN_DIR_ENV`]: a tmpfs, emptied at boot.
pub const DEFAULT_RUN_DIR: &str = "/run/wasmkube";
/// CPU seconds one compile may use: SIGXCPU at the soft limit, SIGKILL five seconds later.
pub const CPU_SECONDS: u64 = 300;
/// Address space a compile may add to what its engines reserved: Cranelift's working memory,
/// malloc's per-thread arenas and the artefact, plus [`AS_PER_INPUT_BYTE`] per input byte.
pub const AS_BASE: u64 = 4 << 30;
pub const AS_PER_INPUT_BYTE: u64 = 8;
/// Processes and threads of the compiler's uid, across the node.
const NPROC: u64 = 1024;
/// Descriptors a compiler may hold (stdio and what the runtime opens).
const NOFILE: u64 = 64;
/// Capabilities a worker leaves in its bounding set: what the compiler needs to confine itself.
pub const COMPILER_CAPS: CapabilitySet = CapabilitySet::SETUID
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SYS_CHROOT);

/// A confinement step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("seccomp filter: {0}")]
    Seccomp(String),
}

fn step(step: &'static str) -> impl Fn(rustix::io::Errno) -> ConfineError {
    move |e| ConfineError::Step {
        step,
        source: e.into(),
    }
}

/// The compiler's uid (also its gid): [`COMPILER_ID_ENV`] or [`DEFAULT_COMPILER_ID`]; never 0.
pub fn compiler_id(env: impl Fn(&str) -> Option<String>) -> Result<u32, ConfineError> {
    let Some(text) = env(COMPILER_ID_ENV).filter(|t| !t.trim().is_empty()) else {
        return Ok(DEFAULT_COMPILER_ID);
    };
    match text.trim().parse::<u32>() {
        Ok(0) | Err(_) => Err(ConfineError::Refused(format!(
            "{COMPILER_ID_ENV}={text:?} must be a uid other than 0"
        ))),
        Ok(id) => Ok(id),
    }
}

/// The directory of node-wide compile state: [`RUN_DIR_ENV`] or [`DEFAULT_RUN_DIR`].
pub fn run_dir(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    env(RUN_DIR_ENV)
        .filter(|t| !t.trim().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// In a worker (and a tier-up, which a worker starts with what it left): keeps only
/// [`COMPILER_CAPS`] in the bounding set (so the compiler it starts gets nothing else), then
/// drops every capability of its own, and stops being dumpable (it holds the cache and the node
/// key). A capability already out of the bounding set is not dropped again (that needs
/// `CAP_SETPCAP`, which a tier-up no longer has).
pub fn worker_gives_up_privileges() -> Result<(), ConfineError> {
    use rustix::thread::{
        capability_is_in_bounding_set, remove_capability_from_bounding_set, set_capabilities,
        CapabilitySets,
    };
    for cap in CapabilitySet::all().iter() {
        if COMPILER_CAPS.contains(cap) || capability_is_in_bounding_set(cap) == Ok(false) {
            continue;
        }
        match remove_capability_from_bounding_set(cap) {
            // A capability this kernel does not know is not in any set.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(step("dropping the bounding set")(e)),
        }
    }
    set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(step("dropping capabilities"))?;
    not_dumpable()
}

/// Not dumpable: `/proc/<pid>/` of this process is root's and opening its `mem`, `root` or `fd`
/// needs `CAP_SYS_PTRACE`; no core dump.
pub fn not_dumpable() -> Result<(), ConfineError> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(step("PR_SET_DUMPABLE"))?;
    set_limit(Resource::Core, 0, 0)
}

/// In the compiler, while still root: the empty root directory, the dedicated ids, no
/// capabilities, not dumpable, killed with its worker, and the limits that do not depend on
/// the input. Call while the process has one thread (the id changes are per thread).
pub fn drop_to_compiler(run_dir: &Path, id: u32) -> Result<(), ConfineError> {
    use rustix::process::{Gid, Uid};
    let empty = empty_root(run_dir)?;
    rustix::process::chroot(&empty).map_err(step("chroot into the empty directory"))?;
    rustix::process::chdir("/").map_err(step("chdir /"))?;
    rustix::thread::set_thread_groups(&[]).map_err(step("setgroups"))?;
    let (uid, gid) = (Uid::from_raw(id), Gid::from_raw(id));
    rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(step("setresgid"))?;
    rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(step("setresuid"))?;
    let caps = rustix::thread::capabilities(None).map_err(step("capget"))?;
    if !(caps.permitted.is_empty() && caps.effective.is_empty()) {
        return Err(ConfineError::Refused(format!(
            "capabilities left after setresuid: {:?}",
            caps.permitted
        )));
    }
    rustix::thread::set_no_new_privs(true).map_err(step("no_new_privs"))?;
    // After the id change (which clears the parent-death signal).
    not_dumpable()?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(step("PR_SET_PDEATHSIG"))?;
    if rustix::process::getppid().is_none() {
        return Err(ConfineError::Refused("the worker is gone".into()));
    }
    set_limit(Resource::Fsize, 0, 0)?;
    set_limit(Resource::Nofile, NOFILE, NOFILE)?;
    set_limit(Resource::Nproc, NPROC, NPROC)?;
    set_limit(Resource::Cpu, CPU_SECONDS, CPU_SECONDS + 5)
}

/// `run_dir/empty`: created root-owned, mode 0555, and refused unless it is a root-owned
/// directory (not a symlink) that nobody else can write and that holds nothing.
fn empty_root(run_dir: &Path) -> Result<PathBuf, ConfineError> {
    use rustix::fs::{Mode, OFlags};
    std::fs::create_dir_all(run_dir).map_err(|source| ConfineError::Step {
        step: "creating the run directory",
        source,
    })?;
    let path = run_dir.join("empty");
    match rustix::fs::mkdir(&path, Mode::from_raw_mode(0o555)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(step("creating the empty directory")(e)),
    }
    let dir = rustix::fs::open(
        &path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(step("opening the empty directory"))?;
    let st = rustix::fs::fstat(&dir).map_err(step("stat of the empty directory"))?;
    let entries = rustix::fs::Dir::read_from(&dir)
        .map_err(step("reading the empty directory"))?
        .flatten()
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .count();
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 || entries != 0 {
        return Err(ConfineError::Refused(format!(
            "{} must be an empty directory owned by root that only root can write (uid {}, \
             mode {:o}, {entries} entries)",
            path.display(),
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok(path)
}

/// The limits that depend on the input: address space beyond `reserved` (what the engines
/// already mapped) for an input of `input_len` bytes.
pub fn limit_compile(reserved: u64, input_len: u64) -> Result<(), ConfineError> {
    let allowed = reserved
        .saturating_add(AS_BASE)
        .saturating_add(input_len.saturating_mul(AS_PER_INPUT_BYTE));
    set_limit(Resource::As, allowed, allowed)
}

fn set_limit(resource: Resource, soft: u64, hard: u64) -> Result<(), ConfineError> {
    rustix::process::setrlimit(
        resource,
        Rlimit {
            current: Some(soft),
            maximum: Some(hard),
        },
    )
    .map_err(step("setrlimit"))
}

/// This process's address-space size in bytes (`/proc/self/statm`), before the chroot.
pub fn address_space() -> Result<u64, ConfineError> {
    let statm =
        std::fs::read_to_string("/proc/self/statm").map_err(|source| ConfineError::Step {
            step: "reading /proc/self/statm",
            source,
        })?;
    let pages: u64 = statm
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| ConfineError::Refused(format!("unreadable /proc/self/statm: {statm:?}")))?;
    Ok(pages.saturating_mul(rustix::param::page_size() as u64))
}

/// System calls a compile needs: reading its input and writing its answer, memory (an anonymous
/// `memfd` for Wasmtime's memory images), threads
/// (Wasmtime compiles functions in parallel), time, randomness (hash seeds), signals and exit.
/// `clone` only for threads (`CLONE_THREAD`); `clone3`, whose flags a filter cannot see, fails
/// with `ENOSYS`, so the C library falls back to `clone`.
pub const ALLOWED_SYSCALLS: &[&str] = &[
    "read",
    "readv",
    "write",
    "writev",
    "close",
    "lseek",
    "pread64",
    "pwrite64",
    "ftruncate",
    "memfd_create",
    "fstat",
    "newfstatat",
    "statx",
    "fcntl",
    "poll",
    "ppoll",
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "brk",
    "futex",
    "set_robust_list",
    "get_robust_list",
    "rseq",
    "set_tid_address",
    "sched_yield",
    "sched_getaffinity",
    "getrandom",
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    "getpid",
    "gettid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "tgkill",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "restart_syscall",
    "exit",
    "exit_group",
];

/// Loads the seccomp filter (on every thread): [`ALLOWED_SYSCALLS`], `clone` for threads; every
/// other call fails with `EPERM`.
pub fn filter_system_calls() -> Result<(), ConfineError> {
    use libseccomp::{
        ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterAttr, ScmpFilterContext, ScmpSyscall,
    };
    let err = |e: libseccomp::error::SeccompError| ConfineError::Seccomp(e.to_string());
    let mut filter = ScmpFilterContext::new(ScmpAction::Errno(libc::EPERM)).map_err(err)?;
    filter
        .set_filter_attr(ScmpFilterAttr::CtlTsync, 1)
        .map_err(err)?;
    for name in ALLOWED_SYSCALLS {
        filter
            .add_rule(
                ScmpAction::Allow,
                ScmpSyscall::from_name(name).map_err(err)?,
            )
            .map_err(err)?;
    }
    let thread = libc::CLONE_THREAD as u64;
    filter
        .add_rule_conditional(
            ScmpAction::Allow,
            ScmpSyscall::from_name("clone").map_err(err)?,
            &[ScmpArgCompare::new(
                0,
                ScmpCompareOp::MaskedEqual(thread),
                thread,
            )],
        )
        .map_err(err)?;
    filter
        .add_rule(
            ScmpAction::Errno(libc::ENOSYS),
            ScmpSyscall::from_name("clone3").map_err(err)?,
        )
        .map_err(err)?;
    filter.load().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiler_id_is_never_root() {
        let env = |v: Option<&'static str>| move |_: &str| v.map(str::to_string);
        assert_eq!(compiler_id(env(None)).ok(), Some(DEFAULT_COMPILER_ID));
        assert_eq!(compiler_id(env(Some(" 4242 "))).ok(), Some(4242));
        for bad in ["0", "-1", "nobody", "99999999999"] {
            let e = compiler_id(env(Some(bad))).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|m| m.contains(COMPILER_ID_ENV)),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn every_allowed_system_call_is_known_and_none_opens_or_executes() {
        for name in ALLOWED_SYSCALLS {
            assert!(
                libseccomp::ScmpSyscall::from_name(name).is_ok(),
                "{name} is not a system call libseccomp knows"
            );
        }
        for forbidden in [
            "open", "openat", "execve", "execveat", "socket", "connect", "ptrace", "prctl",
            "clone3", "chroot", "setuid", "mount", "unshare",
        ] {
            assert!(
                !ALLOWED_SYSCALLS.contains(&forbidden),
                "{forbidden} must not be allowed"
            );
        }
    }

    #[test]
    fn the_worker_leaves_the_compiler_only_what_confining_needs() {
        assert_eq!(COMPILER_CAPS.iter().count(), 3);
        assert!(!COMPILER_CAPS.contains(CapabilitySet::SYS_PTRACE));
        assert!(!COMPILER_CAPS.contains(CapabilitySet::DAC_OVERRIDE));
    }
}
