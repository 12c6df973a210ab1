//! OCI images for wasmkube, shared by the `wasmkube` command, the test harness and the cluster
//! scripts.
//!
//! [`pack()`] turns a `.wasm` file into an OCI image-layout archive for `ctr images import` and
//! `kind load image-archive`; [`build_archive`] does the same in memory. [`build_image`] builds
//! a native image from a Dockerfile subset (`FROM scratch`, `COPY`, config instructions) without
//! Docker; [`inspect::inspect`] reads an archive back and [`inspect::read_archive`] returns its
//! manifest and blobs. [`registry`] pushes images to and pulls them from OCI registries.
//!
//! Layers: [`archive`] (tar, gzip, file IO) ← [`layout`] (the one OCI writer) ← [`mod@pack`] and
//! [`image`] (what goes in); [`registry`] moves [`ImageBlobs`] between archives and registries;
//! [`mod@reference`] and [`dockerfile`] are pure parsers.

pub mod archive;
pub mod dockerfile;
pub mod image;
pub mod inspect;
pub mod layout;
pub mod pack;
pub mod reference;
pub mod registry;
mod wasm;

pub use image::{build_image, BuildError, BuiltImage};
pub use layout::{ImageBlobs, ImagePlatform, PlatformError};
pub use pack::{
    build_archive, build_native_archive, pack, validate_module, Layout, PackError, PackOptions,
    Packed, PackedImage, WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE,
};
pub use reference::{ImageRef, ReferenceError};
pub use wasm::{WasmKind, WASM_MAGIC};
