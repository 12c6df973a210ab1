//! The library behind the `wasmkube` command.
//!
//! [`pack()`] turns a `.wasm` file into an OCI image-layout archive for `ctr images import` and
//! `kind load image-archive`; [`build_archive`] does the same in memory. [`build_image`] builds
//! a native image from a Dockerfile subset (`FROM scratch`, `COPY`, config instructions) without
//! Docker; [`inspect::inspect`] reads an archive back. [`render::render`] prints the objects the
//! operator would apply for a WasmApp, with the operator's own builders.
//!
//! Layers: [`archive`] (tar, gzip, file IO) ← [`oci`] (the one OCI writer) ← [`mod@pack`] and
//! [`image`] (what goes in); [`mod@reference`] and [`dockerfile`] are pure parsers.

pub mod archive;
pub mod dockerfile;
pub mod image;
pub mod inspect;
pub mod oci;
pub mod pack;
pub mod reference;
pub mod render;
mod wasm;

pub use image::{build_image, BuildError, BuiltImage};
pub use oci::{ImagePlatform, PlatformError};
pub use pack::{
    build_archive, build_native_archive, pack, validate_module, Layout, PackError, PackOptions,
    Packed, PackedImage,
};
pub use reference::{ImageRef, ReferenceError};
pub use wasm::{WasmKind, WASM_MAGIC};
