//! `wasmkube pack`: put one `.wasm` file into an OCI image-layout archive (a tar holding
//! `oci-layout`, `index.json` and `blobs/sha256/…`) that `ctr images import` and
//! `kind load image-archive` accept.
//!
//! Two layouts:
//! - [`Layout::Tar`]: an ordinary image — one gzipped tar layer with the module at
//!   `/<file name>`, an OCI image config whose entrypoint is that path. Any containerd unpacks it.
//! - [`Layout::Artifact`]: the CNCF Wasm OCI artifact — config `application/vnd.wasm.config.v0+json`
//!   and one raw `application/wasm` layer. containerd 1.6 cannot unpack it (no processor for
//!   that media type); newer containerd and runwasi understand it.
//!
//! The archive is deterministic: the same inputs give the same bytes (fixed times and owners,
//! sorted entries, canonical JSON, gzip without name or time at a fixed level).

use std::{
    collections::{BTreeMap, HashMap},
    fmt, fs,
    io::{self, Write},
    path::{Path, PathBuf},
    str::FromStr,
};

use flate2::{Compression, GzBuilder};
use oci_spec::{
    image::{
        Arch, ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder,
        ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
        Sha256Digest, ANNOTATION_REF_NAME, ANNOTATION_TITLE, SCHEMA_VERSION,
    },
    OciSpecError,
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{
    reference::ImageRef,
    wasm::{self, HeaderProblem, WasmKind},
};

/// Config media type of the Wasm OCI artifact.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of the Wasm OCI artifact: the raw `.wasm` bytes.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Index annotation containerd reads to name an imported image.
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// `imageLayoutVersion` written to `oci-layout`.
pub const IMAGE_LAYOUT_VERSION: &str = "1.0.0";
/// The `created` time of every config: the epoch, so packing is reproducible.
pub const CREATED: &str = "1970-01-01T00:00:00Z";
/// `author` of the artifact config.
const AUTHOR: &str = "wasmkube";
/// Fixed gzip level: a different level would give different layer bytes and digests.
const GZIP_LEVEL: u32 = 9;
/// gzip header OS byte: 255 = unknown, so the host does not leak into the digest.
const GZIP_OS_UNKNOWN: u8 = 255;
const FILE_MODE: u32 = 0o644;
const EXEC_MODE: u32 = 0o755;
const DIR_MODE: u32 = 0o755;

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
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid platform {value:?}: {reason}")]
    InvalidPlatform { value: String, reason: String },
    #[error("invalid environment variable {value:?}: expected KEY=VALUE with a non-empty KEY")]
    InvalidEnv { value: String },
    #[error(
        "--layout artifact cannot carry {what}: the Wasm OCI artifact config has no field for it \
         (use --layout tar)"
    )]
    NotInArtifact { what: &'static str },
    #[error("building OCI metadata failed")]
    Spec(#[from] OciSpecError),
    #[error("serialising JSON failed")]
    Json(#[from] serde_json::Error),
    #[error("assembling the archive failed")]
    Archive(#[source] io::Error),
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

/// An image platform `OS/ARCH`, e.g. `wasip1/wasm` (the default) or `linux/amd64`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImagePlatform {
    pub os: String,
    pub architecture: String,
}

impl Default for ImagePlatform {
    fn default() -> Self {
        ImagePlatform {
            os: "wasip1".to_owned(),
            architecture: "wasm".to_owned(),
        }
    }
}

impl FromStr for ImagePlatform {
    type Err = PackError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| PackError::InvalidPlatform {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let (os, arch) = value
            .split_once('/')
            .ok_or_else(|| invalid("expected OS/ARCH, e.g. wasip1/wasm"))?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.')
                })
        };
        if !part_ok(os) || !part_ok(arch) {
            return Err(invalid(
                "expected OS/ARCH, each part lowercase letters, digits, '_', '-' or '.'",
            ));
        }
        Ok(ImagePlatform {
            os: os.to_owned(),
            architecture: arch.to_owned(),
        })
    }
}

impl fmt::Display for ImagePlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
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
    write_atomically(output, &image.archive).map_err(|source| PackError::WriteOutput {
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
    if file_name.is_empty()
        || file_name == "."
        || file_name == ".."
        || file_name.contains(['/', '\0'])
    {
        return Err(PackError::InvalidFileName {
            name: file_name.to_owned(),
        });
    }
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
        Layout::Tar => tar_image(file_name, module, FILE_MODE, opts)?,
        Layout::Artifact => artifact_image(file_name, module, kind, opts)?,
    };
    assemble(parts, kind, &opts.reference)
}

