//! The Redis backend, on the `redis` crate's connection manager (one multiplexed connection per
//! store and container, re-established after a failure). The URL, credentials included, comes
//! from a Secret's file and never reaches a message: errors name the store, not the server.
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::KvError;

pub struct RedisStore {
    client: redis::Client,
    store: String,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
}

/// How long connecting may take; each call is bounded by its store's timeout as well.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisStore {
    pub fn new(url_file: &str, store: &str) -> Result<Self, String> {
        let url = std::fs::read_to_string(url_file)
            .map_err(|e| format!("cannot read its Redis URL ({url_file}): {e}"))?;
        let client = redis::Client::open(url.trim())
            .map_err(|e| format!("its Redis URL is not one: {}", e.category()))?;
        Ok(RedisStore {
            client,
            store: store.to_string(),
            connection: tokio::sync::Mutex::new(None),
        })
    }

    /// The connection, connecting first when there is none yet (or the last attempt failed).
    async fn connection(&self) -> Result<ConnectionManager, KvError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1);
        let c = self
            .client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| self.error("connecting", &e))?;
        *slot = Some(c.clone());
        Ok(c)
    }

    fn error(&self, what: &str, e: &redis::RedisError) -> KvError {
        // The error's kind and detail, never the URL it was made from.
        let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
        KvError::Other(format!(
            "key-value store {:?}: Redis {what} failed: {}{detail}",
            self.store,
            e.category()
        ))
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, KvError> {
        let mut c = self.connection().await?;
        cmd.query_async(&mut c)
            .await
            .map_err(|e| self.error(what, &e))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.query("GET", redis::cmd("GET").arg(key)).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        let n: i64 = self.query("EXISTS", redis::cmd("EXISTS").arg(key)).await?;
        Ok(n > 0)
    }

    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.query("MGET", redis::cmd("MGET").arg(&keys)).await
    }

    pub async fn set_many(&self, entries: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("MSET");
        for (k, v) in &entries {
            cmd.arg(k).arg(v.as_slice());
        }
        self.query::<()>("MSET", &cmd).await
    }

    pub async fn delete(&self, keys: Vec<String>) -> Result<(), KvError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.query::<i64>("DEL", redis::cmd("DEL").arg(&keys))
            .await
            .map(drop)
    }

    pub async fn increment(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        let delta = i64::try_from(delta)
            .map_err(|_| KvError::Other("Redis counts at most by 2^63-1 at once".into()))?;
        let n: i64 = self
            .query("INCRBY", redis::cmd("INCRBY").arg(key).arg(delta))
            .await?;
        u64::try_from(n).map_err(|_| KvError::Other("the counter is negative".into()))
    }

    /// One `SCAN` step over the keys under `prefix`; Redis's cursor is the guest's.
    pub async fn list(
        &self,
        prefix: &str,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let (next, keys): (u64, Vec<String>) = self
            .query(
                "SCAN",
                redis::cmd("SCAN")
                    .arg(cursor.unwrap_or(0))
                    .arg("MATCH")
                    .arg(format!("{}*", glob_escape(prefix)))
                    .arg("COUNT")
                    .arg(super::MAX_BATCH),
            )
            .await?;
        Ok((keys, (next != 0).then_some(next)))
    }
}

/// `prefix` as a literal in a Redis glob pattern.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_characters_in_a_prefix_are_literal() {
        assert_eq!(
            super::glob_escape("ns/a*b?[c]\\/"),
            "ns/a\\*b\\?\\[c\\]\\\\/"
        );
    }
}
