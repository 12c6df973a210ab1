//! The broker runs on demand, not for the pod's lifetime: once its last request is answered and
//! none has come for [`idle_after`], it exits, and the shim daemon starts a new one when the next
//! request arrives (as systemd does for a socket-activated service).
//!
//! The daemon keeps the server end of the broker's socket ([`serve`]), so a request sent while
//! no broker runs waits in the socket's queue: nothing is lost, and the client cannot tell. The
//! daemon polls that end only between brokers; a broker that decides to exit has not read the
//! message that raced its decision, so that message starts the next broker. Only the daemon
//! holds the server end: it is close-on-exec, and the copy the zygote inherited is dropped in
//! the zygote before any container exists ([`super::forget_server_end`]); a container process
//! retires it with every other inherited descriptor anyway.
//!
//! If no broker can be started, the daemon closes its end: requests queued and later ones then
//! fail at once and the containers compile in their own process, as when the broker never
//! started.
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::BROKER_ARG;

/// containerd's environment: seconds an idle broker waits before it exits; `0` keeps it for the
/// pod's lifetime.
pub const IDLE_ENV: &str = "WASMKUBE_BROKER_IDLE_SECS";
/// The default: long enough for a pod's containers, started one after another, to share one
/// broker; short enough that an idle pod does not keep it.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(5);
/// Brokers that fail at once, one after another, before the daemon gives up on them.
const MAX_QUICK_FAILURES: u32 = 5;

/// How long an idle broker waits, from `IDLE_ENV` in `env`; `None`: it never exits idle.
pub fn idle_after(env: impl Fn(&str) -> Option<String>) -> Option<Duration> {
    match env(IDLE_ENV).and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
        None => Some(DEFAULT_IDLE),
    }
}

/// The broker's arguments: its role and, when it may exit idle, after how many milliseconds.
pub fn broker_args(idle: Option<Duration>) -> Vec<String> {
    let mut args = vec![BROKER_ARG.to_string()];
    if let Some(idle) = idle {
        args.push(idle.as_millis().to_string());
    }
    args
}

/// The idle time a broker was started with (its argv\[2\]).
pub fn idle_arg(args: &[std::ffi::OsString]) -> Option<Duration> {
    args.get(2)?
        .to_str()?
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

/// Runs brokers on `server` from `exe` for as long as some client holds the other end: one at
/// once, each started at once or when a request is waiting.
pub fn serve(exe: &std::path::Path, server: OwnedFd, idle: Option<Duration>) {
    let mut quick_failures = 0;
    loop {
        let started = Instant::now();
        // The command, and with it the daemon's copy of the broker's stdin, is gone once the
        // broker runs: the daemon holds one server end.
        let broker = server.as_fd().try_clone_to_owned().and_then(|stdin| {
            Command::new(exe)
                .args(broker_args(idle))
                .stdin(Stdio::from(stdin))
                .stdout(Stdio::null())
                .spawn()
        });
        let status = broker.and_then(|mut b| b.wait());
        match status {
            Ok(s) if s.success() => quick_failures = 0,
            Ok(s) if started.elapsed() < Duration::from_secs(1) => {
                quick_failures += 1;
                if quick_failures >= MAX_QUICK_FAILURES {
                    tracing::warn!(
                        "compile broker failed {quick_failures} times at once ({s}), \
                         containers will compile in their own process"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(s) => tracing::warn!("compile broker exited: {s}, starting another on demand"),
            Err(e) => {
                tracing::warn!(
                    "cannot start the compile broker, containers will compile in their own \
                     process: {e}"
                );
                return;
            }
        }
        if !request_waiting(&server) {
            return;
        }
    }
}

/// Blocks until a request waits on `server`; false when every client has hung up.
fn request_waiting(server: &OwnedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        let mut fds = [PollFd::new(server, PollFlags::IN | PollFlags::RDHUP)];
        match poll(&mut fds, None) {
            Ok(_) => {
                // A hang-up reads as readable too (end of stream): test it first. Requests
                // still queued then have no one waiting for their answer.
                let events = fds[0].revents();
                if events.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
                    return false;
                }
                if events.contains(PollFlags::IN) {
                    return true;
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_comes_from_the_environment() {
        let with = |v: Option<&str>| idle_after(|_| v.map(str::to_string));
        assert_eq!(with(None), Some(DEFAULT_IDLE));
        assert_eq!(with(Some("0")), None, "0 keeps the broker");
        assert_eq!(with(Some("12")), Some(Duration::from_secs(12)));
        assert_eq!(
            with(Some("soon")),
            Some(DEFAULT_IDLE),
            "unparsable: the default"
        );
        let args: Vec<std::ffi::OsString> = std::iter::once("/proc/self/exe".to_string())
            .chain(broker_args(Some(Duration::from_millis(1500))))
            .map(Into::into)
            .collect();
        assert_eq!(args[1], BROKER_ARG);
        assert_eq!(idle_arg(&args), Some(Duration::from_millis(1500)));
        assert_eq!(broker_args(None), vec![BROKER_ARG.to_string()]);
    }

    /// A request sent while no broker runs starts one; the broker exits once idle; every client
    /// gone ends the daemon's loop. The "broker" is a shell that reads one message and exits.
    #[test]
    fn a_waiting_request_starts_the_next_broker_and_hang_up_ends_the_loop() {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (client, server) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("starts");
        let exe = dir.path().join("broker");
        // Each start appends a line, then consumes at most one waiting message (like a broker
        // answering a request, then idle) and exits 0.
        std::fs::write(
            &exe,
            format!(
                "#!/bin/sh\necho start >> {}\ntimeout 0.3 head -c1 >/dev/null\nexit 0\n",
                log.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let daemon = std::thread::spawn(move || serve(&exe, server, Some(DEFAULT_IDLE)));
        let starts = || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let wait_for = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while starts() < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            starts()
        };
        assert_eq!(wait_for(1), 1, "the first broker starts at once");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(starts(), 1, "no request, no second broker");
        rustix::net::send(&client, b"r", rustix::net::SendFlags::empty()).expect("request");
        assert_eq!(wait_for(2), 2, "a waiting request starts a broker");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(starts(), 2, "the request was consumed: no third broker");
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(daemon.is_finished(), "every client gone ends the loop");
    }
}
