//! Just enough of the WebAssembly binary format for packing: the 8-byte preamble that tells a
//! core module from a component, and the top-level import/export names of a component (the
//! Wasm OCI artifact config lists them).

use std::fmt;

/// `\0asm`, the first four bytes of every WebAssembly binary.
pub const WASM_MAGIC: [u8; 4] = *b"\0asm";
/// Preamble bytes 4..8 of a core module: version 1.
const MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
/// Preamble bytes 4..8 of a component: version 0x0d, layer 1.
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];

/// What a `.wasm` file holds, read from its preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A core WebAssembly module (version 1), e.g. a WASI preview1 command.
    Module,
    /// A component (binary version 0x0d, layer 1), e.g. a `wasi:cli/run` or `wasi:http/proxy`
    /// component.
    Component,
}

impl WasmKind {
    /// The `os` the Wasm OCI artifact spec assigns to this kind: `wasip1` or `wasip2`.
    pub fn artifact_os(self) -> &'static str {
        match self {
            WasmKind::Module => "wasip1",
            WasmKind::Component => "wasip2",
        }
    }
}

impl fmt::Display for WasmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WasmKind::Module => "core module",
            WasmKind::Component => "component",
        })
    }
}

/// Why a file is not a WebAssembly binary we can pack; the text names what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderProblem {
    /// The first four bytes are not `\0asm` (or the file is shorter than that).
    NotWasm(String),
    /// The magic is right, the version/layer is not one we run.
    UnsupportedVersion(String),
}

/// Classify `bytes` by its preamble.
pub(crate) fn detect(bytes: &[u8]) -> Result<WasmKind, HeaderProblem> {
    if bytes.len() < WASM_MAGIC.len() || bytes[..4] != WASM_MAGIC {
        return Err(HeaderProblem::NotWasm(describe_non_wasm(bytes)));
    }
    match bytes.get(4..8) {
        Some(v) if v == MODULE_VERSION => Ok(WasmKind::Module),
        Some(v) if v == COMPONENT_VERSION => Ok(WasmKind::Component),
        Some(v) => Err(HeaderProblem::UnsupportedVersion(hex_bytes(v))),
        None => Err(HeaderProblem::UnsupportedVersion(format!(
            "a truncated header ({} bytes in all)",
            bytes.len()
        ))),
    }
}

fn describe_non_wasm(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty file".to_owned();
    }
    let head = &bytes[..bytes.len().min(8)];
    let shown = hex_bytes(head);
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]);
    let trimmed = text.trim_start();
    let hint = if bytes.starts_with(b"\x7fELF") {
        " (an ELF executable: build for wasm32-wasip1/wasm32-wasip2 instead)"
    } else if trimmed.starts_with("(module") || trimmed.starts_with("(component") {
        " (WebAssembly text: compile it to the binary format first)"
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        " (gzip data)"
    } else {
        ""
    };
    format!("{shown}{hint}")
}

fn hex_bytes(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", hex.join(" "))
}

/// The names a component imports and exports at its top level: interfaces (instances, e.g.
/// `wasi:cli/environment@0.2.0`) and plain functions, in binary order, without duplicates.
/// Types, values, core modules and nested components are left out, as a WIT world lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ComponentWorld {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

const SECTION_IMPORT: u8 = 10;
const SECTION_EXPORT: u8 = 11;
const KIND_FUNC: u8 = 0x01;
const KIND_INSTANCE: u8 = 0x05;

/// Read the top-level import and export sections of a component binary (preamble included).
/// Other sections are skipped by their length, so only the import/export encodings matter.
pub(crate) fn component_world(bytes: &[u8]) -> Result<ComponentWorld, String> {
    let mut r = Reader::new(bytes);
    r.take(8)?;
    let mut world = ComponentWorld::default();
    while !r.at_end() {
        let id = r.byte()?;
        let size = r.u32()? as usize;
        let start = r.pos;
        let mut s = Reader {
            data: r.take(size)?,
            pos: 0,
            base: start,
        };
        match id {
            SECTION_IMPORT => {
                for _ in 0..s.u32()? {
                    let name = s.extern_name()?;
                    if is_world_item(s.extern_desc()?) {
                        push_unique(&mut world.imports, name);
                    }
                }
            }
            SECTION_EXPORT => {
                for _ in 0..s.u32()? {
                    let name = s.extern_name()?;
                    let kind = s.sort()?;
                    s.u32()?; // index into that sort
                    match s.byte()? {
                        0x00 => {}
                        0x01 => {
                            s.extern_desc()?;
                        }
                        b => return Err(s.bad(b, "optional export type")),
                    }
                    if is_world_item(kind) {
                        push_unique(&mut world.exports, name);
                    }
                }
            }
            _ => continue,
        }
        if !s.at_end() {
            return Err(format!(
                "section {id} at offset {start} has {} trailing bytes",
                s.data.len() - s.pos
            ));
        }
    }
    Ok(world)
}