/// An image whose entrypoint is a native executable `/<file_name>` (mode 0755), for the
/// linux/amd64 platform: the CRI sandbox (pause) image of a test node, for example. Same
/// deterministic layout as [`build_archive`], without the wasm checks.
pub fn build_native_archive(
    file_name: &str,
    executable: &[u8],
    reference: &ImageRef,
) -> Result<Vec<u8>, PackError> {
    let mut opts = PackOptions::new(reference.clone());
    opts.platform = Some(ImagePlatform {
        os: "linux".to_owned(),
        architecture: "amd64".to_owned(),
    });
    let parts = tar_image(file_name, executable, EXEC_MODE, &opts)?;
    Ok(assemble(parts, WasmKind::Module, reference)?.archive)
}

/// A blob and its media type.
struct Blob {
    media_type: MediaType,
    bytes: Vec<u8>,
    hex: String,
}

impl Blob {
    fn new(media_type: MediaType, bytes: Vec<u8>) -> Self {
        let hex = sha256_hex(&bytes);
        Blob {
            media_type,
            bytes,
            hex,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }

    fn descriptor(&self) -> Result<Descriptor, PackError> {
        let digest = Sha256Digest::from_str(&self.hex)?;
        Ok(Descriptor::new(
            self.media_type.clone(),
            self.bytes.len() as u64,
            digest,
        ))
    }
}

/// The config and layer of one image, before the manifest and index are made.
struct ImageParts {
    config: Blob,
    layer: Blob,
    layer_annotations: Option<HashMap<String, String>>,
    platform: ImagePlatform,
    diff_id: Option<String>,
}

fn tar_image(
    file_name: &str,
    module: &[u8],
    mode: u32,
    opts: &PackOptions,
) -> Result<ImageParts, PackError> {
    let platform = opts.platform.clone().unwrap_or_default();
    let layer_tar = layer_tar(file_name, module, mode).map_err(PackError::Archive)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer_tar));
    let layer = Blob::new(
        MediaType::ImageLayerGzip,
        gzip(&layer_tar).map_err(PackError::Archive)?,
    );

    let mut config = ConfigBuilder::default().entrypoint(vec![format!("/{file_name}")]);
    if !opts.args.is_empty() {
        config = config.cmd(opts.args.clone());
    }
    if !opts.env.is_empty() {
        config = config.env(opts.env.clone());
    }
    let image_config = ImageConfigurationBuilder::default()
        .created(CREATED)
        .architecture(Arch::from(platform.architecture.as_str()))
        .os(Os::from(platform.os.as_str()))
        .config(config.build()?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id.clone()])
                .build()?,
        )
        .build()?;
    Ok(ImageParts {
        config: Blob::new(MediaType::ImageConfig, canonical_json(&image_config)?),
        layer,
        layer_annotations: None,
        platform,
        diff_id: Some(diff_id),
    })
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
            canonical_json(&config)?,
        ),
        layer,
        layer_annotations: Some(HashMap::from([(
            ANNOTATION_TITLE.to_owned(),
            file_name.to_owned(),
        )])),
        platform,
        diff_id: None,
    })
}

/// Manifest, index and oci-layout around `parts`, then the outer tar.
fn assemble(
    parts: ImageParts,
    kind: WasmKind,
    reference: &ImageRef,
) -> Result<PackedImage, PackError> {
    let mut layer_desc = parts.layer.descriptor()?;
    if let Some(annotations) = parts.layer_annotations {
        layer_desc.set_annotations(Some(annotations));
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(parts.config.descriptor()?)
        .layers(vec![layer_desc])
        .build()?;
    let manifest = Blob::new(MediaType::ImageManifest, canonical_json(&manifest)?);

    let mut manifest_desc = manifest.descriptor()?;
    manifest_desc.set_annotations(Some(HashMap::from([
        (ANNOTATION_REF_NAME.to_owned(), reference.tag().to_owned()),
        (
            ANNOTATION_CONTAINERD_IMAGE_NAME.to_owned(),
            reference.to_string(),
        ),
    ])));
    manifest_desc.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::from(parts.platform.architecture.as_str()))
            .os(Os::from(parts.platform.os.as_str()))
            .build()?,
    ));
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version(IMAGE_LAYOUT_VERSION)
        .build()?;

    let mut files = BTreeMap::new();
    for blob in [&parts.config, &parts.layer, &manifest] {
        files.insert(format!("blobs/sha256/{}", blob.hex), blob.bytes.as_slice());
    }
    let index_json = canonical_json(&index)?;
    let layout_json = canonical_json(&layout)?;
    files.insert("index.json".to_owned(), &index_json);
    files.insert("oci-layout".to_owned(), &layout_json);
    let archive = layout_tar(&files).map_err(PackError::Archive)?;

    Ok(PackedImage {
        archive,
        kind,
        manifest_digest: manifest.digest(),
        config_digest: parts.config.digest(),
        layer_digest: parts.layer.digest(),
        diff_id: parts.diff_id,
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// JSON with object keys sorted at every level, so `HashMap`-backed fields (annotations)
/// serialise the same way in every run.
fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, PackError> {
    fn sorted(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sorted(serde_json::to_value(value)?))?)
}

/// A tar header with everything that could vary between hosts or runs fixed.
fn fixed_header(entry_type: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header
}

/// The layer: one regular file `<file_name>` (i.e. `/<file_name>` once unpacked).
fn layer_tar(file_name: &str, module: &[u8], mode: u32) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = fixed_header(tar::EntryType::Regular, mode, module.len() as u64);
    builder.append_data(&mut header, file_name, module)?;
    builder.into_inner()
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    encoder.write_all(data)?;
    encoder.finish()
}

