//! Format-preserving patch of a containerd config file: add or remove the `wasmkube` runtime.
//!
//! The file is parsed with `toml_edit` to understand it; the change itself is a text splice at a
//! table boundary, so every byte outside our runtime entry stays as it was (comments, ordering,
//! quoting, dotted keys, inline tables, blank lines). Only when the runtimes table is written as an
//! inline table (which cannot be extended by a header) is the document edited through
//! `toml_edit`'s model instead. Every result is re-parsed and checked before it is returned: our
//! entry holds exactly what we meant, and everything else is semantically unchanged.
//!
//! Schema handling:
//! - `version = 2` (containerd 1.x, also read by 2.x): `plugins."io.containerd.grpc.v1.cri"`.
//! - `version = 3` (containerd 2.x): `plugins."io.containerd.cri.v1.runtime"`.
//! - an empty file (only comments or whitespace) gets a `version` line and our table.
//! - schema version 1 (`version = 1`, or no `version` key in a non-empty file) is refused with
//!   [`PatchError::SchemaV1`]: its plugin names differ and containerd 2.x rewrites it on start.
use std::ops::Range;

use toml_edit::{Document, DocumentMut, InlineTable, Item, Key, Table, TableLike, Value};

/// The CRI runtime handler (and RuntimeClass) name.
pub const HANDLER: &str = wasmkube_contract::names::RUNTIME_HANDLER;
/// containerd's runtime type for the shim `containerd-shim-wasmkube-v1`.
pub const RUNTIME_TYPE: &str = wasmkube_contract::names::RUNTIME_TYPE;
/// The CRI plugin holding runtimes in schema version 2.
pub const V2_PLUGIN: &str = "io.containerd.grpc.v1.cri";
/// The CRI runtime plugin holding runtimes in schema version 3.
pub const V3_PLUGIN: &str = "io.containerd.cri.v1.runtime";
/// Trailing comment on our table header, so a human reading the file knows who wrote it.
pub const MARKER: &str = "# managed by wasmkube-node-installer";

/// The config schema version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Schema {
    /// `version = 2`: containerd 1.x (and 2.x, which migrates it).
    V2,
    /// `version = 3`: containerd 2.0–2.2.
    V3,
    /// `version = 4`: containerd 2.3+ (`containerd config default` of 2.4 writes it). The CRI
    /// runtimes live where version 3 has them; version 4 only moved plugins we do not touch
    /// (the shim manager's `sched_core`, the cgroups task monitor).
    V4,
}

impl Schema {
    /// The `version = N` number.
    pub fn version(self) -> i64 {
        match self {
            Schema::V2 => 2,
            Schema::V3 => 3,
            Schema::V4 => 4,
        }
    }

    /// Key path of the CRI runtimes table.
    pub fn runtimes_path(self) -> [&'static str; 4] {
        match self {
            Schema::V2 => ["plugins", V2_PLUGIN, "containerd", "runtimes"],
            Schema::V3 | Schema::V4 => ["plugins", V3_PLUGIN, "containerd", "runtimes"],
        }
    }

    /// Dotted path of our runtime table, as written in a header.
    pub fn table_name(self) -> String {
        format!("{}{HANDLER}", self.canonical_prefix())
    }

    /// How a header for a child of the runtimes table starts, in containerd's own style.
    fn canonical_prefix(self) -> &'static str {
        match self {
            Schema::V2 => "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.",
            Schema::V3 | Schema::V4 => {
                "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes."
            }
        }
    }

    /// The schema a containerd of this major version writes by default.
    pub fn for_containerd_major(major: Option<u32>) -> Schema {
        match major {
            Some(m) if m >= 2 => Schema::V3,
            _ => Schema::V2,
        }
    }
}

/// Our runtime entry, as found in or written to a config.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeEntry {
    pub runtime_type: String,
    /// `runtime_path`: the shim binary as containerd sees it. Empty when absent.
    pub runtime_path: String,
    /// `options.SystemdCgroup`, copied from the default runtime when it sets it.
    pub systemd_cgroup: Option<bool>,
}

impl RuntimeEntry {
    /// The entry we write for a shim at `runtime_path`, given the default runtime's
    /// `SystemdCgroup`.
    ///
    /// Only `SystemdCgroup = true` is carried over; false (the shim's default) is left out.
    /// containerd 1.6 hands a non-runc shim an *empty* options body whenever the runtime has an
    /// `options` table (1.7+ passes the table's TOML), and runwasi's shim library refuses an
    /// empty body ("invalid shim options: missing field `systemd_cgroup`"), so every wasm pod
    /// sandbox would fail on such a node. Seen on the local cluster with containerd 1.6.20.
    pub fn ours(runtime_path: &str, systemd_cgroup: Option<bool>) -> Self {
        RuntimeEntry {
            runtime_type: RUNTIME_TYPE.into(),
            runtime_path: runtime_path.into(),
            systemd_cgroup: systemd_cgroup.filter(|on| *on),
        }
    }
}

