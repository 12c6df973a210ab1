//! Compiled-module cache: Wasmtime artefacts on the host, keyed by module digest, allocation and
//! engine fingerprint. Only the compile broker's workers open it ([`crate::broker`]): they run
//! with the shim's host privileges, outside every container, so no tenant process can write an
//! entry or even name the directory.
//!
//! Trust model (what stands between a file on disk and the unsafe `deserialize`):
//! - **The directory** is the worker's own (root on a node), mode 0700. An existing directory
//!   with another owner or any group/other bit is refused with a message, and the cache is off.
//! - **Each entry** must be a regular file owned by that user with no group/other write bit,
//!   checked on the opened descriptor (no race with a rename). Entries are 0644 so that a
//!   container running as any user can map the one it is handed (see *Mapped entries*); the
//!   0700 directory still keeps every other process from naming them.
//! - **Each entry is authenticated**: the payload (the artefact, so that it starts at offset 0
//!   and can be mapped as it is), then a trailer: `WKC3` magic and HMAC-SHA256 under a
//!   node-local key over the entry's name and payload. The key is `key` in the directory: 32
//!   random bytes, mode 0600, written to a temp file and renamed into place without replacing
//!   (so it is never seen half-written, and a concurrent first start adopts the winner's). An
//!   entry not made with this node's key (a planted one with a valid checksum, one renamed to
//!   another module's name, one from a copied disk) fails the MAC, is removed and rebuilt.
//! - Writes go to a unique temp file (`O_CREAT|O_EXCL`), are fsynced and renamed into place, so
//!   concurrent cold starts never clobber each other's half-written files.
//! - **Size bound**: a hit refreshes the entry's mtime; after a store, the least recently used
//!   entries are removed until the directory holds at most the bound. An artefact larger than
//!   the whole bound is not stored (it would evict every other entry). Temp files older than
//!   [`STALE_TEMP`] (a writer that died) are removed after each store.
//!
//! **Mapped entries.** A container maps its artefact straight from the page cache, so that
//! every pod of an app on the node shares one copy of its machine code and memory image. The
//! broker bind-mounts the directory read-only onto its `view` subdirectory in its own mount
//! namespace ([`make_read_only_view`]); a worker opens the entry through that view, checks the
//! descriptor it opened (owner, mode, MAC over the bytes read from it) and hands the container
//! that same descriptor. Why the mapped file cannot change after its check:
//! - an entry is never written in place: a writer makes a new inode (temp file) and renames it
//!   over the name, so the inode the worker checked keeps its content; eviction only unlinks;
//! - the container's descriptor is read-only and belongs to a read-only mount, so neither
//!   `write`, `ftruncate`, a shared writable mapping, `fchmod` nor a reopen of
//!   `/proc/self/fd/N` for writing works, even for a container running as root with
//!   `CAP_DAC_OVERRIDE` (`EROFS`);
//! - only host root (outside every container) could write the inode through the read-write
//!   path, and host root is trusted anyway.
use std::collections::hash_map::DefaultHasher;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use sha2::{Digest, Sha256};

/// Environment variable (containerd's, inherited by the shim) naming the cache directory.
/// Empty or `off` disables the cache.
pub const CACHE_DIR_ENV: &str = "WASMKUBE_CACHE_DIR";
/// Default cache directory on a node (the node installer's uninstall removes it).
pub const DEFAULT_CACHE_DIR: &str = wasmkube_contract::names::CACHE_DIR;
/// Environment variable bounding the cache's size (bytes, or `Ki`/`Mi`/`Gi`).
pub const CACHE_MAX_ENV: &str = "WASMKUBE_CACHE_MAX_BYTES";
/// Default size bound.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

