//! k3s and rke2: a `config.toml.tmpl` (or `config-v3.toml.tmpl`) built on k3s' own "base"
//! template plus our runtime table, so k3s keeps rendering everything else itself across
//! upgrades. The rendered `config.toml` is never copied or written.
//!
//! A template we did not write is extended with a marked block (`# BEGIN/END
//! wasmkube-node-installer`) and shrunk back on uninstall.
use crate::config_patch::{self, RuntimeEntry, Schema, HANDLER};

/// First line of a template we own.
pub const OWNED_HEADER: &str =
    "# managed by wasmkube-node-installer: k3s' own containerd config (\"base\") plus the wasmkube runtime";
pub const BEGIN: &str = "# BEGIN wasmkube-node-installer";
pub const END: &str = "# END wasmkube-node-installer";

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
}

/// The whole template when we own it.
pub fn owned_template(schema: Schema, entry: &RuntimeEntry) -> String {
    format!(
        "{OWNED_HEADER}\n{{{{ template \"base\" . }}}}\n\n{}",
        config_patch::table_text(schema, entry)
    )
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
    match existing {
        None => Ok(owned_template(schema, entry)),
        Some(t) if t.starts_with(OWNED_HEADER) => Ok(owned_template(schema, entry)),
        Some(t) => match find_block(t)? {
            Some(r) => Ok(format!(
                "{}{}{}",
                &t[..r.start],
                block(schema, entry),
                &t[r.end..]
            )),
            None if t.contains(&format!("runtimes.{HANDLER}]"))
                || t.contains(&format!("runtimes.\"{HANDLER}\"")) =>
            {
                Err(TemplateError::AlreadyDefined)
            }
            None => {
                let sep = if t.is_empty() || t.ends_with("\n\n") {
                    ""
                } else if t.ends_with('\n') {
                    "\n"
                } else {
                    "\n\n"
                };
                Ok(format!("{t}{sep}{}", block(schema, entry)))
            }
        },
    }
}

/// Whether the template carries our runtime.
pub fn is_installed(text: &str) -> bool {
    text.starts_with(OWNED_HEADER) || text.contains(BEGIN)
}

/// The template after uninstall: `None` deletes a template we own.
pub fn uninstall(existing: &str) -> Result<Option<String>, TemplateError> {
    if existing.starts_with(OWNED_HEADER) {
        return Ok(None);
    }
    match find_block(existing)? {
        None => Ok(Some(existing.to_string())),
        Some(r) => {
            let head = existing[..r.start].trim_end_matches('\n');
            let tail = &existing[r.end..];
            let head = if head.is_empty() {
                String::new()
            } else {
                format!("{head}\n")
            };
            Ok(Some(format!("{head}{tail}")))
        }
    }
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
            assert_eq!(uninstall(&t).expect("uninstall"), None);
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
}
