//! `wasmkube image inspect`: read an image-layout archive back — its name, manifest digest,
//! platform, sizes and (optionally) its layers' files — to report on or compare images, e.g.
//! with `docker save` output; and its manifest and blobs, for `wasmkube push`.

use std::{
    collections::BTreeMap,
    fmt, fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use flate2::read::GzDecoder;
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};

use crate::layout::{ImageBlobs, ImagePlatform, ANNOTATION_CONTAINERD_IMAGE_NAME};

/// Why an archive could not be read as an image.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not an OCI image layout: {what}", path.display())]
    Layout { path: PathBuf, what: String },
    #[error("{} has an invalid {what}", path.display())]
    Spec {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: oci_spec::OciSpecError,
    },
}

/// One entry of a layer, as `wasmkube image inspect --files` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// `d`, `-`, `l` (symlink) or `h` (hard link).
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// Without a trailing `/`.
    pub path: String,
    /// Symlink or hard-link target.
    pub link: Option<String>,
}

impl fmt::Display for LayerFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04o} {}:{} {:>10} /{}",
            self.kind, self.mode, self.uid, self.gid, self.size, self.path
        )?;
        if let Some(link) = &self.link {
            write!(f, " -> {link}")?;
        }
        Ok(())
    }
}

/// What an archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSummary {
    /// `io.containerd.image.name` of the index, when present.
    pub reference: Option<String>,
    pub manifest_digest: String,
    /// `OS/ARCH` from the index, when present.
    pub platform: Option<String>,
    /// Size of the archive file.
    pub archive_size: u64,
    /// Sum of the layers' uncompressed sizes.
    pub content_size: u64,
    /// Every layer's entries, in order (tar layers only).
    pub files: Vec<LayerFile>,
}

/// The first image of an archive: its blobs, and the name and platform its index gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    pub image: ImageBlobs,
    /// `io.containerd.image.name` of the index, when present.
    pub reference: Option<String>,
    /// Size of the archive file.
    pub archive_size: u64,
}

/// Reads the first image of the archive at `path`: its manifest and the blobs it names, checked
/// against their digests and sizes.
pub fn read_archive(path: &Path) -> Result<ArchiveImage, InspectError> {
    let bytes = fs::read(path).map_err(|source| InspectError::Read {
        path: path.to_owned(),
        source,
    })?;
    read_archive_bytes(&bytes, path)
}

/// [`read_archive`] of an archive in memory; `path` names it in errors.
pub fn read_archive_bytes(bytes: &[u8], path: &Path) -> Result<ArchiveImage, InspectError> {
    let read_err = |source| InspectError::Read {
        path: path.to_owned(),
        source,
    };
    let layout_err = |what: String| InspectError::Layout {
        path: path.to_owned(),
        what,
    };
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(read_err)?;
        files.insert(name.trim_start_matches("./").to_owned(), data);
    }
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        files
            .get(&format!("blobs/sha256/{hex}"))
            .ok_or_else(|| layout_err(format!("blob {digest} is missing")))
    };
    let index_json = files
        .get("index.json")
        .ok_or_else(|| layout_err("no index.json".to_owned()))?;
    let index =
        ImageIndex::from_reader(index_json.as_slice()).map_err(|source| InspectError::Spec {
            path: path.to_owned(),
            what: "index.json",
            source,
        })?;
    let desc = index
        .manifests()
        .first()
        .ok_or_else(|| layout_err("index.json lists no manifest".to_owned()))?;
    let manifest_bytes = blob(desc.digest().as_ref())?.clone();
    let manifest = ImageManifest::from_reader(manifest_bytes.as_slice()).map_err(|source| {
        InspectError::Spec {
            path: path.to_owned(),
            what: "manifest",
            source,
        }
    })?;
    let mut blobs = BTreeMap::new();
    for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
        let digest = d.digest().to_string();
        let data = blob(&digest)?.clone();
        blobs.insert(digest, data);
    }
    let image = ImageBlobs {
        manifest: manifest_bytes,
        manifest_media_type: desc.media_type().to_string(),
        platform: desc.platform().as_ref().map(|p| ImagePlatform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
        }),
        blobs,
    };
    if image.manifest_digest() != desc.digest().to_string() {
        return Err(layout_err(format!(
            "manifest {} has digest {}",
            desc.digest(),
            image.manifest_digest()
        )));
    }
    image
        .checked_manifest()
        .map_err(|e| layout_err(e.to_string()))?;
    Ok(ArchiveImage {
        image,
        reference: desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_CONTAINERD_IMAGE_NAME).cloned()),
        archive_size: bytes.len() as u64,
    })
}

/// Reads the first image of the archive at `path`.
pub fn inspect(path: &Path) -> Result<ImageSummary, InspectError> {
    let read_err = |source| InspectError::Read {
        path: path.to_owned(),
        source,
    };
    let archive = read_archive(path)?;
    let image = &archive.image;
    let manifest = image.checked_manifest().map_err(|e| InspectError::Layout {
        path: path.to_owned(),
        what: e.to_string(),
    })?;
    let mut content_size = 0;
    let mut files = Vec::new();
    for layer in manifest.layers() {
        let Some(data) = image.blobs.get(layer.digest().as_ref()) else {
            continue; // checked_manifest found every blob
        };
        let tar = match layer.media_type() {
            MediaType::ImageLayerGzip => {
                let mut out = Vec::new();
                GzDecoder::new(data.as_slice())
                    .read_to_end(&mut out)
                    .map_err(read_err)?;
                Some(out)
            }
            MediaType::ImageLayer => Some(data.clone()),
            _ => None,
        };
        match tar {
            Some(tar) => {
                content_size += tar.len() as u64;
                files.extend(layer_files(&tar).map_err(read_err)?);
            }
            None => content_size += data.len() as u64,
        }
    }
    Ok(ImageSummary {
        reference: archive.reference.clone(),
        manifest_digest: image.manifest_digest(),
        platform: image.platform.as_ref().map(ToString::to_string),
        archive_size: archive.archive_size,
        content_size,
        files,
    })
}

fn layer_files(tar: &[u8]) -> io::Result<Vec<LayerFile>> {
    let mut files = Vec::new();
    for entry in tar::Archive::new(tar).entries()? {
        let entry = entry?;
        let header = entry.header();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            _ => '-',
        };
        let path = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        files.push(LayerFile {
            kind,
            mode: header.mode()? & 0o7777,
            uid: header.uid()?,
            gid: header.gid()?,
            size: header.size()?,
            path,
            link: entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned()),
        });
    }
    Ok(files)
}