const MAGIC: &[u8; 4] = b"WKC3";
const MAC_LEN: usize = 32;
const TRAILER_LEN: usize = MAGIC.len() + MAC_LEN;
/// The read-only view of the directory, in the broker's mount namespace.
pub const VIEW_DIR: &str = "view";
/// Mode of an entry: readable by a container of any user that holds its descriptor.
const ENTRY_MODE: u32 = 0o644;
const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
const ENTRY_SUFFIX: &str = ".cwasm";
/// A temp file this old belongs to no live writer: a compile worker lives at most ten minutes.
pub const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(15 * 60);

type HmacSha256 = Hmac<Sha256>;

/// Why the cache cannot be used, or an entry not written. Reads never fail: a bad entry is a miss.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("compiled-module cache {path} refused: {detail}")]
    Refused { path: PathBuf, detail: String },
    #[error("compiled-module cache {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot write cache entry {name}: {source}")]
    Write {
        name: String,
        source: std::io::Error,
    },
    #[error(
        "not caching {name}: {size} bytes, more than the whole cache may hold ({max} bytes, \
         {CACHE_MAX_ENV})"
    )]
    TooLarge { name: String, size: u64, max: u64 },
    #[error("invalid {CACHE_MAX_ENV}={0:?}: expected bytes or a Ki/Mi/Gi size")]
    MaxBytes(String),
}

/// Where the cache lives and how big it may grow, from the shim's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

impl CacheConfig {
    /// `None` when the cache is off.
    pub fn from_env() -> Result<Option<Self>, CacheError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, CacheError> {
        let dir = match env(CACHE_DIR_ENV) {
            Some(v) if v.is_empty() || v == "off" => return Ok(None),
            Some(v) => PathBuf::from(v),
            None => PathBuf::from(DEFAULT_CACHE_DIR),
        };
        let max_bytes = match env(CACHE_MAX_ENV) {
            None => DEFAULT_MAX_BYTES,
            Some(v) => crate::limits::parse_size(&v).ok_or(CacheError::MaxBytes(v))?,
        };
        Ok(Some(CacheConfig { dir, max_bytes }))
    }
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
    /// Key for `wasm` compiled by an engine whose compatibility fingerprint is `engine`, for the
    /// allocation strategy named `allocation` (pooled and on-demand artefacts have distinct
    /// keys, so one never evicts the other).
    pub fn new(kind: ArtifactKind, allocation: &str, wasm: &[u8], engine: impl Hash) -> Self {
        let digest = hex::encode(Sha256::digest(wasm));
        let mut h = DefaultHasher::new();
        engine.hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        let kind = match kind {
            ArtifactKind::Module => "module",
            ArtifactKind::Component => "component",
        };
        CacheKey(format!(
            "{kind}-{allocation}-{digest}-{:016x}{ENTRY_SUFFIX}",
            h.finish()
        ))
    }

    pub fn file_name(&self) -> &str {
        &self.0
    }
}

/// An open, trusted cache directory and its node key.
pub struct ArtifactCache {
    path: PathBuf,
    dir: OwnedFd,
    /// The directory through its read-only mount, when this process sees one.
    view: Option<OwnedFd>,
    key: [u8; KEY_LEN],
    max_bytes: u64,
}

