//! A worker process: answers one request on its standard input (a stream socket whose other
//! end a container process holds), then exits. It holds the compiled-module cache and the node
//! key, so it never parses or compiles the module itself: on a miss it starts a confined
//! compiler ([`super::compiler`]) in the container's cgroups, once a node-wide compile slot
//! ([`super::slots`]) is free, forwards the bytes, and stores what comes back under the key it
//! derived from those bytes. A module that failed to compile is remembered
//! ([`super::failures`]). The worker exits as soon as the container hangs up (stopped, or gave
//! up waiting), and its compiler dies with it.
use std::io::{BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::cache::{ArtifactCache, ArtifactKind, CacheConfig, CacheKey};
use crate::engine::{self, Allocation, Tier};
use crate::error::ShimError;

use super::peer::{self, Peer};
use super::protocol::{Artefact, HostLimits, Request, Response};
use super::{compiler, confine, failures, slots, tier_up, COMPILER_ARG};

/// A worker never lives longer than this (a 20 MB module compiles in well under a minute).
/// The running compiler's pid (0: none), for the hang-up watcher: it moves the compiler out of
/// the container's cgroups before the worker exits, so nothing of the compile is left in them by
/// the time the container's process (which waits for this worker to hang up) exits and the
/// runtime removes them.
static COMPILER_PID: AtomicI32 = AtomicI32::new(0);

const MAX_LIFETIME: Duration = Duration::from_secs(600);
/// How long a worker waits for a node-wide compile slot.
const SLOT_PATIENCE: Duration = Duration::from_secs(540);
/// How long a container may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a container may take to read the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// Ends this process after [`MAX_LIFETIME`].
pub(super) fn limit_lifetime(role: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(MAX_LIFETIME);
        eprintln!("wasmkube {role}: still running after {MAX_LIFETIME:?}, exiting");
        std::process::exit(1);
    });
}

/// Serves the request on stdin; returns the exit code.
pub fn run() -> i32 {
    // Before any thread exists, so that every thread inherits it.
    if let Err(e) = confine::worker_gives_up_privileges() {
        eprintln!("wasmkube compile worker: cannot drop privileges: {e}");
        return 1;
    }
    limit_lifetime("compile worker");
    match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wasmkube compile worker: {e}");
            1
        }
    }
}

fn serve() -> Result<(), super::protocol::WireError> {
    let conn = UnixStream::from(super::stdin_fd()?);
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let request = Request::decode(&mut BufReader::new(&conn))?;
    end_on_hang_up(&conn)?;
    let response = match request {
        Request::Load { what, wasm } => load(&conn, &what, &wasm),
        Request::Limits => Response::Limits(peer_limits(&conn)),
    };
    let bytes = response.encode();
    match response.descriptor() {
        Some(fd) => super::passing::send_with(conn.as_fd(), &bytes, fd)?,
        None => (&conn).write_all(&bytes)?,
    }
    Ok(())
}

/// Ends this process when the container hangs up (it stopped, or gave up waiting): nobody
/// waits for the answer, and the compile's CPU and memory go back to the node at once (the
/// compiler gets SIGKILL when its worker dies).
fn end_on_hang_up(conn: &UnixStream) -> std::io::Result<()> {
    let watched = conn.try_clone()?;
    std::thread::spawn(move || {
        use rustix::event::{poll, PollFd, PollFlags};
        loop {
            let mut fds = [PollFd::new(&watched, PollFlags::RDHUP)];
            match poll(&mut fds, None) {
                Ok(_)
                    if fds[0]
                        .revents()
                        .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR) =>
                {
                    eprintln!("wasmkube compile worker: the container hung up, stopping");
                    release_compiler();
                    std::process::exit(1);
                }
                Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
        }
    });
    Ok(())
}

