//! The Wasmtime engine and how guests are loaded: one engine configuration for every guest,
//! code compiled once and then served from the compiled-module cache.
use containerd_shim_wasm::sandbox::context::WasmBinaryType;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use std::os::fd::{AsRawFd, OwnedFd};

use crate::broker::protocol::Artefact;
use crate::cache::ArtifactKind;
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

/// Environment variable (containerd's, inherited by the shim): `off` compiles a program's first
/// start on a node with Cranelift too, instead of Winch.
pub const BASELINE_ENV: &str = "WASMKUBE_BASELINE_COMPILER";

/// Which compiler an artefact comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Winch, Wasmtime's single-pass baseline compiler: several times faster to compile, slower
    /// code. A program's first start on a node, while the broker compiles the optimised
    /// artefact for the next start in the background.
    Baseline,
    /// Cranelift: optimised code.
    Optimized,
}

impl Tier {
    /// Both tiers, in the order the cache is searched: optimised code first.
    pub const LOOKUP: [Tier; 2] = [Tier::Optimized, Tier::Baseline];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Baseline => "winch",
            Tier::Optimized => "cranelift",
        }
    }

    pub fn from_name(name: &str) -> Option<Tier> {
        [Tier::Baseline, Tier::Optimized]
            .into_iter()
            .find(|t| t.name() == name)
    }

    /// What a cache key says of the tier (nothing for optimised code: its keys are as before
    /// tiers existed).
    pub fn key_suffix(self) -> &'static str {
        match self {
            Tier::Baseline => "-winch",
            Tier::Optimized => "",
        }
    }

    /// The tiers a first start may use, fastest to compile first.
    pub fn for_first_start(env: impl Fn(&str) -> Option<String>) -> &'static [Tier] {
        match env(BASELINE_ENV).as_deref() {
            Some("off") => &[Tier::Optimized],
            _ => &[Tier::Baseline, Tier::Optimized],
        }
    }
}

/// An engine for optimised (Cranelift) code.
pub fn new_engine(allocation: Allocation) -> Result<Engine, ShimError> {
    new_engine_for(allocation, Tier::Optimized)
}

/// An engine. Epoch interruption makes stop requests preemptive (Winch code checks the epoch
/// too); other settings are the same for both allocation strategies and both tiers.
pub fn new_engine_for(allocation: Allocation, tier: Tier) -> Result<Engine, ShimError> {
    let mut config = Config::new();
    config.epoch_interruption(true).wasm_component_model(true);
    if tier == Tier::Baseline {
        config.strategy(wasmtime::Strategy::Winch);
    }
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

impl Allocation {
    /// Both strategies, in the order a component tries them.
    pub const ALL: [Allocation; 2] = [Allocation::Pooling, Allocation::OnDemand];

    /// The name used in cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Allocation::OnDemand => "ondemand",
            Allocation::Pooling => "pooled",
        }
    }
}

/// The allocation strategies to try for a program of `kind`, best first: components (possibly
/// wasi:http, instantiated per request) on the pooling allocator, falling back to on-demand
/// allocation when they exceed its limits; modules (run once) on demand.
pub fn allocations_for(kind: ArtifactKind) -> &'static [Allocation] {
    match kind {
        ArtifactKind::Component => &Allocation::ALL,
        ArtifactKind::Module => &Allocation::ALL[1..],
    }
}

/// Compiles `bytes` in this process, with no cache: the fallback when the compile broker is
/// unavailable, and what tests use.
pub fn load_in_process(what: &str, bytes: &[u8]) -> Result<(Engine, Program), ShimError> {
    let kind = kind_of(what, bytes)?;
    let mut last = None;
    for &allocation in allocations_for(kind) {
        let engine = new_engine(allocation)?;
        match compile(&engine, kind, what, bytes) {
            Ok(program) => return Ok((engine, program)),
            Err(e) => {
                tracing::info!(
                    "{what} does not load with {} allocation: {e}",
                    allocation.name()
                );
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| ShimError::setup("no allocation strategy")))
}

/// What `bytes` is: a module or a component; precompiled artefacts and non-wasm are refused
/// here, before anything is compiled.
pub fn kind_of(what: &str, bytes: &[u8]) -> Result<ArtifactKind, ShimError> {
    if Engine::detect_precompiled(bytes).is_some() {
        return Err(ShimError::Precompiled {
            what: what.to_string(),
        });
    }
    match WasmBinaryType::from_bytes(bytes) {
        Some(WasmBinaryType::Module) => Ok(ArtifactKind::Module),
        Some(WasmBinaryType::Component) => Ok(ArtifactKind::Component),
        // The text format: wasmtime compiles `.wat` modules and components directly.
        None if bytes.trim_ascii_start().starts_with(b"(component") => Ok(ArtifactKind::Component),
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

/// Compiles `bytes` for `engine` (which also checks it fits the engine's allocator).
pub fn compile(
    engine: &Engine,
    kind: ArtifactKind,
    what: &str,
    bytes: &[u8],
) -> Result<Program, ShimError> {
    let invalid = |e: wasmtime::Error| ShimError::Invalid {
        what: what.to_string(),
        detail: format!("{e:#}"),
    };
    Ok(match kind {
        ArtifactKind::Module => Program::Module(Module::new(engine, bytes).map_err(invalid)?),
        ArtifactKind::Component => {
            Program::Component(Component::new(engine, bytes).map_err(invalid)?)
        }
    })
}

impl Program {
    /// The serialized artefact (what the cache stores and the broker hands out).
    pub fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Program::Module(m) => m.serialize(),
            Program::Component(c) => c.serialize(),
        }
    }
}

/// Loads an artefact the compile broker produced: a cache entry's descriptor is mapped (its
/// pages shared with every other container of the app on the node); when that cannot be done,
/// its bytes are read into this process, as for an artefact sent as bytes.
pub fn load_artefact(
    engine: &Engine,
    kind: ArtifactKind,
    artefact: Artefact,
) -> wasmtime::Result<Program> {
    match artefact {
        Artefact::Bytes(bytes) => deserialize(engine, kind, &bytes),
        Artefact::File { file, len } => match map(engine, kind, &file) {
            Ok(program) => Ok(program),
            Err(e) => {
                eprintln!(
                    "wasmkube: cannot map the compiled module ({e:#}); loading a private copy"
                );
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut std::io::Read::take(std::fs::File::from(file), len),
                    &mut bytes,
                )?;
                if bytes.len() as u64 != len {
                    wasmtime::bail!("the compiled module's file is shorter than announced");
                }
                deserialize(engine, kind, &bytes)
            }
        },
    }
}