/// Why a config was not patched. The file is never written in these cases.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("config is not valid TOML at line {line}, column {column}: {message}")]
    Parse {
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "config uses containerd schema version 1 ({reason}); its plugin names differ and \
         containerd 2.x migrates it on every start. Migrate it to `version = 2` (containerd 1.x) \
         or run `containerd config migrate` (2.x) first; refusing to patch"
    )]
    SchemaV1 { reason: String },
    #[error("config declares `version = {0}`; only schema versions 2, 3 and 4 are understood")]
    UnsupportedVersion(String),
    #[error("`{path}` is {found}, not a table; refusing to patch")]
    NotATable { path: String, found: &'static str },
    #[error(
        "a runtime named `{HANDLER}` already exists with runtime_type {found:?}, not \
         {RUNTIME_TYPE:?}; refusing to overwrite someone else's runtime"
    )]
    ForeignRuntime { found: String },
    #[error("self-check of the patched config failed ({0}); nothing was written")]
    SelfCheck(String),
}

impl PatchError {
    /// A short stable name for the refusal, for reports and tests.
    pub fn reason(&self) -> &'static str {
        match self {
            PatchError::Parse { .. } => wasmkube_contract::installer::reasons::PARSE_ERROR,
            PatchError::SchemaV1 { .. } => wasmkube_contract::installer::reasons::SCHEMA_V1,
            PatchError::UnsupportedVersion(_) => {
                wasmkube_contract::installer::reasons::UNSUPPORTED_VERSION
            }
            PatchError::NotATable { .. } => wasmkube_contract::installer::reasons::NOT_A_TABLE,
            PatchError::ForeignRuntime { .. } => {
                wasmkube_contract::installer::reasons::FOREIGN_RUNTIME
            }
            PatchError::SelfCheck(_) => wasmkube_contract::installer::reasons::SELF_CHECK,
        }
    }
}

/// What a config says about our runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// `None` for an empty document (no keys at all).
    pub schema: Option<Schema>,
    /// Our runtime entry as present now.
    pub entry: Option<RuntimeEntry>,
    /// `default_runtime_name` (or `runc`).
    pub default_runtime: String,
    /// The default runtime's `options.SystemdCgroup`, when set.
    pub systemd_cgroup: Option<bool>,
}

/// The result of [`install`] or [`uninstall`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patched {
    pub text: String,
    pub changed: bool,
    pub schema: Schema,
}

/// Parses `text` and reports its schema and our entry.
pub fn analyze(text: &str) -> Result<Analysis, PatchError> {
    let doc = parse(text)?;
    analyze_doc(&doc)
}