/// Moves the running compiler, if any, out of the container's cgroups and back into this
/// worker's. The worker cannot signal it (another uid, no capabilities); the kernel kills it
/// (`PR_SET_PDEATHSIG`) when the worker exits right after, but that takes a moment the runtime
/// does not give: it removes the container's cgroups as soon as the container's process has
/// gone, and a cgroup that still holds a task cannot be removed ("could not delete").
fn release_compiler() {
    let pid = COMPILER_PID.swap(0, Ordering::SeqCst);
    let Ok(pid) = u32::try_from(pid) else { return };
    if pid == 0 {
        return;
    }
    if let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") {
        if let Err(e) = peer::charge_to(pid, &own, Path::new(crate::cgroup::CGROUP_ROOT)) {
            eprintln!("wasmkube compile worker: cannot move the compiler out of the container's cgroups: {e}");
        }
    }
}

/// Opens the cache (if configured and trustworthy) and answers a load request, compiling in a
/// confined compiler charged to the container at the other end of `conn`.
fn load(conn: &UnixStream, what: &str, wasm: &[u8]) -> Response {
    let mut notes = Vec::new();
    let cache = match CacheConfig::from_env() {
        Ok(Some(config)) => match ArtifactCache::open(&config) {
            Ok(cache) => Some(cache),
            Err(e) => {
                notes.push(format!("compiled-module cache off: {e}"));
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            notes.push(format!("compiled-module cache off: {e}"));
            None
        }
    };
    let peer = Peer::of(conn.as_fd());
    let mut compile = |what: &str, wasm: &[u8], tiers: &[Tier], notes: &mut Vec<String>| {
        compile_confined(Charge::To(peer.as_ref().ok()), what, wasm, tiers, notes)
    };
    // Without a cache there is no next start to compile for: optimised code at once.
    let tiers = match cache {
        Some(_) => Tier::for_first_start(|k| std::env::var(k).ok()),
        None => &[Tier::Optimized],
    };
    match artefact(what, wasm, tiers, cache.as_ref(), &mut notes, &mut compile) {
        Ok((allocation, tier, kind, artefact)) => {
            if tier == Tier::Baseline {
                // Before answering: once the container has its answer it hangs up, and this
                // worker ends.
                // Quiet when it works (an app's log is its own); said when it does not.
                if let Err(e) = tier_up::start(what, wasm) {
                    notes.push(format!(
                        "running baseline (Winch) code: optimised code for the next start could \
                         not be compiled in the background: {e}"
                    ));
                }
            }
            Response::Loaded {
                allocation,
                tier,
                kind,
                artefact,
                notes,
            }
        }
        Err(detail) => Response::Invalid { detail },
    }
}

/// How a compile ended.
#[derive(Debug)]
pub enum Compiled {
    Done {
        allocation: Allocation,
        tier: Tier,
        kind: ArtifactKind,
        artefact: Vec<u8>,
    },
    /// It failed; `remember` when the module is at fault (not the node, not a hang-up).
    Failed { detail: String, remember: bool },
}

impl From<Response> for Compiled {
    fn from(response: Response) -> Self {
        match response {
            Response::Loaded {
                allocation,
                tier,
                kind,
                artefact: Artefact::Bytes(artefact),
                ..
            } => Compiled::Done {
                allocation,
                tier,
                kind,
                artefact,
            },
            Response::Loaded {
                artefact: Artefact::File { .. },
                ..
            } => Compiled::Failed {
                detail: "the compiler answered with a file".into(),
                remember: false,
            },
            Response::Invalid { detail } => Compiled::Failed {
                detail,
                remember: true,
            },
            Response::Limits(_) => Compiled::Failed {
                detail: "the compiler answered something else".into(),
                remember: false,
            },
        }
    }
}

/// Compiles `(what, wasm)` with the first of the tiers that can, adding notes for the
/// container.
pub type Compiler<'a> = dyn FnMut(&str, &[u8], &[Tier], &mut Vec<String>) -> Compiled + 'a;

/// The compiled artefact for `wasm`: from the cache when an authenticated entry exists for any
/// allocation strategy the program may use (pooled first), optimised code first and baseline
/// code if `tiers` allows it; else the remembered failure, if it failed recently; else what
/// `compile` makes of it with the first of `tiers` that can, stored under the key for the tier
/// and strategy it fitted (so a component too big for the pool compiles once, not on every
/// start) — or, if it fails, remembered. Errors are the detail for the container.
pub fn artefact(
    what: &str,
    wasm: &[u8],
    tiers: &[Tier],
    cache: Option<&ArtifactCache>,
    notes: &mut Vec<String>,
    compile: &mut Compiler<'_>,
) -> Result<(Allocation, Tier, ArtifactKind, Artefact), String> {
    let detail = |e: ShimError| match e {
        ShimError::Invalid { detail, .. } => detail,
        e => e.to_string(),
    };
    let kind = engine::kind_of(what, wasm).map_err(detail)?;
    let mut keys: Vec<(Allocation, Tier, CacheKey)> = Vec::new();
    let mut failure_key = None;
    for tier in Tier::LOOKUP {
        if tier != Tier::Optimized && !tiers.contains(&tier) {
            continue;
        }
        for &allocation in engine::allocations_for(kind) {
            let engine = engine::new_engine_for(allocation, tier).map_err(detail)?;
            let hash = engine.precompile_compatibility_hash();
            let strategy = format!("{}{}", allocation.name(), tier.key_suffix());
            let key = CacheKey::new(kind, &strategy, wasm, &hash);
            failure_key.get_or_insert_with(|| failures::key(kind, wasm, &hash));
            keys.push((allocation, tier, key));
        }
    }
    let failure_key = failure_key.ok_or_else(|| "no allocation strategy".to_string())?;
    if let Some(cache) = cache {
        for (allocation, tier, key) in &keys {
            if let Some(entry) = cache.open_entry(key) {
                return Ok((*allocation, *tier, kind, handed_out(entry)));
            }
        }
        if let Some(failed) = failures::recall(cache, &failure_key) {
            return Err(failed);
        }
    }
    match compile(what, wasm, tiers, notes) {
        Compiled::Done {
            allocation,
            tier,
            kind: compiled_kind,
            artefact,
        } => {
            let key = keys
                .iter()
                .find(|(a, t, _)| *a == allocation && *t == tier)
                .map(|(_, _, key)| key)
                .filter(|_| compiled_kind == kind && tiers.contains(&tier))
                .ok_or_else(|| {
                    format!(
                        "the compiler answered a {compiled_kind:?} for {} allocation and {} \
                         code, not what was asked",
                        allocation.name(),
                        tier.name()
                    )
                })?;
            if let Some(cache) = cache {
                match cache.store(key, &artefact) {
                    // Handed out as the entry just stored, checked again, so that this first
                    // container shares its pages with the next ones.
                    Ok(()) if cache.has_view() => {
                        if let Some(entry) = cache.open_entry(key) {
                            return Ok((allocation, tier, kind, handed_out(entry)));
                        }
                    }
                    Ok(()) => {}
                    Err(e) => notes.push(e.to_string()),
                }
            }
            Ok((allocation, tier, kind, Artefact::Bytes(artefact)))
        }
        Compiled::Failed { detail, remember } => {
            if let (Some(cache), true) = (cache, remember) {
                failures::remember(cache, &failure_key, &detail);
            }
            Err(detail)
        }
    }
}

/// An authenticated entry as the container gets it: its read-only descriptor when it was
/// opened through the read-only view, else its bytes.
fn handed_out(entry: crate::cache::Entry) -> Artefact {
    match entry.file {
        Some(file) => Artefact::File {
            len: entry.payload.len() as u64,
            file: file.into(),
        },
        None => Artefact::Bytes(entry.payload),
    }
}

/// Whose cgroups a compile is charged to.
pub(super) enum Charge<'a> {
    /// The requesting container's (`None`: it is not known; the container is told).
    To(Option<&'a Peer>),
    /// Nobody's: a background compile, which may outlive the container that caused it (a
    /// runtime cannot remove a cgroup that still holds a task).
    Nobody,
}

/// Compiles in a confined compiler process, once a node-wide slot is free, charged to the
/// peer's cgroups.
pub(super) fn compile_confined(
    charge: Charge<'_>,
    what: &str,
    wasm: &[u8],
    tiers: &[Tier],
    notes: &mut Vec<String>,
) -> Compiled {
    let env = |k: &str| std::env::var(k).ok();
    let limit = slots::node_limit(env);
    let slot_dir = confine::run_dir(env).join("compile-slots");
    let _slot = match slots::acquire(&slot_dir, limit, SLOT_PATIENCE) {
        Ok(slot) => Some(slot),
        Err(e @ slots::SlotError::TimedOut(_)) => {
            return Compiled::Failed {
                detail: e.to_string(),
                remember: false,
            }
        }
        Err(e) => {
            notes.push(format!("node-wide compile limit not applied: {e}"));
            None
        }
    };
    let spawned = Command::new("/proc/self/exe")
        .arg(COMPILER_ARG)
        .arg(compiler::tiers_arg(tiers))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return Compiled::Failed {
                detail: format!("cannot start the compiler: {e}"),
                remember: false,
            }
        }
    };
    COMPILER_PID.store(i32::try_from(child.id()).unwrap_or(0), Ordering::SeqCst);
    let charged = match charge {
        Charge::To(peer) => peer
            .ok_or_else(|| "the container process is not known".to_string())
            .and_then(|p| p.proc_cgroup().map_err(|e| e.to_string()))
            .and_then(|text| {
                peer::charge_to(child.id(), &text, Path::new(crate::cgroup::CGROUP_ROOT))
            }),
        Charge::Nobody => Ok(Vec::new()),
    };
    if let Err(e) = charged {
        notes.push(format!(
            "the compile is not charged to the container's cgroups: {e}"
        ));
    }
    let sent = child.stdin.take().map(|mut stdin| {
        Request::Load {
            what: what.into(),
            wasm: wasm.into(),
        }
        .write_to(&mut stdin)
    });
    let answer = child
        .stdout
        .take()
        .map(|out| Response::decode(&mut BufReader::new(out), None));
    let status = child.wait();
    COMPILER_PID.store(0, Ordering::SeqCst);
    match (answer, status) {
        (Some(Ok(response)), Ok(status)) if status.success() => response.into(),
        (_, Ok(status)) if status.code() == Some(compiler::EXIT_UNCONFINED) => Compiled::Failed {
            detail: "the compiler could not confine itself (see the shim's log); nothing was \
                     compiled"
                .into(),
            remember: false,
        },
        (_, Ok(status)) => Compiled::Failed {
            detail: format!(
                "the compiler ended without an answer ({}){}",
                ended(status),
                match sent {
                    Some(Err(e)) => format!("; sending it the module failed: {e}"),
                    _ => String::new(),
                }
            ),
            remember: true,
        },
        (_, Err(e)) => Compiled::Failed {
            detail: format!("cannot wait for the compiler: {e}"),
            remember: false,
        },
    }
}

