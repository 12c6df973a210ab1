//! Host paths are resolved as the host sees them (issue 10.1): a symlinked containerd config is
//! patched at its target and the link stays a link, uninstall gives the target its bytes back,
//! the backup sits beside the target, and no symlink — absolute, relative, or climbing with
//! `..` — leads the installer out of `--host-root`. Temp host roots, no daemon.
#[path = "support/host.rs"]
mod host;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use host::{assert_same, snapshot, TestHost, CONFIG, SHIM};
use wasmkube_node_installer::atomic_write::{absent_marker, backup_path};
use wasmkube_node_installer::{run, State, Verb};

/// Corpus configs that install cleanly (see `corpus.rs` for the whole table).
const CONFIGS: &[(&str, &str)] = &[
    (
        "containerd-1.6-default",
        include_str!("configs/containerd-1.6-default.toml"),
    ),
    (
        "containerd-2.0-default",
        include_str!("configs/containerd-2.0-default.toml"),
    ),
    ("dotted-keys", include_str!("configs/dotted-keys.toml")),
    ("empty", include_str!("configs/empty.toml")),
];

/// How `/etc/containerd/config.toml` reaches the real file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// `config.toml -> /etc/containerd/real/config.toml`
    Absolute,
    /// `config.toml -> real/config.toml`
    Relative,
    /// `/etc/containerd -> /srv/containerd` (a directory link), the file itself plain.
    DirLink,
    /// `config.toml -> /etc/containerd/hop -> ../containerd/real/config.toml`
    Chain,
}