fn parse(text: &str) -> Result<Document<&str>, PatchError> {
    Document::parse(text).map_err(|e| {
        let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
        let before = text.get(..at).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        PatchError::Parse {
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

fn schema_of(doc: &Table) -> Result<Option<Schema>, PatchError> {
    match doc.get("version") {
        None if doc.is_empty() => Ok(None),
        None => Err(PatchError::SchemaV1 {
            reason: "no `version` key in a non-empty file".into(),
        }),
        Some(item) => match item.as_integer() {
            Some(1) => Err(PatchError::SchemaV1 {
                reason: "`version = 1`".into(),
            }),
            Some(2) => Ok(Some(Schema::V2)),
            Some(3) => Ok(Some(Schema::V3)),
            Some(4) => Ok(Some(Schema::V4)),
            _ => Err(PatchError::UnsupportedVersion(item.as_value().map_or_else(
                || "a table".into(),
                |v| v.to_string().trim().to_string(),
            ))),
        },
    }
}

fn analyze_doc(doc: &Document<&str>) -> Result<Analysis, PatchError> {
    let root = doc.as_table();
    let schema = schema_of(root)?;
    let Some(schema) = schema else {
        return Ok(Analysis {
            schema: None,
            entry: None,
            default_runtime: "runc".into(),
            systemd_cgroup: None,
        });
    };
    let path = schema.runtimes_path();
    let containerd = lookup(root, &path[..3])?;
    let default_runtime = containerd
        .and_then(|t| t.get("default_runtime_name"))
        .and_then(Item::as_str)
        .unwrap_or("runc")
        .to_string();
    let runtimes = lookup(root, &path)?;
    let systemd_cgroup = runtimes
        .and_then(|r| r.get(&default_runtime))
        .and_then(Item::as_table_like)
        .and_then(|t| t.get("options"))
        .and_then(Item::as_table_like)
        .and_then(|o| o.get("SystemdCgroup"))
        .and_then(Item::as_bool);
    let entry = match runtimes.and_then(|r| r.get(HANDLER)) {
        None => None,
        Some(item) => {
            let t = item.as_table_like().ok_or_else(|| PatchError::NotATable {
                path: schema.table_name(),
                found: kind(item),
            })?;
            let s = |k: &str| t.get(k).and_then(Item::as_str).unwrap_or("").to_string();
            Some(RuntimeEntry {
                runtime_type: s("runtime_type"),
                runtime_path: s("runtime_path"),
                systemd_cgroup: t
                    .get("options")
                    .and_then(Item::as_table_like)
                    .and_then(|o| o.get("SystemdCgroup"))
                    .and_then(Item::as_bool),
            })
        }
    };
    Ok(Analysis {
        schema: Some(schema),
        entry,
        default_runtime,
        systemd_cgroup,
    })
}

fn kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(Value::String(_)) => "a string",
        Item::Value(Value::Integer(_)) => "an integer",
        Item::Value(Value::Float(_)) => "a float",
        Item::Value(Value::Boolean(_)) => "a boolean",
        Item::Value(Value::Datetime(_)) => "a datetime",
        Item::Value(Value::Array(_)) => "an array",
        Item::Value(Value::InlineTable(_)) => "an inline table",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

/// The table-like at `path`, `None` when some part is missing, `Err` when a part is not a table.
fn lookup<'a>(root: &'a Table, path: &[&str]) -> Result<Option<&'a dyn TableLike>, PatchError> {
    let mut cur: &dyn TableLike = root;
    for (i, k) in path.iter().enumerate() {
        match cur.get(k) {
            None => return Ok(None),
            Some(item) => {
                cur = item.as_table_like().ok_or_else(|| PatchError::NotATable {
                    path: dotted_name(&path[..=i]),
                    found: kind(item),
                })?;
            }
        }
    }
    Ok(Some(cur))
}

/// Installs our runtime entry for a shim at `runtime_path`. An empty document gets
/// `version = N` for `empty_schema`. Returns the text unchanged (`changed: false`) when the entry
/// is already exactly right.
pub fn install(
    text: &str,
    runtime_path: &str,
    empty_schema: Schema,
) -> Result<Patched, PatchError> {
    let doc = parse(text)?;
    let analysis = analyze_doc(&doc)?;
    let schema = analysis.schema.unwrap_or(empty_schema);
    let want = RuntimeEntry::ours(runtime_path, analysis.systemd_cgroup);
    let base: String = match &analysis.entry {
        Some(e) if e.runtime_type != RUNTIME_TYPE => {
            return Err(PatchError::ForeignRuntime {
                found: e.runtime_type.clone(),
            })
        }
        Some(e) if *e == want => {
            return Ok(Patched {
                text: text.to_string(),
                changed: false,
                schema,
            })
        }
        // Ours, but stale (other path or cgroup setting): take it out, then add it afresh.
        Some(_) => remove_entry(text, &doc, schema)?,
        None => text.to_string(),
    };
    let new = if analysis.schema.is_none() {
        add_to_empty(&base, schema, &want)
    } else {
        let base_doc = parse(&base)?;
        insert_entry(&base, &base_doc, schema, &want)?
    };
    check_install(text, &new, schema, &want, analysis.schema.is_none())?;
    Ok(Patched {
        changed: new != text,
        text: new,
        schema,
    })
}

/// Removes our runtime entry (only it). `changed: false` when there is none.
pub fn uninstall(text: &str) -> Result<Patched, PatchError> {
    let doc = parse(text)?;
    let analysis = analyze_doc(&doc)?;
    let Some(schema) = analysis.schema else {
        return Ok(Patched {
            text: text.to_string(),
            changed: false,
            schema: Schema::V2,
        });
    };
    match &analysis.entry {
        None => Ok(Patched {
            text: text.to_string(),
            changed: false,
            schema,
        }),
        Some(e) if e.runtime_type != RUNTIME_TYPE => Err(PatchError::ForeignRuntime {
            found: e.runtime_type.clone(),
        }),
        Some(_) => {
            let new = remove_entry(text, &doc, schema)?;
            check_uninstall(text, &new, schema)?;
            Ok(Patched {
                changed: new != text,
                text: new,
                schema,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Text positions

/// Offset just past the end of the line holding `pos` (past its `\n`), or the end of the text.
fn line_end(text: &str, pos: usize) -> usize {
    text.get(pos..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |i| pos + i + 1)
}

fn line_start(text: &str, pos: usize) -> usize {
    text.get(..pos)
        .and_then(|before| before.rfind('\n'))
        .map_or(0, |i| i + 1)
}

/// Leading whitespace of the line holding `pos`.
fn indent_at(text: &str, pos: usize) -> String {
    let start = line_start(text, pos);
    text.get(start..)
        .unwrap_or("")
        .chars()
        .take_while(|c| *c == ' ' || *c == '\t')
        .collect()
}

/// End offset of a header table's own content: its header and every key/value it holds,
/// including dotted sub-tables (but not sub-tables with their own headers).
fn content_end(t: &Table) -> usize {
    let mut end = t.span().map_or(0, |s| s.end);
    for (_, v) in t.get_values() {
        if let Some(s) = v.span() {
            end = end.max(s.end);
        }
    }
    end
}

/// Every table written with its own `[header]` (or `[[header]]`) at or below `item`.
fn header_tables<'a>(item: &'a Item, out: &mut Vec<&'a Table>) {
    match item {
        Item::Table(t) => {
            if !t.is_implicit() && !t.is_dotted() {
                out.push(t);
            }
            for (_, child) in t.iter() {
                header_tables(child, out);
            }
        }
        Item::ArrayOfTables(a) => {
            for t in a.iter() {
                out.push(t);
                for (_, child) in t.iter() {
                    header_tables(child, out);
                }
            }
        }
        Item::Value(_) | Item::None => {}
    }
}

/// How a table on our path is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `[header]` (the root counts as one).
    Header,
    /// Exists only because a deeper table has a header.
    Implicit,
    /// Created by dotted keys inside the nearest header table.
    Dotted,
    /// An inline table `{ ... }`, or inside one.
    Inline,
}

/// A walk from the root towards `path`: the items that exist, each with its form.
struct Walk<'a> {
    nodes: Vec<(&'a Item, Form)>,
}

impl<'a> Walk<'a> {
    fn new(doc: &'a Document<&str>, path: &[&str]) -> Result<Self, PatchError> {
        let mut nodes = vec![(doc.as_item(), Form::Header)];
        let mut inline = false;
        for (i, k) in path.iter().enumerate() {
            let (parent, _) = nodes[nodes.len() - 1];
            let Some(parent) = parent.as_table_like() else {
                break;
            };
            let Some(item) = parent.get(k) else { break };
            let form = match item {
                _ if inline => Form::Inline,
                Item::Table(t) if t.is_dotted() => Form::Dotted,
                Item::Table(t) if t.is_implicit() => Form::Implicit,
                Item::Table(_) => Form::Header,
                Item::Value(Value::InlineTable(_)) => {
                    inline = true;
                    Form::Inline
                }
                other => {
                    return Err(PatchError::NotATable {
                        path: dotted_name(&path[..=i]),
                        found: kind(other),
                    })
                }
            };
            nodes.push((item, form));
        }
        Ok(Walk { nodes })
    }

    /// Index of the nearest node written with a header (the root at worst), at or above `i`.
    fn header_at_or_above(&self, i: usize) -> usize {
        (0..=i)
            .rev()
            .find(|j| self.nodes[*j].1 == Form::Header)
            .unwrap_or(0)
    }

    fn any_inline(&self) -> bool {
        self.nodes.iter().any(|(_, f)| *f == Form::Inline)
    }
}

/// A key as containerd's own configs write it: bare when possible, else double-quoted.
fn key_repr(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        Key::new(k).display_repr().into_owned()
    }
}

fn dotted_name(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| key_repr(k))
        .collect::<Vec<_>>()
        .join(".")
}

fn toml_str(s: &str) -> String {
    Value::from(s).to_string().trim().to_string()
}

/// The key/value lines of our entry, relative to `prefix` (`""` inside our own table).
fn entry_lines(prefix: &str, e: &RuntimeEntry) -> Vec<String> {
    let mut lines = vec![
        format!("{prefix}runtime_type = {}", toml_str(&e.runtime_type)),
        format!("{prefix}runtime_path = {}", toml_str(&e.runtime_path)),
    ];
    if let Some(b) = e.systemd_cgroup {
        lines.push(format!("{prefix}options.SystemdCgroup = {b}"));
    }
    lines
}

/// The header prefix (`plugins."io.containerd.grpc.v1.cri".containerd.runtimes.`) copied from
/// the default runtime's header when it has one, so the quoting style matches the file.
fn header_prefix(text: &str, runtimes: Option<&Item>, schema: Schema, default: &str) -> String {
    let runtime_header = runtimes
        .and_then(Item::as_table_like)
        .and_then(|r| r.get(default))
        .and_then(Item::as_table)
        .filter(|t| !t.is_implicit() && !t.is_dotted())
        .and_then(Table::span)
        .and_then(|s| text.get(s));
    if let Some(raw) = runtime_header {
        let inner = raw
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim();
        if let Some(dot) = inner.rfind('.') {
            let (prefix, last) = inner.split_at(dot + 1);
            let candidate = format!("{prefix}{HANDLER}");
            let wanted: Vec<&str> = schema
                .runtimes_path()
                .into_iter()
                .chain([HANDLER])
                .collect();
            let parsed = Key::parse(&candidate).ok();
            let same =
                parsed.is_some_and(|keys| keys.iter().map(Key::get).collect::<Vec<_>>() == wanted);
            if same && last.trim().trim_matches(['"', '\'']) == default {
                return prefix.trim_start().to_string();
            }
        }
    }
    schema.canonical_prefix().to_string()
}

/// `text` with `insert` spliced in at `off` (a line start or the end of the text). When `off` is
/// the end of a text without a final newline, the block moves its newline to the front so that
/// [`remove_entry`] can take exactly it out again.
fn splice_block(text: &str, off: usize, lines: &[String], blank_before: bool) -> String {
    let mut block = String::new();
    let at_unterminated_end = off == text.len() && !text.is_empty() && !text.ends_with('\n');
    if at_unterminated_end {
        block.push('\n');
    }
    if blank_before && off > 0 {
        block.push('\n');
    }
    block.push_str(&lines.join("\n"));
    if !at_unterminated_end {
        block.push('\n');
    }
    let (head, tail) = text.split_at(off);
    format!("{head}{block}{tail}")
}

fn insert_entry(
    text: &str,
    doc: &Document<&str>,
    schema: Schema,
    want: &RuntimeEntry,
) -> Result<String, PatchError> {
    let path = schema.runtimes_path();
    let walk = Walk::new(doc, &path)?;
    if walk.any_inline() {
        return insert_via_model(text, schema, want);
    }
    // The deepest existing table on the way to `runtimes`.
    let q = walk.nodes.len() - 1;
    let (q_item, q_form) = walk.nodes[q];
    let analysis = analyze_doc(doc)?;
    match q_form {
        Form::Dotted => {
            // Continue the dotted style inside the header table that holds it.
            let h = walk.header_at_or_above(q);
            let Some(h_table) = walk.nodes[h].0.as_table() else {
                return insert_via_model(text, schema, want);
            };
            let end = content_end(h_table);
            let off = line_end(text, end);
            let indent = indent_at(text, end);
            let rel: Vec<&str> = path[h..].iter().copied().chain([HANDLER]).collect();
            let prefix = format!("{indent}{}.", dotted_name(&rel));
            Ok(splice_block(text, off, &entry_lines(&prefix, want), false))
        }
        Form::Header | Form::Implicit => {
            let mut tables = Vec::new();
            header_tables(q_item, &mut tables);
            let end = tables.iter().map(|t| content_end(t)).max().unwrap_or(0);
            let off = line_end(text, end);
            let runtimes = (q == path.len()).then_some(q_item);
            let prefix = header_prefix(text, runtimes, schema, &analysis.default_runtime);
            // Indent like the default runtime's header and keys, when it has a header.
            let (head_indent, key_indent) = runtimes
                .and_then(Item::as_table_like)
                .and_then(|r| r.get(&analysis.default_runtime))
                .and_then(Item::as_table)
                .filter(|t| !t.is_implicit() && !t.is_dotted())
                .and_then(|t| {
                    let h = t.span()?;
                    let first_key = t.get_values().first().and_then(|(k, _)| k.first()?.span());
                    let hi = indent_at(text, h.start);
                    let ki =
                        first_key.map_or_else(|| format!("{hi}  "), |k| indent_at(text, k.start));
                    Some((hi, ki))
                })
                .unwrap_or_else(|| (String::new(), "  ".to_string()));
            let mut lines = vec![format!("{head_indent}[{prefix}{HANDLER}]  {MARKER}")];
            lines.extend(entry_lines(&key_indent, want));
            Ok(splice_block(text, off, &lines, true))
        }
        Form::Inline => insert_via_model(text, schema, want),
    }
}

/// Our runtime table as a standalone block of TOML (header and keys, newline-terminated), in
/// containerd's default style.
pub fn table_text(schema: Schema, want: &RuntimeEntry) -> String {
    let mut out = format!("[{}{HANDLER}]  {MARKER}\n", schema.canonical_prefix());
    for l in entry_lines("  ", want) {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

fn add_to_empty(text: &str, schema: Schema, want: &RuntimeEntry) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("version = {}\n\n", schema.version()));
    out.push_str(&table_text(schema, want));
    out
}

/// Inserts through `toml_edit`'s model: for runtimes written as inline tables.
fn insert_via_model(text: &str, schema: Schema, want: &RuntimeEntry) -> Result<String, PatchError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| PatchError::SelfCheck(e.to_string()))?;
    let path = schema.runtimes_path();
    let mut cur: &mut dyn TableLike = doc.as_table_mut();
    let mut inline = false;
    for (i, k) in path.iter().enumerate() {
        if !cur.contains_key(k) {
            let item = if inline {
                Item::Value(Value::InlineTable(InlineTable::new()))
            } else {
                let mut t = Table::new();
                t.set_implicit(true);
                Item::Table(t)
            };
            cur.insert(k, item);
        }
        let item = cur
            .get_mut(k)
            .ok_or_else(|| PatchError::SelfCheck("lost a key".into()))?;
        inline |= matches!(item, Item::Value(Value::InlineTable(_)));
        cur = item
            .as_table_like_mut()
            .ok_or_else(|| PatchError::NotATable {
                path: dotted_name(&path[..=i]),
                found: "not a table",
            })?;
    }
    let mut entry = InlineTable::new();
    entry.insert("runtime_type", Value::from(want.runtime_type.as_str()));
    entry.insert("runtime_path", Value::from(want.runtime_path.as_str()));
    if let Some(b) = want.systemd_cgroup {
        let mut opts = InlineTable::new();
        opts.insert("SystemdCgroup", Value::from(b));
        entry.insert("options", Value::InlineTable(opts));
    }
    if inline {
        cur.insert(HANDLER, Item::Value(Value::InlineTable(entry)));
    } else {
        let mut t = entry.into_table();
        t.set_implicit(false);
        cur.insert(HANDLER, Item::Table(t));
    }
    Ok(doc.to_string())
}

/// A byte range to cut, with how to tidy the line break around it.
#[derive(Clone, Debug)]
struct Cut {
    range: Range<usize>,
    /// Also remove one blank line before it (the one [`splice_block`] adds before a header).
    blank_before: bool,
}

/// Removes our entry: exact line ranges when it is written as headers or whole dotted lines,
/// else through `toml_edit`'s model.
fn remove_entry(text: &str, doc: &Document<&str>, schema: Schema) -> Result<String, PatchError> {
    let path: Vec<&str> = schema
        .runtimes_path()
        .into_iter()
        .chain([HANDLER])
        .collect();
    let walk = Walk::new(doc, &path)?;
    if walk.nodes.len() != path.len() + 1 {
        return Ok(text.to_string());
    }
    if walk.any_inline() {
        return remove_via_model(text, schema);
    }
    let (target, form) = walk.nodes[path.len()];
    let mut cuts = Vec::new();
    let mut headers = Vec::new();
    header_tables(target, &mut headers);
    for t in &headers {
        let Some(h) = t.span() else {
            return remove_via_model(text, schema);
        };
        let start = line_start(text, h.start);
        if !text.get(start..h.start).unwrap_or("x").trim().is_empty() {
            return remove_via_model(text, schema);
        }
        cuts.push(Cut {
            range: start..line_end_no_nl(text, content_end(t)),
            blank_before: true,
        });
    }
    if form == Form::Dotted {
        let h = walk.header_at_or_above(path.len());
        let Some(h_table) = walk.nodes[h].0.as_table() else {
            return remove_via_model(text, schema);
        };
        let rel = &path[h..];
        for (keys, value) in h_table.get_values() {
            let names: Vec<&str> = keys.iter().map(|k| k.get()).collect();
            if names.len() <= rel.len() || names[..rel.len()] != *rel {
                continue;
            }
            // The leaf key is unique to its line (the shared dotted parents carry the span of
            // their first use). A key/value pair always ends its line in a table.
            let (Some(k), Some(v)) = (keys.last().and_then(|k| k.span()), value.span()) else {
                return remove_via_model(text, schema);
            };
            let start = line_start(text, k.start);
            let end = line_end_no_nl(text, v.end);
            let after = text.get(v.end..end).unwrap_or("x").trim();
            if !(after.is_empty() || after.starts_with('#')) {
                return remove_via_model(text, schema);
            }
            cuts.push(Cut {
                range: start..end,
                blank_before: false,
            });
        }
    }
    if cuts.is_empty() {
        return remove_via_model(text, schema);
    }
    cuts.sort_by_key(|c| (c.range.start, c.range.end));
    cuts.dedup_by_key(|c| c.range.clone());
    let overlapping = cuts.windows(2).any(|w| w[0].range.end > w[1].range.start);
    let in_bounds = cuts
        .iter()
        .all(|c| c.range.start <= c.range.end && c.range.end <= text.len());
    if overlapping || !in_bounds {
        return remove_via_model(text, schema);
    }
    let mut out = text.to_string();
    for c in cuts.into_iter().rev() {
        let Range { mut start, mut end } = c.range;
        if end < out.len() && out.as_bytes()[end] == b'\n' {
            end += 1;
            let prev_blank = start >= 1
                && out.as_bytes()[start - 1] == b'\n'
                && (start == 1 || out.as_bytes()[start - 2] == b'\n');
            if c.blank_before && prev_blank {
                start -= 1;
            }
        } else {
            // The block ends the file without a newline: take the line break(s) before it.
            if start >= 1 && out.as_bytes()[start - 1] == b'\n' {
                start -= 1;
            }
            if c.blank_before && start >= 1 && out.as_bytes()[start - 1] == b'\n' {
                start -= 1;
            }
        }
        out.replace_range(start..end, "");
    }
    Ok(out)
}

/// End of the line holding `pos`, before its `\n`.
fn line_end_no_nl(text: &str, pos: usize) -> usize {
    let e = line_end(text, pos);
    if e > 0 && e <= text.len() && text.as_bytes()[e - 1] == b'\n' && e > pos {
        e - 1
    } else {
        e
    }
}

fn remove_via_model(text: &str, schema: Schema) -> Result<String, PatchError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| PatchError::SelfCheck(e.to_string()))?;
    let mut cur: &mut dyn TableLike = doc.as_table_mut();
    for k in schema.runtimes_path() {
        match cur.get_mut(k).and_then(Item::as_table_like_mut) {
            Some(t) => cur = t,
            None => return Ok(text.to_string()),
        }
    }
    cur.remove(HANDLER);
    Ok(doc.to_string())
}

