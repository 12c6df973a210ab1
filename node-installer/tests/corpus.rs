//! The config corpus (`tests/configs/`): real-world containerd configs and the outcome the
//! installer must reach for each. Run with `--nocapture` to print the table.
use std::path::{Path, PathBuf};

use wasmkube_node_installer::atomic_write;
use wasmkube_node_installer::config_patch::{self, RuntimeEntry, Schema};
use wasmkube_node_installer::flavour::{on_host, Flavour};
use wasmkube_node_installer::{install, run, Options, State, Verb};

const SHIM_PATH: &str = "/opt/wasmkube/bin/containerd-shim-wasmkube-v1";

/// What must happen to a config.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Our table is added; `splice`: by inserting one block (every other byte kept in place);
    /// otherwise through the TOML model (inline tables), checked semantically.
    Patched {
        schema: Schema,
        cgroup: Option<bool>,
        splice: bool,
    },
    /// A stale entry of ours is replaced.
    Updated { cgroup: Option<bool> },
    /// Already right: not a byte changes.
    Unchanged,
    /// Refused with this reason; the file is untouched.
    Refused(&'static str),
}

use Expect::*;

const fn patched(schema: Schema, cgroup: Option<bool>) -> Expect {
    Patched {
        schema,
        cgroup,
        splice: true,
    }
}

/// (file, where it comes from, expected outcome)
const CORPUS: &[(&str, &str, Expect)] = &[
    (
        "containerd-1.6-default.toml",
        "`containerd config default`, containerd 1.6.20 (generated here)",
        patched(Schema::V2, Some(false)),
    ),
    (
        "containerd-1.7-default.toml",
        "containerd 1.7 `config default` (1.6 plus NRI, transfer, CDI, sandbox_mode)",
        patched(Schema::V2, Some(false)),
    ),
    (
        "containerd-2.0-default.toml",
        "containerd 2.0 `config default`, schema 3, single quotes",
        patched(Schema::V3, Some(false)),
    ),
    (
        "containerd-2.4-default.toml",
        "`containerd config default`, containerd 2.4.2 built from its Go module (generated here), schema 4",
        patched(Schema::V4, Some(false)),
    ),
    (
        "kind-node.toml",
        "kind node image /etc/containerd/config.toml (test-handler, parent table after children)",
        patched(Schema::V2, Some(true)),
    ),
    (
        "k3s-rendered-config.toml",
        "k3s rendered config.toml (containerd 1.7, crun detected)",
        patched(Schema::V2, Some(true)),
    ),
    (
        "k3s-containerd2-rendered-config.toml",
        "k3s rendered config.toml on containerd 2 (schema 3)",
        patched(Schema::V3, Some(false)),
    ),
    (
        "rke2-rendered-config.toml",
        "rke2 rendered config.toml (quoted \"nvidia\" runtime)",
        patched(Schema::V2, Some(true)),
    ),
    (
        "microk8s-containerd-template.toml",
        "microk8s args/containerd-template.toml (${VAR} placeholders)",
        patched(Schema::V2, None),
    ),
    (
        "k0s-containerd.toml",
        "k0s /etc/k0s/containerd.toml placeholder (imports, tab indent)",
        patched(Schema::V2, None),
    ),
    (
        "eks-al2-config.toml",
        "EKS AL2 AMI /etc/containerd/config.toml (no indentation)",
        patched(Schema::V2, Some(true)),
    ),
    (
        "gke-cos-config.toml",
        "GKE COS /etc/containerd/config.toml (gvisor runtime, mirrors)",
        patched(Schema::V2, Some(true)),
    ),
    (
        "nvidia-default-runtime.toml",
        "nvidia-ctk configured node: default runtime nvidia (cgroup follows it, not runc)",
        patched(Schema::V2, Some(true)),
    ),
    (
        "dotted-keys.toml",
        "hand-written: dotted keys under one header",
        patched(Schema::V2, Some(true)),
    ),
    (
        "root-dotted-keys.toml",
        "hand-written: dotted keys at the root, no headers",
        patched(Schema::V2, None),
    ),
    (
        "inline-tables.toml",
        "hand-written: `runtimes = { ... }` inline table",
        Patched {
            schema: Schema::V2,
            cgroup: Some(true),
            splice: false,
        },
    ),
    (
        "inline-runtime-entries.toml",
        "hand-written: runtimes header, inline entries",
        patched(Schema::V2, Some(true)),
    ),
    (
        "comments-and-quoting.toml",
        "hand-written: comments everywhere, literal quotes, spaced headers, multi-line arrays",
        patched(Schema::V2, Some(true)),
    ),
    (
        "crlf-line-endings.toml",
        "hand-written: CRLF line endings",
        patched(Schema::V2, None),
    ),
    (
        "no-final-newline.toml",
        "hand-written: no newline at end of file",
        patched(Schema::V2, None),
    ),
    (
        "version-only.toml",
        "minimal: `version = 2`",
        patched(Schema::V2, None),
    ),
    (
        "empty.toml",
        "empty file (gets `version = 2`)",
        patched(Schema::V2, None),
    ),
    (
        "comments-only.toml",
        "only comments (gets `version = 2`)",
        patched(Schema::V2, None),
    ),
    (
        "already-installed.toml",
        "our runtime already present and current",
        Unchanged,
    ),
    (
        "stale-install.toml",
        "our runtime with an old shim path and no cgroup option",
        Updated { cgroup: Some(true) },
    ),
    (
        "schema-v1.toml",
        "containerd 1.3-era `[plugins.cri]`, no version key",
        Refused("SchemaV1"),
    ),
    (
        "schema-v1-explicit.toml",
        "`version = 1`",
        Refused("SchemaV1"),
    ),
    (
        "schema-unknown-version.toml",
        "`version = 5` (hand-written: a schema no containerd has)",
        Refused("UnsupportedVersion"),
    ),
    (
        "broken-syntax.toml",
        "unterminated string",
        Refused("ParseError"),
    ),
    (
        "duplicate-table.toml",
        "the same table defined twice",
        Refused("ParseError"),
    ),
    (
        "plugins-not-a-table.toml",
        "`plugins = \"none\"`",
        Refused("NotATable"),
    ),
    (
        "foreign-wasmkube-runtime.toml",
        "a runtime named wasmkube that is not ours",
        Refused("ForeignRuntime"),
    ),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(corpus_dir().join(name)).expect("corpus file")
}

