//! Descriptors a wasm container process or a compile process must not keep.
//!
//! containerd starts the shim daemon with its TTRPC listening socket at fd 3, not close-on-exec,
//! so every process the shim starts or forks inherits it: the compile broker and its workers
//! (re-executed as roles of the same binary) and every container process. A process holding it
//! could `accept()` containerd's Task API calls for the pod. Two rules keep it, and every other
//! inherited handle, out of reach:
//!
//! - **Roles** (the broker, a worker) close every descriptor from 3 up before anything else
//!   ([`close_from`]): they need only their standard streams (stdin is their socket).
//! - **Guests**: a wasm guest runs in the container's init process, which runwasi forks from
//!   its zygote and libcontainer sets up; it never `execve`s, so close-on-exec descriptors
//!   survive into it: the daemon's, libcontainer's (the `O_PATH` roots of the private procfs
//!   mounts libpathrs caches, directories opened before `pivot_root`). Their numbers and
//!   identities are listed when the sandbox is made ([`Inherited::list`], in libcontainer's
//!   `validate`, before runwasi's async runtime exists), and all of them are retired before the
//!   guest is loaded ([`Inherited::retire_all_but`]) except an allow-list: stdio and the
//!   broker's client socket. Retired means the number is pointed at the container's `/dev/null`
//!   rather than closed: code inherited from the daemon still holds some of those numbers (the
//!   shim's logger writes to its log FIFO's number), and a closed number would be handed to the
//!   next file the process opens, e.g. an accepted HTTP connection, which would then receive
//!   the daemon's log lines. A descriptor whose number now names another file (one the process
//!   opened since, e.g. the runtime's epoll) is not inherited and stays. If the list cannot be
//!   read, the guest does not start.
//!
//! [`host_rooted`] and its helpers describe the host-filesystem handles the live tests look for.
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

/// The descriptors (above stdio) a process holds at one moment, by number and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    fds: Vec<(i32, Identity)>,
}

/// What a descriptor refers to: device and inode of the open file.
type Identity = (u64, u64);

impl Inherited {
    /// Lists this process's descriptors above 2. Fails when `/proc/self/fd` cannot be read.
    pub fn list() -> Result<Self, String> {
        let numbers: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map_err(|e| format!("cannot list /proc/self/fd: {e}"))?
            .map(|e| e.map_err(|e| format!("cannot list /proc/self/fd: {e}")))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&n| n > 2)
            .collect();
        // read_dir's own descriptor is among the numbers and closed by now: `identity` skips it.
        Ok(Inherited {
            fds: numbers
                .into_iter()
                .filter_map(|n| Some((n, identity(n)?)))
                .collect(),
        })
    }

    /// Only the given descriptors (tests: the test process's own are not to be closed).
    #[cfg(test)]
    fn only(numbers: &[i32]) -> Self {
        Inherited {
            fds: numbers
                .iter()
                .filter_map(|&n| Some((n, identity(n)?)))
                .collect(),
        }
    }

    /// The listed descriptor numbers.
    pub fn numbers(&self) -> Vec<i32> {
        self.fds.iter().map(|(n, _)| *n).collect()
    }

    /// Retires every listed descriptor that still refers to the same file, except `keep`: its
    /// number then names `/dev/null` (closed when `/dev/null` cannot be opened); returns what
    /// it retired (`"<n> -> <target>"`). Run single-threaded, before the guest.
    pub fn retire_all_but(&self, keep: &[i32]) -> Vec<String> {
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok();
        let mut retired = Vec::new();
        for &(n, id) in &self.fds {
            if keep.contains(&n) || identity(n) != Some(id) {
                continue;
            }
            let target = std::fs::read_link(format!("/proc/self/fd/{n}"))
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            retire(n, null.as_ref());
            retired.push(format!("{n} -> {target}"));
        }
        retired
    }
}

/// Device and inode of descriptor `n`, `None` when it is not open.
fn identity(n: i32) -> Option<Identity> {
    #[allow(unsafe_code)]
    // SAFETY: the borrow lives only for this `fstat`; an fd that is not open makes it fail with
    // EBADF, which is the `None` case.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
    let st = rustix::fs::fstat(fd).ok()?;
    Some((st.st_dev, st.st_ino))
}

/// Closes every descriptor from `first` up (`close_range`): the first thing a re-executed role
/// does, before any thread or file of its own exists.
pub fn close_from(first: u32) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: called at the top of a role's `run`, single-threaded, before the process opened
    // anything of its own: no Rust object owns a descriptor at or above `first`.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Points `n` at `null` (`dup3`, close-on-exec), or closes it when there is no `null` or the
/// `dup3` fails.
#[allow(unsafe_code)]
fn retire(n: i32, null: Option<&std::os::fd::OwnedFd>) {
    use std::os::fd::AsRawFd;
    if let Some(null) = null {
        // SAFETY: `dup3` atomically replaces whatever `n` named (see `close` for why nothing of
        // ours owns it) with a new reference to `/dev/null`; `null` stays owned by the caller.
        let rc = unsafe { libc::dup3(null.as_raw_fd(), n, libc::O_CLOEXEC) };
        if rc == n {
            return;
        }
    }
    close(n);
}

#[allow(unsafe_code)]
fn close(n: i32) {
    // SAFETY: `n` is an open descriptor this process inherited (listed before the async runtime
    // existed, same file now) that no live Rust object of ours owns: it belongs to the shim
    // daemon or to libcontainer/libpathrs state that is never used after the container is set
    // up, and this runs before the guest, single-threaded.
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
    fn inherited_descriptors_are_retired_except_the_kept_and_the_reused() {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let tmp = tempfile::tempdir().expect("tmp");
        let (r, w) = std::io::pipe().expect("pipe");
        let (r, w) = (r.into_raw_fd(), w.into_raw_fd());
        let listed = Inherited::only(&[r, w]);
        assert_eq!(listed.numbers(), vec![r, w]);
        let pipe_end = identity(r);
        assert!(pipe_end.is_some());
        let null = rustix::fs::stat("/dev/null").expect("stat /dev/null");
        let closed = listed.retire_all_but(&[w]);
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert!(
            closed[0].starts_with(&format!("{r} -> pipe:")),
            "{closed:?}"
        );
        // Retired: the number names /dev/null now, not that pipe end, and is not free for the
        // next file this process opens.
        assert_ne!(identity(r), pipe_end, "the inherited end is gone");
        assert_eq!(
            identity(r),
            Some((null.st_dev, null.st_ino)),
            "the number is held by /dev/null"
        );
        assert!(identity(w).is_some(), "the kept end stays");
        // A number that names another file since the listing is not inherited: it stays.
        let mut old = std::fs::File::create(tmp.path().join("old")).expect("old");
        let listed = Inherited::only(&[old.as_raw_fd()]);
        let new = std::fs::File::create(tmp.path().join("new")).expect("new");
        let n = old.as_raw_fd();
        {
            use std::os::fd::AsFd;
            let mut target = std::os::fd::OwnedFd::from(old);
            rustix::io::dup2(new.as_fd(), &mut target).expect("dup2");
            old = std::fs::File::from(target);
        }
        assert!(listed.retire_all_but(&[]).is_empty());
        assert!(identity(n).is_some(), "the reused number stays open");
        drop(old);
        #[allow(unsafe_code)]
        // SAFETY: `w` and `r` (now /dev/null) were leaked from the pipe above and are owned by
        // nothing else.
        unsafe {
            drop(<std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(w));
            drop(<std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r));
        }
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
