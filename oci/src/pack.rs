//! `wasmkube pack`: put one `.wasm` file into an OCI image-layout archive (a tar holding
//! `oci-layout`, `index.json` and `blobs/sha256/…`) that `ctr images import` and
//! `kind load image-archive` accept.
//!
//! Two layouts:
//! - [`Layout::Tar`]: an ordinary image — one gzipped tar layer with the module at
//!   `/<file name>`, an OCI image config whose entrypoint is that path. Any containerd unpacks it.
//! - [`Layout::Artifact`]: the CNCF Wasm OCI artifact — config `application/vnd.wasm.config.v0+json`
//!   and one raw `application/wasm` layer. containerd 1.6 cannot import it as an archive; its
//!   CRI pulls it from a registry, and the shim reads the module from the layer.
//!
//! The archive is deterministic: the same inputs give the same bytes (fixed times and owners,
//! sorted entries, canonical JSON, gzip without name or time at a fixed level). The OCI writing
//! is [`crate::layout`]'s, the tar and gzip bytes [`crate::archive`]'s.

use std::{
    collections::HashMap,
    fmt, fs, io,
    path::{Path, PathBuf},
};

use oci_spec::image::{MediaType, ANNOTATION_TITLE};
use serde::Serialize;

pub use crate::layout::{
    ImagePlatform, ANNOTATION_CONTAINERD_IMAGE_NAME, CREATED, IMAGE_LAYOUT_VERSION,
};
use crate::{
    archive::{self, LayerEntry, LayerTree, EXEC_MODE, FILE_MODE},
    layout::{self, Blob, ImageParts, OciError, PlatformError, RunConfig},
    reference::{ImageRef, ReferenceError},
    wasm::{self, HeaderProblem, WasmKind},
};

/// Config media type of the Wasm OCI artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of the Wasm OCI artifact: the raw `.wasm` bytes.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// `author` of the artifact config.
const AUTHOR: &str = "wasmkube";

/// Everything that can go wrong while packing.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("module file {} does not exist", path.display())]
    ModuleNotFound { path: PathBuf },
    #[error("cannot read module file {}", path.display())]
    ReadModule {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not a WebAssembly binary: expected the magic bytes 00 61 73 6d (\"\\0asm\"), \
         found {found}",
        path.display()
    )]
    NotWasm { path: PathBuf, found: String },
    #[error(
        "{} has the WebAssembly magic but an unsupported version: expected 01 00 00 00 \
         (core module) or 0d 00 01 00 (component), found {found}",
        path.display()
    )]
    UnsupportedWasmVersion { path: PathBuf, found: String },
    #[error("cannot read the imports and exports of component {}: {reason}", path.display())]
    ComponentMetadata { path: PathBuf, reason: String },
    #[error("module file name {name:?} cannot be used as a file name inside the image")]
    InvalidFileName { name: String },
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    #[error(transparent)]
    InvalidPlatform(#[from] PlatformError),
    #[error("invalid environment variable {value:?}: expected KEY=VALUE with a non-empty KEY")]
    InvalidEnv { value: String },
    #[error(
        "--layout artifact cannot carry {what}: the Wasm OCI artifact config has no field for it \
         (use --layout tar)"
    )]
    NotInArtifact { what: &'static str },
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("cannot write {}", path.display())]
    WriteOutput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which image form to write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// An ordinary OCI image with one gzipped tar layer; works with containerd 1.6.
    #[default]
    Tar,
    /// The CNCF Wasm OCI artifact (raw `application/wasm` layer); needs newer containerd.
    Artifact,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Tar => "tar",
            Layout::Artifact => "artifact",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to pack the module as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// The image name, recorded in `index.json`.
    pub reference: ImageRef,
    pub layout: Layout,
    /// `None`: `wasip1/wasm` for [`Layout::Tar`]; the artifact layout always derives its
    /// platform from the module kind (`wasip1/wasm` or `wasip2/wasm`) and refuses one.
    pub platform: Option<ImagePlatform>,
    /// Image `Cmd` (tar layout only): arguments after the entrypoint.
    pub args: Vec<String>,
    /// Image `Env` as `KEY=VALUE` (tar layout only).
    pub env: Vec<String>,
}

