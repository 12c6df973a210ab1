//! Pure functions from a WasmApp to the objects the operator applies (and `wasmkube render`
//! prints).

pub mod app;
pub mod grants;
