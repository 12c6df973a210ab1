//! Compiled-module cache: Wasmtime artefacts on the host, keyed by module digest and engine
//! fingerprint, reached through a directory descriptor (see [`crate::host`]).
//!
//! Entry layout: `WKC1` magic, sha256 of the payload (32 bytes), payload (a serialized Wasmtime
//! module or component). A truncated, corrupt or foreign entry fails the checksum and is
//! removed; a stale one (other Wasmtime, other CPU features) is rejected by Wasmtime's own
//! compatibility check and rebuilt.
use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::BorrowedFd;

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"WKC1";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// Errors writing a cache entry. Reads never fail: a bad entry is a miss.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot write cache entry {name}: {source}")]
    Write {
        name: String,
        source: std::io::Error,
    },
}

/// What an artefact was compiled from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    Module,
    Component,
}

/// A cache key: the file name of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheKey(String);

impl CacheKey {
    /// Key for `wasm` compiled by an engine whose compatibility fingerprint is `engine`.
    pub fn new(kind: ArtifactKind, wasm: &[u8], engine: impl Hash) -> Self {
        let digest = hex::encode(Sha256::digest(wasm));
        let mut h = DefaultHasher::new();
        engine.hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        let kind = match kind {
            ArtifactKind::Module => "module",
            ArtifactKind::Component => "component",
        };
        CacheKey(format!("{kind}-{digest}-{:016x}.cwasm", h.finish()))
    }

    pub fn file_name(&self) -> &str {
        &self.0
    }
}

/// Whether this process may use the cache directory `dir`: read, write and search it with its
/// effective ids and capabilities (a non-root container process may not: the directory is
/// root's, mode 0700).
pub fn usable(dir: BorrowedFd<'_>) -> bool {
    use rustix::fs::{Access, AtFlags};
    rustix::fs::accessat(
        dir,
        ".",
        Access::READ_OK | Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    )
    .is_ok()
}

/// The cache directory.
#[derive(Clone, Copy)]
pub struct ArtifactCache<'a> {
    dir: BorrowedFd<'a>,
}

impl<'a> ArtifactCache<'a> {
    pub fn new(dir: BorrowedFd<'a>) -> Self {
        ArtifactCache { dir }
    }

    /// The verified payload of an entry, or `None` (missing or corrupt; corrupt ones are removed).
    pub fn load(&self, key: &CacheKey) -> Option<Vec<u8>> {
        let fd = rustix::fs::openat(
            self.dir,
            key.file_name(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut bytes = Vec::new();
        if File::from(fd).read_to_end(&mut bytes).is_err() {
            return None;
        }
        match verify(&bytes) {
            Some(_) => {
                bytes.drain(..HEADER_LEN);
                Some(bytes)
            }
            None => {
                tracing::warn!(
                    "discarding corrupt compiled-module cache entry {}",
                    key.file_name()
                );
                self.remove(key);
                None
            }
        }
    }

    /// Writes an entry atomically (temp file, fsync, rename).
    pub fn store(&self, key: &CacheKey, payload: &[u8]) -> Result<(), CacheError> {
        let name = key.file_name();
        let err = |source| CacheError::Write {
            name: name.to_string(),
            source,
        };
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let fd = rustix::fs::openat(
            self.dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| err(e.into()))?;
        let mut file = File::from(fd);
        let written = file
            .write_all(MAGIC)
            .and_then(|()| file.write_all(&Sha256::digest(payload)))
            .and_then(|()| file.write_all(payload))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(self.dir, tmp.as_str(), rustix::fs::AtFlags::empty());
            return Err(err(e));
        }
        rustix::fs::renameat(self.dir, tmp.as_str(), self.dir, name).map_err(|e| err(e.into()))
    }

    /// Removes an entry (a stale or unloadable one).
    pub fn remove(&self, key: &CacheKey) {
        let _ = rustix::fs::unlinkat(self.dir, key.file_name(), rustix::fs::AtFlags::empty());
    }
}

fn verify(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (sum, payload) = bytes[MAGIC.len()..].split_at(32);
    (Sha256::digest(payload).as_slice() == sum).then_some(payload)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    fn dir() -> (tempfile::TempDir, File) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = File::open(tmp.path()).expect("open dir");
        (tmp, f)
    }

    #[test]
    fn round_trip_and_key_shape() {
        let (tmp, d) = dir();
        let cache = ArtifactCache::new(d.as_fd());
        let key = CacheKey::new(ArtifactKind::Module, b"\0asm\x01\0\0\0", 42u64);
        assert!(key.file_name().starts_with("module-"));
        assert!(key.file_name().ends_with(".cwasm"));
        assert_eq!(cache.load(&key), None);
        cache.store(&key, b"compiled bytes").expect("store");
        assert_eq!(cache.load(&key).as_deref(), Some(&b"compiled bytes"[..]));
        // no temp files left behind
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        assert_eq!(names, vec![key.file_name().to_string()]);
    }

    #[test]
    fn key_depends_on_module_kind_and_engine() {
        let a = CacheKey::new(ArtifactKind::Module, b"a", 1u64);
        assert_ne!(a, CacheKey::new(ArtifactKind::Module, b"b", 1u64));
        assert_ne!(a, CacheKey::new(ArtifactKind::Module, b"a", 2u64));
        assert_ne!(a, CacheKey::new(ArtifactKind::Component, b"a", 1u64));
        assert_eq!(a, CacheKey::new(ArtifactKind::Module, b"a", 1u64));
    }

    #[test]
    fn corrupt_or_truncated_entries_are_misses_and_removed() {
        let (tmp, d) = dir();
        let cache = ArtifactCache::new(d.as_fd());
        let key = CacheKey::new(ArtifactKind::Component, b"x", 7u64);
        cache.store(&key, b"0123456789").expect("store");
        let path = tmp.path().join(key.file_name());
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("corrupt");
        assert_eq!(cache.load(&key), None);
        assert!(!path.exists(), "corrupt entry should be removed");

        std::fs::write(&path, b"WKC1short").expect("truncate");
        assert_eq!(cache.load(&key), None);
        assert!(!path.exists());
    }
}
