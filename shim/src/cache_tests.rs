use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

fn config(dir: &Path, max_bytes: u64) -> CacheConfig {
    CacheConfig {
        dir: dir.to_path_buf(),
        max_bytes,
    }
}

fn fresh(max_bytes: u64) -> (tempfile::TempDir, ArtifactCache) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = ArtifactCache::open(&config(&tmp.path().join("cache"), max_bytes)).expect("open");
    (tmp, cache)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    v.sort();
    v
}

fn key(n: u8) -> CacheKey {
    CacheKey::new(ArtifactKind::Module, "ondemand", &[n], 1u64)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn round_trip_is_private_and_leaves_no_temp_files() {
    let (_tmp, cache) = fresh(DEFAULT_MAX_BYTES);
    let k = CacheKey::new(ArtifactKind::Module, "pooled", b"\0asm\x01\0\0\0", 42u64);
    assert!(k.file_name().starts_with("module-pooled-"));
    assert!(k.file_name().ends_with(".cwasm"));
    assert_eq!(cache.load(&k), None);
    cache.store(&k, b"compiled bytes").expect("store");
    assert_eq!(cache.load(&k).as_deref(), Some(&b"compiled bytes"[..]));
    assert_eq!(
        names(cache.path()),
        vec![KEY_FILE.to_string(), k.file_name().to_string()]
    );
    assert_eq!(mode(cache.path()), 0o700);
    assert_eq!(mode(&cache.path().join(KEY_FILE)), 0o600);
    assert_eq!(
        mode(&cache.path().join(k.file_name())),
        0o644,
        "readable by a container of any user that is handed it, writable by none"
    );
}

#[test]
fn key_depends_on_module_kind_allocation_and_engine() {
    let a = CacheKey::new(ArtifactKind::Module, "ondemand", b"a", 1u64);
    assert_ne!(
        a,
        CacheKey::new(ArtifactKind::Module, "ondemand", b"b", 1u64)
    );
    assert_ne!(
        a,
        CacheKey::new(ArtifactKind::Module, "ondemand", b"a", 2u64)
    );
    assert_ne!(
        a,
        CacheKey::new(ArtifactKind::Component, "ondemand", b"a", 1u64)
    );
    assert_ne!(a, CacheKey::new(ArtifactKind::Module, "pooled", b"a", 1u64));
    assert_eq!(
        a,
        CacheKey::new(ArtifactKind::Module, "ondemand", b"a", 1u64)
    );
}

#[test]
fn the_key_survives_reopening_and_is_not_shared_between_nodes() {
    let (tmp, cache) = fresh(DEFAULT_MAX_BYTES);
    cache.store(&key(1), b"payload").expect("store");
    let again = ArtifactCache::open(&config(cache.path(), DEFAULT_MAX_BYTES)).expect("reopen");
    assert_eq!(again.load(&key(1)).as_deref(), Some(&b"payload"[..]));

    // Another node's cache (another key) does not accept this node's entry.
    let other =
        ArtifactCache::open(&config(&tmp.path().join("other"), DEFAULT_MAX_BYTES)).expect("other");
    std::fs::copy(
        cache.path().join(key(1).file_name()),
        other.path().join(key(1).file_name()),
    )
    .expect("copy");
    assert_eq!(other.load(&key(1)), None, "an entry MACed with another key");
    assert!(!other.path().join(key(1).file_name()).exists(), "removed");
}

#[test]
fn planted_entries_are_refused_and_removed() {
    let (_tmp, cache) = fresh(DEFAULT_MAX_BYTES);
    let k = key(7);
    let path = cache.path().join(k.file_name());
    let payload = b"native code an attacker wants run";

    // The old format: a sha256 checksum anyone can compute.
    let mut planted = b"WKC1".to_vec();
    planted.extend_from_slice(&Sha256::digest(payload));
    planted.extend_from_slice(payload);
    std::fs::write(&path, &planted).expect("plant");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(cache.load(&k), None, "a checksummed but unkeyed entry");
    assert!(!path.exists());

    // The current format with a MAC under a guessed key.
    let mut guessed = payload.to_vec();
    let mut mac = <HmacSha256 as Mac>::new_from_slice(&[0u8; 32]).expect("mac");
    mac.update(k.file_name().as_bytes());
    mac.update(&[0]);
    mac.update(payload);
    guessed.extend_from_slice(MAGIC);
    guessed.extend_from_slice(&mac.finalize().into_bytes());
    std::fs::write(&path, &guessed).expect("plant");
    assert_eq!(cache.load(&k), None, "a MAC under another key");

    // A genuine entry renamed to another module's name.
    cache.store(&key(8), b"module eight").expect("store");
    std::fs::rename(cache.path().join(key(8).file_name()), &path).expect("rename");
    assert_eq!(cache.load(&k), None, "an entry moved to another name");
}

#[test]
fn corrupt_truncated_or_loose_entries_are_misses_and_removed() {
    let (_tmp, cache) = fresh(DEFAULT_MAX_BYTES);
    let k = key(3);
    let path = cache.path().join(k.file_name());
    cache.store(&k, b"0123456789").expect("store");
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).expect("corrupt");
    assert_eq!(cache.load(&k), None);
    assert!(!path.exists(), "corrupt entry removed");

    cache.store(&k, b"0123456789").expect("store");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).expect("chmod");
    assert_eq!(cache.load(&k), None, "a group-writable entry");
    assert!(!path.exists());

    cache.store(&k, b"0123456789").expect("store");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o646)).expect("chmod");
    assert_eq!(cache.load(&k), None, "a world-writable entry");
    assert!(!path.exists());

    std::fs::write(&path, b"WKC3short").expect("truncate");
    assert_eq!(cache.load(&k), None);
}

