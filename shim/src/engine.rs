//! The Wasmtime engine and how guests are loaded: one engine configuration for every guest,
//! code compiled once and then served from the compiled-module cache.
use containerd_shim_wasm::sandbox::context::WasmBinaryType;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use crate::cache::{ArtifactCache, ArtifactKind, CacheKey};
use crate::error::ShimError;

/// Most concurrent instances of one wasi:http app (one per in-flight request).
pub const MAX_INSTANCES: u32 = 1000;

/// A compiled guest.
pub enum Program {
    Module(Module),
    Component(Component),
}

/// The engine every guest runs on. Epoch interruption makes stop requests and limits
/// preemptive; the pooling allocator makes per-request instantiation (wasi:http) cheap.
pub fn new_engine() -> Result<Engine, ShimError> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(MAX_INSTANCES)
        .total_component_instances(MAX_INSTANCES)
        .total_memories(MAX_INSTANCES)
        .total_tables(MAX_INSTANCES)
        .total_stacks(MAX_INSTANCES);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config).map_err(ShimError::setup)
}

fn kind_of(what: &str, bytes: &[u8]) -> Result<ArtifactKind, ShimError> {
    if Engine::detect_precompiled(bytes).is_some() {
        return Err(ShimError::Precompiled {
            what: what.to_string(),
        });
    }
    match WasmBinaryType::from_bytes(bytes) {
        Some(WasmBinaryType::Module) => Ok(ArtifactKind::Module),
        Some(WasmBinaryType::Component) => Ok(ArtifactKind::Component),
        // The text format: wasmtime compiles `.wat` modules directly.
        None if bytes.trim_ascii_start().starts_with(b"(") => Ok(ArtifactKind::Module),
        None if bytes.starts_with(b"\0asm") => Err(ShimError::Invalid {
            what: what.to_string(),
            detail: "unknown WebAssembly binary version or truncated header".into(),
        }),
        None => Err(ShimError::NotWasm {
            what: what.to_string(),
            magic: bytes.iter().take(4).map(|b| format!("{b:02x}")).collect(),
        }),
    }
}

/// Compiles `bytes`, or loads the compiled artefact from `cache`.
pub fn load(
    engine: &Engine,
    what: &str,
    bytes: &[u8],
    cache: Option<ArtifactCache<'_>>,
) -> Result<Program, ShimError> {
    let kind = kind_of(what, bytes)?;
    let key = CacheKey::new(kind, bytes, engine.precompile_compatibility_hash());
    if let Some(cache) = cache {
        if let Some(payload) = cache.load(&key) {
            match deserialize(engine, kind, &payload) {
                Ok(program) => {
                    tracing::debug!("loaded {what} from the compiled-module cache");
                    return Ok(program);
                }
                Err(e) => {
                    tracing::warn!(
                        "stale compiled-module cache entry for {what}, recompiling: {e}"
                    );
                    cache.remove(&key);
                }
            }
        }
    }
    let invalid = |e: wasmtime::Error| ShimError::Invalid {
        what: what.to_string(),
        detail: format!("{e:#}"),
    };
    let (program, serialized) = match kind {
        ArtifactKind::Module => {
            let m = Module::new(engine, bytes).map_err(invalid)?;
            let s = cache.and_then(|_| m.serialize().ok());
            (Program::Module(m), s)
        }
        ArtifactKind::Component => {
            let c = Component::new(engine, bytes).map_err(invalid)?;
            let s = cache.and_then(|_| c.serialize().ok());
            (Program::Component(c), s)
        }
    };
    if let (Some(cache), Some(serialized)) = (cache, serialized) {
        if let Err(e) = cache.store(&key, &serialized) {
            tracing::warn!("{e}");
        }
    }
    Ok(program)
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, kind: ArtifactKind, payload: &[u8]) -> wasmtime::Result<Program> {
    // SAFETY: the payload was produced by `serialize` on this host (the cache directory is
    // root-owned and 0700), passed its sha256 check on load, and its key names this engine's
    // compatibility hash; wasmtime re-validates the header against the engine as well.
    unsafe {
        match kind {
            ArtifactKind::Module => Module::deserialize(engine, payload).map(Program::Module),
            ArtifactKind::Component => {
                Component::deserialize(engine, payload).map(Program::Component)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    const HELLO_WAT: &str = r#"(module (func (export "_start")))"#;

    #[test]
    fn classifies_input() {
        assert!(matches!(
            kind_of("x", b"\0asm\x01\0\0\0"),
            Ok(ArtifactKind::Module)
        ));
        assert!(matches!(
            kind_of("x", b"\0asm\x0d\0\x01\0"),
            Ok(ArtifactKind::Component)
        ));
        assert!(matches!(
            kind_of("x", HELLO_WAT.as_bytes()),
            Ok(ArtifactKind::Module)
        ));
        let elf = kind_of("/bin/sh", b"\x7fELF\x02\x01");
        assert!(
            matches!(&elf, Err(ShimError::NotWasm { magic, .. }) if magic == "7f454c46"),
            "{:?}",
            elf.err()
        );
        assert!(matches!(
            kind_of("x", b"\0asm"),
            Err(ShimError::Invalid { .. })
        ));
    }

    #[test]
    fn text_and_binary_forms_compile() {
        let engine = new_engine().expect("engine");
        assert!(matches!(
            load(&engine, "t.wat", HELLO_WAT.as_bytes(), None),
            Ok(Program::Module(_))
        ));
        assert!(matches!(
            load(&engine, "t.wasm", &wat_module(), None),
            Ok(Program::Module(_))
        ));
    }

    #[test]
    fn truncated_module_names_the_cause() {
        let engine = new_engine().expect("engine");
        let wasm = wat_module();
        let err = load(&engine, "/t.wasm", &wasm[..wasm.len() - 3], None)
            .err()
            .expect("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("invalid WebAssembly in /t.wasm"), "{msg}");
        assert_eq!(err.exit_code(), crate::error::EXIT_CANNOT_RUN);
    }

    #[test]
    fn second_load_comes_from_the_cache_and_corruption_is_survived() {
        let engine = new_engine().expect("engine");
        let dir = tempfile::tempdir().expect("tempdir");
        let fd = std::fs::File::open(dir.path()).expect("open");
        let cache = ArtifactCache::new(fd.as_fd());
        let wasm = wat_module();
        assert!(matches!(
            load(&engine, "m", &wasm, Some(cache)),
            Ok(Program::Module(_))
        ));
        let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("readdir").collect();
        assert_eq!(entries.len(), 1, "one cache entry after the first load");
        assert!(matches!(
            load(&engine, "m", &wasm, Some(cache)),
            Ok(Program::Module(_))
        ));
        // Overwrite the entry with a valid-checksum but non-wasmtime payload: stale, rebuilt.
        let key = CacheKey::new(
            ArtifactKind::Module,
            &wasm,
            engine.precompile_compatibility_hash(),
        );
        cache.store(&key, b"not an artefact").expect("store");
        assert!(matches!(
            load(&engine, "m", &wasm, Some(cache)),
            Ok(Program::Module(_))
        ));
        assert!(
            cache.load(&key).is_some_and(|p| p != b"not an artefact"),
            "entry rebuilt"
        );
    }

    /// The binary form of `HELLO_WAT`, hand-assembled.
    fn wat_module() -> Vec<u8> {
        vec![
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic + version
            0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type section: () -> ()
            0x03, 0x02, 0x01, 0x00, // function section
            0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export
            0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code section
        ]
    }
}