impl PackOptions {
    /// Options for `reference` with the defaults: tar layout, `wasip1/wasm`, no args or env.
    pub fn new(reference: ImageRef) -> Self {
        PackOptions {
            reference,
            layout: Layout::default(),
            platform: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A packed image held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedImage {
    /// The image-layout tar archive.
    pub archive: Vec<u8>,
    pub kind: WasmKind,
    /// `sha256:<hex>` of the manifest (what `index.json` points at).
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config blob.
    pub config_digest: String,
    /// `sha256:<hex>` of the layer blob (gzipped tar, or the raw module for the artifact).
    pub layer_digest: String,
    /// `sha256:<hex>` of the uncompressed layer tar (tar layout only).
    pub diff_id: Option<String>,
}

/// The result of [`pack`]; its `Display` is the line `wasmkube pack` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub reference: ImageRef,
    pub layout: Layout,
    pub kind: WasmKind,
    pub output: PathBuf,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// Size of the written archive in bytes.
    pub size: u64,
}

impl fmt::Display for Packed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "packed {} ({}) -> {} manifest {}, {} bytes",
            self.reference,
            self.layout,
            self.output.display(),
            self.manifest_digest,
            self.size
        )
    }
}

/// Read `module`, check it is WebAssembly, and write the image archive to `output` (through a
/// temporary file in the same directory and a rename, so `output` is never half written).
pub fn pack(module: &Path, output: &Path, opts: &PackOptions) -> Result<Packed, PackError> {
    let bytes = fs::read(module).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => PackError::ModuleNotFound {
            path: module.to_owned(),
        },
        _ => PackError::ReadModule {
            path: module.to_owned(),
            source,
        },
    })?;
    let file_name =
        module
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| PackError::InvalidFileName {
                name: module.display().to_string(),
            })?;
    // Name errors after the path the user gave, not only the file name.
    let image = build_archive(file_name, &bytes, opts).map_err(|e| match e {
        PackError::NotWasm { found, .. } => PackError::NotWasm {
            path: module.to_owned(),
            found,
        },
        PackError::UnsupportedWasmVersion { found, .. } => PackError::UnsupportedWasmVersion {
            path: module.to_owned(),
            found,
        },
        PackError::ComponentMetadata { reason, .. } => PackError::ComponentMetadata {
            path: module.to_owned(),
            reason,
        },
        other => other,
    })?;
    archive::write_atomically(output, &image.archive).map_err(|source| PackError::WriteOutput {
        path: output.to_owned(),
        source,
    })?;
    Ok(Packed {
        reference: opts.reference.clone(),
        layout: opts.layout,
        kind: image.kind,
        output: output.to_owned(),
        manifest_digest: image.manifest_digest,
        size: image.archive.len() as u64,
    })
}

/// Check that `bytes` is a WebAssembly core module or component; `path` names it in errors.
pub fn validate_module(path: &Path, bytes: &[u8]) -> Result<WasmKind, PackError> {
    wasm::detect(bytes).map_err(|problem| match problem {
        HeaderProblem::NotWasm(found) => PackError::NotWasm {
            path: path.to_owned(),
            found,
        },
        HeaderProblem::UnsupportedVersion(found) => PackError::UnsupportedWasmVersion {
            path: path.to_owned(),
            found,
        },
    })
}

/// Build the image archive in memory for a module called `file_name` (it lands at
/// `/<file_name>` in the tar layout) with contents `module`.
pub fn build_archive(
    file_name: &str,
    module: &[u8],
    opts: &PackOptions,
) -> Result<PackedImage, PackError> {
    check_file_name(file_name)?;
    let kind = validate_module(Path::new(file_name), module)?;
    for value in &opts.env {
        match value.split_once('=') {
            Some((key, _)) if !key.is_empty() && !value.contains('\0') => {}
            _ => {
                return Err(PackError::InvalidEnv {
                    value: value.clone(),
                })
            }
        }
    }
    let parts = match opts.layout {
        Layout::Tar => {
            let tree = single_file(file_name, module, FILE_MODE);
            let run = RunConfig {
                entrypoint: Some(vec![format!("/{file_name}")]),
                cmd: (!opts.args.is_empty()).then(|| opts.args.clone()),
                env: opts.env.clone(),
                ..RunConfig::default()
            };
            layout::tar_image(&tree, &opts.platform.clone().unwrap_or_default(), &run)?
        }
        Layout::Artifact => artifact_image(file_name, module, kind, opts)?,
    };
    let image = layout::assemble(parts, &opts.reference)?;
    Ok(PackedImage {
        archive: image.archive,
        kind,
        manifest_digest: image.manifest_digest,
        config_digest: image.config_digest,
        layer_digest: image.layer_digest,
        diff_id: image.diff_id,
    })
}

