//! Host filesystem descriptors a wasm container process must not keep.
//!
//! A wasm guest runs in the container's init process, which runwasi forks from its zygote and
//! libcontainer sets up; it never `execve`s, so close-on-exec descriptors of the shim and of
//! libcontainer survive into it. Among them are handles rooted outside the container: the
//! `O_PATH` roots of the private procfs mounts that libpathrs caches for libcontainer (a
//! procfs of the host's PID namespace) and directories libcontainer opened before `pivot_root`.
//! None is used once the container is set up (the process exits when the guest ends), so the
//! shim closes them before any guest code runs: every directory, `O_PATH` or regular-file
//! descriptor whose mount is not in this process's mount namespace. Sockets, pipes, FIFOs
//! (containerd's stdio and log FIFOs), character devices and wasmtime's memfds stay.
use std::collections::HashSet;

/// `O_PATH` in `/proc/<pid>/fdinfo` flags (octal).
const O_PATH: u32 = 0o10000000;

/// What `/proc/self/fdinfo/<fd>` and `fstat` say about a descriptor.
#[derive(Debug, PartialEq, Eq)]
pub struct FdFacts {
    pub link: String,
    pub mnt_id: String,
    pub flags: u32,
    pub file_type: rustix::fs::FileType,
}

/// Whether `fd` is rooted in the host's filesystem: a directory, `O_PATH` or regular-file
/// handle on a mount outside `own` (the process's mount namespace), other than a memfd.
pub fn host_rooted(fd: &FdFacts, own: &HashSet<String>) -> bool {
    use rustix::fs::FileType;
    if own.contains(&fd.mnt_id) || fd.link.starts_with("/memfd:") {
        return false;
    }
    fd.flags & O_PATH != 0 || matches!(fd.file_type, FileType::Directory | FileType::RegularFile)
}

/// Mount IDs of the calling process's mount namespace.
pub fn own_mounts(mountinfo: &str) -> HashSet<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Parses `mnt_id:` and `flags:` of an fdinfo file.
pub fn parse_fdinfo(text: &str) -> (String, u32) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let flags = u32::from_str_radix(&field("flags:"), 8).unwrap_or(0);
    (field("mnt_id:"), flags)
}

/// Closes this process's host-rooted descriptors (see the module docs); returns what it closed.
/// Must run before the guest and before any other thread opens files.
pub fn close_host_rooted() -> Result<Vec<String>, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let own = own_mounts(&mountinfo);
    let numbers: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("cannot list /proc/self/fd: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&n| n > 2)
        .collect();
    let mut closed = Vec::new();
    for n in numbers {
        let Some(facts) = facts(n) else {
            continue; // gone (it was read_dir's own descriptor)
        };
        if host_rooted(&facts, &own) {
            close(n);
            closed.push(format!("{n} -> {}", facts.link));
        }
    }
    Ok(closed)
}

fn facts(n: i32) -> Option<FdFacts> {
    let link = std::fs::read_link(format!("/proc/self/fd/{n}")).ok()?;
    let (mnt_id, flags) =
        parse_fdinfo(&std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).ok()?);
    let st = rustix::fs::stat(format!("/proc/self/fd/{n}")).ok()?;
    Some(FdFacts {
        link: link.display().to_string(),
        mnt_id,
        flags,
        file_type: rustix::fs::FileType::from_raw_mode(st.st_mode),
    })
}

#[allow(unsafe_code)]
fn close(n: i32) {
    // SAFETY: `n` is an open descriptor of this process (just listed) that no live Rust object
    // of ours owns: it belongs to libcontainer/libpathrs state that is never used after the
    // container is set up, and this runs before the guest, single-threaded. Closing a raw
    // number is what `close_range` in a runtime's init would do.
    unsafe {
        rustix::io::close(n);
    }
}

#[cfg(test)]
mod tests {
    use rustix::fs::FileType;

    use super::*;

    fn fd(link: &str, mnt: &str, flags: u32, file_type: FileType) -> FdFacts {
        FdFacts {
            link: link.into(),
            mnt_id: mnt.into(),
            flags,
            file_type,
        }
    }

    #[test]
    fn foreign_directories_and_paths_are_host_rooted_pipes_and_memfds_are_not() {
        let own = own_mounts(
            "42 1 0:50 / / rw - overlay overlay rw\n43 42 0:5 / /proc rw - proc proc rw\n",
        );
        assert!(own.contains("42") && own.contains("43"));
        // libpathrs' cached procfs root: O_PATH on a detached mount.
        assert!(host_rooted(
            &fd("/", "86", 0o12200000, FileType::Directory),
            &own
        ));
        // A host directory (a cache or cgroupfs handle opened before the fork).
        assert!(host_rooted(
            &fd(
                "/var/lib/wasmkube/cache",
                "27",
                0o2100000,
                FileType::Directory
            ),
            &own
        ));
        // A host regular file.
        assert!(host_rooted(
            &fd("/etc/shadow", "27", 0o2100000, FileType::RegularFile),
            &own
        ));
        // Kept: the container's own files, stdio FIFOs, devices, sockets, memfds.
        assert!(!host_rooted(
            &fd("/", "42", 0o12200000, FileType::Directory),
            &own
        ));
        assert!(!host_rooted(
            &fd(
                "/run/containerd/fifo/1/x-stdout",
                "27",
                0o100002,
                FileType::Fifo
            ),
            &own
        ));
        assert!(!host_rooted(
            &fd("/dev/null", "24", 0o2100000, FileType::CharacterDevice),
            &own
        ));
        assert!(!host_rooted(
            &fd("socket:[1]", "10", 0o2000002, FileType::Socket),
            &own
        ));
        assert!(!host_rooted(
            &fd(
                "/memfd:wasm-memory-image (deleted)",
                "0",
                0o2100002,
                FileType::RegularFile
            ),
            &own
        ));
    }

    #[test]
    fn fdinfo_fields_parse() {
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t012200000\nmnt_id:\t86\nino:\t1\n"),
            ("86".to_string(), 0o12200000)
        );
        assert_eq!(parse_fdinfo(""), (String::new(), 0));
    }
}