// ---------------------------------------------------------------------------------------------
// Self-checks

/// A formatting-free view of a TOML item, for semantic comparison.
fn plain(item: &Item) -> serde_json::Value {
    use serde_json::Value as J;
    match item {
        Item::None => J::Null,
        Item::Value(v) => plain_value(v),
        Item::Table(t) => J::Object(t.iter().map(|(k, v)| (k.to_string(), plain(v))).collect()),
        Item::ArrayOfTables(a) => J::Array(
            a.iter()
                .map(|t| J::Object(t.iter().map(|(k, v)| (k.to_string(), plain(v))).collect()))
                .collect(),
        ),
    }
}

fn plain_value(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::String(s) => J::String(s.value().clone()),
        Value::Integer(i) => J::from(*i.value()),
        Value::Float(f) => J::String(format!("float:{}", f.value())),
        Value::Boolean(b) => J::Bool(*b.value()),
        Value::Datetime(d) => J::String(format!("datetime:{}", d.value())),
        Value::Array(a) => J::Array(a.iter().map(plain_value).collect()),
        Value::InlineTable(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), plain_value(v)))
                .collect(),
        ),
    }
}

/// `value` without our entry and without tables on its path left empty by removing it.
fn without_entry(mut value: serde_json::Value, schema: Schema) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value, path: &[&str]) {
        let Some(obj) = v.as_object_mut() else { return };
        match path {
            [] => {}
            [last] => {
                obj.remove(*last);
            }
            [first, rest @ ..] => {
                if let Some(child) = obj.get_mut(*first) {
                    strip(child, rest);
                    if child.as_object().is_some_and(serde_json::Map::is_empty) {
                        obj.remove(*first);
                    }
                }
            }
        }
    }
    let path: Vec<&str> = schema
        .runtimes_path()
        .into_iter()
        .chain([HANDLER])
        .collect();
    strip(&mut value, &path);
    value
}