/// Whether `new` is `old` with one block inserted somewhere.
fn single_insertion(old: &str, new: &str) -> bool {
    let (o, n) = (old.as_bytes(), new.as_bytes());
    let p = o.iter().zip(n).take_while(|(a, b)| a == b).count();
    n.len() >= o.len() && n.ends_with(&o[p..])
}

#[test]
fn every_corpus_file_is_listed() {
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    files.sort();
    let mut listed: Vec<String> = CORPUS.iter().map(|(f, _, _)| f.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
}

#[test]
fn corpus_outcomes_of_the_patcher() {
    println!("| file | source | outcome |\n|---|---|---|");
    for (file, source, expect) in CORPUS {
        let text = read(file);
        let result = config_patch::install(&text, SHIM_PATH, Schema::V2);
        let outcome = match (*expect, &result) {
            (
                Patched {
                    schema,
                    cgroup,
                    splice,
                },
                Ok(p),
            ) => {
                assert!(p.changed, "{file}: not changed");
                assert_eq!(p.schema, schema, "{file}");
                let a = config_patch::analyze(&p.text).expect("re-parses");
                assert_eq!(
                    a.entry,
                    Some(RuntimeEntry::ours(SHIM_PATH, cgroup)),
                    "{file}:\n{}",
                    p.text
                );
                if splice {
                    assert!(
                        single_insertion(&text, &p.text),
                        "{file}: more than one block changed:\n{}",
                        p.text
                    );
                }
                let again = config_patch::install(&p.text, SHIM_PATH, Schema::V2).expect("again");
                assert!(!again.changed, "{file}: second install changed it");
                let back = config_patch::uninstall(&p.text).expect("uninstall");
                let added_version = a.schema.is_some()
                    && config_patch::analyze(&text).expect("orig").schema.is_none();
                if splice && !added_version {
                    assert_eq!(
                        back.text, text,
                        "{file}: uninstall is not the exact inverse"
                    );
                } else {
                    assert_eq!(
                        config_patch::analyze(&back.text).expect("parses").entry,
                        None,
                        "{file}"
                    );
                }
                format!(
                    "patched (schema {}, SystemdCgroup {}, {})",
                    schema.version(),
                    cgroup.map_or("unset".to_string(), |b| b.to_string()),
                    if added_version {
                        "`version` line added"
                    } else if splice {
                        "one block inserted, uninstall restores every byte"
                    } else {
                        "edited through the TOML model"
                    }
                )
            }
            (Updated { cgroup }, Ok(p)) => {
                assert!(p.changed, "{file}");
                let a = config_patch::analyze(&p.text).expect("re-parses");
                assert_eq!(
                    a.entry,
                    Some(RuntimeEntry::ours(SHIM_PATH, cgroup)),
                    "{file}:\n{}",
                    p.text
                );
                assert_eq!(
                    p.text.matches("runtimes.wasmkube]").count(),
                    1,
                    "{file}:\n{}",
                    p.text
                );
                "stale entry replaced".to_string()
            }
            (Unchanged, Ok(p)) => {
                assert!(!p.changed, "{file}");
                assert_eq!(p.text, text);
                "unchanged (no byte written)".to_string()
            }
            (Refused(reason), Err(e)) => {
                assert_eq!(e.reason(), reason, "{file}: {e}");
                format!("refused: {reason} — {e}")
            }
            (expect, got) => panic!("{file}: expected {expect:?}, got {got:?}"),
        };
        println!("| `{file}` | {source} | {outcome} |");
    }
}

fn host_with(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (p, text) in files {
        let path = on_host(dir.path(), Path::new(p));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    let shim = dir.path().join("shim-src");
    std::fs::write(&shim, "#!/bin/sh\necho 'Version: 0.0.1-test'\n").expect("shim");
    let mut perms = std::fs::metadata(&shim).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&shim, perms).expect("chmod");
    (dir, shim)
}

fn options(host: &Path, shim: &Path) -> Options {
    let mut o = Options::for_host_root(host);
    o.shim = Some(shim.to_path_buf());
    o
}

/// Install → install → uninstall through the whole installer (no daemon: --restart none,
/// --skip-verify), for a managed file at `config` seeded with `original` (or absent).
fn node_roundtrip(
    extra: &[(&str, &str)],
    config: &str,
    original: Option<&str>,
    flavour: Flavour,
) -> String {
    let mut files: Vec<(&str, &str)> = extra.to_vec();
    if let Some(o) = original {
        files.push((config, o));
    }
    let (host, shim) = host_with(&files);
    let o = options(host.path(), &shim);
    let path = on_host(host.path(), Path::new(config));
    let r = install::install(&o);
    assert_eq!(r.state, State::Installed, "{r:?}");
    assert_eq!(r.flavour, Some(flavour));
    assert_eq!(r.config_path.as_deref(), Some(config));
    assert_eq!(r.shim_version.as_deref(), Some("0.0.1-test"));
    let installed = std::fs::read_to_string(&path).expect("installed config");
    assert!(on_host(host.path(), Path::new(SHIM_PATH)).is_file());
    let r2 = install::install(&o);
    assert_eq!(r2.state, State::Unchanged, "{r2:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("config"), installed);
    let u = run(Verb::Uninstall, &o);
    assert_eq!(u.state, State::Uninstalled, "{u:?}");
    match original {
        Some(orig) => assert_eq!(std::fs::read_to_string(&path).expect("config"), orig),
        None => assert!(!path.exists(), "{} left behind", path.display()),
    }
    assert!(!on_host(host.path(), Path::new("/opt/wasmkube")).exists());
    assert_eq!(atomic_write::read_backup(&path).expect("backup"), None);
    installed
}

#[test]
fn whole_installer_roundtrip_restores_every_patchable_corpus_file() {
    for (file, _, expect) in CORPUS {
        if matches!(expect, Patched { .. }) {
            let text = read(file);
            node_roundtrip(
                &[],
                "/etc/containerd/config.toml",
                Some(&text),
                Flavour::Containerd,
            );
        }
    }
}

#[test]
fn missing_config_is_created_and_removed_again() {
    let installed = node_roundtrip(
        &[],
        "/etc/containerd/config.toml",
        None,
        Flavour::Containerd,
    );
    assert!(installed.starts_with("version = 2\n"), "{installed}");
}

#[test]
fn kind_is_patched_in_place() {
    node_roundtrip(
        &[("/kind/version", "v0.26.0")],
        "/etc/containerd/config.toml",
        Some(&read("kind-node.toml")),
        Flavour::Kind,
    );
}

#[test]
fn k3s_gets_a_template_on_base_and_its_rendered_file_is_never_written() {
    let rendered_path = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml";
    let rendered = read("k3s-rendered-config.toml");
    let (host, shim) = host_with(&[(rendered_path, &rendered)]);
    let o = options(host.path(), &shim);
    let r = install::install(&o);
    assert_eq!(r.state, State::Installed, "{r:?}");
    let tmpl = std::fs::read_to_string(on_host(
        host.path(),
        Path::new("/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl"),
    ))
    .expect("template");
    assert!(tmpl.contains("{{ template \"base\" . }}"), "{tmpl}");
    assert!(
        tmpl.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmkube]"),
        "{tmpl}"
    );
    assert!(
        tmpl.contains("options.SystemdCgroup = true"),
        "follows the rendered runc: {tmpl}"
    );
    assert!(
        !tmpl.contains("rancher/mirrored-pause"),
        "rendered config copied into the template"
    );
    assert_eq!(
        std::fs::read_to_string(on_host(host.path(), Path::new(rendered_path))).expect("rendered"),
        rendered
    );
    // Uninstall deletes the template we own.
    node_roundtrip(
        &[(rendered_path, &rendered)],
        "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
        None,
        Flavour::K3s,
    );
}

#[test]
fn k3s_on_containerd_2_uses_the_v3_template() {
    let rendered = read("k3s-containerd2-rendered-config.toml");
    let tmpl = node_roundtrip(
        &[(
            "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            &rendered,
        )],
        "/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl",
        None,
        Flavour::K3s,
    );
    assert!(
        tmpl.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmkube]"),
        "{tmpl}"
    );
}