/// An image whose entrypoint is a native executable `/<file_name>` (mode 0755), for the
/// linux/amd64 platform: the CRI sandbox (pause) image of a test node, for example. Same
/// deterministic layout as [`build_archive`], without the wasm checks.
pub fn build_native_archive(
    file_name: &str,
    executable: &[u8],
    reference: &ImageRef,
) -> Result<Vec<u8>, PackError> {
    check_file_name(file_name)?;
    let run = RunConfig {
        entrypoint: Some(vec![format!("/{file_name}")]),
        ..RunConfig::default()
    };
    let tree = single_file(file_name, executable, EXEC_MODE);
    let parts = layout::tar_image(&tree, &ImagePlatform::linux_amd64(), &run)?;
    Ok(layout::assemble(parts, reference)?.archive)
}

fn check_file_name(file_name: &str) -> Result<(), PackError> {
    if file_name.is_empty()
        || file_name == "."
        || file_name == ".."
        || file_name.contains(['/', '\0'])
    {
        return Err(PackError::InvalidFileName {
            name: file_name.to_owned(),
        });
    }
    Ok(())
}

/// A layer holding one file at the root.
fn single_file(file_name: &str, data: &[u8], mode: u32) -> LayerTree {
    LayerTree::from([(
        file_name.to_owned(),
        LayerEntry::File {
            mode,
            data: data.to_vec(),
        },
    )])
}

/// Config of the Wasm OCI artifact (`application/vnd.wasm.config.v0+json`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig<'a> {
    created: &'a str,
    author: &'a str,
    architecture: &'a str,
    os: &'a str,
    layer_digests: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<WasmComponent>,
}

/// The `component` object the spec requires when `os` is `wasip2`.
#[derive(Serialize)]
struct WasmComponent {
    exports: Vec<String>,
    imports: Vec<String>,
}

fn artifact_image(
    file_name: &str,
    module: &[u8],
    kind: WasmKind,
    opts: &PackOptions,
) -> Result<ImageParts, PackError> {
    if opts.platform.is_some() {
        return Err(PackError::NotInArtifact {
            what:
                "--platform (its platform is wasip1/wasm for a module, wasip2/wasm for a component)",
        });
    }
    if !opts.args.is_empty() {
        return Err(PackError::NotInArtifact { what: "--arg" });
    }
    if !opts.env.is_empty() {
        return Err(PackError::NotInArtifact { what: "--env" });
    }
    let layer = Blob::new(
        MediaType::Other(WASM_LAYER_MEDIA_TYPE.to_owned()),
        module.to_vec(),
    );
    let component = match kind {
        WasmKind::Module => None,
        WasmKind::Component => {
            let world =
                wasm::component_world(module).map_err(|reason| PackError::ComponentMetadata {
                    path: PathBuf::from(file_name),
                    reason,
                })?;
            Some(WasmComponent {
                exports: world.exports,
                imports: world.imports,
            })
        }
    };
    let platform = ImagePlatform {
        os: kind.artifact_os().to_owned(),
        architecture: "wasm".to_owned(),
    };
    let config = WasmConfig {
        created: CREATED,
        author: AUTHOR,
        architecture: &platform.architecture,
        os: &platform.os,
        layer_digests: vec![layer.digest()],
        component,
    };
    Ok(ImageParts {
        config: Blob::new(
            MediaType::Other(WASM_CONFIG_MEDIA_TYPE.to_owned()),
            layout::canonical_json(&config)?,
        ),
        layer,
        layer_annotations: Some(HashMap::from([(
            ANNOTATION_TITLE.to_owned(),
            file_name.to_owned(),
        )])),
        platform,
        diff_id: None,
        content_size: module.len() as u64,
    })
}

#[cfg(test)]
mod tests;
