//! The backends behind a store: one enum, so every call is a plain `match` (no boxed futures).
//! Keys arrive with the store's prefix already in front.
use std::collections::BTreeMap;
use std::sync::Mutex;

use super::file::FileStore;
use super::redis::RedisStore;
use super::{KvError, MAX_BATCH};

pub enum Backend {
    /// The pod's memory: shared by the container's instances, gone when it restarts.
    Memory(Mutex<BTreeMap<String, Vec<u8>>>),
    File(FileStore),
    Redis(RedisStore),
    /// A backend that could not be set up: every call answers why.
    Broken(String),
}

impl Backend {
    pub fn memory() -> Self {
        Backend::Memory(Mutex::new(BTreeMap::new()))
    }

    pub fn file(dir: &str, store: &str) -> Self {
        match FileStore::open(dir, store) {
            Ok(f) => Backend::File(f),
            Err(why) => broken(store, why),
        }
    }

    pub fn redis(url_file: &str, store: &str) -> Self {
        match RedisStore::new(url_file, store) {
            Ok(r) => Backend::Redis(r),
            Err(why) => broken(store, why),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Backend::Memory(m) => Ok(lock(m).get(key).cloned()),
            Backend::File(f) => f.get(key).await,
            Backend::Redis(r) => r.get(key).await,
            Backend::Broken(why) => Err(KvError::Other(why.clone())),
        }
    }

    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        self.set_many(vec![(key.to_string(), value)]).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        match self {
            Backend::Memory(m) => Ok(lock(m).contains_key(key)),
            Backend::File(f) => Ok(f.get(key).await?.is_some()),
            Backend::Redis(r) => r.exists(key).await,
            Backend::Broken(why) => Err(KvError::Other(why.clone())),
        }
    }

    /// One page of the keys under `prefix` after `cursor`, and the cursor of the next page.
    pub async fn list(
        &self,
        prefix: &str,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        match self {
            Backend::Memory(m) => {
                let map = lock(m);
                let all = map.keys().filter(|k| k.starts_with(prefix));
                Ok(page(all.cloned(), cursor))
            }
            Backend::File(f) => f.list(prefix, cursor).await,
            Backend::Redis(r) => r.list(prefix, cursor).await,
            Backend::Broken(why) => Err(KvError::Other(why.clone())),
        }
    }

    pub async fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        match self {
            Backend::Memory(m) => {
                let mut map = lock(m);
                let now = match map.get(key) {
                    Some(v) => parse_counter(v)?,
                    None => 0,
                };
                let next = add(now, delta)?;
                map.insert(key.to_string(), next.to_string().into_bytes());
                Ok(next)
            }
            Backend::File(f) => f.increment(key, delta).await,
            Backend::Redis(r) => r.increment(key, delta).await,
            Backend::Broken(why) => Err(KvError::Other(why.clone())),
        }
    }

    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        match self {
            Backend::Memory(m) => {
                let map = lock(m);
                Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
            }
            Backend::File(f) => f.get_many(keys).await,
            Backend::Redis(r) => r.get_many(keys).await,
            Backend::Broken(why) => Err(KvError::Other(why.clone())),
        }
    }

    pub async fn set_many(&self, entries: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        match self {
            Backend::Memory(m) => {
                lock(m).extend(entries);
                Ok(())
            }
            Backend::File(f) => f.set_many(entries).await,
            Backend::Redis(r) => r.set_many(entries).await,
            Backend::Broken(why) => Err(KvError::Other(why.clone())),
        }
    }

    pub async fn delete(&self, keys: Vec<String>) -> Result<(), KvError> {
        match self {
            Backend::Memory(m) => {
                let mut map = lock(m);
                for k in &keys {
                    map.remove(k);
                }
                Ok(())
            }
            Backend::File(f) => f.delete(keys).await,
            Backend::Redis(r) => r.delete(keys).await,
            Backend::Broken(why) => Err(KvError::Other(why.clone())),
        }
    }
}

fn lock(
    m: &Mutex<BTreeMap<String, Vec<u8>>>,
) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn broken(store: &str, why: String) -> Backend {
    let why = format!("key-value store {store:?} is unavailable: {why}");
    eprintln!("wasmkube: {why}");
    Backend::Broken(why)
}

/// The keys after position `cursor` of `all` (sorted), at most [`MAX_BATCH`], and the next
/// cursor when more remain.
pub fn page(all: impl Iterator<Item = String>, cursor: Option<u64>) -> (Vec<String>, Option<u64>) {
    let skip = cursor.unwrap_or(0) as usize;
    let mut keys: Vec<String> = all.skip(skip).take(MAX_BATCH + 1).collect();
    let more = keys.len() > MAX_BATCH;
    keys.truncate(MAX_BATCH);
    let next = more.then(|| (skip + MAX_BATCH) as u64);
    (keys, next)
}

/// A counter's stored form: its decimal digits, as Redis keeps one.
pub fn parse_counter(v: &[u8]) -> Result<u64, KvError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| KvError::Other("the value is not a counter (decimal digits)".into()))
}

pub fn add(now: u64, delta: u64) -> Result<u64, KvError> {
    now.checked_add(delta)
        .ok_or_else(|| KvError::Other("the counter would overflow".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_keeps_values_counts_and_pages() {
        let b = Backend::memory();
        b.set("p/a", b"1".to_vec()).await.expect("set");
        assert_eq!(b.get("p/a").await.expect("get"), Some(b"1".to_vec()));
        assert_eq!(b.increment("p/a", 41).await.expect("incr"), 42);
        assert_eq!(b.increment("p/new", 1).await.expect("incr"), 1);
        b.set("p/text", b"x".to_vec()).await.expect("set");
        assert!(b.increment("p/text", 1).await.is_err());
        b.set("q/other", b"x".to_vec()).await.expect("set");
        let (keys, next) = b.list("p/", None).await.expect("list");
        assert_eq!(keys, ["p/a", "p/new", "p/text"]);
        assert_eq!(next, None);
        b.delete(vec!["p/a".into()]).await.expect("delete");
        assert!(!b.exists("p/a").await.expect("exists"));
        assert_eq!(
            b.get_many(vec!["p/new".into(), "p/none".into()])
                .await
                .expect("many"),
            vec![Some(b"1".to_vec()), None]
        );
        assert!(b.increment("p/new", u64::MAX).await.is_err(), "overflow");
    }

    #[test]
    fn pages_carry_a_cursor_until_the_end() {
        let all = (0..2500).map(|i| format!("k{i:05}"));
        let (first, next) = page(all.clone(), None);
        assert_eq!((first.len(), next), (MAX_BATCH, Some(MAX_BATCH as u64)));
        let (second, next) = page(all.clone(), next);
        assert_eq!(second[0], "k01000");
        let (third, next) = page(all, next);
        assert_eq!((third.len(), next), (500, None));
    }
}