/// Lays out `text` behind a link of `style`; returns (the link, the real file), host paths.
fn lay_out(host: &TestHost, style: Style, text: &str) -> (&'static str, &'static str) {
    let write = |p: &str| {
        let path = host.path(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    let link = |at: &str, target: &str| {
        let path = host.path(at);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        symlink(target, path).expect("symlink");
    };
    match style {
        Style::Absolute => {
            write("/etc/containerd/real/config.toml");
            link(CONFIG, "/etc/containerd/real/config.toml");
            (CONFIG, "/etc/containerd/real/config.toml")
        }
        Style::Relative => {
            write("/etc/containerd/real/config.toml");
            link(CONFIG, "real/config.toml");
            (CONFIG, "/etc/containerd/real/config.toml")
        }
        Style::DirLink => {
            write("/srv/containerd/config.toml");
            link("/etc/containerd", "/srv/containerd");
            ("/etc/containerd", "/srv/containerd/config.toml")
        }
        Style::Chain => {
            write("/etc/containerd/real/config.toml");
            link("/etc/containerd/hop", "../containerd/real/config.toml");
            link(CONFIG, "/etc/containerd/hop");
            (CONFIG, "/etc/containerd/real/config.toml")
        }
    }
}

/// A host whose directories for the shim and the PATH link exist already, so an install +
/// uninstall leaves a tree identical to the one before.
fn host_with_dirs() -> TestHost {
    let host = TestHost::new(&[]);
    for d in ["/opt", "/usr/local/bin"] {
        std::fs::create_dir_all(host.path(d)).expect("mkdir");
    }
    host
}

#[test]
fn a_symlinked_config_is_patched_at_its_target_and_restored_there() {
    for (name, text) in CONFIGS {
        for style in [
            Style::Absolute,
            Style::Relative,
            Style::DirLink,
            Style::Chain,
        ] {
            let case = format!("{name} via {style:?}");
            let host = host_with_dirs();
            let (link, target) = lay_out(&host, style, text);
            let link_to = std::fs::read_link(host.path(link)).expect("readlink");
            let before = snapshot(host.root.path());
            let shim = host.shim("1.0.0");
            let o = host.options(&shim, Some("true"));

            let r = run(Verb::Install, &o);
            assert_eq!(r.state, State::Installed, "{case}: {r:?}");
            assert_eq!(
                r.config_path.as_deref(),
                Some(CONFIG),
                "{case}: the report names the host path"
            );
            let patched = std::fs::read_to_string(host.path(target)).expect("target");
            assert!(
                patched.contains("runtimes.wasmkube"),
                "{case}: target not patched:\n{patched}"
            );
            assert_eq!(
                std::fs::read_link(host.path(link)).ok(),
                Some(link_to.clone()),
                "{case}: the link must stay the same link"
            );
            // The backup belongs to the target, and nothing sits beside the link.
            let real = host.path(target);
            assert_eq!(
                std::fs::read(backup_path(&real)).ok().as_deref(),
                Some(text.as_bytes()),
                "{case}: backup beside the target"
            );
            if style != Style::DirLink {
                assert!(
                    std::fs::symlink_metadata(backup_path(&host.path(CONFIG))).is_err()
                        && std::fs::symlink_metadata(absent_marker(&host.path(CONFIG))).is_err(),
                    "{case}: a backup beside the link"
                );
            }
            assert_eq!(
                run(Verb::Install, &o).state,
                State::Unchanged,
                "{case}: re-install through the link"
            );

            let u = run(Verb::Uninstall, &o);
            assert_eq!(u.state, State::Uninstalled, "{case}: {u:?}");
            assert!(
                u.changes.contains(&"config-restored"),
                "{case}: {:?}",
                u.changes
            );
            assert_eq!(
                std::fs::read(host.path(target)).expect("target"),
                text.as_bytes(),
                "{case}: the target's original bytes"
            );
            assert_same(&before, &snapshot(host.root.path()));
        }
    }
}

/// A host root inside `outer`, next to a valid config and a `bin/` directory that are outside
/// the host root.
struct Escape {
    outer: tempfile::TempDir,
    host: TestHost,
}

const OUTSIDE_TEXT: &str = "version = 2\n# OUTSIDE THE HOST ROOT: must never be read or written\n";

impl Escape {
    fn new() -> Escape {
        let outer = tempfile::tempdir().expect("tempdir");
        let host = TestHost {
            root: tempfile::TempDir::new_in(outer.path()).expect("host root"),
            aux: tempfile::tempdir().expect("tempdir"),
        };
        for d in ["etc/containerd", "opt"] {
            std::fs::create_dir_all(host.root.path().join(d)).expect("mkdir");
        }
        std::fs::write(outer.path().join("outside.toml"), OUTSIDE_TEXT).expect("write");
        std::fs::create_dir_all(outer.path().join("bin")).expect("mkdir");
        Escape { outer, host }
    }

    fn outside(&self) -> PathBuf {
        self.outer.path().join("outside.toml")
    }

    fn outside_untouched(&self, case: &str) {
        assert_eq!(
            std::fs::read_to_string(self.outside()).expect("outside"),
            OUTSIDE_TEXT,
            "{case}: a file outside the host root changed"
        );
        let root_name = self
            .host
            .root
            .path()
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let mut listed: Vec<String> = std::fs::read_dir(self.outer.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        listed.sort();
        let mut want = vec!["bin".to_string(), "outside.toml".to_string(), root_name];
        want.sort();
        assert_eq!(
            listed, want,
            "{case}: something was created outside the host root"
        );
        assert_eq!(
            std::fs::read_dir(self.outer.path().join("bin"))
                .expect("ls")
                .count(),
            0,
            "{case}: a link was made outside the host root"
        );
    }
}

#[test]
fn links_that_point_out_of_the_host_root_resolve_inside_it() {
    for case in ["relative ..", "absolute"] {
        let e = Escape::new();
        let target = if case == "absolute" {
            e.outside().display().to_string()
        } else {
            // As many `..` as `<root>/etc/containerd` is deep below `outer`: one too many.
            let depth = e
                .host
                .root
                .path()
                .join("etc/containerd")
                .strip_prefix(e.outer.path())
                .expect("inside")
                .components()
                .count();
            format!("{}outside.toml", "../".repeat(depth))
        };
        let root = e.host.root.path().to_path_buf();
        symlink(&target, root.join("etc/containerd/config.toml")).expect("symlink");
        // Naively followed, this is `outer/outside.toml`; as the host sees it, it is not.
        let naive = std::fs::canonicalize(root.join("etc/containerd/config.toml"));
        assert_eq!(
            naive.ok(),
            std::fs::canonicalize(e.outside()).ok(),
            "{case}: the link escapes when followed naively (the test would prove nothing)"
        );
        let inside =
            wasmkube_node_installer::host_path::follow(&root, Path::new(CONFIG)).expect("resolves");
        assert!(inside.starts_with(&root), "{case}: {}", inside.display());
        // The PATH link directory also points outside, absolutely.
        std::fs::create_dir_all(root.join("usr/local")).expect("mkdir");
        symlink(e.outer.path().join("bin"), root.join("usr/local/bin")).expect("symlink");

        let shim = e.host.shim("1.0.0");
        let o = e.host.options(&shim, Some("true"));
        let r = run(Verb::Install, &o);
        assert_eq!(r.state, State::Installed, "{case}: {r:?}");
        e.outside_untouched(case);
        // There was no file where the link leads (inside the root): one was created there,
        // with an "absent" backup, and not a copy of the outside file.
        let written = std::fs::read_to_string(&inside).expect("created inside the root");
        assert!(!written.contains("OUTSIDE"), "{case}: {written}");
        assert!(absent_marker(&inside).exists(), "{case}");
        assert_eq!(
            std::fs::read_link(root.join("etc/containerd/config.toml")).ok(),
            Some(PathBuf::from(&target)),
            "{case}: the link stays"
        );
        assert!(root.join(SHIM.trim_start_matches('/')).is_file(), "{case}");

        let u = run(Verb::Uninstall, &o);
        assert_eq!(u.state, State::Uninstalled, "{case}: {u:?}");
        assert!(!inside.exists(), "{case}: the file install created is gone");
        e.outside_untouched(case);
        assert_eq!(
            std::fs::read_link(root.join("etc/containerd/config.toml")).ok(),
            Some(PathBuf::from(&target)),
            "{case}: the link stays after uninstall"
        );
    }
}

#[test]
fn flavour_detection_follows_host_links_inside_the_root() {
    // k3s with its data dir on another disk: `/var/lib/rancher -> /data/rancher` (absolute).
    let host = TestHost::new(&[(
        "/data/rancher/k3s/agent/etc/containerd/config.toml",
        include_str!("configs/k3s-rendered-config.toml"),
    )]);
    std::fs::create_dir_all(host.path("/var/lib")).expect("mkdir");
    symlink("/data/rancher", host.path("/var/lib/rancher")).expect("symlink");
    let shim = host.shim("1.0.0");
    let o = host.options(&shim, Some("true"));
    let r = run(Verb::Install, &o);
    assert_eq!(r.state, State::Installed, "{r:?}");
    assert_eq!(
        r.flavour,
        Some(wasmkube_node_installer::flavour::Flavour::K3s),
        "{r:?}"
    );
    let template = host.path("/data/rancher/k3s/agent/etc/containerd/config.toml.tmpl");
    assert!(
        std::fs::read_to_string(&template)
            .expect("template written through the link")
            .contains("{{ template \"base\" . }}"),
        "template"
    );
    let u = run(Verb::Uninstall, &o);
    assert_eq!(u.state, State::Uninstalled, "{u:?}");
    assert!(!template.exists());
    assert!(std::fs::read_link(host.path("/var/lib/rancher")).is_ok());
}
