//! WASI preopens from the container's mounts.
//!
//! The guest sees the container's root at `/`, and every bind mount the OCI spec added (a
//! Kubernetes volume, `ctr run --mount`) as its own preopen at the same path, read-only when
//! the mount is. Mounts are read back from `/proc/self/mountinfo` inside the container, where
//! the runtime has already mounted them. The working directory is preopened as `.` as well,
//! registered first so that it never shadows `/` (see [`guest_dirs`]).
use std::path::Path;

/// One preopened directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    /// Path inside the container, used both to open it and as the guest path.
    pub path: String,
    pub read_only: bool,
}

/// Kernel filesystems and paths a guest has no business seeing as directories.
const SKIP_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "devtmpfs",
    "securityfs",
];
const SKIP_PREFIXES: &[&str] = &["/proc", "/sys", "/dev"];

/// Decodes mountinfo's octal escapes (`\040` for a space, etc.).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/self/mountinfo` into preopens: `/` first, then each mount in order, later
/// mounts of the same path replacing earlier ones.
pub fn from_mountinfo(text: &str) -> Vec<Preopen> {
    let mut out: Vec<Preopen> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || sep + 1 >= fields.len() {
            continue;
        }
        let path = unescape(fields[4]);
        let fstype = fields[sep + 1];
        let read_only = fields[5].split(',').any(|o| o == "ro");
        let skipped_path = SKIP_PREFIXES
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")));
        if path != "/" && (SKIP_FS.contains(&fstype) || skipped_path) {
            continue;
        }
        out.retain(|p| p.path != path);
        out.push(Preopen { path, read_only });
    }
    if let Some(i) = out.iter().position(|p| p.path == "/") {
        let root = out.remove(i);
        out.insert(0, root);
    } else {
        out.insert(
            0,
            Preopen {
                path: "/".into(),
                read_only: false,
            },
        );
    }
    out
}

/// The preopens for this process: mountinfo's mounts that are directories; `/` alone if
/// `/proc` is not mounted.
pub fn discover() -> Vec<Preopen> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    from_mountinfo(&text)
        .into_iter()
        .filter(|p| Path::new(&p.path).is_dir())
        .collect()
}

/// One directory handed to the guest: `host` (a path inside the container) under the name
/// `guest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDir {
    pub host: String,
    pub guest: String,
    pub read_only: bool,
}

/// The guest's preopens in the order to register them: the working directory `cwd` as `.`
/// (unless it is `/`), then `preopens` (the rootfs at `/` first, then each mount) at their own
/// paths.
///
/// The order matters. wasi-libc (Rust and C guests, preview1 and preview2 alike) strips leading
/// `/` and `./` from preopen names, so `/` and `.` are the same empty prefix to it, and of two
/// equal prefixes the preopen registered *last* wins. With `.` after `/`, every absolute path
/// outside a mount would resolve under the working directory (`/etc/x` → `<cwd>/etc/x`).
/// Registered first, `.` is there for guests that look it up by name, and wasi-libc guests keep
/// the `/` their `getcwd()` reports. `.` is read-only when the mount holding `cwd` is.
pub fn guest_dirs(preopens: &[Preopen], cwd: Option<&str>) -> Vec<GuestDir> {
    let mut out = Vec::with_capacity(preopens.len() + 1);
    if let Some(cwd) = cwd.filter(|c| *c != "/" && !c.is_empty()) {
        out.push(GuestDir {
            host: cwd.to_string(),
            guest: ".".into(),
            read_only: mount_of(preopens, cwd).is_some_and(|p| p.read_only),
        });
    }
    out.extend(preopens.iter().map(|p| GuestDir {
        host: p.path.clone(),
        guest: p.path.clone(),
        read_only: p.read_only,
    }));
    out
}

/// The preopen whose directory holds `path`: the longest one that is `path` or a parent of it.
fn mount_of<'a>(preopens: &'a [Preopen], path: &str) -> Option<&'a Preopen> {
    preopens
        .iter()
        .filter(|p| {
            p.path == "/"
                || path == p.path
                || path
                    .strip_prefix(p.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|p| p.path.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
600 500 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b
601 600 0:51 / /proc rw,nosuid - proc proc rw
602 600 0:52 / /dev rw,nosuid - tmpfs tmpfs rw
603 602 0:53 / /dev/pts rw - devpts devpts rw
604 600 0:54 / /sys ro - sysfs sysfs ro
605 604 0:55 / /sys/fs/cgroup ro - cgroup cgroup ro,memory
606 600 8:1 /var/lib/kubelet/pods/x/volumes/data /data rw,relatime - ext4 /dev/vda rw
607 600 8:1 /srv/config /etc/app\\040config ro,relatime - ext4 /dev/vda rw
608 600 8:1 /hosts /etc/hosts rw,relatime - ext4 /dev/vda rw
";

    #[test]
    fn root_first_then_bind_mounts_with_their_modes() {
        let p = from_mountinfo(MOUNTINFO);
        assert_eq!(
            p,
            vec![
                Preopen {
                    path: "/".into(),
                    read_only: false
                },
                Preopen {
                    path: "/data".into(),
                    read_only: false
                },
                Preopen {
                    path: "/etc/app config".into(),
                    read_only: true
                },
                Preopen {
                    path: "/etc/hosts".into(),
                    read_only: false
                },
            ]
        );
    }

    #[test]
    fn read_only_root_and_missing_mountinfo() {
        let p = from_mountinfo("1 0 0:1 / / ro - overlay overlay ro\n");
        assert_eq!(
            p,
            vec![Preopen {
                path: "/".into(),
                read_only: true
            }]
        );
        assert_eq!(
            from_mountinfo(""),
            vec![Preopen {
                path: "/".into(),
                read_only: false
            }]
        );
    }

    fn preopen(path: &str, read_only: bool) -> Preopen {
        Preopen {
            path: path.into(),
            read_only,
        }
    }

    fn dir(host: &str, guest: &str, read_only: bool) -> GuestDir {
        GuestDir {
            host: host.into(),
            guest: guest.into(),
            read_only,
        }
    }

    #[test]
    fn the_working_directory_comes_first_so_it_never_shadows_the_root() {
        let mounts = [
            preopen("/", false),
            preopen("/data", true),
            preopen("/data2", false),
        ];
        assert_eq!(
            guest_dirs(&mounts, Some("/srv/work")),
            vec![
                dir("/srv/work", ".", false),
                dir("/", "/", false),
                dir("/data", "/data", true),
                dir("/data2", "/data2", false),
            ]
        );
        // `/` (the default) and no working directory add nothing.
        assert_eq!(guest_dirs(&mounts, Some("/")).len(), 3);
        assert_eq!(guest_dirs(&mounts, None).len(), 3);
    }

    #[test]
    fn the_working_directory_takes_the_mode_of_its_mount() {
        let mounts = [
            preopen("/", true),
            preopen("/data", true),
            preopen("/data/rw", false),
        ];
        let dot = |cwd: &str| guest_dirs(&mounts, Some(cwd))[0].clone();
        assert_eq!(dot("/data/rw/sub"), dir("/data/rw/sub", ".", false));
        assert_eq!(dot("/data/rw"), dir("/data/rw", ".", false));
        assert_eq!(dot("/data/ro"), dir("/data/ro", ".", true));
        assert_eq!(
            dot("/data2"),
            dir("/data2", ".", true),
            "under `/`, not `/data`"
        );
        assert_eq!(dot("/srv"), dir("/srv", ".", true));
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape("/plain\\"), "/plain\\");
    }
}
