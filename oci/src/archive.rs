//! Bytes on disk and in tars: deterministic layer and image-layout tars, gzip, sha256, and the
//! atomic write of an output file. Nothing here knows about OCI or wasm.
//!
//! Determinism: every header has mtime 0, uid/gid 0 and no user/group names; entries are written
//! in sorted path order; gzip has no file name, mtime 0, OS "unknown" and a fixed level.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    path::Path,
};

use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha256};

/// Mode of a plain (non-executable) file.
pub const FILE_MODE: u32 = 0o644;
/// Mode of an executable file.
pub const EXEC_MODE: u32 = 0o755;
/// Mode of a directory.
pub const DIR_MODE: u32 = 0o755;
/// Fixed gzip level: a different level would give different layer bytes and digests.
pub(crate) const GZIP_LEVEL: u32 = 9;
/// gzip header OS byte: 255 = unknown, so the host does not leak into the digest.
pub(crate) const GZIP_OS_UNKNOWN: u8 = 255;

/// One entry of a filesystem layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEntry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
}

impl LayerEntry {
    pub fn is_dir(&self) -> bool {
        matches!(self, LayerEntry::Dir { .. })
    }
}

/// A layer's files by path inside the image, relative (`usr/local/bin/x`, no leading or
/// trailing `/`). The map's order is the order in the tar, so parents come before children.
pub type LayerTree = BTreeMap<String, LayerEntry>;

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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

/// The uncompressed layer tar: directories as `path/`, files, and symlinks, in `tree` order.
pub(crate) fn layer_tar(tree: &LayerTree) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, entry) in tree {
        match entry {
            LayerEntry::Dir { mode } => {
                let mut header = fixed_header(tar::EntryType::Directory, *mode, 0);
                builder.append_data(&mut header, format!("{path}/"), io::empty())?;
            }
            LayerEntry::File { mode, data } => {
                let mut header = fixed_header(tar::EntryType::Regular, *mode, data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            LayerEntry::Symlink { target } => {
                let mut header = fixed_header(tar::EntryType::Symlink, 0o777, 0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    builder.into_inner()
}

pub(crate) fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    encoder.write_all(data)?;
    encoder.finish()
}

/// The image-layout archive: `blobs/`, `blobs/sha256/`, then the files in sorted order.
pub(crate) fn layout_tar(files: &BTreeMap<String, &[u8]>) -> io::Result<Vec<u8>> {
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

/// Writes `bytes` to `path` through a temporary file in the same directory, fsync and rename,
/// so `path` is never half written.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
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
pub(crate) mod testing {
    //! Reading tars back, for tests.
    use std::{collections::BTreeMap, io::Read};

    /// Tar entries by path: (header, contents).
    pub(crate) type Entries = BTreeMap<String, (tar::Header, Vec<u8>)>;

    /// Unpack a tar into path -> (header, bytes), keeping entry order separately.
    pub(crate) fn untar(bytes: &[u8]) -> (Vec<String>, Entries) {
        let mut archive = tar::Archive::new(bytes);
        let mut order = Vec::new();
        let mut files = BTreeMap::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read");
            order.push(path.clone());
            files.insert(path, (entry.header().clone(), data));
        }
        (order, files)
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::untar, *};

    #[test]
    fn layer_tar_writes_dirs_files_and_symlinks_with_fixed_metadata() {
        let tree = LayerTree::from([
            ("bin".to_owned(), LayerEntry::Dir { mode: 0o755 }),
            (
                "bin/busybox".to_owned(),
                LayerEntry::File {
                    mode: 0o755,
                    data: b"elf".to_vec(),
                },
            ),
            (
                "bin/sh".to_owned(),
                LayerEntry::Symlink {
                    target: "busybox".to_owned(),
                },
            ),
        ]);
        let tar = layer_tar(&tree).expect("tar");
        assert_eq!(tar, layer_tar(&tree).expect("tar again"));
        let (order, entries) = untar(&tar);
        assert_eq!(order, ["bin/", "bin/busybox", "bin/sh"]);
        let (h, data) = &entries["bin/busybox"];
        assert_eq!(data, b"elf");
        assert_eq!(h.mode().expect("mode"), 0o755);
        let (h, _) = &entries["bin/sh"];
        assert_eq!(h.entry_type(), tar::EntryType::Symlink);
        assert_eq!(
            h.link_name().expect("link").expect("some").to_str(),
            Some("busybox")
        );
        for (h, _) in entries.values() {
            assert_eq!(h.mtime().expect("mtime"), 0);
            assert_eq!((h.uid().expect("uid"), h.gid().expect("gid")), (0, 0));
        }
    }

    #[test]
    fn gzip_has_no_name_time_or_host() {
        let gz = gzip(b"hello").expect("gzip");
        assert_eq!(gz[3], 0, "FLG");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0][..], "MTIME");
        assert_eq!(gz[9], GZIP_OS_UNKNOWN, "OS");
        assert_eq!(gz, gzip(b"hello").expect("gzip again"));
    }
}