fn check_install(
    old: &str,
    new: &str,
    schema: Schema,
    want: &RuntimeEntry,
    added_version: bool,
) -> Result<(), PatchError> {
    let new_doc = Document::parse(new)
        .map_err(|e| PatchError::SelfCheck(format!("result does not parse: {}", e.message())))?;
    let a = analyze_doc(&new_doc).map_err(|e| PatchError::SelfCheck(e.to_string()))?;
    if a.entry.as_ref() != Some(want) {
        return Err(PatchError::SelfCheck(format!(
            "entry reads back as {:?}, wanted {want:?}",
            a.entry
        )));
    }
    let old_doc = parse(old)?;
    let mut n = without_entry(plain(new_doc.as_item()), schema);
    if added_version {
        if let Some(o) = n.as_object_mut() {
            o.remove("version");
        }
    }
    let o = without_entry(plain(old_doc.as_item()), schema);
    if n != o {
        return Err(PatchError::SelfCheck(
            "something outside our runtime table changed".into(),
        ));
    }
    Ok(())
}

fn check_uninstall(old: &str, new: &str, schema: Schema) -> Result<(), PatchError> {
    let new_doc = Document::parse(new)
        .map_err(|e| PatchError::SelfCheck(format!("result does not parse: {}", e.message())))?;
    let a = analyze_doc(&new_doc).map_err(|e| PatchError::SelfCheck(e.to_string()))?;
    if a.entry.is_some() {
        return Err(PatchError::SelfCheck("entry still present".into()));
    }
    let old_doc = parse(old)?;
    if without_entry(plain(new_doc.as_item()), schema)
        != without_entry(plain(old_doc.as_item()), schema)
    {
        return Err(PatchError::SelfCheck(
            "something outside our runtime table changed".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIM: &str = "/opt/wasmkube/bin/containerd-shim-wasmkube-v1";

    fn roundtrip(text: &str) -> String {
        let p = install(text, SHIM, Schema::V2).expect("install");
        assert!(p.changed);
        let again = install(&p.text, SHIM, Schema::V2).expect("reinstall");
        assert!(!again.changed, "second install changed:\n{}", p.text);
        let u = uninstall(&p.text).expect("uninstall");
        assert_eq!(u.text, text, "uninstall did not restore:\n{}", p.text);
        p.text
    }

    #[test]
    fn header_style_goes_after_the_default_runtime() {
        let text = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    SystemdCgroup = true\n\n# the cni\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/opt/cni/bin\"\n";
        let out = roundtrip(text);
        assert!(out.contains("    SystemdCgroup = true\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmkube]  # managed by wasmkube-node-installer\n  runtime_type = \"io.containerd.wasmkube.v1\"\n  runtime_path = \"/opt/wasmkube/bin/containerd-shim-wasmkube-v1\"\n  options.SystemdCgroup = true\n\n# the cni\n"), "{out}");
    }

    #[test]
    fn dotted_style_stays_dotted() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes.runc.runtime_type = \"io.containerd.runc.v2\"\n  runtimes.runc.options.SystemdCgroup = false\n[other]\nx = 1";
        let out = roundtrip(text);
        assert!(
            out.contains("  runtimes.wasmkube.runtime_type = \"io.containerd.wasmkube.v1\"\n"),
            "{out}"
        );
        // SystemdCgroup = false is the shim's default and is not written: containerd 1.6 would
        // pass the shim an empty options body, which runwasi's library rejects.
        assert!(!out.contains("runtimes.wasmkube.options"), "{out}");
    }

    #[test]
    fn inline_runtimes_are_edited_in_place() {
        let text = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd]\nruntimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } }\n";
        let p = install(text, SHIM, Schema::V2).expect("install");
        assert!(p.text.contains("wasmkube"), "{}", p.text);
        let u = uninstall(&p.text).expect("uninstall");
        assert!(analyze(&u.text).expect("parse").entry.is_none());
    }

    #[test]
    fn unterminated_last_line() {
        roundtrip("version = 2");
        roundtrip("version = 2\n# trailing comment without newline");
        roundtrip("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"");
    }

    #[test]
    fn refusals() {
        assert_eq!(
            install("[plugins.cri]\nx = 1\n", SHIM, Schema::V2)
                .expect_err("must fail")
                .reason(),
            "SchemaV1"
        );
        assert_eq!(
            install("version = 1\n", SHIM, Schema::V2)
                .expect_err("must fail")
                .reason(),
            "SchemaV1"
        );
        assert_eq!(
            install("version = 5\n", SHIM, Schema::V2)
                .expect_err("must fail")
                .reason(),
            "UnsupportedVersion"
        );
        assert_eq!(
            install("version = [\n", SHIM, Schema::V2)
                .expect_err("must fail")
                .reason(),
            "ParseError"
        );
        assert_eq!(
            install("version = 2\nplugins = 3\n", SHIM, Schema::V2)
                .expect_err("must fail")
                .reason(),
            "NotATable"
        );
    }
}
