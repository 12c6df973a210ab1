//! The file backend: a redb database (`<dir>/<store>.redb`) on a volume the operator mounts
//! where the guest cannot see it. One process may hold it at a time, so a WasmApp with a file
//! store runs one replica and replaces its pod by stopping the old one first (`Recreate`).
//! Every call runs on a blocking thread; a write commits (and syncs) before the guest hears
//! back, so what it wrote survives a restart.
use std::path::PathBuf;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::backend::{add, page, parse_counter};
use super::KvError;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

pub struct FileStore {
    path: PathBuf,
    store: String,
    db: std::sync::Mutex<Option<Arc<Database>>>,
}

impl FileStore {
    pub fn open(dir: &str, store: &str) -> Result<Self, String> {
        let path = PathBuf::from(dir).join(format!("{store}.redb"));
        let f = FileStore {
            path,
            store: store.to_string(),
            db: std::sync::Mutex::new(None),
        };
        // Opened now so a problem shows at start; a failure is retried on the next call.
        if let Err(e) = f.database() {
            eprintln!("wasmkube: {e}");
        }
        Ok(f)
    }

    fn database(&self) -> Result<Arc<Database>, KvError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Database::create(&self.path).map_err(|e| self.error("opening", e))?;
        let txn = db.begin_write().map_err(|e| self.error("opening", e))?;
        txn.open_table(TABLE)
            .map_err(|e| self.error("opening", e))?;
        txn.commit().map_err(|e| self.error("opening", e))?;
        let db = Arc::new(db);
        *slot = Some(db.clone());
        Ok(db)
    }

    fn error(&self, what: &str, e: impl std::fmt::Display) -> KvError {
        KvError::Other(format!(
            "key-value store {:?}: {what} {} failed: {e}",
            self.store,
            self.path.display()
        ))
    }

    /// Runs `f` on a blocking thread with the database.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, String> + Send + 'static,
    ) -> Result<T, KvError> {
        let db = self.database()?;
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(result) => result.map_err(|e| self.error("using", e)),
            Err(e) => Err(self.error("using", e)),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let key = key.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let t = txn.open_table(TABLE).map_err(|e| e.to_string())?;
            let v = t.get(key.as_str()).map_err(|e| e.to_string())?;
            Ok(v.map(|v| v.value().to_vec()))
        })
        .await
    }

    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let t = txn.open_table(TABLE).map_err(|e| e.to_string())?;
            keys.iter()
                .map(|k| {
                    t.get(k.as_str())
                        .map(|v| v.map(|v| v.value().to_vec()))
                        .map_err(|e| e.to_string())
                })
                .collect()
        })
        .await
    }

    pub async fn set_many(&self, entries: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        self.write(move |t| {
            for (k, v) in &entries {
                t.insert(k.as_str(), v.as_slice())
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await
    }

    pub async fn delete(&self, keys: Vec<String>) -> Result<(), KvError> {
        self.write(move |t| {
            for k in &keys {
                t.remove(k.as_str()).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .await
    }

    pub async fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        let key = key.to_string();
        let result = self
            .write(move |t| {
                let now = t
                    .get(key.as_str())
                    .map_err(|e| e.to_string())?
                    .map(|v| parse_counter(v.value()));
                let next = match now {
                    Some(Ok(n)) => add(n, delta),
                    Some(Err(e)) => Err(e),
                    None => add(0, delta),
                };
                match next {
                    Ok(n) => {
                        t.insert(key.as_str(), n.to_string().as_bytes())
                            .map_err(|e| e.to_string())?;
                        Ok(Ok(n))
                    }
                    Err(e) => Ok(Err(e)),
                }
            })
            .await?;
        result
    }

    pub async fn list(
        &self,
        prefix: &str,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let prefix = prefix.to_string();
        self.run(move |db| {
            let txn = db.begin_read().map_err(|e| e.to_string())?;
            let t = txn.open_table(TABLE).map_err(|e| e.to_string())?;
            let mut keys = Vec::new();
            for entry in t.range(prefix.as_str()..).map_err(|e| e.to_string())? {
                let (k, _) = entry.map_err(|e| e.to_string())?;
                let k = k.value().to_string();
                if !k.starts_with(&prefix) {
                    break;
                }
                keys.push(k);
            }
            Ok(page(keys.into_iter(), cursor))
        })
        .await
    }

    /// A write transaction around `f`, committed (durably) before it returns.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<T, String>
            + Send
            + 'static,
    ) -> Result<T, KvError> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            let out = {
                let mut t = txn.open_table(TABLE).map_err(|e| e.to_string())?;
                f(&mut t)?
            };
            txn.commit().map_err(|e| e.to_string())?;
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_survive_reopening_and_count() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().to_string_lossy().into_owned();
        {
            let f = FileStore::open(&d, "default").expect("open");
            f.set_many(vec![("p/a".into(), b"x".to_vec())])
                .await
                .expect("set");
            assert_eq!(f.increment("p/n", 2).await.expect("incr"), 2);
            assert_eq!(f.increment("p/n", 3).await.expect("incr"), 5);
            assert!(f.increment("p/a", 1).await.is_err(), "not a counter");
        }
        let f = FileStore::open(&d, "default").expect("reopen");
        assert_eq!(f.get("p/a").await.expect("get"), Some(b"x".to_vec()));
        assert_eq!(f.get("p/n").await.expect("get"), Some(b"5".to_vec()));
        let (keys, next) = f.list("p/", None).await.expect("list");
        assert_eq!(
            (keys, next),
            (vec!["p/a".to_string(), "p/n".to_string()], None)
        );
        f.delete(vec!["p/a".into()]).await.expect("delete");
        assert_eq!(
            f.get_many(vec!["p/a".into(), "p/n".into()])
                .await
                .expect("many"),
            vec![None, Some(b"5".to_vec())]
        );
    }
}