impl ArtifactCache {
    /// Creates (mode 0700) or opens the directory, refusing one that is not private to this
    /// process's user, and loads or creates the node key.
    pub fn open(config: &CacheConfig) -> Result<Self, CacheError> {
        let path = config.dir.clone();
        let io = |what: &'static str| {
            let path = path.clone();
            move |source: std::io::Error| CacheError::Io { path, what, source }
        };
        match std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))) {
            Ok(()) => {}
            Err(e) => return Err(io("cannot create its parent")(e)),
        }
        match rustix::fs::mkdir(&path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io("cannot create it")(e.into())),
        }
        let dir = rustix::fs::open(
            &path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| io("cannot open it (a symlink is refused)")(e.into()))?;
        let stat = rustix::fs::fstat(&dir).map_err(|e| io("cannot stat it")(e.into()))?;
        private_to_me(&stat).map_err(|detail| CacheError::Refused {
            path: path.clone(),
            detail: format!(
                "the directory {detail}; fix it with `chown root:root {p} && chmod 0700 {p}` or \
                 remove it",
                p = path.display()
            ),
        })?;
        let key = node_key(&dir).map_err(|detail| CacheError::Refused {
            path: path.clone(),
            detail,
        })?;
        let view = read_only_view(&dir, &stat);
        Ok(ArtifactCache {
            path,
            dir,
            view,
            key,
            max_bytes: config.max_bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether entries are opened through a read-only mount (and so may be handed out).
    pub fn has_view(&self) -> bool {
        self.view.is_some()
    }

    /// The authenticated payload of an entry, or `None` (missing, untrusted or corrupt; those
    /// are removed). A hit marks the entry recently used.
    pub fn load(&self, key: &CacheKey) -> Option<Vec<u8>> {
        self.open_entry(key).map(|entry| entry.payload)
    }

    /// An authenticated entry: its payload, and the descriptor it was read from when that
    /// descriptor belongs to the read-only view (see *Mapped entries*). `None` as for
    /// [`Self::load`].
    pub fn open_entry(&self, key: &CacheKey) -> Option<Entry> {
        let through = self.view.as_ref().unwrap_or(&self.dir);
        let fd = rustix::fs::openat(
            through,
            key.file_name(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .ok()?;
        let trusted = rustix::fs::fstat(&fd)
            .map_err(|e| e.to_string())
            .and_then(|st| {
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    != rustix::fs::FileType::RegularFile
                {
                    return Err("not a regular file".to_string());
                }
                mine_and_not_writable_by_others(&st)
            });
        if let Err(why) = trusted {
            tracing::warn!("discarding cache entry {}: {why}", key.file_name());
            self.remove(key);
            return None;
        }
        let mut bytes = Vec::new();
        let mut file = File::from(fd);
        if file.read_to_end(&mut bytes).is_err() {
            return None;
        }
        if !self.authentic(key, &bytes) {
            tracing::warn!(
                "discarding compiled-module cache entry {}: not authenticated by this node's key",
                key.file_name()
            );
            self.remove(key);
            return None;
        }
        // Recently used: the LRU order is the mtime order (through the read-write directory:
        // the view refuses even a timestamp).
        let _ = rustix::fs::utimensat(
            &self.dir,
            key.file_name(),
            &now(),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        bytes.truncate(bytes.len() - TRAILER_LEN);
        Some(Entry {
            payload: bytes,
            file: self.view.is_some().then_some(file),
        })
    }

    /// Writes an entry: unique temp file (`O_EXCL`), fsync, rename; then evicts the least
    /// recently used entries past the size bound.
    pub fn store(&self, key: &CacheKey, payload: &[u8]) -> Result<(), CacheError> {
        let name = key.file_name();
        let size = (payload.len() + TRAILER_LEN) as u64;
        if size > self.max_bytes {
            return Err(CacheError::TooLarge {
                name: name.to_string(),
                size,
                max: self.max_bytes,
            });
        }
        let err = |source| CacheError::Write {
            name: name.to_string(),
            source,
        };
        let mut nonce = [0u8; 8];
        random(&mut nonce).map_err(err)?;
        let tmp = format!(".{name}.{}.{}.tmp", std::process::id(), hex::encode(nonce));
        let fd = rustix::fs::openat(
            &self.dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| err(e.into()))?;
        let mut file = File::from(fd);
        // Not through the umask: a container of any user must be able to map the entry it is
        // handed.
        let written = rustix::fs::fchmod(&file, Mode::from_raw_mode(ENTRY_MODE))
            .map_err(std::io::Error::from)
            .and_then(|()| self.mac(key, payload))
            .and_then(|tag| file.write_all(payload).map(|()| tag))
            .and_then(|tag| file.write_all(MAGIC).map(|()| tag))
            .and_then(|tag| file.write_all(&tag))
            .and_then(|()| file.sync_all());
        let renamed = written.and_then(|()| {
            rustix::fs::renameat(&self.dir, tmp.as_str(), &self.dir, name).map_err(Into::into)
        });
        if let Err(e) = renamed {
            let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
            return Err(err(e));
        }
        self.evict(name);
        self.sweep_temps(STALE_TEMP);
        Ok(())
    }

    /// Removes temp files (`.…tmp`) not modified for `age`: left by a writer that died.
    fn sweep_temps(&self, age: std::time::Duration) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for name in self.names() {
            if !(name.starts_with('.') && name.ends_with(".tmp")) {
                continue;
            }
            let Ok(st) = rustix::fs::statat(&self.dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let modified = u64::try_from(st.st_mtime).unwrap_or(0);
            if now.saturating_sub(modified) >= age.as_secs()
                && rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty()).is_ok()
            {
                tracing::info!("removed stale cache temp file {name}");
            }
        }
    }

    /// Removes an entry (an untrusted, stale or unloadable one).
    pub fn remove(&self, key: &CacheKey) {
        let _ = rustix::fs::unlinkat(&self.dir, key.file_name(), AtFlags::empty());
    }

    /// Removes the least recently used entries (never `keep`) until the total fits the bound.
    fn evict(&self, keep: &str) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        if total <= self.max_bytes {
            return;
        }
        entries.sort_by_key(|e| e.2);
        for (name, size, _) in entries {
            if total <= self.max_bytes {
                break;
            }
            if name == keep {
                continue;
            }
            if rustix::fs::unlinkat(&self.dir, name.as_str(), AtFlags::empty()).is_ok() {
                tracing::info!("evicted least recently used cache entry {name} ({size} bytes)");
                total = total.saturating_sub(size);
            }
        }
    }

    /// `(name, size, mtime)` of every entry.
    fn entries(&self) -> Vec<(String, u64, (i64, i64))> {
        self.names()
            .into_iter()
            .filter_map(|name| {
                if !name.ends_with(ENTRY_SUFFIX) || name.starts_with('.') {
                    return None;
                }
                let st =
                    rustix::fs::statat(&self.dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
                let size = u64::try_from(st.st_size).unwrap_or(0);
                Some((name, size, (st.st_mtime, st.st_mtime_nsec as i64)))
            })
            .collect()
    }

    /// The names in the directory (none when it cannot be read).
    fn names(&self) -> Vec<String> {
        let Ok(dir) = rustix::fs::openat(
            &self.dir,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return Vec::new();
        };
        let Ok(iter) = rustix::fs::Dir::read_from(&dir) else {
            return Vec::new();
        };
        iter.flatten()
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
            .collect()
    }

    /// The MAC state over an entry's name, ready for its payload.
    /// (HMAC accepts keys of every length, so this is always `Some`.)
    fn keyed(&self, key: &CacheKey) -> Option<HmacSha256> {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key).ok()?;
        mac.update(key.file_name().as_bytes());
        mac.update(&[0]);
        Some(mac)
    }

    fn mac(&self, key: &CacheKey, payload: &[u8]) -> std::io::Result<[u8; MAC_LEN]> {
        let mut mac = self
            .keyed(key)
            .ok_or_else(|| std::io::Error::other("HMAC refused the node key"))?;
        mac.update(payload);
        Ok(mac.finalize().into_bytes().into())
    }

    fn authentic(&self, key: &CacheKey, bytes: &[u8]) -> bool {
        let Some(split) = bytes.len().checked_sub(TRAILER_LEN) else {
            return false;
        };
        let (payload, trailer) = bytes.split_at(split);
        let (magic, tag) = trailer.split_at(MAGIC.len());
        if magic != MAGIC {
            return false;
        }
        let Some(mut mac) = self.keyed(key) else {
            return false;
        };
        mac.update(payload);
        mac.verify_slice(tag).is_ok()
    }
}

/// `Ok` when `st` belongs to this process's effective user and no other user may write it.
fn mine_and_not_writable_by_others(st: &rustix::fs::Stat) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(format!("belongs to uid {}, not to uid {me}", st.st_uid));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(format!(
            "has mode {:04o}; only its owner may write it",
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

/// The directory's read-only view ([`VIEW_DIR`]), if this process sees one: the same directory
/// (device and inode) on a read-only mount. In every other mount namespace `view` is an empty
/// directory (or absent), and entries are handed out as bytes.
fn read_only_view(dir: &OwnedFd, dir_stat: &rustix::fs::Stat) -> Option<OwnedFd> {
    let view = rustix::fs::openat(
        dir,
        VIEW_DIR,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .ok()?;
    let st = rustix::fs::fstat(&view).ok()?;
    let same = st.st_dev == dir_stat.st_dev && st.st_ino == dir_stat.st_ino;
    let read_only = rustix::fs::fstatvfs(&view)
        .map(|vfs| vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
        .unwrap_or(false);
    (same && read_only).then_some(view)
}

/// An authenticated cache entry.
#[derive(Debug)]
pub struct Entry {
    /// The artefact.
    pub payload: Vec<u8>,
    /// The descriptor the payload was read from, when it belongs to the read-only view: the
    /// artefact is its first `payload.len()` bytes (an authentication trailer follows).
    pub file: Option<File>,
}

/// `Ok` when `st` belongs to this process's effective user and has no group/other bit.
fn private_to_me(st: &rustix::fs::Stat) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(format!("belongs to uid {}, not to uid {me}", st.st_uid));
    }
    if st.st_mode & 0o077 != 0 {
        return Err(format!(
            "has mode {:04o}; only its owner may have access (0700 for the directory, 0600 for files)",
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

/// Reads the node key, creating it (random, 0600, `O_EXCL`) on first use.
fn node_key(dir: &OwnedFd) -> Result<[u8; KEY_LEN], String> {
    for _ in 0..3 {
        match rustix::fs::openat(
            dir,
            KEY_FILE,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot stat the key: {e}"))?;
                private_to_me(&st).map_err(|d| format!("the key file {d}"))?;
                let mut key = [0u8; KEY_LEN];
                let mut file = File::from(fd);
                match file.read_exact(&mut key) {
                    Ok(()) => return Ok(key),
                    // Keys are renamed into place whole, so a short one is damage (or an older
                    // shim's crash): replace it; the entries it signed become misses.
                    Err(_) => {
                        tracing::warn!("replacing the damaged cache key (every entry is rebuilt)");
                        let _ = rustix::fs::unlinkat(dir, KEY_FILE, AtFlags::empty());
                    }
                }
            }
            Err(rustix::io::Errno::NOENT) => {
                let mut key = [0u8; KEY_LEN];
                random(&mut key).map_err(|e| format!("cannot make a key: {e}"))?;
                match write_key(dir, &key) {
                    Ok(true) => return Ok(key),
                    // Another first start put its key in place first: read that one.
                    Ok(false) => continue,
                    Err(e) => return Err(format!("cannot write the key: {e}")),
                }
            }
            Err(e) => return Err(format!("cannot open the key: {e}")),
        }
    }
    Err("the key file is unreadable or keeps changing".into())
}

/// Writes `key` to a temp file and renames it to [`KEY_FILE`] unless that exists: the key is
/// never seen half-written. `Ok(false)` when another key was there first.
fn write_key(dir: &OwnedFd, key: &[u8; KEY_LEN]) -> std::io::Result<bool> {
    let mut nonce = [0u8; 8];
    random(&mut nonce)?;
    let tmp = format!(".{KEY_FILE}.{}.tmp", hex::encode(nonce));
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    let mut file = File::from(fd);
    let placed = file
        .write_all(key)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            match rustix::fs::renameat_with(
                dir,
                tmp.as_str(),
                dir,
                KEY_FILE,
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) => Ok(true),
                Err(rustix::io::Errno::EXIST) => Ok(false),
                Err(e) => Err(e.into()),
            }
        });
    if !matches!(placed, Ok(true)) {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    placed
}

fn random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        filled +=
            rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(())
}

fn now() -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
