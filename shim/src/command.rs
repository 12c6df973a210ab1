//! Runs a preview1 command module or a preview2 `wasi:cli/run` component to completion, in one
//! store whose memory budget is what the container's limit leaves after the compiled code.
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Store};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::I32Exit;

use crate::budget::{code_size, GuestLimiter, MemoryBudget};
use crate::error::ShimError;
use crate::state::{GuestConfig, P1State, P2State};

/// Runs `func` (normally `_start`) of a preview1 module; returns the exit code.
pub async fn run_module(
    engine: &Engine,
    module: &Module,
    cfg: &GuestConfig,
    func: &str,
) -> Result<i32, ShimError> {
    let mut linker = wasmtime::Linker::<P1State>::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s| &mut s.wasi)
        .map_err(ShimError::setup)?;
    let pre = linker
        .instantiate_pre(module)
        .map_err(|e| ShimError::Link {
            what: cfg.what.clone(),
            detail: format!("{e:#}"),
        })?;
    let budget = MemoryBudget::for_program(cfg.memory_budget, code_size(module.image_range()));
    let state = P1State {
        wasi: cfg.wasi_builder().build_p1(),
        limiter: GuestLimiter::new(budget),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    let instance = match pre.instantiate_async(&mut store).await {
        Ok(i) => i,
        Err(e) => return outcome(e, &store.data().limiter),
    };
    let start = instance
        .get_typed_func::<(), ()>(&mut store, func)
        .map_err(|_| ShimError::NoEntry {
            what: cfg.what.clone(),
            func: func.to_string(),
        })?;
    match start.call_async(&mut store, ()).await {
        Ok(()) => Ok(0),
        Err(e) => outcome(e, &store.data().limiter),
    }
}

/// Runs a `wasi:cli/run` component; returns the exit code (components carry only ok/err).
pub async fn run_component(
    engine: &Engine,
    component: &Component,
    cfg: &GuestConfig,
) -> Result<i32, ShimError> {
    let mut linker = wasmtime::component::Linker::<P2State>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(ShimError::setup)?;
    crate::state::add_grants_to_linker(&mut linker)?;
    let link = |e: wasmtime::Error| ShimError::Link {
        what: cfg.what.clone(),
        detail: format!("{e:#}"),
    };
    let pre = CommandPre::new(linker.instantiate_pre(component).map_err(link)?).map_err(link)?;
    let budget = MemoryBudget::for_program(cfg.memory_budget, code_size(component.image_range()));
    let mut store = Store::new(engine, P2State::new(cfg, GuestLimiter::new(budget)));
    store.limiter(|s| &mut s.limiter);
    store.set_epoch_deadline(1);
    let command = match pre.instantiate_async(&mut store).await {
        Ok(c) => c,
        Err(e) => return outcome(e, &store.data().limiter),
    };
    match command.wasi_cli_run().call_run(&mut store).await {
        Ok(Ok(())) => Ok(0),
        Ok(Err(())) => Ok(1),
        Err(e) => outcome(e, &store.data().limiter),
    }
}

/// Turns a guest error into an exit code (explicit exit, stop request) or a reported failure.
pub fn outcome(err: wasmtime::Error, limiter: &GuestLimiter) -> Result<i32, ShimError> {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Ok(exit.0);
    }
    if let Some(signo) = crate::stop::requested() {
        return Ok(128 + signo);
    }
    if let Some(e) = limiter.refused() {
        return Err(e);
    }
    if err.downcast_ref::<wasmtime::Trap>().is_some() {
        return Err(ShimError::Trap(format!("{err:?}")));
    }
    Err(ShimError::Runtime(format!("{err:?}")))
}
