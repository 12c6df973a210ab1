//! The compile broker: wasm is compiled, and the compiled-module cache read and written, only by
//! processes outside every container, started for each request.
//!
//! ```text
//!  shim daemon ──spawn──▶ broker (`--wasmkube-compile-broker`, stdin = SEQPACKET server end;
//!     │ (client end,        │      on demand: exits when idle, the daemon starts the next)
//!     │  CLOEXEC)           │ one message per request, carrying a fresh stream socket
//!     ▼ fork                       ▼ spawn, at most `max(2, CPUs)` at once (own mount namespace:
//!                                  │ the cache read-only at `<cache>/view`)
//!  zygote ─clone─▶ container process ══ private socket pair ══▶ worker (`--wasmkube-compile-worker`)
//!                  (after pivot_root)      request: the wasm      cache lookup (MAC-checked); on a
//!                                          response: the cache    miss, a node-wide slot, then:
//!                                          entry's descriptor
//!                                          (mapped), or bytes
//!                                                                   │ spawn, stdin/stdout pipes
//!                                                                   ▼
//!                                                      compiler (`--wasmkube-compiler`): own uid,
//!                                                      chroot, seccomp, rlimits, in the
//!                                                      container's cgroups; compiles, answers
//! ```
//!
//! - **Cache trust.** Only workers open the cache ([`crate::cache`]); a container process gets
//!   artefact bytes over a socket pair that only it and its worker hold. A tenant that broke out
//!   of its wasm sandbox still cannot write an entry another tenant's container will load.
//! - **Privilege separation.** The worker (uid 0, no capabilities, not dumpable) holds the cache
//!   and the node key but never parses the module; the compiler parses and compiles it holding
//!   nothing worth stealing ([`confine`]), and the worker stores its answer under the key it
//!   derived from the bytes it forwarded ([`compiler`]).
//! - **Node-wide limits.** At most [`slots::node_limit`] compiles run on the node at once
//!   ([`slots`]); each compiler joins the requesting container's cgroups before it reads the
//!   module ([`peer`]), so the pod pays for its compile; a module that failed to compile is
//!   remembered for ten minutes ([`failures`]).
//! - **No host descriptors in containers.** The shim opens no host directory before runwasi
//!   forks its zygote: a container process inherits only the client socket (close-on-exec, so
//!   native containers lose it at `execve`). The one host file a container is handed is its own
//!   artefact's cache entry, read-only, on the broker's read-only view of the cache ([`view`]),
//!   which it maps (one page-cache copy per app on the node): a regular file, so it names no
//!   directory to escape through, and nothing can write it through that descriptor or a reopen
//!   of it (see [`crate::cache`], *Mapped entries*). The host-side memory limit and CPU quota of a cgroup v1 container
//!   is asked of a worker too ([`protocol::Request::Limits`]).
//! - **Not resident.** The broker exits after a few idle seconds and the daemon starts another
//!   when a request waits on the socket ([`activation`]): an idle pod keeps no broker, and no
//!   request is lost or refused in between.
//! - **Compiler memory is returned.** Each compile runs in a fresh process that exits after
//!   answering, so the first instance of an app does not keep Cranelift's heap.
//! - **Stop works during compilation.** The container waits for its answer asynchronously and
//!   gives up at SIGTERM ([`client`]); its worker sees the hang-up and exits, and its compiler
//!   gets SIGKILL with it, so a stopped container's compile does not go on using the node's CPU.
//! - **No containerd handle.** Each role closes every descriptor above stdio first
//!   ([`crate::descriptors::close_from`]): the shim daemon's TTRPC listener is not close-on-exec.
//! - **Bounded.** Workers run at most ten minutes and accept at most [`protocol::MAX_WASM`]
//!   bytes; the broker runs at most `max(2, CPUs)` at once, one per container process, with at
//!   most eight more of its requests waiting (see [`server`]): a client that floods the broker
//!   or never finishes a request delays only itself. A client hands its request over within
//!   five seconds or compiles in its own process.
//!
//! If the broker cannot start, containers compile in their own process without a cache and say so.
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

mod activation;
pub mod client;
mod compiler;
pub mod confine;
mod failures;
mod passing;
mod peer;
pub mod protocol;
mod server;
pub mod slots;
mod tier_up;
mod view;
mod worker;

/// argv\[1\] of the broker process.
pub const BROKER_ARG: &str = "--wasmkube-compile-broker";
/// argv\[1\] of a worker process.
pub const WORKER_ARG: &str = "--wasmkube-compile-worker";
/// argv\[1\] of a compiler process.
pub const COMPILER_ARG: &str = "--wasmkube-compiler";
/// argv\[1\] of a tier-up process.
pub const TIER_UP_ARG: &str = "--wasmkube-tier-up";

