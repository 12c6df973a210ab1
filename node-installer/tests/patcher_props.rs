//! Property tests for the config patcher: install is idempotent, uninstall is its exact inverse,
//! and arbitrary (mostly broken) TOML-ish input never panics and never yields an unparsable
//! config — the `cargo fuzz` target's job, as a proptest so it runs in every `cargo test`.
use proptest::prelude::*;
use wasmkube_node_installer::config_patch::{self, RuntimeEntry, Schema};

const SHIM: &str = "/opt/wasmkube/bin/containerd-shim-wasmkube-v1";

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "\"[a-z/. -]{0,8}\"",
        "'[a-z/.]{0,6}'",
        "[0-9]{1,4}",
        Just("true".to_string()),
        Just("false".to_string()),
        Just("[]".to_string()),
        Just("[\n  \"a\", # c\n  'b',\n]".to_string()),
        Just("{ a = 1, b = \"x\" }".to_string()),
    ]
}

fn comment() -> impl Strategy<Value = String> {
    "# [a-zA-Z .\\[\\]=\"]{0,16}"
}

fn indent() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("  ".to_string()),
        Just("\t".to_string()),
        Just("    ".to_string())
    ]
}

/// Key/value lines, each possibly with a trailing comment, with comment lines between.
fn body() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (
            indent(),
            "[a-z][a-z0-9_]{0,6}",
            value(),
            prop::option::of(comment()),
            prop::option::of(comment()),
        ),
        0..4,
    )
    .prop_map(|kvs| {
        let mut seen = std::collections::HashSet::new();
        let mut lines = Vec::new();
        for (ind, k, v, trailing, above) in kvs {
            if !seen.insert(k.clone()) || k == "runtimes" || k == "version" {
                continue;
            }
            if let Some(c) = above {
                lines.push(format!("{ind}{c}"));
            }
            lines.push(match trailing {
                Some(c) => format!("{ind}{k} = {v} {c}"),
                None => format!("{ind}{k} = {v}"),
            });
        }
        lines
    })
}

/// How the default runtime is written.
#[derive(Clone, Debug)]
enum RuncStyle {
    Headers { options: Option<bool> },
    Dotted { options: Option<bool> },
    InlineEntry,
}

fn runc_style() -> impl Strategy<Value = RuncStyle> {
    prop_oneof![
        prop::option::of(any::<bool>()).prop_map(|options| RuncStyle::Headers { options }),
        prop::option::of(any::<bool>()).prop_map(|options| RuncStyle::Dotted { options }),
        Just(RuncStyle::InlineEntry),
    ]
}

