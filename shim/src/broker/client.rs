//! The container side: a private socket pair per request, its far end passed to the broker.
use std::borrow::Cow;
use std::io::{BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use super::protocol::{HostLimits, Request, Response, WireError};
use crate::stop::StopSignal;

/// How long a limits question may take.
const LIMITS_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the broker gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no compile broker in this shim")]
    Unavailable,
    #[error("compile broker: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("unexpected answer from the compile broker")]
    Unexpected,
    #[error("stopped by signal {0} while waiting for the compiled module")]
    Stopped(i32),
}

/// Opens a private connection to a new worker.
fn connect() -> Result<UnixStream, ClientError> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let shared = super::socket().ok_or(ClientError::Unavailable)?;
    let (mine, theirs): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(std::io::Error::from)?;
    super::passing::send_with(shared, &[1], theirs.as_fd())?;
    Ok(UnixStream::from(mine))
}

fn exchange(conn: &UnixStream, request: &Request<'_>) -> Result<Response, ClientError> {
    let mut w = conn;
    request.write_to(&mut w)?;
    // A cache entry's descriptor comes with the answer's first byte.
    let (first, passed) = super::passing::recv_first(conn.as_fd())?;
    let head = [first];
    let mut rest = (&head[..]).chain(BufReader::new(conn));
    Ok(Response::decode(&mut rest, passed)?)
}

/// How long a stopped container waits for its worker to end its compile.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Asks the broker for the compiled form of `wasm`. Gives up when `stop` fires: it hangs up and
/// waits (at most [`STOP_GRACE`]) until the worker has ended its compiler and gone, so no process
/// of the compile is left in the container's cgroups when the container exits (the runtime
/// removes them then, and fails on a cgroup that still holds a task). Returns the module bytes
/// back with the answer, for a caller that falls back to compiling in-process.
pub async fn load(
    what: String,
    wasm: Vec<u8>,
    stop: StopSignal,
) -> (Option<Vec<u8>>, Result<Response, ClientError>) {
    let conn = match connect() {
        Ok(conn) => conn,
        Err(e) => return (Some(wasm), Err(e)),
    };
    let watched = conn.try_clone();
    let task = tokio::task::spawn_blocking(move || {
        let request = Request::Load {
            what: Cow::Borrowed(&what),
            wasm: Cow::Borrowed(&wasm),
        };
        let answer = exchange(&conn, &request);
        (wasm, answer)
    });
    tokio::select! {
        joined = task => match joined {
            Ok((wasm, answer)) => (Some(wasm), answer),
            Err(e) => (None, Err(ClientError::Io(std::io::Error::other(e)))),
        },
        signo = stop.wait() => {
            if let Ok(conn) = watched {
                let _ = tokio::task::spawn_blocking(move || hang_up_and_wait(&conn)).await;
            }
            (None, Err(ClientError::Stopped(signo)))
        }
    }
}

/// Shuts the sending half of `conn` (the worker sees the hang-up) and waits, at most [`STOP_GRACE`], until the worker's end closes.
fn hang_up_and_wait(conn: &UnixStream) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    // Writes only: a socket shut both ways reports HUP at once, before the worker has gone.
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let deadline = std::time::Instant::now() + STOP_GRACE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            eprintln!(
                "wasmkube: the compile broker did not end its compile within {STOP_GRACE:?} of \
                 the stop"
            );
            return;
        }
        let mut fds = [PollFd::new(conn, PollFlags::RDHUP)];
        let timeout = Timespec::try_from(left).ok();
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) if fds[0].revents().intersects(PollFlags::HUP | PollFlags::ERR) => return,
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

/// This process's cgroup limits as the host's cgroupfs shows them, asked once per process
/// (the loaded program already counts in that usage); empty when the broker cannot say.
pub fn host_limits() -> HostLimits {
    static ASKED: OnceLock<HostLimits> = OnceLock::new();
    *ASKED.get_or_init(|| match ask_limits() {
        Ok(limits) => limits,
        Err(e) => {
            tracing::debug!("no cgroup limits from the host's cgroupfs: {e}");
            HostLimits::default()
        }
    })
}

fn ask_limits() -> Result<HostLimits, ClientError> {
    let conn = connect()?;
    conn.set_read_timeout(Some(LIMITS_TIMEOUT))?;
    conn.set_write_timeout(Some(LIMITS_TIMEOUT))?;
    match exchange(&conn, &Request::Limits)? {
        Response::Limits(limits) => Ok(limits),
        _ => Err(ClientError::Unexpected),
    }
}
