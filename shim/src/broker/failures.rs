//! Modules that failed to compile, remembered on the node for [`REMEMBERED`]: a pod restarting
//! a module that fails (late, after minutes of CPU and gigabytes of memory) does not compile it
//! again on every restart. Entries live in the compiled-module cache, authenticated like
//! artefacts (a tenant cannot plant a failure to deny another tenant's module), under a key of
//! their own: `<kind>-failed-<digest>-<engine>`.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::{ArtifactCache, ArtifactKind, CacheKey};

/// How long a failed compile is remembered.
pub const REMEMBERED: Duration = Duration::from_secs(600);

/// The key under which a failure of `wasm` is remembered.
pub fn key(kind: ArtifactKind, wasm: &[u8], engine: impl std::hash::Hash) -> CacheKey {
    CacheKey::new(kind, "failed", wasm, engine)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Remembers that compiling failed with `detail`.
pub fn remember(cache: &ArtifactCache, key: &CacheKey, detail: &str) {
    let payload = format!("{}\n{detail}", now_secs());
    if let Err(e) = cache.store(key, payload.as_bytes()) {
        tracing::warn!("cannot remember a failed compile: {e}");
    }
}

/// Why compiling failed, if it did less than [`REMEMBERED`] ago (an older entry is removed).
pub fn recall(cache: &ArtifactCache, key: &CacheKey) -> Option<String> {
    recall_at(cache, key, now_secs())
}

fn recall_at(cache: &ArtifactCache, key: &CacheKey, now: u64) -> Option<String> {
    let payload = cache.load(key)?;
    let text = String::from_utf8_lossy(&payload);
    let (when, detail) = text.split_once('\n')?;
    let age = now.saturating_sub(when.parse().ok()?);
    if age >= REMEMBERED.as_secs() {
        cache.remove(key);
        return None;
    }
    Some(format!(
        "{detail} (this module failed to compile on this node {age} s ago; it is compiled \
         again {} s after that failure)",
        REMEMBERED.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;

    #[test]
    fn a_failure_is_recalled_within_the_window_and_forgotten_after() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = ArtifactCache::open(&CacheConfig {
            dir: tmp.path().join("c"),
            max_bytes: crate::cache::DEFAULT_MAX_BYTES,
        })
        .expect("cache");
        let k = key(ArtifactKind::Module, b"\0asm\x01\0\0\0\x05", 7u64);
        assert!(k.file_name().starts_with("module-failed-"), "{k:?}");
        assert_eq!(recall(&cache, &k), None);
        remember(&cache, &k, "invalid WebAssembly: unexpected end");
        let recalled = recall(&cache, &k).expect("remembered");
        assert!(recalled.starts_with("invalid WebAssembly: unexpected end (this module failed"));
        let later = now_secs() + REMEMBERED.as_secs();
        assert_eq!(recall_at(&cache, &k, later), None);
        assert_eq!(recall(&cache, &k), None, "the stale entry was removed");
    }

    #[test]
    fn another_modules_failure_is_not_recalled() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = ArtifactCache::open(&CacheConfig {
            dir: tmp.path().join("c"),
            max_bytes: crate::cache::DEFAULT_MAX_BYTES,
        })
        .expect("cache");
        remember(&cache, &key(ArtifactKind::Module, b"one", 1u64), "bad");
        assert_eq!(
            recall(&cache, &key(ArtifactKind::Module, b"two", 1u64)),
            None
        );
        assert_eq!(
            recall(&cache, &key(ArtifactKind::Module, b"one", 2u64)),
            None
        );
    }
}
