//! OCI assembly: blobs, the image config, manifest, index and `oci-layout`, wrapped in an
//! image-layout tar that `ctr images import` and `kind load image-archive` accept. The one OCI
//! writer behind `wasmkube pack`, `wasmkube image build` and `wasmkube pull`.

use std::{collections::BTreeMap, collections::HashMap, fmt, io, str::FromStr};

use oci_spec::{
    image::{
        Arch, ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageIndexBuilder,
        ImageManifest, ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder,
        RootFsBuilder, Sha256Digest, ANNOTATION_REF_NAME, SCHEMA_VERSION,
    },
    OciSpecError,
};
use serde::Serialize;
use serde_json::Value;

use crate::{
    archive::{self, sha256_hex, LayerTree},
    reference::ImageRef,
};

/// Index annotation containerd reads to name an imported image.
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// `imageLayoutVersion` written to `oci-layout`.
pub const IMAGE_LAYOUT_VERSION: &str = "1.0.0";
/// The `created` time of every config: the epoch, so building is reproducible.
pub const CREATED: &str = "1970-01-01T00:00:00Z";

/// Failures of the OCI writer itself (not of its inputs).
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("building OCI metadata failed")]
    Spec(#[from] OciSpecError),
    #[error("serialising JSON failed")]
    Json(#[from] serde_json::Error),
    #[error("assembling the archive failed")]
    Archive(#[source] io::Error),
}

/// A platform string that is not `OS/ARCH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {value:?}: {reason}")]
pub struct PlatformError {
    pub value: String,
    pub reason: &'static str,
}

/// An image platform `OS/ARCH`, e.g. `wasip1/wasm` (the default) or `linux/amd64`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImagePlatform {
    pub os: String,
    pub architecture: String,
}

impl ImagePlatform {
    /// `linux/amd64`, the platform of the native images.
    pub fn linux_amd64() -> Self {
        ImagePlatform {
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
        }
    }
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
    type Err = PlatformError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| PlatformError {
            value: value.to_owned(),
            reason,
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

/// The `config` object of an OCI image config: how a container of the image runs. Empty
/// fields are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE`, in order.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A blob and its media type.
pub(crate) struct Blob {
    media_type: MediaType,
    pub(crate) bytes: Vec<u8>,
    hex: String,
}

impl Blob {
    pub(crate) fn new(media_type: MediaType, bytes: Vec<u8>) -> Self {
        let hex = sha256_hex(&bytes);
        Blob {
            media_type,
            bytes,
            hex,
        }
    }

    pub(crate) fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }

    fn descriptor(&self) -> Result<Descriptor, OciError> {
        let digest = Sha256Digest::from_str(&self.hex)?;
        Ok(Descriptor::new(
            self.media_type.clone(),
            self.bytes.len() as u64,
            digest,
        ))
    }
}

/// The config and layer of one image, before the manifest and index are made.
pub(crate) struct ImageParts {
    pub(crate) config: Blob,
    pub(crate) layer: Blob,
    pub(crate) layer_annotations: Option<HashMap<String, String>>,
    pub(crate) platform: ImagePlatform,
    /// `sha256:<hex>` of the uncompressed layer tar (tar layers only).
    pub(crate) diff_id: Option<String>,
    /// Size of the uncompressed layer (the tar for a tar layer, the blob otherwise).
    pub(crate) content_size: u64,
}

/// An assembled image-layout archive and the digests inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    pub archive: Vec<u8>,
    /// `sha256:<hex>` of the manifest (what `index.json` points at).
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub diff_id: Option<String>,
    /// Bytes of the uncompressed layer.
    pub content_size: u64,
}

/// An ordinary image: one gzipped tar layer holding `tree`, and an image config for `platform`
/// with `run`.
pub(crate) fn tar_image(
    tree: &LayerTree,
    platform: &ImagePlatform,
    run: &RunConfig,
) -> Result<ImageParts, OciError> {
    let layer_tar = archive::layer_tar(tree).map_err(OciError::Archive)?;
    let diff_id = format!("sha256:{}", sha256_hex(&layer_tar));
    let layer = Blob::new(
        MediaType::ImageLayerGzip,
        archive::gzip(&layer_tar).map_err(OciError::Archive)?,
    );

    let mut config = ConfigBuilder::default();
    if let Some(entrypoint) = &run.entrypoint {
        config = config.entrypoint(entrypoint.clone());
    }
    if let Some(cmd) = &run.cmd {
        config = config.cmd(cmd.clone());
    }
    if !run.env.is_empty() {
        config = config.env(run.env.clone());
    }
    if let Some(user) = &run.user {
        config = config.user(user.clone());
    }
    if let Some(dir) = &run.working_dir {
        config = config.working_dir(dir.clone());
    }
    if !run.labels.is_empty() {
        config = config.labels(run.labels.clone().into_iter().collect::<HashMap<_, _>>());
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
        platform: platform.clone(),
        diff_id: Some(diff_id),
        content_size: layer_tar.len() as u64,
    })
}

/// Manifest, index and oci-layout around `parts`, then the outer tar.
pub(crate) fn assemble(parts: ImageParts, reference: &ImageRef) -> Result<Assembled, OciError> {
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
    let image = ImageBlobs {
        manifest: canonical_json(&manifest)?,
        manifest_media_type: MediaType::ImageManifest.to_string(),
        platform: Some(parts.platform),
        blobs: [&parts.config, &parts.layer]
            .into_iter()
            .map(|blob| (blob.digest(), blob.bytes.clone()))
            .collect(),
    };
    Ok(Assembled {
        archive: write_archive(&image, reference)?,
        manifest_digest: image.manifest_digest(),
        config_digest: parts.config.digest(),
        layer_digest: parts.layer.digest(),
        diff_id: parts.diff_id,
        content_size: parts.content_size,
    })
}