#[test]
fn a_loose_or_symlinked_directory_is_refused_with_a_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let loose = tmp.path().join("loose");
    std::fs::create_dir(&loose).expect("mkdir");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let err = ArtifactCache::open(&config(&loose, DEFAULT_MAX_BYTES))
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("has mode 0755"), "{msg}");
    assert!(msg.contains("chmod 0700"), "{msg}");
    assert_eq!(mode(&loose), 0o755, "left alone");
    assert!(
        names(&loose).is_empty(),
        "no key written into a refused directory"
    );

    let private = tmp.path().join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&private, &link).expect("symlink");
    let err = ArtifactCache::open(&config(&link, DEFAULT_MAX_BYTES))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[test]
fn a_directory_of_another_user_is_refused() {
    wasmkube_test_harness::skip_unless!((!rustix::process::geteuid().is_root())
        .then(|| "root (to chown a directory to another user)".to_string()));
    let tmp = tempfile::tempdir().expect("tmp");
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&theirs, Some(65532), Some(65532)).expect("chown");
    let err = ArtifactCache::open(&config(&theirs, DEFAULT_MAX_BYTES))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("belongs to uid 65532"), "{err}");
    assert_eq!(std::fs::metadata(&theirs).expect("stat").uid(), 65532);
}

#[test]
fn the_least_recently_used_entries_go_first_past_the_bound() {
    // Each entry is 36 header bytes + 100 payload bytes; the bound holds three.
    let (_tmp, cache) = fresh(3 * 136);
    let payload = [0u8; 100];
    for n in 1..=3 {
        cache.store(&key(n), &payload).expect("store");
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
    assert!(cache.load(&key(1)).is_some(), "entry 1 used again");
    std::thread::sleep(std::time::Duration::from_millis(15));
    cache.store(&key(4), &payload).expect("store");
    let left = names(cache.path());
    assert!(left.contains(&key(1).file_name().to_string()), "{left:?}");
    assert!(!left.contains(&key(2).file_name().to_string()), "{left:?}");
    assert!(left.contains(&key(3).file_name().to_string()), "{left:?}");
    assert!(left.contains(&key(4).file_name().to_string()), "{left:?}");

    // An artefact bigger than the whole bound is refused, and evicts nothing.
    let refused = cache.store(&key(5), &[1u8; 1000]);
    assert!(
        matches!(
            refused,
            Err(CacheError::TooLarge {
                size: 1036,
                max: 408,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(refused
        .err()
        .is_some_and(|e| e.to_string().contains(CACHE_MAX_ENV)));
    assert_eq!(names(cache.path()), left, "nothing evicted for it");
    assert!(cache.load(&key(5)).is_none());
}

#[test]
fn stale_temp_files_are_swept_and_fresh_ones_kept() {
    let (_tmp, cache) = fresh(DEFAULT_MAX_BYTES);
    let stale = cache.path().join(".dead.cwasm.1.00.tmp");
    let fresh_tmp = cache.path().join(".live.cwasm.2.00.tmp");
    for p in [&stale, &fresh_tmp] {
        std::fs::write(p, b"half").expect("write");
    }
    let old = std::time::SystemTime::now() - STALE_TEMP - std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .expect("open")
        .set_modified(old)
        .expect("mtime");
    cache.store(&key(1), &[0u8; 10]).expect("store");
    assert!(!stale.exists(), "a dead writer's temp file is removed");
    assert!(fresh_tmp.exists(), "a live writer's temp file stays");
}

#[test]
fn a_damaged_key_is_replaced_whole_and_no_temp_is_left() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let key_path = dir.join(KEY_FILE);
    std::fs::write(&key_path, [7u8; 10]).expect("short key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let cache = ArtifactCache::open(&config(&dir, DEFAULT_MAX_BYTES)).expect("open");
    assert_eq!(std::fs::read(&key_path).expect("key").len(), KEY_LEN);
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(names(&dir), vec![KEY_FILE.to_string()], "no temp file left");
    cache.store(&key(1), &[1u8; 10]).expect("store");
    let again = ArtifactCache::open(&config(&dir, DEFAULT_MAX_BYTES)).expect("reopen");
    assert!(again.load(&key(1)).is_some(), "the new key is the one kept");
}

#[test]
fn concurrent_stores_of_one_key_never_clobber_each_other() {
    let (_tmp, cache) = fresh(DEFAULT_MAX_BYTES);
    let payload = vec![9u8; 1 << 20];
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| cache.store(&key(1), &payload).expect("store"));
        }
    });
    assert_eq!(cache.load(&key(1)).as_deref(), Some(&payload[..]));
    assert_eq!(
        names(cache.path()),
        vec![KEY_FILE.to_string(), key(1).file_name().to_string()],
        "no temp file left"
    );
}

#[test]
fn config_comes_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    assert_eq!(
        CacheConfig::from_lookup(env(&[])).expect("default"),
        Some(CacheConfig {
            dir: PathBuf::from(DEFAULT_CACHE_DIR),
            max_bytes: DEFAULT_MAX_BYTES
        })
    );
    assert_eq!(
        CacheConfig::from_lookup(env(&[(CACHE_DIR_ENV, "off")])).expect("off"),
        None
    );
    assert_eq!(
        CacheConfig::from_lookup(env(&[(CACHE_DIR_ENV, "")])).expect("off"),
        None
    );
    let small = CacheConfig::from_lookup(env(&[(CACHE_DIR_ENV, "/c"), (CACHE_MAX_ENV, "64Mi")]))
        .expect("set")
        .expect("on");
    assert_eq!(small.max_bytes, 64 << 20);
    let bad = CacheConfig::from_lookup(env(&[(CACHE_MAX_ENV, "lots")])).expect_err("bad");
    assert!(bad.to_string().contains(CACHE_MAX_ENV), "{bad}");
}
