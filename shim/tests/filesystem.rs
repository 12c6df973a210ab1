//! The guest's filesystem under a real containerd (`ctr run`): the rootfs preopened at `/`, bind
//! mounts at their own path with their mode, the working directory as `.`. The `fileio` guest
//! does the reads and writes and prints what WASI answered; the tests check its output and the
//! host side. Needs root, containerd and runc; see `wasmkube_test_harness::skip_unless!`.
use std::path::Path;

use wasmkube_test_harness::containerd::rootfs_with;
use wasmkube_test_harness::guests::guest;
use wasmkube_test_harness::{missing_prerequisites, skip_unless, unique_id, Containerd, CtrRun};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-wasmkube-v1");

/// What WASI answers a write through a read-only preopen (`FsPerms::ReadOnly`): wasmtime refuses
/// it itself with `NotPermitted` before the kernel is asked. The kernel's answer for a read-only
/// mount behind a read-write preopen would be `Read-only file system (os error 69)` instead, so
/// this message proves the shim made the preopen read-only, not just that the mount is.
const READ_ONLY_PREOPEN: &str = "Operation not permitted (os error 63)";

fn containerd() -> Containerd {
    Containerd::builder().shim(SHIM).start()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_rootfs_is_preopened_at_root() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs_with(&[("fileio.wasm", &guest("fileio"))]);
    std::fs::write(root.path().join("input.txt"), "from the rootfs\n").expect("input");
    let out = ctd
        .run(&CtrRun::rootfs(
            unique_id("fsroot"),
            root.path(),
            &["/fileio.wasm", "/"],
        ))
        .ok();
    assert_eq!(
        out.stdout.replace("\r\n", "\n"),
        "read: from the rootfs\nwrote /output.txt\n"
    );
    assert_eq!(
        read(&root.path().join("output.txt")),
        "written by wasm: from the rootfs",
        "the guest's write landed in the container's rootfs"
    );
}

#[test]
fn the_guest_sees_its_image_not_the_mounts_over_it() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs_with(&[("fileio.wasm", &guest("fileio"))]);
    std::fs::create_dir(root.path().join("etc")).expect("etc");
    std::fs::write(root.path().join("etc/hosts"), "from the image\n").expect("image hosts");
    let host = tempfile::tempdir().expect("host dir");
    let mounted = host.path().join("hosts");
    std::fs::write(&mounted, "from the mount\n").expect("mounted hosts");
    let cat = |path: &str| {
        let mut run = CtrRun::rootfs(
            unique_id("fsview"),
            root.path(),
            &["/fileio.wasm", "cat", path],
        );
        // A file mounted over the image's, as the kubelet mounts /etc/hosts.
        run.mounts
            .push((mounted.clone(), "/etc/hosts".into(), true));
        ctd.run(&run)
    };
    let out = cat("/etc/hosts").ok();
    assert_eq!(
        out.stdout.replace("\r\n", "\n"),
        "/etc/hosts: from the image\n",
        "the image's file, not the mount over it"
    );
    // The runtime's /proc and /dev are not the guest's: a process's own memory and environment
    // files would hand it the shim.
    for path in ["/proc/self/environ", "/proc/self/mem", "/dev/null"] {
        let out = cat(path);
        assert_eq!(out.code, Some(2), "{path}: {out:#?}");
        assert!(
            out.stdout.contains(&format!(
                "fileio: reading {path}: No such file or directory"
            )),
            "{path}: {out:#?}"
        );
    }
}

