//! Processes on the host as the live tests look at them: the shim daemon of a task, its compile
//! broker and workers, and the sockets they hold.
use std::path::Path;

/// `(pid, ppid, argv)` of every process on the host.
pub fn processes() -> Vec<(u32, u32, Vec<String>)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let (Ok(cmdline), Ok(stat)) = (
            std::fs::read(format!("/proc/{pid}/cmdline")),
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
        ) else {
            continue;
        };
        let Some(ppid) = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        let argv = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.push((pid, ppid, argv));
    }
    found
}

/// The shim's processes for one task or sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShimRoles {
    /// The long-running shim (`-address <containerd> -id <id>`).
    pub daemon: u32,
    /// Its compile broker, if running.
    pub broker: Option<u32>,
    /// A compile worker of that broker, if one runs now.
    pub worker: Option<u32>,
    /// The compiler that worker started, if one runs now.
    pub compiler: Option<u32>,
}

/// The wasmkube shim daemon serving task or sandbox `id` of the containerd at `address`, with
/// its broker and a worker of it.
pub fn shim_roles(address: &Path, id: &str) -> Option<ShimRoles> {
    let address = address.display().to_string();
    let all = processes();
    let child_with = |parent: u32, arg: &str| {
        all.iter()
            .find(|(_, ppid, argv)| *ppid == parent && argv.iter().any(|a| a == arg))
            .map(|(pid, _, _)| *pid)
    };
    let daemon = all
        .iter()
        .filter(|(_, _, argv)| {
            argv.first()
                .is_some_and(|a| a.ends_with("containerd-shim-wasmkube-v1"))
                && argv.contains(&address)
                && argv.iter().any(|a| a == id)
                && !argv.iter().any(|a| a == "start" || a == "delete")
        })
        .map(|(pid, _, _)| *pid)
        .min_by_key(|&d| child_with(d, "--wasmkube-compile-broker").is_none())?;
    let broker = child_with(daemon, "--wasmkube-compile-broker");
    let worker = broker.and_then(|b| child_with(b, "--wasmkube-compile-worker"));
    let compiler = worker.and_then(|w| child_with(w, "--wasmkube-compiler"));
    Some(ShimRoles {
        daemon,
        broker,
        worker,
        compiler,
    })
}

/// The children of `daemon` that run the shim's binary, by pid and argv: its zygote, a compile
/// broker while one runs, and the process of each running wasm container (a fork of the
/// zygote; a native container, like the pod's pause, runs its own binary).
pub fn shim_children(daemon: u32) -> Vec<(u32, Vec<String>)> {
    processes()
        .into_iter()
        .filter(|(pid, ppid, _)| {
            *ppid == daemon
                && std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|e| e.to_string_lossy().contains("containerd-shim-wasmkube-v1"))
        })
        .map(|(pid, _, argv)| (pid, argv))
        .collect()
}

/// Every compiler process started for the shims of the containerd at `address` (a compiler's
/// parent is a worker, whose parent is a broker, whose parent is a shim daemon of `address`).
pub fn compilers(address: &Path) -> Vec<u32> {
    let address = address.display().to_string();
    let all = processes();
    let by_pid: std::collections::HashMap<u32, (u32, &Vec<String>)> =
        all.iter().map(|(p, pp, a)| (*p, (*pp, a))).collect();
    let role = |pid: u32, arg: &str| {
        by_pid
            .get(&pid)
            .filter(|(_, argv)| argv.get(1).is_some_and(|a| a == arg))
            .map(|(ppid, _)| *ppid)
    };
    all.iter()
        .filter(|(pid, _, _)| {
            role(*pid, "--wasmkube-compiler")
                .and_then(|worker| role(worker, "--wasmkube-compile-worker"))
                .and_then(|broker| role(broker, "--wasmkube-compile-broker"))
                .and_then(|daemon| by_pid.get(&daemon))
                .is_some_and(|(_, argv)| argv.contains(&address))
        })
        .map(|(pid, _, _)| *pid)
        .collect()
}

/// The `Name:\tvalue` fields of `/proc/<pid>/status`.
pub fn status(pid: u32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The `-id` of every long-running wasmkube shim process of the containerd at `address` (a
/// daemon, its zygote and container processes carry the daemon's arguments): one per daemon.
pub fn shim_ids(address: &Path) -> std::collections::BTreeSet<String> {
    let address = address.display().to_string();
    processes()
        .into_iter()
        .filter(|(_, _, argv)| {
            argv.first()
                .is_some_and(|a| a.ends_with("containerd-shim-wasmkube-v1"))
                && argv.contains(&address)
                // containerd's `start` and `delete` calls name the container, not the daemon.
                && !argv.iter().any(|a| a == "start" || a == "delete")
        })
        .filter_map(|(_, _, argv)| {
            let at = argv.iter().position(|a| a == "-id")?;
            argv.get(at + 1).cloned()
        })
        .collect()
}

/// `(fd, inode)` of every socket `pid` holds.
pub fn sockets(pid: u32) -> Vec<(i32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|fd| {
                    let n = fd.file_name().to_str()?.parse().ok()?;
                    let link = std::fs::read_link(fd.path()).ok()?;
                    let inode = link
                        .to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_string();
                    Some((n, inode))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The inodes of the sockets `pid` holds.
pub fn socket_inodes(pid: u32) -> Vec<String> {
    sockets(pid).into_iter().map(|(_, i)| i).collect()
}

/// The inodes of the listening Unix sockets (`/proc/net/unix`, flag `__SO_ACCEPTCON`).
pub fn listening_unix_sockets() -> Vec<String> {
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let flags = u32::from_str_radix(cols.get(3)?, 16).ok()?;
            (flags & 0x0001_0000 != 0).then(|| cols.get(6).map(|s| s.to_string()))?
        })
        .collect()
}

/// The SEQPACKET Unix sockets of `pid` (`/proc/net/unix` type 5), by descriptor number: in a
/// shim daemon, both ends of its compile broker's socket.
pub fn seqpacket_fds(pid: u32) -> Vec<i32> {
    let seqpacket: Vec<String> = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (*cols.get(4)? == "0005").then(|| cols.get(6).map(|s| s.to_string()))?
        })
        .collect();
    sockets(pid)
        .into_iter()
        .filter(|(_, i)| seqpacket.contains(i))
        .map(|(n, _)| n)
        .collect()
}

/// Copies `src` to `dest` (keeping its mode, as `fs::copy` does) in a child process (`cp`), so
/// this multi-threaded test process never holds a write descriptor on a file that is about to be
/// executed. With `fs::copy`, a `fork` by another test thread while the copy is open leaves that
/// descriptor in the forked child until it execs, and executing `dest` in that window fails with
/// ETXTBSY ("Text file busy"), as a CI run showed.
pub fn copy_file(src: &Path, dest: &Path) {
    let out = std::process::Command::new("cp")
        .arg("--preserve=mode")
        .arg("--")
        .arg(src)
        .arg(dest)
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "cp {} {}: {}",
        src.display(),
        dest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
