//! WASI preopens: the guest's root view and the volumes it is granted.
//!
//! The guest's `/` is the root view (see [`crate::bundle`]): the image's files without any of
//! the mounts the kubelet, the CRI and the runtime add. Each volume the WasmApp grants
//! (`spec.volumes`, the grants document's `volumes`) is preopened at its mount path, read-only
//! when the grant or the mount is. A container without a grants document (a plain
//! `ctr run --mount`, a pod not made by the operator) has every directory bind mount preopened
//! instead: whoever wrote its spec chose those mounts. `/proc`, `/sys` and `/dev` never are.
//! Mounts are read back from `/proc/self/mountinfo` inside the container, where the runtime has
//! already mounted them. The working directory is preopened as `.` as well, registered first so
//! that it never shadows `/` (see [`guest_dirs`]).
use std::path::Path;

use wasmkube_contract::Volume;

use crate::bundle::ROOT_VIEW;

/// One preopened directory: `host` (a path in the container) is the guest's `guest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    pub host: String,
    pub guest: String,
    pub read_only: bool,
}

/// Which mounts besides the root view the guest gets.
#[derive(Clone, Copy, Debug)]
pub enum Granted<'a> {
    /// Exactly these (a WasmApp's pod).
    Volumes(&'a [Volume]),
    /// Every directory bind mount (a container without a grants document).
    EveryMount,
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

/// One line of mountinfo: mount point, filesystem type, read-only.
fn mounts(text: &str) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || sep + 1 >= fields.len() {
            continue;
        }
        let path = unescape(fields[4]);
        let read_only = fields[5].split(',').any(|o| o == "ro");
        // A later mount of the same path is the one in effect.
        out.retain(|(p, _, _)| *p != path);
        out.push((path, fields[sep + 1].to_string(), read_only));
    }
    out
}

/// The preopens mountinfo gives: the root view as `/` first, then the granted mounts in
/// mount order. Fails when the root view is not mounted: the guest would otherwise see the
/// container's whole tree.
pub fn from_mountinfo(text: &str, granted: Granted<'_>) -> Result<Vec<Preopen>, String> {
    let all = mounts(text);
    let (_, _, root_ro) = all
        .iter()
        .find(|(p, _, _)| p == ROOT_VIEW)
        .ok_or_else(|| format!("the guest's root view ({ROOT_VIEW}) is not mounted"))?;
    let mut out = vec![Preopen {
        host: ROOT_VIEW.into(),
        guest: "/".into(),
        read_only: *root_ro,
    }];
    for (path, fstype, mount_ro) in all {
        let skipped_path = SKIP_PREFIXES
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")));
        if path == "/" || SKIP_FS.contains(&fstype.as_str()) || skipped_path {
            continue;
        }
        let grant_ro = match granted {
            Granted::EveryMount => false,
            Granted::Volumes(volumes) => match volumes.iter().find(|v| v.mount_path == path) {
                Some(v) => v.read_only,
                None => continue,
            },
        };
        out.push(Preopen {
            host: path.clone(),
            guest: path,
            read_only: mount_ro || grant_ro,
        });
    }
    Ok(out)
}

/// The preopens for this process: [`from_mountinfo`]'s that are directories. A granted
/// volume that is not mounted is named on stderr.
pub fn discover(granted: Granted<'_>) -> Result<Vec<Preopen>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let found: Vec<Preopen> = from_mountinfo(&text, granted)?
        .into_iter()
        .filter(|p| Path::new(&p.host).is_dir())
        .collect();
    if let Granted::Volumes(volumes) = granted {
        for v in volumes {
            if !found.iter().any(|p| p.guest == v.mount_path) {
                eprintln!(
                    "wasmkube: the granted volume at {} is not a mounted directory; the guest does not see it",
                    v.mount_path
                );
            }
        }
    }
    Ok(found)
}

/// One directory handed to the guest: `host` (a path inside the container) under the name
/// `guest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDir {
    pub host: String,
    pub guest: String,
    pub read_only: bool,
}

/// The guest's preopens in the order to register them: the working directory `cwd` (a guest
/// path) as `.` (unless it is `/`), then `preopens` (the root view at `/` first, then each
/// mount).
///
/// The order matters. wasi-libc (Rust and C guests, preview1 and preview2 alike) strips leading
/// `/` and `./` from preopen names, so `/` and `.` are the same empty prefix to it, and of two
/// equal prefixes the preopen registered *last* wins. With `.` after `/`, every absolute path
/// outside a mount would resolve under the working directory (`/etc/x` → `<cwd>/etc/x`).
/// Registered first, `.` is there for guests that look it up by name, and wasi-libc guests keep
/// the `/` their `getcwd()` reports. `.` is read-only when the preopen holding `cwd` is.
pub fn guest_dirs(preopens: &[Preopen], cwd: Option<&str>) -> Vec<GuestDir> {
    let mut out = Vec::with_capacity(preopens.len() + 1);
    if let Some(cwd) = cwd.filter(|c| *c != "/" && !c.is_empty()) {
        if let Some(p) = preopen_of(preopens, cwd) {
            let rest = cwd[p.guest.len()..].trim_start_matches('/');
            let host = if rest.is_empty() {
                p.host.clone()
            } else {
                format!("{}/{rest}", p.host.trim_end_matches('/'))
            };
            out.push(GuestDir {
                host,
                guest: ".".into(),
                read_only: p.read_only,
            });
        }
    }
    out.extend(preopens.iter().map(|p| GuestDir {
        host: p.host.clone(),
        guest: p.guest.clone(),
        read_only: p.read_only,
    }));
    out
}

