//! The compiler process (`--wasmkube-compiler`): the only process that parses and compiles
//! tenant bytes. A worker starts one per cache miss, in the requesting container's cgroups,
//! writes it the module on stdin and reads the artefact from its stdout. Before reading a byte
//! it confines itself ([`super::confine`]): it holds no cache, no key, no host directory, no
//! privilege, and cannot be inspected by the node's other processes. A compiler that a module
//! subverts can return a bad artefact for that module only: the worker stores it under the key
//! it derived from the bytes it forwarded, so no other module's entry is reachable.
//!
//! Its argument after [`super::COMPILER_ARG`] lists the tiers to try, in order (e.g.
//! `winch,cranelift`: Winch first, Cranelift when Winch refuses the module).
use std::io::{BufReader, Write};

use wasmtime::Engine;

use super::confine;
use super::protocol::{Request, Response};
use crate::engine::{self, Allocation, Tier};
use crate::error::ShimError;

/// Exit code of a compiler that could not confine itself (the node's fault, not the module's:
/// the worker does not remember it as a failed compile).
pub const EXIT_UNCONFINED: i32 = 125;

/// The compiler's argument for `tiers`.
pub fn tiers_arg(tiers: &[Tier]) -> String {
    tiers.iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
}

/// The tiers named by [`tiers_arg`]; optimised code when there is no (valid) argument.
fn tiers_from_args() -> Vec<Tier> {
    let named: Option<Vec<Tier>> = std::env::args()
        .nth(2)
        .map(|a| a.split(',').map(Tier::from_name).collect())
        .and_then(|t: Option<Vec<Tier>>| t.filter(|t| !t.is_empty()));
    named.unwrap_or_else(|| vec![Tier::Optimized])
}

/// Compiles the module on stdin; returns the exit code.
pub fn run() -> i32 {
    let env = |k: &str| std::env::var(k).ok();
    // The engines first, before any tenant byte: their address-space reservations (the
    // pooling allocator's) are not the compile's to pay for.
    let engines = match engines(&tiers_from_args()) {
        Ok(engines) => engines,
        Err(e) => {
            eprintln!("wasmkube compiler: {e}");
            return EXIT_UNCONFINED;
        }
    };
    let confined = confine::compiler_id(env).and_then(|id| {
        let reserved = confine::address_space()?;
        confine::drop_to_compiler(&confine::run_dir(env), id)?;
        Ok(reserved)
    });
    let reserved = match confined {
        Ok(reserved) => reserved,
        Err(e) => {
            eprintln!("wasmkube compiler: cannot confine itself: {e}");
            return EXIT_UNCONFINED;
        }
    };
    let request = Request::decode(&mut BufReader::new(std::io::stdin().lock()));
    let (what, wasm) = match request {
        Ok(Request::Load { what, wasm }) => (what, wasm),
        Ok(Request::Limits) => {
            eprintln!("wasmkube compiler: asked for limits, not a compile");
            return 1;
        }
        Err(e) => {
            eprintln!("wasmkube compiler: {e}");
            return 1;
        }
    };
    if let Err(e) = confine::limit_compile(reserved, wasm.len() as u64)
        .and_then(|()| confine::filter_system_calls())
    {
        eprintln!("wasmkube compiler: cannot confine itself: {e}");
        return EXIT_UNCONFINED;
    }
    let response = compile(&engines, &what, &wasm);
    let mut out = std::io::stdout().lock();
    match out.write_all(&response.encode()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("wasmkube compiler: cannot answer: {e}");
            1
        }
    }
}

/// An engine for each of `tiers` and each allocation strategy, tier by tier.
pub fn engines(tiers: &[Tier]) -> Result<Vec<(Allocation, Tier, Engine)>, ShimError> {
    let mut engines = Vec::new();
    for &tier in tiers {
        for allocation in Allocation::ALL {
            engines.push((allocation, tier, engine::new_engine_for(allocation, tier)?));
        }
    }
    Ok(engines)
}

/// Compiles `wasm` with the first engine, in the given order, whose tier compiles it and whose
/// allocation strategy it fits (see [`engine::allocations_for`]), serialized; or why it does
/// not compile (the last tier's reason: Winch refuses modules that use GC, exceptions or tail
/// calls, and those fall back to Cranelift).
pub fn compile(engines: &[(Allocation, Tier, Engine)], what: &str, wasm: &[u8]) -> Response {
    let kind = match engine::kind_of(what, wasm) {
        Ok(kind) => kind,
        Err(e) => return invalid(e),
    };
    let mut last = None;
    for (allocation, tier, engine) in engines {
        if !engine::allocations_for(kind).contains(allocation) {
            continue;
        }
        let built = engine::compile(engine, kind, what, wasm)
            .and_then(|program| program.serialize().map_err(ShimError::setup));
        match built {
            Ok(artefact) => {
                return Response::Loaded {
                    allocation: *allocation,
                    tier: *tier,
                    kind,
                    artefact: super::protocol::Artefact::Bytes(artefact),
                    notes: Vec::new(),
                }
            }
            Err(e) => last = Some(e),
        }
    }
    invalid(last.unwrap_or_else(|| ShimError::setup("no allocation strategy")))
}

fn invalid(e: ShimError) -> Response {
    match e {
        ShimError::Invalid { detail, .. } => Response::Invalid { detail },
        e => Response::Invalid {
            detail: e.to_string(),
        },
    }
}