/// Maps a cache entry the broker handed over (see [`crate::cache`], *Mapped entries*).
#[allow(unsafe_code)]
fn map(engine: &Engine, kind: ArtifactKind, file: &OwnedFd) -> wasmtime::Result<Program> {
    // SAFETY: as for `deserialize`, and the file cannot change while it is mapped: the worker
    // read and authenticated the bytes of this very descriptor (opened through the broker's
    // read-only view of the cache), entries are never written in place (a writer renames a new
    // inode over the name), and this descriptor, like a reopen of it, is read-only on a
    // read-only mount (`EROFS` for every write, even with CAP_DAC_OVERRIDE). The authentication
    // trailer after the artefact is ignored by wasmtime's ELF reader.
    unsafe {
        match kind {
            ArtifactKind::Module => {
                Module::deserialize_open_file(engine, std::fs::File::from(file.try_clone()?))
                    .map(Program::Module)
            }
            // Wasmtime 48 maps a component only by path: this process's own descriptor, reopened
            // read-only (the entry is 0644, so a container of any user may).
            ArtifactKind::Component => {
                Component::deserialize_file(engine, format!("/proc/self/fd/{}", file.as_raw_fd()))
                    .map(Program::Component)
            }
        }
    }
}

/// Loads artefact bytes the compile broker produced.
#[allow(unsafe_code)]
pub fn deserialize(
    engine: &Engine,
    kind: ArtifactKind,
    artefact: &[u8],
) -> wasmtime::Result<Program> {
    // SAFETY: wasmtime requires that the bytes come from `serialize` by a compatible engine and
    // were not tampered with. They come from the compile broker over a socket pair only this
    // process and the broker's worker hold: the worker (host privileges, outside every
    // container) either compiled them from the module just sent, or read them from the cache
    // after checking the entry's owner and mode and its HMAC under the node key, which no
    // container can read (see `cache`). The broker runs this same binary, so the engine
    // configuration matches; wasmtime re-checks the header against this engine as well.
    unsafe {
        match kind {
            ArtifactKind::Module => Module::deserialize(engine, artefact).map(Program::Module),
            ArtifactKind::Component => {
                Component::deserialize(engine, artefact).map(Program::Component)
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert!(matches!(
            load_in_process("t.wat", HELLO_WAT.as_bytes()).map(|(_, p)| p),
            Ok(Program::Module(_))
        ));
        assert!(matches!(
            load_in_process("t.wasm", &wat_module()).map(|(_, p)| p),
            Ok(Program::Module(_))
        ));
    }

    #[test]
    fn truncated_module_names_the_cause() {
        let engine = new_engine(Allocation::OnDemand).expect("engine");
        let wasm = wat_module();
        let err = compile(
            &engine,
            ArtifactKind::Module,
            "/t.wasm",
            &wasm[..wasm.len() - 3],
        )
        .err()
        .expect("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("invalid WebAssembly in /t.wasm"), "{msg}");
        assert_eq!(err.exit_code(), crate::error::EXIT_CANNOT_RUN);
    }

    #[test]
    fn large_tables_load_on_demand_but_not_in_the_pool() {
        let cpython_sized = r#"(module (table 50000 funcref) (func (export "_start")))"#;
        let oversized = r#"(module (table 300000 funcref) (func (export "_start")))"#;
        let pooled = new_engine(Allocation::Pooling).expect("engine");
        assert!(
            compile(&pooled, ArtifactKind::Module, "t.wat", oversized.as_bytes()).is_err(),
            "beyond the pool's table limit"
        );
        assert!(
            compile(
                &pooled,
                ArtifactKind::Module,
                "t.wat",
                cpython_sized.as_bytes()
            )
            .is_ok(),
            "CPython-sized tables fit the pool"
        );
        let (engine, program) = load_in_process("t.wat", oversized.as_bytes()).expect("on demand");
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