/// The image-layout archive: `blobs/`, `blobs/sha256/`, then the files in sorted order.
fn layout_tar(files: &BTreeMap<String, &[u8]>) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut header = fixed_header(tar::EntryType::Directory, DIR_MODE, 0);
        builder.append_data(&mut header, dir, io::empty())?;
    }
    for (path, data) in files {
        let mut header = fixed_header(tar::EntryType::Regular, FILE_MODE, data.len() as u64);
        builder.append_data(&mut header, path, *data)?;
    }
    builder.into_inner()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the output path has no file name",
        )
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temp file may not even exist.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;
    use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

    use super::*;
    use crate::wasm::fixtures::tiny_component;

    /// The smallest valid core module: magic + version 1, no sections.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn opts(reference: &str) -> PackOptions {
        PackOptions::new(ImageRef::parse(reference).expect("valid reference"))
    }

    /// Tar entries by path: (header, contents).
    type Entries = BTreeMap<String, (tar::Header, Vec<u8>)>;

    /// Unpack a tar into path -> (header, bytes), keeping entry order separately.
    fn untar(bytes: &[u8]) -> (Vec<String>, Entries) {
        let mut archive = tar::Archive::new(bytes);
        let mut order = Vec::new();
        let mut files = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            order.push(path.clone());
            files.insert(path, (entry.header().clone(), data));
        }
        (order, files)
    }

    fn blob<'a>(files: &'a Entries, digest: &str) -> &'a [u8] {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        &files
            .get(&format!("blobs/sha256/{hex}"))
            .unwrap_or_else(|| panic!("blob {digest} missing"))
            .1
    }

    fn index_and_manifest(files: &Entries) -> (ImageIndex, ImageManifest) {
        let index = ImageIndex::from_reader(files["index.json"].1.as_slice()).expect("index");
        assert_eq!(index.manifests().len(), 1);
        let desc = &index.manifests()[0];
        let manifest =
            ImageManifest::from_reader(blob(files, desc.digest().as_ref())).expect("manifest");
        (index, manifest)
    }

    #[test]
    fn packing_is_deterministic() {
        for layout in [Layout::Tar, Layout::Artifact] {
            let mut o = opts("hello");
            o.layout = layout;
            if layout == Layout::Tar {
                o.args = vec!["a".into(), "b".into()];
                o.env = vec!["Z=1".into(), "A=2".into()];
            }
            let first = build_archive("hello.wasm", EMPTY_MODULE, &o).expect("pack");
            let second = build_archive("hello.wasm", EMPTY_MODULE, &o).expect("pack");
            assert_eq!(first.archive, second.archive, "{layout}");
            assert_eq!(first.manifest_digest, second.manifest_digest);
        }
    }

    #[test]
    fn pack_writes_identical_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let module = dir.path().join("hello.wasm");
        fs::write(&module, EMPTY_MODULE).expect("write module");
        let o = opts("hello:v1");
        let a = pack(&module, &dir.path().join("a.tar"), &o).expect("pack a");
        let b = pack(&module, &dir.path().join("b.tar"), &o).expect("pack b");
        let a_bytes = fs::read(&a.output).expect("read a");
        assert_eq!(a_bytes, fs::read(&b.output).expect("read b"));
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.size, a_bytes.len() as u64);
        let line = a.to_string();
        assert!(
            line.starts_with("packed docker.io/library/hello:v1 (tar) -> "),
            "{line}"
        );
        assert!(
            line.ends_with(&format!(
                " manifest {}, {} bytes",
                a.manifest_digest, a.size
            )),
            "{line}"
        );
        // No temp files left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a.tar", "b.tar", "hello.wasm"]);
    }

    #[test]
    fn archive_blobs_match_their_names_and_descriptors() {
        for layout in [Layout::Tar, Layout::Artifact] {
            let mut o = opts("hello");
            o.layout = layout;
            let image = build_archive("hello.wasm", EMPTY_MODULE, &o).expect("pack");
            let (order, files) = untar(&image.archive);

            // Sorted, with the directories first.
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted, "{layout}");
            assert_eq!(order[..2], ["blobs/", "blobs/sha256/"]);
            assert_eq!(order.len(), 2 + 3 + 2, "{order:?}");
            for (path, (header, data)) in &files {
                assert_eq!(header.mtime().expect("mtime"), 0, "{path}");
                assert_eq!(header.uid().expect("uid"), 0, "{path}");
                assert_eq!(header.gid().expect("gid"), 0, "{path}");
                if header.entry_type() == tar::EntryType::Directory {
                    assert_eq!(header.mode().expect("mode"), 0o755, "{path}");
                    continue;
                }
                assert_eq!(header.mode().expect("mode"), 0o644, "{path}");
                if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                    assert_eq!(sha256_hex(data), hex, "{path}");
                }
            }

            let layout_json: Value =
                serde_json::from_slice(&files["oci-layout"].1).expect("oci-layout");
            assert_eq!(
                layout_json,
                serde_json::json!({"imageLayoutVersion": "1.0.0"})
            );

            let (index, manifest) = index_and_manifest(&files);
            assert_eq!(index.media_type(), &Some(MediaType::ImageIndex));
            let desc = &index.manifests()[0];
            assert_eq!(desc.media_type(), &MediaType::ImageManifest);
            assert_eq!(desc.digest().to_string(), image.manifest_digest);
            assert_eq!(
                desc.size(),
                blob(&files, &image.manifest_digest).len() as u64
            );
            assert_eq!(manifest.media_type(), &Some(MediaType::ImageManifest));
            assert_eq!(manifest.schema_version(), 2);
            assert_eq!(manifest.artifact_type(), &None);
            assert_eq!(manifest.layers().len(), 1);
            for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
                assert_eq!(blob(&files, d.digest().as_ref()).len() as u64, d.size());
            }
            assert_eq!(manifest.config().digest().to_string(), image.config_digest);
            assert_eq!(
                manifest.layers()[0].digest().to_string(),
                image.layer_digest
            );
        }
    }

    #[test]
    fn index_names_the_image_for_containerd() {
        let image =
            build_archive("hello.wasm", EMPTY_MODULE, &opts("org/hello:1.2")).expect("pack");
        let (_, files) = untar(&image.archive);
        let (index, _) = index_and_manifest(&files);
        let desc = &index.manifests()[0];
        let annotations = desc.annotations().as_ref().expect("annotations");
        assert_eq!(annotations[ANNOTATION_REF_NAME], "1.2");
        assert_eq!(
            annotations[ANNOTATION_CONTAINERD_IMAGE_NAME],
            "docker.io/org/hello:1.2"
        );
        let platform = desc.platform().as_ref().expect("platform");
        assert_eq!(platform.os(), &Os::from("wasip1"));
        assert_eq!(platform.architecture(), &Arch::Wasm);
    }

    #[test]
    fn tar_layer_holds_the_module_and_matches_diff_id() {
        let module = tiny_component();
        let mut o = opts("ghcr.io/me/app:v1");
        o.args = vec!["--flag".into(), "x y".into()];
        o.env = vec!["RUST_LOG=debug".into(), "EMPTY=".into()];
        o.platform = Some("linux/amd64".parse().expect("platform"));
        let image = build_archive("app.wasm", &module, &o).expect("pack");
        let (_, files) = untar(&image.archive);
        let (_, manifest) = index_and_manifest(&files);

        let layer_desc = &manifest.layers()[0];
        assert_eq!(layer_desc.media_type(), &MediaType::ImageLayerGzip);
        let gz = blob(&files, layer_desc.digest().as_ref());
        // gzip header: no flags (so no file name), mtime 0, OS unknown.
        assert_eq!(gz[3], 0, "FLG");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0][..], "MTIME");
        assert_eq!(gz[9], GZIP_OS_UNKNOWN, "OS");
        let mut layer = Vec::new();
        GzDecoder::new(gz).read_to_end(&mut layer).expect("gunzip");
        let diff_id = format!("sha256:{}", sha256_hex(&layer));
        assert_eq!(image.diff_id.as_deref(), Some(diff_id.as_str()));

        let (order, entries) = untar(&layer);
        assert_eq!(order, ["app.wasm"]);
        let (header, data) = &entries["app.wasm"];
        assert_eq!(data, &module);
        assert_eq!(header.mode().expect("mode"), 0o644);
        assert_eq!(header.entry_type(), tar::EntryType::Regular);
        assert_eq!(header.mtime().expect("mtime"), 0);
        assert_eq!(
            (header.uid().expect("uid"), header.gid().expect("gid")),
            (0, 0)
        );

        assert_eq!(manifest.config().media_type(), &MediaType::ImageConfig);
        let config =
            ImageConfiguration::from_reader(blob(&files, manifest.config().digest().as_ref()))
                .expect("config");
        assert_eq!(config.rootfs().diff_ids(), &vec![diff_id]);
        assert_eq!(config.rootfs().typ(), "layers");
        assert_eq!(config.os(), &Os::Linux);
        assert_eq!(config.architecture(), &Arch::Amd64);
        assert_eq!(config.created().as_deref(), Some(CREATED));
        let c = config.config().as_ref().expect("config.config");
        assert_eq!(c.entrypoint(), &Some(vec!["/app.wasm".to_owned()]));
        assert_eq!(c.cmd(), &Some(o.args.clone()));
        assert_eq!(c.env(), &Some(o.env.clone()));
    }

    #[test]
    fn tar_config_omits_empty_cmd_and_env() {
        let image = build_archive("hello.wasm", EMPTY_MODULE, &opts("hello")).expect("pack");
        let (_, files) = untar(&image.archive);
        let config: Value =
            serde_json::from_slice(blob(&files, &image.config_digest)).expect("config json");
        assert_eq!(
            config["config"],
            serde_json::json!({"Entrypoint": ["/hello.wasm"]})
        );
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["os"], "wasip1");
    }

    #[test]
    fn artifact_layout_uses_wasm_media_types() {
        let mut o = opts("hello");
        o.layout = Layout::Artifact;
        let image = build_archive("hello.wasm", EMPTY_MODULE, &o).expect("pack");
        assert_eq!(image.diff_id, None);
        let (_, files) = untar(&image.archive);
        let (index, manifest) = index_and_manifest(&files);
        assert_eq!(
            manifest.config().media_type().as_ref(),
            WASM_CONFIG_MEDIA_TYPE
        );
        let layer = &manifest.layers()[0];
        assert_eq!(layer.media_type().as_ref(), WASM_LAYER_MEDIA_TYPE);
        assert_eq!(blob(&files, layer.digest().as_ref()), EMPTY_MODULE);
        assert_eq!(
            layer.annotations().as_ref().expect("annotations")[ANNOTATION_TITLE],
            "hello.wasm"
        );
        let config: Value =
            serde_json::from_slice(blob(&files, &image.config_digest)).expect("config json");
        assert_eq!(
            config,
            serde_json::json!({
                "created": CREATED,
                "author": "wasmkube",
                "architecture": "wasm",
                "os": "wasip1",
                "layerDigests": [image.layer_digest],
            })
        );
        let platform = index.manifests()[0].platform().as_ref().expect("platform");
        assert_eq!(platform.os(), &Os::from("wasip1"));
    }

    #[test]
    fn artifact_component_lists_its_world() {
        let mut o = opts("hello");
        o.layout = Layout::Artifact;
        let image = build_archive("app.wasm", &tiny_component(), &o).expect("pack");
        assert_eq!(image.kind, WasmKind::Component);
        let (_, files) = untar(&image.archive);
        let config: Value =
            serde_json::from_slice(blob(&files, &image.config_digest)).expect("config json");
        assert_eq!(config["os"], "wasip2");
        assert_eq!(
            config["component"],
            serde_json::json!({
                "exports": ["wasi:cli/run@0.2.0"],
                "imports": ["wasi:cli/environment@0.2.0"],
            })
        );
    }

    #[test]
    fn artifact_refuses_what_it_cannot_carry() {
        for (field, setter) in [
            (
                "--arg",
                (|o: &mut PackOptions| o.args = vec!["x".into()]) as fn(&mut _),
            ),
            ("--env", |o| o.env = vec!["A=b".into()]),
            ("--platform", |o| {
                o.platform = Some(ImagePlatform::default())
            }),
        ] {
            let mut o = opts("hello");
            o.layout = Layout::Artifact;
            setter(&mut o);
            let err = build_archive("hello.wasm", EMPTY_MODULE, &o).expect_err(field);
            assert!(matches!(err, PackError::NotInArtifact { .. }), "{err}");
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn invalid_inputs_are_refused() {
        let o = opts("hello");
        let err = build_archive("notes.txt", b"hello world\n", &o).expect_err("text");
        assert!(matches!(err, PackError::NotWasm { .. }));
        let msg = err.to_string();
        assert!(msg.contains("notes.txt"), "{msg}");
        assert!(msg.contains("68 65 6c 6c"), "{msg}");

        let err = build_archive("old.wasm", b"\0asm\x0a\0\x01\0", &o).expect_err("old");
        assert!(
            matches!(err, PackError::UnsupportedWasmVersion { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("0a 00 01 00"), "{err}");

        let err = build_archive("empty.wasm", b"", &o).expect_err("empty");
        assert!(err.to_string().contains("an empty file"), "{err}");

        for bad in ["", ".", "..", "a/b.wasm"] {
            let err = build_archive(bad, EMPTY_MODULE, &o).expect_err(bad);
            assert!(
                matches!(err, PackError::InvalidFileName { .. }),
                "{bad}: {err}"
            );
        }

        for bad in ["NOEQUALS", "=value", "A=\0"] {
            let mut o = opts("hello");
            o.env = vec![bad.to_owned()];
            let err = build_archive("hello.wasm", EMPTY_MODULE, &o).expect_err(bad);
            assert!(matches!(err, PackError::InvalidEnv { .. }), "{bad}: {err}");
        }

        let mut o = opts("hello");
        o.layout = Layout::Artifact;
        let mut broken = tiny_component();
        broken.truncate(broken.len() - 2);
        let err = build_archive("c.wasm", &broken, &o).expect_err("truncated component");
        assert!(matches!(err, PackError::ComponentMetadata { .. }), "{err}");
    }

    #[test]
    fn pack_reports_missing_and_invalid_files_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out.tar");
        let missing = dir.path().join("nope.wasm");
        let err = pack(&missing, &out, &opts("hello")).expect_err("missing");
        assert!(matches!(err, PackError::ModuleNotFound { .. }), "{err}");
        assert!(err.to_string().contains(&missing.display().to_string()));

        let text = dir.path().join("sub").join("hello.wasm");
        fs::create_dir(dir.path().join("sub")).expect("mkdir");
        fs::write(&text, "(module)").expect("write");
        let err = pack(&text, &out, &opts("hello")).expect_err("wat");
        let msg = err.to_string();
        assert!(msg.contains(&text.display().to_string()), "{msg}");
        assert!(msg.contains("WebAssembly text"), "{msg}");
        assert!(!out.exists());

        let module = dir.path().join("ok.wasm");
        fs::write(&module, EMPTY_MODULE).expect("write");
        let err = pack(
            &module,
            &dir.path().join("no-such-dir").join("x.tar"),
            &opts("hello"),
        )
        .expect_err("unwritable");
        assert!(matches!(err, PackError::WriteOutput { .. }), "{err}");
    }

    #[test]
    fn platform_parsing() {
        assert_eq!(
            "wasip1/wasm".parse::<ImagePlatform>().expect("valid"),
            ImagePlatform::default()
        );
        let p: ImagePlatform = "linux/arm64".parse().expect("valid");
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
        assert_eq!(p.to_string(), "linux/arm64");
        for bad in ["wasm", "/wasm", "wasip1/", "Linux/amd64", "a/b/c"] {
            assert!(bad.parse::<ImagePlatform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn different_inputs_give_different_digests() {
        let base = build_archive("hello.wasm", EMPTY_MODULE, &opts("hello")).expect("pack");
        let renamed = build_archive("other.wasm", EMPTY_MODULE, &opts("hello")).expect("pack");
        let retagged = build_archive("hello.wasm", EMPTY_MODULE, &opts("hello:v2")).expect("pack");
        assert_ne!(base.manifest_digest, renamed.manifest_digest);
        // The name lives only in index.json: same manifest, different archive.
        assert_eq!(base.manifest_digest, retagged.manifest_digest);
        assert_ne!(base.archive, retagged.archive);
    }
}
