//! The library behind the `wasmkube` command: [`render::render`] prints the objects the operator
//! would apply for a WasmApp, with the operator's own builders. Images (pack, build, inspect,
//! push, pull) are [`wasmkube_oci`]'s.

pub mod render;
