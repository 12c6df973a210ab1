//! The container process at the other end of a worker's socket, known by a pidfd (so a reused
//! PID cannot stand in for it), and the cgroups its compile is charged to.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The peer: a pidfd, and the PID it had when the worker started.
pub struct Peer {
    pidfd: OwnedFd,
    pid: i32,
}

impl Peer {
    /// The process that made the socket pair: `SO_PEERPIDFD` (Linux 6.5+), else a pidfd opened
    /// for `SO_PEERCRED`'s PID (then a PID reused in between goes unnoticed; the kernel is
    /// older than the check).
    pub fn of(conn: BorrowedFd<'_>) -> io::Result<Peer> {
        let pidfd = match peer_pidfd(conn) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                let cred = rustix::net::sockopt::socket_peercred(conn)?;
                rustix::process::pidfd_open(cred.pid, rustix::process::PidfdFlags::empty())?
            }
            Err(e) => return Err(e),
        };
        let pid = pid_of(pidfd.as_fd())?
            .ok_or_else(|| io::Error::other("the container process has exited"))?;
        Ok(Peer { pidfd, pid })
    }

    /// `/proc/<pid>/cgroup` of the peer, read while it is provably the same process: its pidfd
    /// still names that PID afterwards, so the PID was not reused in between.
    pub fn proc_cgroup(&self) -> io::Result<String> {
        let text = std::fs::read_to_string(format!("/proc/{}/cgroup", self.pid))?;
        match pid_of(self.pidfd.as_fd())? {
            Some(pid) if pid == self.pid => Ok(text),
            _ => Err(io::Error::other("the container process has exited")),
        }
    }
}

/// `SO_PEERPIDFD`: a pidfd of the socket's peer as of `socketpair`/`connect`.
#[allow(unsafe_code)]
fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    /// Not yet in the `libc` crate; the value of every Linux architecture but alpha, mips,
    /// parisc and sparc.
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes, the size of `fd`, which lives on this
    // stack frame for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the kernel installed `fd` (close-on-exec, as every pidfd) in this
    // process's table, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The PID a pidfd names, `None` once that process has exited (`Pid: -1` in its fdinfo).
fn pid_of(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .ok_or_else(|| io::Error::other("no Pid in the pidfd's fdinfo"))?;
    Ok((pid > 0).then_some(pid))
}

/// The controllers whose cgroups a compile is charged to (cgroup v1); on cgroup v2 the one
/// unified cgroup holds them all.
const CHARGED: &[&str] = &["memory", "cpu", "cpuacct", "pids"];

/// The `cgroup.procs` files that put a process into the cgroups of `proc_cgroup` (a
/// `/proc/<pid>/cgroup`), under the cgroupfs at `root`: the v1 hierarchies of [`CHARGED`]
/// controllers (mounted as their comma-joined names, e.g. `cpu,cpuacct`), and the unified
/// hierarchy (at `root` on cgroup v2, at `root/unified` on a hybrid host).
pub fn charge_files(proc_cgroup: &str, root: &Path) -> Vec<PathBuf> {
    let unified = if root.join("cgroup.controllers").exists() {
        Some(root.to_path_buf())
    } else if root.join("unified/cgroup.controllers").exists() {
        Some(root.join("unified"))
    } else {
        None
    };
    let mut out = Vec::new();
    for (id, controllers, path) in crate::cgroup::proc_cgroup_lines(proc_cgroup) {
        let rel = path.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            continue;
        }
        let base = if id == "0" && controllers.is_empty() {
            match &unified {
                Some(u) => u.clone(),
                None => continue,
            }
        } else if controllers.split(',').any(|c| CHARGED.contains(&c)) {
            root.join(controllers)
        } else {
            continue;
        };
        out.push(base.join(rel).join("cgroup.procs"));
    }
    out
}

/// Moves process `pid` into the peer's cgroups; returns the cgroups it joined, or why none.
pub fn charge_to(pid: u32, proc_cgroup: &str, root: &Path) -> Result<Vec<PathBuf>, String> {
    let files = charge_files(proc_cgroup, root);
    if files.is_empty() {
        return Err("the container's cgroups are not known".into());
    }
    let mut joined = Vec::new();
    let mut failed = Vec::new();
    for file in files {
        match std::fs::write(&file, pid.to_string()) {
            Ok(()) => joined.push(file),
            Err(e) => failed.push(format!("{}: {e}", file.display())),
        }
    }
    if joined.is_empty() {
        Err(failed.join("; "))
    } else {
        Ok(joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "12:pids:/kubepods/pod1/c1\n11:memory:/kubepods/pod1/c1\n\
                      5:cpu,cpuacct:/kubepods/pod1/c1\n4:devices:/kubepods/pod1/c1\n\
                      1:name=systemd:/kubepods/pod1/c1\n0::/kubepods/pod1/c1\n";

    #[test]
    fn a_v1_compile_joins_memory_cpu_and_pids_of_the_container() {
        let root = Path::new("/nonexistent-cgroupfs");
        let files = charge_files(V1, root);
        let names: Vec<_> = files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "/nonexistent-cgroupfs/pids/kubepods/pod1/c1/cgroup.procs",
                "/nonexistent-cgroupfs/memory/kubepods/pod1/c1/cgroup.procs",
                "/nonexistent-cgroupfs/cpu,cpuacct/kubepods/pod1/c1/cgroup.procs",
            ]
        );
    }

    #[test]
    fn a_v2_compile_joins_the_unified_cgroup() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("cgroup.controllers"), "memory cpu pids\n").expect("w");
        let files = charge_files("0::/kubepods.slice/pod1/c1\n", tmp.path());
        assert_eq!(
            files,
            [tmp.path().join("kubepods.slice/pod1/c1/cgroup.procs")]
        );
        let hybrid = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(hybrid.path().join("unified")).expect("mkdir");
        std::fs::write(hybrid.path().join("unified/cgroup.controllers"), "").expect("w");
        let files = charge_files(V1, hybrid.path());
        assert_eq!(files.len(), 4, "{files:?}");
        assert_eq!(
            files[3],
            hybrid.path().join("unified/kubepods/pod1/c1/cgroup.procs")
        );
    }

    #[test]
    fn paths_that_climb_are_ignored_and_nothing_known_is_an_error() {
        assert!(charge_files("11:memory:/a/../../etc\n", Path::new("/x")).is_empty());
        let e = charge_to(1, "4:devices:/a\n", Path::new("/x")).expect_err("nothing to join");
        assert!(e.contains("not known"), "{e}");
    }

    #[test]
    fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let peer = Peer::of(a.as_fd()).expect("peer");
        assert_eq!(peer.pid, std::process::id() as i32);
        let text = peer.proc_cgroup().expect("cgroup");
        assert_eq!(
            text,
            std::fs::read_to_string("/proc/self/cgroup").expect("own")
        );
    }
}