#[test]
fn bind_mounts_are_preopened_at_the_same_path_with_their_mode() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs_with(&[("fileio.wasm", &guest("fileio"))]);
    std::fs::create_dir(root.path().join("data")).expect("mountpoint");
    let host = tempfile::tempdir().expect("host dir");
    let input = host.path().join("input.txt");
    let output = host.path().join("output.txt");
    std::fs::write(&input, "from the host\n").expect("input");
    let with_data = |args: &[&str], read_only: bool| {
        let mut run = CtrRun::rootfs(unique_id("fsmount"), root.path(), args);
        run.mounts
            .push((host.path().to_path_buf(), "/data".into(), read_only));
        ctd.run(&run)
    };

    // Read-write: the guest reads the host's file and its write shows up on the host.
    let out = with_data(&["/fileio.wasm", "/data"], false).ok();
    assert_eq!(
        out.stdout.replace("\r\n", "\n"),
        "read: from the host\nwrote /data/output.txt\n"
    );
    assert_eq!(read(&output), "written by wasm: from the host");
    assert!(
        !root.path().join("data/output.txt").exists(),
        "the write went to the mount, not to the rootfs under it"
    );
    std::fs::remove_file(&output).expect("rm");

    // Read-only: reading works; creating a file and overwriting one are refused by WASI.
    let out = with_data(&["/fileio.wasm", "/data"], true);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stdout.contains("read: from the host\n"), "{out:#?}");
    assert!(
        out.stdout.contains(&format!(
            "fileio: writing /data/output.txt: {READ_ONLY_PREOPEN}"
        )),
        "{out:#?}"
    );
    assert!(!output.exists(), "nothing created on the host");

    let out = with_data(
        &["/fileio.wasm", "write", "/data/input.txt", "changed"],
        true,
    );
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stdout.contains(&format!(
            "fileio: writing /data/input.txt: {READ_ONLY_PREOPEN}"
        )),
        "{out:#?}"
    );
    assert_eq!(
        read(&input),
        "from the host\n",
        "the host file is unchanged"
    );
}

#[test]
fn a_mount_path_with_a_space_is_preopened_as_written() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs_with(&[("fileio.wasm", &guest("fileio"))]);
    // mountinfo escapes the space as `\040`; the preopen must carry the real name.
    std::fs::create_dir(root.path().join("app config")).expect("mountpoint");
    let host = tempfile::tempdir().expect("host dir");
    std::fs::write(host.path().join("input.txt"), "spaced\n").expect("input");
    let mut run = CtrRun::rootfs(
        unique_id("fsspace"),
        root.path(),
        &["/fileio.wasm", "/app config"],
    );
    run.mounts
        .push((host.path().to_path_buf(), "/app config".into(), false));
    let out = ctd.run(&run).ok();
    assert!(out.stdout.contains("read: spaced\n"), "{out:#?}");
    assert_eq!(
        read(&host.path().join("output.txt")),
        "written by wasm: spaced"
    );
}

#[test]
fn the_working_directory_is_preopened_as_dot_without_shadowing_the_root() {
    skip_unless!(missing_prerequisites());
    let ctd = containerd();
    let root = rootfs_with(&[("fileio.wasm", &guest("fileio"))]);
    let work = root.path().join("srv/work");
    std::fs::create_dir_all(&work).expect("cwd");
    std::fs::create_dir(root.path().join("data")).expect("mountpoint");
    std::fs::write(work.join("notes.txt"), "from the working directory\n").expect("notes");
    // The same name at the root: which one the guest prints says which preopen it went through.
    std::fs::write(root.path().join("notes.txt"), "from the rootfs root\n").expect("root notes");
    let host = tempfile::tempdir().expect("host dir");
    let in_work = |args: &[&str]| {
        let mut run = CtrRun::rootfs(unique_id("fscwd"), root.path(), args);
        run.cwd = Some("/srv/work".into());
        run.mounts
            .push((host.path().to_path_buf(), "/data".into(), false));
        ctd.run(&run).ok()
    };

    // `.` is registered before `/` and the mounts: wasi-libc gives the last of two equal
    // prefixes (`.` and `/` are both empty to it) precedence, so `.` must come first.
    let out = in_work(&["/fileio.wasm", "preopens"]);
    let names: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("preopen "))
        .filter_map(|l| l.split_once(' ').map(|(_, name)| name))
        .collect();
    assert_eq!(names.first(), Some(&"."), "{out:#?}");
    assert_eq!(names.get(1), Some(&"/"), "{out:#?}");
    assert!(names.contains(&"/data"), "{out:#?}");

    // The `.` preopen is the working directory.
    let out = in_work(&["/fileio.wasm", "catat", ".", "notes.txt"]);
    assert_eq!(
        out.stdout.replace("\r\n", "\n"),
        ". notes.txt: from the working directory\n"
    );

    // An absolute path is the rootfs's file, not one under the working directory; wasi-libc
    // (whose getcwd() stays `/`) resolves a relative path against `/` as well.
    let out = in_work(&["/fileio.wasm", "cat", "/notes.txt", "notes.txt"]);
    assert_eq!(
        out.stdout.replace("\r\n", "\n"),
        "/notes.txt: from the rootfs root\nnotes.txt: from the rootfs root\n"
    );
}
