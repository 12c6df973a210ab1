//! Per-object exponential backoff for `error_policy`: 5 s, 10 s, 20 s … capped at 5 minutes,
//! reset by the next successful reconcile.

use std::{collections::HashMap, hash::Hash, sync::Mutex, time::Duration};

const BASE: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct ErrorBackoff<K> {
    failures: Mutex<HashMap<K, u32>>,
}

impl<K> Default for ErrorBackoff<K> {
    fn default() -> Self {
        ErrorBackoff {
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> ErrorBackoff<K> {
    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn next_delay(&self, key: K) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(16))
            .unwrap_or(u32::MAX);
        BASE.saturating_mul(factor).min(MAX)
    }

    /// Forgets the failures of `key` after a success.
    pub fn reset(&self, key: &K) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps_then_resets() {
        let b = ErrorBackoff::default();
        let delays: Vec<u64> = (0..8).map(|_| b.next_delay("a").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next_delay("b").as_secs(), 5, "per object");
        b.reset(&"a");
        assert_eq!(b.next_delay("a").as_secs(), 5);
    }
}