#[test]
fn k3s_custom_template_is_extended_and_restored() {
    let rendered = read("k3s-rendered-config.toml");
    let custom = read("k3s-config.toml.tmpl");
    let tmpl = node_roundtrip(
        &[(
            "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            &rendered,
        )],
        "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
        Some(&custom),
        Flavour::K3s,
    );
    assert!(
        tmpl.starts_with(&custom) && tmpl.contains("# BEGIN wasmkube-node-installer"),
        "{tmpl}"
    );
}

#[test]
fn rke2_template() {
    node_roundtrip(
        &[(
            "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
            &read("rke2-rendered-config.toml"),
        )],
        "/var/lib/rancher/rke2/agent/etc/containerd/config.toml.tmpl",
        None,
        Flavour::Rke2,
    );
}

#[test]
fn microk8s_template_is_patched_in_place() {
    node_roundtrip(
        &[],
        "/var/snap/microk8s/current/args/containerd-template.toml",
        Some(&read("microk8s-containerd-template.toml")),
        Flavour::Microk8s,
    );
}

#[test]
fn k0s_gets_a_drop_in() {
    let dropin = node_roundtrip(
        &[("/etc/k0s/containerd.toml", &read("k0s-containerd.toml"))],
        "/etc/k0s/containerd.d/wasmkube.toml",
        None,
        Flavour::K0s,
    );
    assert!(dropin.contains("version = 2"), "{dropin}");
}