static SOCKET: OnceLock<OwnedFd> = OnceLock::new();

/// How long a container may wait to hand a request to the broker.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs this process as the broker or a worker when its arguments say so, and returns the exit
/// code; `None` for every other invocation.
pub fn run_role(args: &[OsString]) -> Option<i32> {
    let (name, role): (&str, fn() -> i32) = match args.get(1)?.to_str()? {
        BROKER_ARG => ("compile broker", server::run),
        WORKER_ARG => ("compile worker", worker::run),
        COMPILER_ARG => ("compiler", compiler::run),
        TIER_UP_ARG => ("tier-up", tier_up::run),
        _ => return None,
    };
    // Inherited from the shim daemon: containerd's TTRPC listener (fd 3, not close-on-exec)
    // and whatever else it held. A role needs only stdio; stdin is its socket.
    if let Err(e) = crate::descriptors::close_from(3) {
        eprintln!("wasmkube {name}: cannot close inherited descriptors: {e}");
        return Some(1);
    }
    Some(role())
}

/// Whether these are the arguments of the long-running shim (containerd runs the binary with
/// `start` and `delete` too, and with `-info` or `-v` to ask what it is).
pub fn is_daemon(args: &[OsString]) -> bool {
    !args.iter().skip(1).any(|a| {
        matches!(
            a.to_str(),
            Some("start" | "delete" | "-info" | "-v" | "--version" | "-version")
        )
    })
}

/// Makes the broker's socket. Call before runwasi forks its zygote, while the process has one
/// thread, so that every container process inherits the client end; then, once the zygote
/// exists, [`serve_on_demand`].
pub fn start() {
    match socket_pair() {
        Ok((client, server)) => {
            let _ = SOCKET.set(client);
            *server_end() = Some(server);
        }
        Err(e) => tracing::warn!(
            "compile broker unavailable, containers will compile in their own process: {e}"
        ),
    }
}

/// Drops the zygote's copy of the server end, then runs brokers from a thread of the daemon,
/// each started at once or when a request waits ([`activation`]).
pub fn serve_on_demand() {
    if let Err(e) =
        containerd_shimkit::zygote::Zygote::global().try_run(|_| forget_server_end(), ())
    {
        tracing::warn!("compile broker unavailable: the zygote kept its socket: {e}");
        return;
    }
    let Some(server) = server_end().take() else {
        return;
    };
    let idle = activation::idle_after(|k| std::env::var(k).ok());
    let spawned = std::thread::Builder::new()
        .name("compile-broker".into())
        .spawn(move || activation::serve(std::path::Path::new("/proc/self/exe"), server, idle));
    if let Err(e) = spawned {
        tracing::warn!(
            "compile broker unavailable, containers will compile in their own process: {e}"
        );
    }
}

/// The server end while the daemon has not handed it to its broker thread.
fn server_end() -> std::sync::MutexGuard<'static, Option<OwnedFd>> {
    static SERVER: std::sync::Mutex<Option<OwnedFd>> = std::sync::Mutex::new(None);
    SERVER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// In the zygote: closes its copy of the server end, so no process but the daemon's broker
/// thread (and the broker it starts) can read the pod's requests.
pub(crate) fn forget_server_end() {
    server_end().take();
}

fn socket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let (client, server) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // A client hands a request over within this time or compiles in its own process: a
    // broker that stopped reading cannot block a container's start (the timeout belongs to the
    // open socket, so it holds in every process that inherits it).
    rustix::net::sockopt::set_socket_timeout(
        &client,
        rustix::net::sockopt::Timeout::Send,
        Some(SEND_TIMEOUT),
    )?;
    Ok((client, server))
}

/// The client end, in the shim, its zygote and container processes.
pub(crate) fn socket() -> Option<BorrowedFd<'static>> {
    SOCKET.get().map(|fd| fd.as_fd())
}

/// Standard input as an owned descriptor (the broker's and workers' socket).
fn stdin_fd() -> std::io::Result<OwnedFd> {
    std::io::stdin().as_fd().try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_the_daemon_starts_a_broker() {
        let shim = "containerd-shim-wasmkube-v1";
        assert!(is_daemon(&args(&[
            shim,
            "-namespace",
            "k8s.io",
            "-id",
            "x",
            "-address",
            "/s"
        ])));
        assert!(!is_daemon(&args(&[
            shim,
            "-namespace",
            "k8s.io",
            "-id",
            "x",
            "start"
        ])));
        assert!(!is_daemon(&args(&[shim, "-id", "x", "delete"])));
        assert!(!is_daemon(&args(&[shim, "-info"])));
        assert!(!is_daemon(&args(&[shim, "-v"])));
        assert_eq!(run_role(&args(&[shim, "-id", "x"])), None);
    }
}