fn is_world_item(kind: u8) -> bool {
    kind == KIND_FUNC || kind == KIND_INSTANCE
}

fn push_unique(list: &mut Vec<String>, name: String) {
    if !list.contains(&name) {
        list.push(name);
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of `data` in the whole binary, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: 0,
            base: 0,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn bad(&self, byte: u8, what: &str) -> String {
        format!(
            "unexpected byte 0x{byte:02x} for {what} at offset {}",
            self.offset().saturating_sub(1)
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| format!("binary ends early at offset {}", self.offset()))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn peek(&self) -> Result<u8, String> {
        self.data
            .get(self.pos)
            .copied()
            .ok_or_else(|| format!("binary ends early at offset {}", self.offset()))
    }

    /// Unsigned LEB128, at most 5 bytes.
    fn u32(&mut self) -> Result<u32, String> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.byte()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!(
            "LEB128 integer too long at offset {}",
            self.offset()
        ))
    }

    /// Skip a signed 33-bit LEB128 (a type index in a value type).
    fn skip_s33(&mut self) -> Result<(), String> {
        for _ in 0..5 {
            if self.byte()? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err(format!(
            "LEB128 integer too long at offset {}",
            self.offset()
        ))
    }

    fn string(&mut self) -> Result<&'a str, String> {
        let len = self.u32()? as usize;
        let at = self.offset();
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| format!("name at offset {at} is not UTF-8"))
    }

    /// An import/export name: `0x00`/`0x01` + string, or `0x02` + string + options
    /// (implements / version suffix / external id). Returns the full name, with a version
    /// suffix applied the way the component model defines it.
    fn extern_name(&mut self) -> Result<String, String> {
        match self.byte()? {
            0x00 | 0x01 => Ok(self.string()?.to_owned()),
            0x02 => {
                let name = self.string()?;
                let mut implements = false;
                let mut suffix = None;
                for _ in 0..self.u32()? {
                    match self.byte()? {
                        0x00 => {
                            self.string()?;
                            implements = true;
                        }
                        0x01 => suffix = Some(self.string()?),
                        0x02 => {
                            self.string()?;
                        }
                        b => return Err(self.bad(b, "name option")),
                    }
                }
                Ok(match suffix {
                    Some(suffix) if !implements && name.contains('@') => format!("{name}{suffix}"),
                    _ => name.to_owned(),
                })
            }
            b => Err(self.bad(b, "import/export name")),
        }
    }

    /// A sort (`0x00 core-sort` or `0x01..=0x05`); returns the component-level kind byte.
    fn sort(&mut self) -> Result<u8, String> {
        match self.byte()? {
            0x00 => {
                self.byte()?;
                Ok(0x00)
            }
            k @ 0x01..=0x05 => Ok(k),
            b => Err(self.bad(b, "sort")),
        }
    }

    /// An extern description (the type of an import/export); returns its kind byte.
    fn extern_desc(&mut self) -> Result<u8, String> {
        let kind = self.byte()?;
        match kind {
            0x00 => match self.byte()? {
                0x11 => {
                    self.u32()?;
                }
                b => return Err(self.bad(b, "core module type")),
            },
            0x01 | 0x04 | 0x05 => {
                self.u32()?;
            }
            0x02 => {
                // A value type: one primitive byte, or a type index.
                let b = self.peek()?;
                if (0x73..=0x7f).contains(&b) || b == 0x64 {
                    self.byte()?;
                } else {
                    self.skip_s33()?;
                }
            }
            0x03 => match self.byte()? {
                0x00 => {
                    self.u32()?;
                }
                0x01 => {}
                b => return Err(self.bad(b, "type bound")),
            },
            b => return Err(self.bad(b, "extern kind")),
        }
        Ok(kind)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    pub(crate) fn name(s: &str) -> Vec<u8> {
        let mut out = vec![s.len() as u8];
        out.extend_from_slice(s.as_bytes());
        out
    }

    pub(crate) fn section(id: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![id, body.len() as u8];
        out.extend_from_slice(body);
        out
    }

    /// A small component: one instance type, an import of `wasi:cli/environment@0.2.0`, a
    /// type import, and an export of that instance as `wasi:cli/run@0.2.0`.
    pub(crate) fn tiny_component() -> Vec<u8> {
        let mut bin = b"\0asm\x0d\x00\x01\x00".to_vec();
        bin.extend(section(7, &[0x01, 0x42, 0x00]));
        let mut imports = vec![0x02, 0x00];
        imports.extend(name("wasi:cli/environment@0.2.0"));
        imports.extend([0x05, 0x00]);
        imports.push(0x00);
        imports.extend(name("my-resource"));
        imports.extend([0x03, 0x01]);
        bin.extend(section(10, &imports));
        let mut exports = vec![0x01, 0x00];
        exports.extend(name("wasi:cli/run@0.2.0"));
        exports.extend([0x05, 0x00, 0x00]);
        bin.extend(section(11, &exports));
        bin
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{name, section, tiny_component};
    use super::*;

    #[test]
    fn detects_module_and_component() {
        assert_eq!(detect(b"\0asm\x01\0\0\0"), Ok(WasmKind::Module));
        assert_eq!(detect(&tiny_component()), Ok(WasmKind::Component));
    }

    #[test]
    fn rejects_non_wasm_with_a_description() {
        let Err(HeaderProblem::NotWasm(found)) = detect(b"\x7fELF\x02\x01\x01\0rest") else {
            panic!("ELF accepted");
        };
        assert!(found.contains("7f 45 4c 46"), "{found}");
        assert!(found.contains("ELF"), "{found}");
        let Err(HeaderProblem::NotWasm(found)) = detect(b"(module)") else {
            panic!("wat accepted");
        };
        assert!(found.contains("text"), "{found}");
        assert_eq!(
            detect(b""),
            Err(HeaderProblem::NotWasm("an empty file".into()))
        );
        assert!(matches!(detect(b"\0as"), Err(HeaderProblem::NotWasm(_))));
    }

    #[test]
    fn rejects_unknown_versions() {
        assert_eq!(
            detect(b"\0asm\x02\0\0\0"),
            Err(HeaderProblem::UnsupportedVersion(
                "bytes 02 00 00 00".into()
            ))
        );
        // A pre-release component encoding.
        assert!(matches!(
            detect(b"\0asm\x0c\0\x01\0"),
            Err(HeaderProblem::UnsupportedVersion(_))
        ));
        assert!(matches!(
            detect(b"\0asm\x01"),
            Err(HeaderProblem::UnsupportedVersion(_))
        ));
    }

    #[test]
    fn reads_component_imports_and_exports() {
        let world = component_world(&tiny_component()).expect("parse");
        assert_eq!(world.imports, vec!["wasi:cli/environment@0.2.0"]);
        assert_eq!(world.exports, vec!["wasi:cli/run@0.2.0"]);
    }

    #[test]
    fn applies_version_suffix_option() {
        let mut bin = b"\0asm\x0d\x00\x01\x00".to_vec();
        let mut imports = vec![0x01, 0x02];
        imports.extend(name("wasi:http/types@0.2"));
        imports.push(0x01); // one option
        imports.push(0x01); // version suffix
        imports.extend(name(".6"));
        imports.extend([0x05, 0x00]);
        bin.extend(section(10, &imports));
        let world = component_world(&bin).expect("parse");
        assert_eq!(world.imports, vec!["wasi:http/types@0.2.6"]);
    }

    #[test]
    fn truncated_component_is_an_error() {
        let bin = tiny_component();
        let err = component_world(&bin[..bin.len() - 3]).expect_err("truncated");
        assert!(err.contains("ends early"), "{err}");
    }
}