/// How a compiler ended, in words.
fn ended(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(libc::SIGXCPU)) => format!(
            "SIGXCPU: it used its {} s of CPU time",
            confine::CPU_SECONDS
        ),
        (None, Some(libc::SIGKILL)) => {
            "SIGKILL: out of memory in the container's cgroup, or out of CPU time".into()
        }
        (None, Some(libc::SIGABRT)) => "SIGABRT: most likely out of its address-space limit".into(),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "unknown".into(),
    }
}

/// The cgroup limits of the process at the other end of `conn`, read from the host's cgroupfs
/// (a cgroup v1 container often cannot see its own).
fn peer_limits(conn: &UnixStream) -> HostLimits {
    let Some(paths) = rustix::net::sockopt::socket_peercred(conn)
        .ok()
        .and_then(|peer| {
            std::fs::read_to_string(format!("/proc/{}/cgroup", peer.pid.as_raw_nonzero())).ok()
        })
        .map(|text| crate::cgroup::parse_proc_cgroup(&text))
    else {
        return HostLimits::default();
    };
    let root = Path::new(crate::cgroup::CGROUP_ROOT);
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
    HostLimits {
        memory: crate::memory::limit_from(&crate::memory::candidate_files(&paths), read).found(),
        cpus: crate::cpu::quota_from(&crate::cpu::candidate_files(&paths), &read),
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
