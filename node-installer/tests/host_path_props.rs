//! `host_path::resolve` agrees with the kernel: on random trees of directories and symlinks
//! (absolute, relative, climbing with `..`, chains, loops, dangling), every path that
//! `openat2(RESOLVE_IN_ROOT)` opens resolves to the same file, and no path ever resolves outside
//! the root.
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
use wasmkube_node_installer::host_path::{resolve, Last, ResolveError};

/// What the kernel makes of `path` under `root` with `RESOLVE_IN_ROOT`: the real path, or the
/// errno.
fn kernel(root: &Path, path: &Path) -> Result<PathBuf, rustix::io::Errno> {
    let dir = std::fs::File::open(root).expect("open root");
    let fd = openat2(
        &dir,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT,
    )?;
    Ok(std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("fd path"))
}

const NAMES: &[&str] = &["a", "b", "c"];

fn rel_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(NAMES).prop_map(str::to_string),
            1 => Just("..".to_string()),
            1 => Just(".".to_string()),
        ],
        1..4,
    )
    .prop_map(|parts| parts.join("/"))
}

/// One step building the tree: a directory or a symlink at a path.
#[derive(Clone, Debug)]
enum Step {
    Dir(String),
    File(String),
    Link(String, String),
}

fn step() -> impl Strategy<Value = Step> {
    let target = prop_oneof![
        rel_path(),
        rel_path().prop_map(|p| format!("/{p}")),
        rel_path().prop_map(|p| format!("../../../{p}")),
    ];
    prop_oneof![
        3 => rel_path().prop_map(Step::Dir),
        1 => rel_path().prop_map(Step::File),
        3 => (rel_path(), target).prop_map(|(at, to)| Step::Link(at, to)),
    ]
}

fn build(root: &Path, steps: &[Step]) {
    for s in steps {
        // Steps whose parent is missing, or that collide, are simply skipped. Creation uses
        // plain joins on purpose: the tree may be odd, that is the point.
        let _ = match s {
            Step::Dir(p) => std::fs::create_dir(root.join(p)),
            Step::File(p) => std::fs::write(root.join(p), "x"),
            Step::Link(p, to) => std::os::unix::fs::symlink(to, root.join(p)),
        };
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn resolve_matches_openat2_in_root(
        steps in prop::collection::vec(step(), 1..14),
        lookups in prop::collection::vec(rel_path(), 1..6),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = std::fs::canonicalize(tmp.path()).expect("canonical root");
        build(&root, &steps);
        for lookup in &lookups {
            let host_path = PathBuf::from(format!("/{lookup}"));
            let ours = resolve(&root, &host_path, Last::Follow);
            if let Ok(p) = &ours {
                prop_assert!(p.starts_with(&root), "{} escaped to {}", host_path.display(), p.display());
            }
            match kernel(&root, &host_path) {
                Ok(real) => {
                    let ours = ours.map_err(|e| TestCaseError::fail(format!("{e}")))?;
                    prop_assert_eq!(&ours, &real, "{} in {:?}", host_path.display(), steps);
                }
                Err(rustix::io::Errno::NOENT) => {
                    // Something on the way is missing: ours names a path that does not exist
                    // (to be created), or refuses a file in the middle.
                    if let Ok(p) = &ours {
                        prop_assert!(std::fs::symlink_metadata(p).is_err(), "{} exists", p.display());
                    }
                }
                Err(rustix::io::Errno::LOOP) => {
                    prop_assert!(matches!(ours, Err(ResolveError::Loop { .. })), "{:?}", ours);
                }
                Err(rustix::io::Errno::NOTDIR) => {
                    prop_assert!(ours.is_err() || ours.as_ref().is_ok_and(|p| !p.exists()), "{:?}", ours);
                }
                Err(e) => prop_assert!(false, "unexpected errno {e:?} for {}", host_path.display()),
            }
        }
    }
}
