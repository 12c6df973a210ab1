//! The broker process: receives one stream socket per request and hands each to a fresh
//! worker process, with a bound on how many run at once.
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::WORKER_ARG;

/// Most workers at once: compiling is CPU-bound, and a crash-looping pod must not fork-bomb
/// the node.
pub fn max_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(2)
}

/// Serves until every holder of the client end is gone; returns the exit code.
pub fn run() -> i32 {
    let listener = match super::stdin_fd() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("wasmkube compile broker: no socket on stdin: {e}");
            return 1;
        }
    };
    let max = max_workers();
    let mut running: Vec<Child> = Vec::new();
    loop {
        let conns = match receive(&listener) {
            Ok(Some(conns)) => conns,
            Ok(None) => return 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                eprintln!("wasmkube compile broker: {e}");
                return 1;
            }
        };
        for conn in conns {
            running.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
            while running.len() >= max {
                let _ = running.remove(0).wait();
            }
            match Command::new("/proc/self/exe")
                .arg(WORKER_ARG)
                .stdin(Stdio::from(conn))
                .stdout(Stdio::null())
                .spawn()
            {
                Ok(child) => running.push(child),
                // The container sees its connection close and compiles in-process.
                Err(e) => eprintln!("wasmkube compile broker: cannot start a worker: {e}"),
            }
        }
    }
}

/// The sockets carried by the next message; `None` at end of stream.
fn receive(listener: &OwnedFd) -> rustix::io::Result<Option<Vec<OwnedFd>>> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let msg = rustix::net::recvmsg(
        listener,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some(fds))
}
