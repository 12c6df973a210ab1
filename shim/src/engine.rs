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

/// How a store's instances are allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// mmap per instance: no size limits beyond the container's; right for one-shot commands.
    OnDemand,
    /// Pre-reserved slots: cheap per-request instantiation for wasi:http, within pool limits.
    Pooling,
}

/// Largest table a pooled instance may have (CPython-on-WASI needs ~47k entries).
pub const POOL_TABLE_ELEMENTS: usize = 200_000;

/// An engine. Epoch interruption makes stop requests preemptive; compilation settings are the
/// same for both allocation strategies.
pub fn new_engine(allocation: Allocation) -> Result<Engine, ShimError> {
    let mut config = Config::new();
    config.epoch_interruption(true).wasm_component_model(true);
    if allocation == Allocation::Pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(MAX_INSTANCES)
            .total_component_instances(MAX_INSTANCES)
            .total_memories(MAX_INSTANCES)
            .total_tables(MAX_INSTANCES)
            .total_stacks(MAX_INSTANCES)
            .table_elements(POOL_TABLE_ELEMENTS)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(4 << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(ShimError::setup)
}

/// Picks the engine for `bytes` and loads it: components (possibly wasi:http, instantiated per
/// request) on the pooling allocator, falling back to on-demand allocation when they exceed its
/// limits; modules (run once) on demand.
pub fn load_with_engine(
    what: &str,
    bytes: &[u8],
    cache: Option<ArtifactCache<'_>>,
) -> Result<(Engine, Program), ShimError> {
    if kind_of(what, bytes)? == ArtifactKind::Component {
        let pooled = new_engine(Allocation::Pooling)?;
        match load(&pooled, what, bytes, cache) {
            Ok(program) => return Ok((pooled, program)),
            Err(e) => tracing::info!(
                "{what} does not fit the pooling allocator ({e}); using on-demand allocation"
            ),
        }
    }
    let engine = new_engine(Allocation::OnDemand)?;
    let program = load(&engine, what, bytes, cache)?;
    Ok((engine, program))
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
        let engine = new_engine(Allocation::OnDemand).expect("engine");
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
        let engine = new_engine(Allocation::OnDemand).expect("engine");
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
        let engine = new_engine(Allocation::OnDemand).expect("engine");
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

    #[test]
    fn large_tables_load_on_demand_but_not_in_the_pool() {
        let cpython_sized = r#"(module (table 50000 funcref) (func (export "_start")))"#;
        let oversized = r#"(module (table 300000 funcref) (func (export "_start")))"#;
        let pooled = new_engine(Allocation::Pooling).expect("engine");
        assert!(
            load(&pooled, "t.wat", oversized.as_bytes(), None).is_err(),
            "beyond the pool's table limit"
        );
        assert!(
            load(&pooled, "t.wat", cpython_sized.as_bytes(), None).is_ok(),
            "CPython-sized tables fit the pool"
        );
        let (engine, program) =
            load_with_engine("t.wat", oversized.as_bytes(), None).expect("on demand");
        assert!(matches!(program, Program::Module(_)));
        drop(engine);
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
