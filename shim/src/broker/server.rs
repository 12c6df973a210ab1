//! The broker process: receives one stream socket per request and hands each to a fresh
//! worker process, with a bound on how many run at once and on how many one client may hold.
//!
//! A client is the process that made the socket pair (`SO_PEERCRED` of the end it sent): one
//! container process. Each client has at most [`PER_CLIENT`] worker at a time and at most
//! [`PER_CLIENT_QUEUED`] requests waiting; further requests from it are closed at once (the
//! client sees its connection end and compiles in its own process). Waiting requests start in
//! arrival order among the clients with room, so a client that floods the broker, or whose
//! requests never finish sending (its worker gives up after the read timeout), delays only
//! itself. An empty record does not end the broker: only the hang-up of every holder of the
//! client end does, or, when the daemon started it to run on demand, an idle spell (no worker
//! running, no request waiting) of the time it was given ([`super::activation`]).
use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::WORKER_ARG;

/// Workers one client may have at once.
pub const PER_CLIENT: usize = 1;
/// Requests one client may have waiting; more are refused (closed).
pub const PER_CLIENT_QUEUED: usize = 8;
/// How often the broker looks for finished workers while some run.
const REAP_EVERY: Duration = Duration::from_millis(50);

/// Most workers at once: compiling is CPU-bound, and a crash-looping pod must not fork-bomb
/// the node.
pub fn max_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

/// A request waiting for a worker.
struct Waiting {
    client: u32,
    conn: OwnedFd,
}

/// A running worker and the client it serves.
struct Running {
    client: u32,
    child: Child,
}

/// Serves until every holder of the client end is gone or, when started with an idle time
/// (argv\[2\], milliseconds), until it has been idle that long; returns the exit code.
pub fn run() -> i32 {
    let args: Vec<_> = std::env::args_os().collect();
    let idle = super::activation::idle_arg(&args);
    let listener = match super::stdin_fd() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("wasmkube compile broker: no socket on stdin: {e}");
            return 1;
        }
    };
    // Before any worker: they inherit the namespace with its read-only view of the cache.
    if let Err(e) = super::view::make_read_only_view() {
        eprintln!(
            "wasmkube compile broker: no read-only view of the compiled-module cache, each \
             container gets a private copy of its artefact: {e}"
        );
    }
    let max = max_workers();
    let mut running: Vec<Running> = Vec::new();
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    loop {
        reap(&mut running);
        start_waiting(&mut waiting, &mut running, max);
        let busy = !running.is_empty() || !waiting.is_empty();
        let wait = if busy { Some(REAP_EVERY) } else { idle };
        match readable(&listener, wait) {
            // Idle that long: the daemon starts another broker for the next request.
            Ok(false) if !busy => return 0,
            Ok(false) => continue,
            Ok(true) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                eprintln!("wasmkube compile broker: {e}");
                return 1;
            }
        }
        let conns = match receive(&listener) {
            Ok(conns) => conns,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(e) => {
                eprintln!("wasmkube compile broker: {e}");
                return 1;
            }
        };
        // An empty record is also what a client may send: the stream ends only at hang-up.
        if conns.is_empty() && hung_up(&listener) {
            return 0;
        }
        for conn in conns {
            let client = client_of(&conn);
            if waiting.iter().filter(|w| w.client == client).count() >= PER_CLIENT_QUEUED {
                // Closed: that client compiles in its own process.
                continue;
            }
            waiting.push_back(Waiting { client, conn });
        }
    }
}

/// The process that made the socket pair (0 when the kernel cannot say).
fn client_of(conn: &OwnedFd) -> u32 {
    rustix::net::sockopt::socket_peercred(conn)
        .map(|c| c.pid.as_raw_nonzero().get().unsigned_abs())
        .unwrap_or(0)
}

/// Starts waiting requests, oldest first, while workers are free and their client has room.
fn start_waiting(waiting: &mut VecDeque<Waiting>, running: &mut Vec<Running>, max: usize) {
    let mut i = 0;
    while running.len() < max && i < waiting.len() {
        let client = waiting[i].client;
        if running.iter().filter(|r| r.client == client).count() >= PER_CLIENT {
            i += 1;
            continue;
        }
        let Some(w) = waiting.remove(i) else {
            break;
        };
        match Command::new("/proc/self/exe")
            .arg(WORKER_ARG)
            .stdin(Stdio::from(w.conn))
            .stdout(Stdio::null())
            .spawn()
        {
            Ok(child) => running.push(Running { client, child }),
            // The container sees its connection close and compiles in-process.
            Err(e) => eprintln!("wasmkube compile broker: cannot start a worker: {e}"),
        }
    }
}

/// Forgets every worker that exited, whichever it is.
fn reap(running: &mut Vec<Running>) {
    running.retain_mut(|r| matches!(r.child.try_wait(), Ok(None)));
}

/// Whether a message (or the hang-up) is there; gives up after `wait` if given (workers run:
/// finished ones are noticed; idle: the broker may exit).
fn readable(listener: &OwnedFd, wait: Option<Duration>) -> rustix::io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(listener, PollFlags::IN | PollFlags::RDHUP)];
    let timeout = wait.and_then(|w| Timespec::try_from(w).ok());
    Ok(poll(&mut fds, timeout.as_ref())? > 0)
}

/// Whether every holder of the client end has closed it.
fn hung_up(listener: &OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(listener, PollFlags::IN | PollFlags::RDHUP)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::RDHUP),
        Err(_) => true,
    }
}

/// The sockets carried by the next message (none for an empty record or at end of stream).
fn receive(listener: &OwnedFd) -> rustix::io::Result<Vec<OwnedFd>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(
        listener,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok(fds)
}
