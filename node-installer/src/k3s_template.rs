//! k3s and rke2: a `config.toml.tmpl` (or `config-v3.toml.tmpl`) built on k3s' own "base"
//! template plus our runtime table, so k3s keeps rendering everything else itself across
//! upgrades. The rendered `config.toml` is never copied or written.
//!
//! Our runtime table always sits between `# BEGIN/END wasmkube-node-installer` markers, and that
//! block is all we ever change: a template is the user's as soon as it exists. One we created
//! (it starts with [`OWNED_HEADER`]) is rewritten only where the block differs, and deleted on
//! uninstall only when it is still exactly what we wrote; one a person edited after install keeps
//! every edit and loses only the block (and our header). A template we did not write gets the
//! block appended, unless its TOML already defines a `wasmkube` runtime in any spelling.
use crate::config_patch::{self, RuntimeEntry, Schema, HANDLER};

/// First line of a template we created.
pub const OWNED_HEADER: &str =
    "# managed by wasmkube-node-installer: k3s' own containerd config (\"base\") plus the wasmkube runtime";
pub const BEGIN: &str = "# BEGIN wasmkube-node-installer";
pub const END: &str = "# END wasmkube-node-installer";
/// The line that renders k3s' own config.
const BASE: &str = "{{ template \"base\" . }}";

/// Why a template was not changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error(
        "the existing template already defines a `{HANDLER}` runtime outside our marked block; \
         refusing to add a second one"
    )]
    AlreadyDefined,
    #[error("our marked block in the template is unterminated (`{BEGIN}` without `{END}`)")]
    Unterminated,
    #[error(
        "the template was written by an older installer (no `{BEGIN}` markers) and edited since; \
         refusing to guess which part is ours: remove our runtime table or wrap it in the markers"
    )]
    EditedLegacy,
}

/// The whole template when we create it.
pub fn owned_template(schema: Schema, entry: &RuntimeEntry) -> String {
    format!("{OWNED_HEADER}\n{BASE}\n\n{}", block(schema, entry))
}

/// What an older installer wrote: the table without markers.
fn legacy_owned_prefix() -> String {
    format!("{OWNED_HEADER}\n{BASE}\n\n")
}

fn block(schema: Schema, entry: &RuntimeEntry) -> String {
    format!(
        "{BEGIN}\n{}{END}\n",
        config_patch::table_text(schema, entry)
    )
}

/// The block's byte range in `text`, including its final newline.
fn find_block(text: &str) -> Result<Option<std::ops::Range<usize>>, TemplateError> {
    let Some(start) = text.find(BEGIN) else {
        return Ok(None);
    };
    let Some(end) = text[start..].find(END) else {
        return Err(TemplateError::Unterminated);
    };
    let mut end = start + end + END.len();
    if text[end..].starts_with('\n') {
        end += 1;
    }
    Ok(Some(start..end))
}

/// The template that should exist given the current one (`None`: no file).
pub fn install(
    existing: Option<&str>,
    schema: Schema,
    entry: &RuntimeEntry,
) -> Result<String, TemplateError> {
    let Some(t) = existing else {
        return Ok(owned_template(schema, entry));
    };
    if let Some(r) = find_block(t)? {
        // Only the block is ours: the same bytes when it is already right.
        return Ok(format!(
            "{}{}{}",
            &t[..r.start],
            block(schema, entry),
            &t[r.end..]
        ));
    }
    if let Some(rest) = t.strip_prefix(&legacy_owned_prefix()) {
        // An older installer's own template: ours to convert while nobody has edited it.
        return if only_our_runtime(rest) {
            Ok(owned_template(schema, entry))
        } else {
            Err(TemplateError::EditedLegacy)
        };
    }
    if defines_runtime(t) {
        return Err(TemplateError::AlreadyDefined);
    }
    let sep = if t.is_empty() || t.ends_with("\n\n") {
        ""
    } else if t.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    Ok(format!("{t}{sep}{}", block(schema, entry)))
}

/// Whether the template carries our runtime.
pub fn is_installed(text: &str) -> bool {
    text.contains(BEGIN) || text.starts_with(&legacy_owned_prefix())
}

