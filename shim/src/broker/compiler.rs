//! The compiler process (`--wasmkube-compiler`): the only process that parses and compiles
//! tenant bytes. A worker starts one per cache miss, in the requesting container's cgroups,
//! writes it the module on stdin and reads the artefact from its stdout. Before reading a byte
//! it confines itself ([`super::confine`]): it holds no cache, no key, no host directory, no
//! privilege, and cannot be inspected by the node's other processes. A compiler that a module
//! subverts can return a bad artefact for that module only: the worker stores it under the key
//! it derived from the bytes it forwarded, so no other module's entry is reachable.
use std::io::{BufReader, Write};

use wasmtime::Engine;

use super::confine;
use super::protocol::{Request, Response};
use crate::engine::{self, Allocation};
use crate::error::ShimError;

/// Exit code of a compiler that could not confine itself (the node's fault, not the module's:
/// the worker does not remember it as a failed compile).
pub const EXIT_UNCONFINED: i32 = 125;

/// Compiles the module on stdin; returns the exit code.
pub fn run() -> i32 {
    let env = |k: &str| std::env::var(k).ok();
    // The engines first, before any tenant byte: their address-space reservations (the
    // pooling allocator's) are not the compile's to pay for.
    let engines = match Allocation::ALL
        .iter()
        .map(|&a| engine::new_engine(a).map(|e| (a, e)))
        .collect::<Result<Vec<_>, _>>()
    {
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

/// Compiles `wasm` with the first engine whose allocation strategy it fits (see
/// [`engine::allocations_for`]), serialized; or why it does not compile.
pub fn compile(engines: &[(Allocation, Engine)], what: &str, wasm: &[u8]) -> Response {
    let kind = match engine::kind_of(what, wasm) {
        Ok(kind) => kind,
        Err(e) => return invalid(e),
    };
    let mut last = None;
    for allocation in engine::allocations_for(kind) {
        let Some((_, engine)) = engines.iter().find(|(a, _)| a == allocation) else {
            continue;
        };
        let built = engine::compile(engine, kind, what, wasm)
            .and_then(|program| program.serialize().map_err(ShimError::setup));
        match built {
            Ok(artefact) => {
                return Response::Loaded {
                    allocation: *allocation,
                    kind,
                    artefact,
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