/// One image as a registry holds it: the manifest's bytes and the blobs it names (config and
/// layers) by digest. What [`crate::registry`] pushes and pulls, [`write_archive`] writes and
/// [`crate::inspect::read_archive`] reads. The manifest's bytes are kept as they are, so its
/// digest survives every move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBlobs {
    pub manifest: Vec<u8>,
    /// `application/vnd.oci.image.manifest.v1+json`, or Docker's v2 manifest type.
    pub manifest_media_type: String,
    /// From the index (archives) or the config (registries), when known.
    pub platform: Option<ImagePlatform>,
    /// `sha256:<hex>` → bytes.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// An [`ImageBlobs`] whose parts do not agree.
#[derive(Debug, thiserror::Error)]
pub enum ImageBlobsError {
    #[error("the manifest is not an image manifest")]
    Manifest(#[source] OciSpecError),
    #[error("the manifest names blob {digest}, which is missing")]
    Missing { digest: String },
    #[error("blob {digest} has digest sha256:{actual}")]
    Digest { digest: String, actual: String },
    #[error("blob {digest} is {actual} bytes, the manifest says {expected}")]
    Size {
        digest: String,
        expected: u64,
        actual: u64,
    },
}

impl ImageBlobs {
    /// `sha256:<hex>` of the manifest's bytes: the image's identity in a registry.
    pub fn manifest_digest(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.manifest))
    }

    /// The manifest, after checking that every blob it names is here with its digest and size.
    pub fn checked_manifest(&self) -> Result<ImageManifest, ImageBlobsError> {
        let manifest = ImageManifest::from_reader(self.manifest.as_slice())
            .map_err(ImageBlobsError::Manifest)?;
        for desc in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let digest = desc.digest().to_string();
            let bytes = self
                .blobs
                .get(&digest)
                .ok_or_else(|| ImageBlobsError::Missing {
                    digest: digest.clone(),
                })?;
            let actual = sha256_hex(bytes);
            if format!("sha256:{actual}") != digest {
                return Err(ImageBlobsError::Digest { digest, actual });
            }
            if bytes.len() as u64 != desc.size() {
                return Err(ImageBlobsError::Size {
                    digest,
                    expected: desc.size(),
                    actual: bytes.len() as u64,
                });
            }
        }
        Ok(manifest)
    }
}

/// The image-layout archive of `image` (`oci-layout`, `index.json` naming it `reference`,
/// `blobs/sha256/…`) that `ctr images import` and `kind load image-archive` accept.
/// Deterministic: the same image and reference give the same bytes.
pub fn write_archive(image: &ImageBlobs, reference: &ImageRef) -> Result<Vec<u8>, OciError> {
    let manifest_hex = sha256_hex(&image.manifest);
    let mut manifest_desc = Descriptor::new(
        MediaType::from(image.manifest_media_type.as_str()),
        image.manifest.len() as u64,
        Sha256Digest::from_str(&manifest_hex)?,
    );
    manifest_desc.set_annotations(Some(HashMap::from([
        (ANNOTATION_REF_NAME.to_owned(), reference.tag().to_owned()),
        (
            ANNOTATION_CONTAINERD_IMAGE_NAME.to_owned(),
            reference.to_string(),
        ),
    ])));
    if let Some(platform) = &image.platform {
        manifest_desc.set_platform(Some(
            PlatformBuilder::default()
                .architecture(Arch::from(platform.architecture.as_str()))
                .os(Os::from(platform.os.as_str()))
                .build()?,
        ));
    }
    let index = ImageIndexBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()?;
    let layout = OciLayoutBuilder::default()
        .image_layout_version(IMAGE_LAYOUT_VERSION)
        .build()?;

    let mut files = BTreeMap::new();
    for (digest, bytes) in &image.blobs {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        files.insert(format!("blobs/sha256/{hex}"), bytes.as_slice());
    }
    files.insert(format!("blobs/sha256/{manifest_hex}"), &image.manifest);
    let index_json = canonical_json(&index)?;
    let layout_json = canonical_json(&layout)?;
    files.insert("index.json".to_owned(), &index_json);
    files.insert("oci-layout".to_owned(), &layout_json);
    archive::layout_tar(&files).map_err(OciError::Archive)
}

/// JSON with object keys sorted at every level, so `HashMap`-backed fields (annotations,
/// labels) serialise the same way in every run.
pub(crate) fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, OciError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parsing() {
        assert_eq!(
            "wasip1/wasm".parse::<ImagePlatform>().expect("valid"),
            ImagePlatform::default()
        );
        let p: ImagePlatform = "linux/arm64".parse().expect("valid");
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
        assert_eq!(p.to_string(), "linux/arm64");
        assert_eq!(
            "linux/amd64".parse::<ImagePlatform>(),
            Ok(ImagePlatform::linux_amd64())
        );
        for bad in ["wasm", "/wasm", "wasip1/", "Linux/amd64", "a/b/c"] {
            assert!(bad.parse::<ImagePlatform>().is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value = serde_json::json!({"b": {"z": 1, "a": 2}, "a": [{"y": 1, "x": 2}]});
        let text = String::from_utf8(canonical_json(&value).expect("json")).expect("utf8");
        assert_eq!(text, r#"{"a":[{"x":2,"y":1}],"b":{"a":2,"z":1}}"#);
    }
}