/// The template after uninstall: `None` deletes it. A template that is exactly what we created
/// is deleted by the caller (which knows what we wrote); here any other template keeps
/// everything but our block and our header.
pub fn uninstall(existing: &str) -> Result<Option<String>, TemplateError> {
    let Some(r) = find_block(existing)? else {
        if let Some(rest) = existing.strip_prefix(&legacy_owned_prefix()) {
            return if only_our_runtime(rest) {
                Ok(None)
            } else {
                Err(TemplateError::EditedLegacy)
            };
        }
        return Ok(Some(existing.to_string()));
    };
    let head = existing[..r.start].trim_end_matches('\n');
    let tail = &existing[r.end..];
    let head = if head.is_empty() {
        String::new()
    } else {
        format!("{head}\n")
    };
    let kept = format!("{head}{tail}");
    // Our header claims the file for us; what is left is the user's.
    let kept = match kept.strip_prefix(OWNED_HEADER) {
        Some(rest) => rest.strip_prefix('\n').unwrap_or(rest).to_string(),
        None => kept,
    };
    Ok(Some(kept))
}

/// The template's TOML, with Go template actions (`{{ ... }}` lines) blanked out so the rest
/// parses; `None` when it still does not parse.
fn toml_part(text: &str) -> Option<toml_edit::DocumentMut> {
    let toml: String = text
        .lines()
        .map(|l| if l.contains("{{") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    toml.parse().ok()
}

/// Whether the template's TOML defines a `wasmkube` runtime under any plugin's
/// `containerd.runtimes`, however its keys are written (tables, dotted or quoted keys, inline
/// tables). A template whose TOML cannot be parsed is checked line by line on its table headers
/// and dotted keys with quotes and blanks removed.
pub fn defines_runtime(text: &str) -> bool {
    match toml_part(text) {
        Some(doc) => doc
            .get("plugins")
            .and_then(toml_edit::Item::as_table_like)
            .is_some_and(|plugins| {
                plugins.iter().any(|(_, plugin)| {
                    plugin
                        .get("containerd")
                        .and_then(|c| c.get("runtimes"))
                        .and_then(|r| r.get(HANDLER))
                        .is_some()
                })
            }),
        None => text.lines().any(|l| {
            let code = l.split('#').next().unwrap_or("");
            let bare: String = code
                .chars()
                .filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
                .collect();
            bare.contains(&format!("runtimes.{HANDLER}]"))
                || bare.contains(&format!("runtimes.{HANDLER}."))
                || bare.contains(&format!("runtimes.{HANDLER}="))
        }),
    }
}

/// Whether `toml` holds nothing but a `wasmkube` runtime table (an older installer's part).
fn only_our_runtime(toml: &str) -> bool {
    let Some(doc) = toml_part(toml) else {
        return false;
    };
    let Some(plugins) = doc.get("plugins").and_then(toml_edit::Item::as_table_like) else {
        return false;
    };
    doc.len() == 1
        && plugins.len() == 1
        && plugins.iter().all(|(_, p)| {
            let c = p.get("containerd");
            let alone = p.as_table_like().is_some_and(|p| p.len() == 1);
            let r = c.and_then(|c| c.get("runtimes"));
            alone
                && c.and_then(toml_edit::Item::as_table_like)
                    .is_some_and(|c| c.len() == 1)
                && r.and_then(toml_edit::Item::as_table_like)
                    .is_some_and(|r| r.len() == 1)
                && r.and_then(|r| r.get(HANDLER))
                    .and_then(|h| h.get("runtime_type"))
                    .and_then(toml_edit::Item::as_str)
                    == Some(config_patch::RUNTIME_TYPE)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> RuntimeEntry {
        RuntimeEntry::ours("/opt/wasmkube/bin/containerd-shim-wasmkube-v1", Some(true))
    }

    #[test]
    fn owned_template_uses_base_and_parses_after_rendering() {
        for schema in [Schema::V2, Schema::V3] {
            let t = install(None, schema, &entry()).expect("install");
            assert!(t.contains("{{ template \"base\" . }}\n"), "{t}");
            assert!(t.contains(BEGIN) && t.ends_with(&format!("{END}\n")), "{t}");
            // What k3s renders: its base config, then our table.
            let base = format!(
                "version = {}\n[plugins.\"{}\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n",
                schema.version(),
                schema.runtimes_path()[1]
            );
            let rendered = t.replace("{{ template \"base\" . }}", &base);
            let a = config_patch::analyze(&rendered).expect("rendered parses");
            assert_eq!(a.entry, Some(entry()));
            assert_eq!(install(Some(&t), schema, &entry()).expect("again"), t);
        }
    }

    #[test]
    fn foreign_template_gets_a_marked_block_and_loses_it_again() {
        let custom = "{{ template \"base\" . }}\n\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";
        let t = install(Some(custom), Schema::V2, &entry()).expect("install");
        assert!(t.starts_with(custom) && t.contains(BEGIN) && t.ends_with(&format!("{END}\n")));
        assert_eq!(install(Some(&t), Schema::V2, &entry()).expect("again"), t);
        assert_eq!(uninstall(&t).expect("uninstall").as_deref(), Some(custom));
        let theirs = format!(
            "{custom}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmkube]\n"
        );
        assert_eq!(
            install(Some(&theirs), Schema::V2, &entry()),
            Err(TemplateError::AlreadyDefined)
        );
    }

    #[test]
    fn a_template_we_created_and_the_user_edited_keeps_every_edit() {
        let ours = install(None, Schema::V2, &entry()).expect("install");
        let edit = "\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";
        let edited = format!("{ours}{edit}");
        // A changed entry (cgroup off): only the block is rewritten, the edit stays.
        let other = RuntimeEntry::ours("/opt/wasmkube/bin/containerd-shim-wasmkube-v1", None);
        let updated = install(Some(&edited), Schema::V2, &other).expect("update");
        assert!(updated.ends_with(edit), "{updated}");
        assert!(!updated.contains("SystemdCgroup"), "{updated}");
        assert_eq!(
            install(Some(&updated), Schema::V2, &other).expect("again"),
            updated
        );
        // Uninstall: never deleted, never regenerated; the edit and k3s' base stay.
        let left = uninstall(&edited).expect("uninstall").expect("kept");
        assert_eq!(left, format!("{BASE}\n{edit}"));
        assert!(!is_installed(&left));
    }

    #[test]
    fn an_older_installers_template_is_converted_only_while_unedited() {
        let legacy = format!(
            "{}{}",
            legacy_owned_prefix(),
            config_patch::table_text(Schema::V2, &entry())
        );
        assert!(is_installed(&legacy));
        assert_eq!(
            install(Some(&legacy), Schema::V2, &entry()).expect("convert"),
            owned_template(Schema::V2, &entry())
        );
        assert_eq!(uninstall(&legacy).expect("uninstall"), None);
        let edited = format!("{legacy}\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n");
        assert_eq!(
            install(Some(&edited), Schema::V2, &entry()),
            Err(TemplateError::EditedLegacy)
        );
        assert_eq!(uninstall(&edited), Err(TemplateError::EditedLegacy));
    }

    #[test]
    fn already_defined_is_read_from_the_toml_in_any_spelling() {
        let base = "{{ template \"base\" . }}\n";
        let defined = [
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmkube]\n  runtime_type = \"x\"\n",
            "[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.\"wasmkube\"]\n",
            "[ plugins . \"io.containerd.grpc.v1.cri\" . containerd . runtimes . wasmkube ]\n",
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\n  wasmkube.runtime_type = \"x\"\n",
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes = { wasmkube = { runtime_type = \"x\" } }\n",
            "[plugins]\n  \"io.containerd.grpc.v1.cri\".containerd.runtimes.\"wasmkube\".runtime_type = \"x\"\n",
            "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmkube.options]\n  SystemdCgroup = true\n",
            // Not TOML after the template lines are blanked (a duplicate table): the header scan.
            "[plugins.a]\n[plugins.a]\n[plugins . \"io.containerd.grpc.v1.cri\".containerd.runtimes.\"wasmkube\"]\n",
        ];
        for t in defined {
            let t = format!("{base}{t}");
            assert!(defines_runtime(&t), "{t}");
            assert_eq!(
                install(Some(&t), Schema::V2, &entry()),
                Err(TemplateError::AlreadyDefined),
                "{t}"
            );
        }
        let not_defined = [
            "# we used to have [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmkube]\n",
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  note = \"runtimes.wasmkube]\"\n",
            "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmkube-old]\n",
            "{{ if .NodeConfig.AgentConfig.Snapshotter }}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"{{ .NodeConfig.AgentConfig.Snapshotter }}\"\n{{ end }}\n",
        ];
        for t in not_defined {
            let t = format!("{base}{t}");
            assert!(!defines_runtime(&t), "{t}");
            let installed = install(Some(&t), Schema::V2, &entry()).expect("installs");
            assert_eq!(
                uninstall(&installed).expect("uninstall").as_deref(),
                Some(t.as_str())
            );
        }
    }
}
