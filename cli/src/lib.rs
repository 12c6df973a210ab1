//! The library behind the `wasmkube` command.
//!
//! [`pack()`] turns a `.wasm` file into an OCI image-layout archive for `ctr images import` and
//! `kind load image-archive`; [`build_archive`] does the same in memory. [`render::render`] prints
//! the objects the operator would apply for a WasmApp, with the operator's own builders.

pub mod pack;
pub mod reference;
pub mod render;
mod wasm;

pub use pack::{
    build_archive, build_native_archive, pack, validate_module, ImagePlatform, Layout, PackError,
    PackOptions, Packed, PackedImage,
};
pub use reference::ImageRef;
pub use wasm::{WasmKind, WASM_MAGIC};