/// A realistic config: version, root keys, unrelated tables, and (maybe) the CRI runtimes in
/// one of several styles, in any order, with comments and odd spacing.
fn config() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(2i64), Just(3i64)],
        body(),
        prop::collection::vec(body(), 0..4),
        prop::option::of((runc_style(), body(), 0usize..5)),
        any::<bool>(),
        prop::option::of(comment()),
        any::<bool>(),
    )
        .prop_map(
            |(version, root, tables, runc, final_newline, top_comment, crlf)| {
                let plugin = if version == 2 {
                    "\"io.containerd.grpc.v1.cri\""
                } else {
                    "'io.containerd.cri.v1.runtime'"
                };
                let mut sections: Vec<Vec<String>> = tables
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let mut s =
                            vec![String::new(), format!("[plugins.\"io.example.v1.p{i}\"]")];
                        s.extend(b);
                        s
                    })
                    .collect();
                if let Some((style, extra, at)) = runc {
                    let base = format!("plugins.{plugin}.containerd");
                    let mut s = vec![String::new()];
                    match style {
                        RuncStyle::Headers { options } => {
                            s.push(format!("[{base}.runtimes.runc]"));
                            s.push("  runtime_type = \"io.containerd.runc.v2\"".into());
                            s.extend(extra);
                            if let Some(b) = options {
                                s.push(format!("  [{base}.runtimes.runc.options]"));
                                s.push(format!("    SystemdCgroup = {b}"));
                            }
                        }
                        RuncStyle::Dotted { options } => {
                            s.push(format!("[{base}]"));
                            s.extend(extra);
                            s.push("runtimes.runc.runtime_type = \"io.containerd.runc.v2\"".into());
                            if let Some(b) = options {
                                s.push(format!(
                                    "runtimes.runc.options.SystemdCgroup = {b} # driver"
                                ));
                            }
                        }
                        RuncStyle::InlineEntry => {
                            s.push(format!("[{base}.runtimes]"));
                            s.push("runc = { runtime_type = \"io.containerd.runc.v2\" }".into());
                        }
                    }
                    let at = at.min(sections.len());
                    sections.insert(at, s);
                }
                let mut lines = Vec::new();
                if let Some(c) = top_comment {
                    lines.push(c);
                }
                lines.push(format!("version = {version}"));
                lines.extend(root);
                for s in sections {
                    lines.extend(s);
                }
                let nl = if crlf { "\r\n" } else { "\n" };
                let mut text = lines.join(nl);
                if final_newline {
                    text.push_str(nl);
                }
                text
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn install_is_idempotent_and_uninstall_restores_every_byte(text in config()) {
        prop_assume!(toml_edit::DocumentMut::from_str_checked(&text));
        let first = config_patch::install(&text, SHIM, Schema::V2).expect("install");
        prop_assert!(first.changed);
        let a = config_patch::analyze(&first.text).expect("result parses");
        prop_assert_eq!(a.entry.as_ref().map(|e| e.runtime_type.as_str()), Some("io.containerd.wasmkube.v1"));
        let second = config_patch::install(&first.text, SHIM, Schema::V2).expect("install again");
        prop_assert!(!second.changed, "second install changed:\n{}", first.text);
        prop_assert_eq!(&second.text, &first.text);
        let back = config_patch::uninstall(&first.text).expect("uninstall");
        prop_assert_eq!(&back.text, &text, "patched was:\n{}", first.text);
    }

    #[test]
    fn systemd_cgroup_follows_the_default_runtime(text in config()) {
        prop_assume!(toml_edit::DocumentMut::from_str_checked(&text));
        let before = config_patch::analyze(&text).expect("parses");
        let p = config_patch::install(&text, SHIM, Schema::V2).expect("install");
        let after = config_patch::analyze(&p.text).expect("parses");
        prop_assert_eq!(after.entry, Some(RuntimeEntry::ours(SHIM, before.systemd_cgroup)));
    }

    #[test]
    fn arbitrary_input_never_panics_nor_writes_an_unparsable_config(
        text in prop_oneof![
            "[\\[\\]\"'=.#\n\r\t a-z0-9{},_-]{0,200}",
            config().prop_flat_map(|c| {
                let len = c.len();
                (Just(c), 0..=len, 0..=len, "[\\[\\]\"'=.#\n a-z0-9{},]{0,6}")
            }).prop_map(|(c, a, b, ins)| {
                let (a, b) = (a.min(b), a.max(b).min(a + 8));
                let (a, b) = (floor(&c, a), floor(&c, b));
                format!("{}{}{}", &c[..a], ins, &c[b..])
            }),
        ]
    ) {
        for schema in [Schema::V2, Schema::V3] {
            if let Ok(p) = config_patch::install(&text, SHIM, schema) {
                let a = config_patch::analyze(&p.text);
                prop_assert!(a.is_ok(), "install produced an unparsable config from {text:?}:\n{}", p.text);
                prop_assert!(a.expect("checked").entry.is_some());
                let u = config_patch::uninstall(&p.text);
                prop_assert!(u.is_ok(), "{u:?}");
                prop_assert!(config_patch::analyze(&u.expect("checked").text).is_ok());
            }
        }
        if let Ok(u) = config_patch::uninstall(&text) {
            prop_assert!(config_patch::analyze(&u.text).is_ok());
        }
    }
}

fn floor(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

trait Checked {
    fn from_str_checked(s: &str) -> bool;
}

impl Checked for toml_edit::DocumentMut {
    fn from_str_checked(s: &str) -> bool {
        s.parse::<toml_edit::DocumentMut>().is_ok()
    }
}