/// The preopen whose guest directory holds `path`: the longest one that is `path` or a parent
/// of it.
fn preopen_of<'a>(preopens: &'a [Preopen], path: &str) -> Option<&'a Preopen> {
    preopens
        .iter()
        .filter(|p| {
            p.guest == "/"
                || path == p.guest
                || path
                    .strip_prefix(p.guest.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|p| p.guest.len())
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
609 602 8:1 /cm /dev/.wasmkube/config/0 ro,relatime - ext4 /dev/vda rw
610 602 0:50 / /dev/.wasmkube/root rw,nosuid,nodev - overlay overlay rw,lowerdir=/a
";

    fn preopen(host: &str, guest: &str, read_only: bool) -> Preopen {
        Preopen {
            host: host.into(),
            guest: guest.into(),
            read_only,
        }
    }

    #[test]
    fn without_grants_the_root_view_then_every_bind_mount_with_its_mode() {
        let p = from_mountinfo(MOUNTINFO, Granted::EveryMount).expect("root view");
        assert_eq!(
            p,
            vec![
                preopen(ROOT_VIEW, "/", false),
                preopen("/data", "/data", false),
                preopen("/etc/app config", "/etc/app config", true),
                preopen("/etc/hosts", "/etc/hosts", false),
            ],
            "never /proc, /sys, /dev, the config sources or the container's own /"
        );
    }

    #[test]
    fn with_grants_only_the_granted_volumes_read_only_when_either_says_so() {
        let volumes = [
            Volume {
                mount_path: "/data".into(),
                read_only: true,
            },
            Volume {
                mount_path: "/etc/app config".into(),
                read_only: false,
            },
            Volume {
                mount_path: "/not-mounted".into(),
                read_only: false,
            },
        ];
        let p = from_mountinfo(MOUNTINFO, Granted::Volumes(&volumes)).expect("root view");
        assert_eq!(
            p,
            vec![
                preopen(ROOT_VIEW, "/", false),
                preopen("/data", "/data", true),
                preopen("/etc/app config", "/etc/app config", true),
            ],
            "/etc/hosts is the kubelet's, not granted"
        );
        let p = from_mountinfo(MOUNTINFO, Granted::Volumes(&[])).expect("root view");
        assert_eq!(p, vec![preopen(ROOT_VIEW, "/", false)]);
    }

    #[test]
    fn no_root_view_no_preopens() {
        let e = from_mountinfo("1 0 0:1 / / ro - overlay overlay ro\n", Granted::EveryMount)
            .expect_err("no view");
        assert!(e.contains(ROOT_VIEW), "{e}");
        let ro = format!("1 0 0:1 / {ROOT_VIEW} ro - overlay overlay ro\n");
        assert_eq!(
            from_mountinfo(&ro, Granted::EveryMount).expect("view"),
            vec![preopen(ROOT_VIEW, "/", true)]
        );
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
            preopen(ROOT_VIEW, "/", false),
            preopen("/data", "/data", true),
            preopen("/data2", "/data2", false),
        ];
        assert_eq!(
            guest_dirs(&mounts, Some("/srv/work")),
            vec![
                dir(&format!("{ROOT_VIEW}/srv/work"), ".", false),
                dir(ROOT_VIEW, "/", false),
                dir("/data", "/data", true),
                dir("/data2", "/data2", false),
            ]
        );
        // `/` (the default) and no working directory add nothing.
        assert_eq!(guest_dirs(&mounts, Some("/")).len(), 3);
        assert_eq!(guest_dirs(&mounts, None).len(), 3);
    }

    #[test]
    fn the_working_directory_takes_the_mode_of_its_preopen() {
        let mounts = [
            preopen(ROOT_VIEW, "/", true),
            preopen("/data", "/data", true),
            preopen("/data/rw", "/data/rw", false),
        ];
        let dot = |cwd: &str| guest_dirs(&mounts, Some(cwd))[0].clone();
        assert_eq!(dot("/data/rw/sub"), dir("/data/rw/sub", ".", false));
        assert_eq!(dot("/data/rw"), dir("/data/rw", ".", false));
        assert_eq!(dot("/data/ro"), dir("/data/ro", ".", true));
        assert_eq!(
            dot("/data2"),
            dir(&format!("{ROOT_VIEW}/data2"), ".", true),
            "under `/`, not `/data`"
        );
        assert_eq!(dot("/srv"), dir(&format!("{ROOT_VIEW}/srv"), ".", true));
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\011c"), "/a b\tc");
        assert_eq!(unescape("/plain\\"), "/plain\\");
    }
}
