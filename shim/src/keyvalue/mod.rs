//! `wasi:keyvalue` (0.2.0-draft: store, atomics, batch) on the stores a WasmApp grants
//! (`spec.keyValue`): Redis, an embedded database file, or the pod's memory.
//!
//! - **Only granted stores.** `open` finds the store by the name the WasmApp gives it; any
//!   other name is `no-such-store`, named once on the container's stderr with the grant that
//!   would allow it.
//! - **Namespaced.** Every key is stored under the store's prefix (`<namespace>/<app>/<store>/`,
//!   or `<namespace>/shared/<name>/` for a store two apps share), so apps on one Redis see each
//!   other's data only through a shared store.
//! - **Bounded.** Every backend call has the store's timeout; an unreachable backend gives the
//!   guest `other("... timed out ...")` within it, never a hang. Keys are at most
//!   [`MAX_KEY`] bytes, values [`MAX_VALUE`], batches [`MAX_BATCH`] entries.
//! - The stores live as long as the container process: the instances of a wasi:http app share
//!   their connections (and, for `memory`, their data).
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmkube_contract::{KeyValueBackend, KeyValueStore};
use wasmtime::component::{HasData, Resource, ResourceTable};

mod backend;
mod file;
mod redis;

pub use backend::Backend;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::KvError,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// The longest key a guest may use, in bytes (before the store's prefix).
pub const MAX_KEY: usize = 1024;
/// The largest value a guest may store, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// The most keys one batch call or one `list-keys` page carries.
pub const MAX_BATCH: usize = 1000;

/// What a backend call failed with; the guest gets it as `wasi:keyvalue`'s `error`.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("no such store")]
    NoSuchStore,
    #[error("access denied")]
    AccessDenied,
    #[error("{0}")]
    Other(String),
}

impl From<wasmtime::component::ResourceTableError> for KvError {
    fn from(e: wasmtime::component::ResourceTableError) -> Self {
        KvError::Other(e.to_string())
    }
}

/// An open bucket: the store it was opened on.
pub struct Bucket(Arc<Store>);

/// One granted store.
pub struct Store {
    name: String,
    prefix: String,
    timeout: Duration,
    backend: Backend,
}

impl Store {
    fn key(&self, key: &str) -> Result<String, KvError> {
        if key.len() > MAX_KEY {
            return Err(KvError::Other(format!(
                "a key is at most {MAX_KEY} bytes; this one has {}",
                key.len()
            )));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    /// Runs `call` on the backend within the store's timeout.
    async fn within<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, KvError>>,
    ) -> Result<T, KvError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(KvError::Other(format!(
                "key-value store {:?}: {what} timed out after {} ms",
                self.name,
                self.timeout.as_millis()
            ))),
        }
    }
}

/// The stores of one container, by name.
#[derive(Default)]
pub struct Stores {
    by_name: BTreeMap<String, Arc<Store>>,
    /// Names refused so far (each is logged once).
    refused: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl Stores {
    /// The stores `grants` name. A backend that cannot be set up (an unreadable URL file, a
    /// database that does not open) is reported and answers every call with why.
    pub fn new(grants: &[KeyValueStore]) -> Self {
        let by_name = grants
            .iter()
            .map(|g| {
                let backend = match &g.backend {
                    KeyValueBackend::Memory => Backend::memory(),
                    KeyValueBackend::File { dir } => Backend::file(dir, &g.name),
                    KeyValueBackend::Redis { url_file } => Backend::redis(url_file, &g.name),
                };
                let store = Store {
                    name: g.name.clone(),
                    prefix: g.key_prefix.clone(),
                    timeout: Duration::from_millis(u64::from(g.timeout_ms.max(1))),
                    backend,
                };
                (g.name.clone(), Arc::new(store))
            })
            .collect();
        Stores {
            by_name,
            refused: Mutex::new(Vec::new()),
        }
    }

    fn open(&self, name: &str) -> Result<Arc<Store>, KvError> {
        if let Some(store) = self.by_name.get(name) {
            return Ok(store.clone());
        }
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if !refused.iter().any(|r| r == name) {
            refused.push(name.to_string());
            eprintln!(
                "wasmkube: key-value store {name:?} denied: not granted (add {{name: {name}, ...}} to the WasmApp's spec.keyValue)"
            );
        }
        Err(KvError::NoSuchStore)
    }
}

/// The guest's view: its stores and the store's resource table.
pub struct KvView<'a> {
    pub stores: &'a Stores,
    pub table: &'a mut ResourceTable,
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Adds `wasi:keyvalue/{store,atomics,batch}` to a component linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    view: fn(&mut T) -> KvView<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKv>(linker, view)?;
    atomics::add_to_linker::<T, HasKv>(linker, view)?;
    batch::add_to_linker::<T, HasKv>(linker, view)?;
    Ok(())
}

impl KvView<'_> {
    fn store(&self, bucket: &Resource<Bucket>) -> Result<Arc<Store>, KvError> {
        Ok(self.table.get(bucket)?.0.clone())
    }
}

impl store::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
        let store = self.stores.open(&identifier)?;
        Ok(self.table.push(Bucket(store))?)
    }

    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<store::Error> {
        Ok(match err {
            KvError::NoSuchStore => store::Error::NoSuchStore,
            KvError::AccessDenied => store::Error::AccessDenied,
            KvError::Other(why) => store::Error::Other(why),
        })
    }
}

impl store::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let s = self.store(&bucket)?;
        let key = s.key(&key)?;
        s.within("get", s.backend.get(&key)).await
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        let s = self.store(&bucket)?;
        let key = s.key(&key)?;
        check_value(&value)?;
        s.within("set", s.backend.set(&key, value)).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        let s = self.store(&bucket)?;
        let key = s.key(&key)?;
        s.within("delete", s.backend.delete(vec![key])).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        let s = self.store(&bucket)?;
        let key = s.key(&key)?;
        s.within("exists", s.backend.exists(&key)).await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let s = self.store(&bucket)?;
        let (keys, cursor) = s
            .within("list-keys", s.backend.list(&s.prefix, cursor))
            .await?;
        let keys = keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(s.prefix.as_str()).map(str::to_string))
            .collect();
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        let s = self.store(&bucket)?;
        let key = s.key(&key)?;
        s.within("increment", s.backend.increment(&key, delta))
            .await
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        let s = self.store(&bucket)?;
        check_batch(keys.len())?;
        let full = keys
            .iter()
            .map(|k| s.key(k))
            .collect::<Result<Vec<_>, _>>()?;
        let values = s.within("get-many", s.backend.get_many(full)).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        let s = self.store(&bucket)?;
        check_batch(key_values.len())?;
        let mut full = Vec::with_capacity(key_values.len());
        for (k, v) in key_values {
            check_value(&v)?;
            full.push((s.key(&k)?, v));
        }
        s.within("set-many", s.backend.set_many(full)).await
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), KvError> {
        let s = self.store(&bucket)?;
        check_batch(keys.len())?;
        let full = keys
            .iter()
            .map(|k| s.key(k))
            .collect::<Result<Vec<_>, _>>()?;
        s.within("delete-many", s.backend.delete(full)).await
    }
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE {
        return Err(KvError::Other(format!(
            "a value is at most {MAX_VALUE} bytes; this one has {}",
            value.len()
        )));
    }
    Ok(())
}

fn check_batch(n: usize) -> Result<(), KvError> {
    if n > MAX_BATCH {
        return Err(KvError::Other(format!(
            "a batch is at most {MAX_BATCH} keys; this one has {n}"
        )));
    }
    Ok(())
}