#[test]
fn refused_config_is_left_untouched_with_a_precise_report() {
    for (file, _, expect) in CORPUS {
        let Refused(reason) = expect else { continue };
        let text = read(file);
        let (host, shim) = host_with(&[("/etc/containerd/config.toml", &text)]);
        let r = install::install(&options(host.path(), &shim));
        assert_eq!(r.state, State::Failed, "{file}");
        assert_eq!(r.reason.as_deref(), Some(*reason), "{file}: {}", r.message);
        assert_eq!(r.exit_code(), 1);
        assert!(
            r.message.contains("/etc/containerd/config.toml"),
            "{}",
            r.message
        );
        assert_eq!(
            std::fs::read_to_string(host.path().join("etc/containerd/config.toml"))
                .expect("config"),
            text
        );
        assert!(
            !host.path().join("opt/wasmkube").exists(),
            "{file}: shim copied although refused"
        );
        assert_eq!(
            atomic_write::read_backup(&host.path().join("etc/containerd/config.toml"))
                .expect("backup"),
            None
        );
    }
}

#[test]
fn dry_run_changes_nothing() {
    let text = read("containerd-1.6-default.toml");
    let (host, shim) = host_with(&[("/etc/containerd/config.toml", &text)]);
    let mut o = options(host.path(), &shim);
    o.dry_run = true;
    let r = install::install(&o);
    assert_eq!(r.state, State::DryRun, "{r:?}");
    assert_eq!(r.exit_code(), 0);
    assert_eq!(
        std::fs::read_to_string(host.path().join("etc/containerd/config.toml")).expect("config"),
        text
    );
    assert!(!host.path().join("opt").exists());
    assert_eq!(
        std::fs::read_dir(host.path().join("etc/containerd"))
            .expect("ls")
            .count(),
        1
    );
}

#[test]
fn status_reports_each_stage() {
    let (host, shim) = host_with(&[("/etc/containerd/config.toml", "version = 2\n")]);
    let o = options(host.path(), &shim);
    assert_eq!(run(Verb::Status, &o).state, State::NotInstalled);
    install::install(&o);
    let s = run(Verb::Status, &o);
    assert_eq!(s.state, State::Installed, "{s:?}");
    assert!(s.shim_sha256.is_some());
    std::fs::remove_file(
        host.path()
            .join("opt/wasmkube/bin/containerd-shim-wasmkube-v1"),
    )
    .expect("rm");
    assert_eq!(run(Verb::Status, &o).state, State::Partial);
}
